"""Idempotency keys: replay byte for byte (500s included), mismatch, in-flight conflicts."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import stripe

from relay.emulator import Emulator
from tests.support.emulator import API_KEY, make_client, meter_event

FORM = {
    "event_name": "api_calls",
    "identifier": "raw-1",
    "payload[stripe_customer_id]": "cus_1",
    "payload[value]": "2",
}


def _post(emu: Emulator, data: dict[str, str], key: str) -> requests.Response:
    return requests.post(
        f"{emu.base_url}/v1/billing/meter_events",
        data=data,
        headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": key},
    )


def test_same_key_same_params_replays_byte_for_byte(emu: Emulator) -> None:
    first = _post(emu, FORM, "key-1")
    second = _post(emu, dict(reversed(FORM.items())), "key-1")  # order does not matter

    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Original-Request"] == first.headers["Request-Id"]
    assert second.headers["Request-Id"] != first.headers["Request-Id"]
    assert emu.counted("raw-1") == 1
    assert emu.stats()["idempotent_replays"] == 1


def test_sdk_retry_with_same_key_returns_the_original(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    options = {"idempotency_key": "k1"}
    first = client.v1.billing.meter_events.create(meter_event("i1"), options)
    again = client.v1.billing.meter_events.create(meter_event("i1"), options)

    assert again.to_dict() == first.to_dict()
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert emu.counted("i1") == 1


def test_same_key_different_params_is_idempotency_error(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    client.v1.billing.meter_events.create(meter_event("i1", value="1"), {"idempotency_key": "k"})
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.billing.meter_events.create(
            meter_event("i1", value="2"), {"idempotency_key": "k"}
        )
    assert info.value.http_status == 400
    assert emu.total("api_calls", "cus_1") == 1


def test_same_key_on_another_endpoint_is_idempotency_error(client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(meter_event("i1"), {"idempotency_key": "shared"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "i1"}},
            {"idempotency_key": "shared"},
        )


def test_keys_are_scoped_per_account(emu: Emulator, client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(meter_event("a1"), {"idempotency_key": "k"})
    client.v1.billing.meter_events.create(
        meter_event("a1", value="5"), {"idempotency_key": "k", "stripe_account": "acct_other"}
    )
    assert emu.total("api_calls", "cus_1", account="acct_other") == 5


def test_a_500_is_replayed_and_a_fresh_key_then_counts_once(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    emu.fail_next(1, status=500, path="/v1/billing/meter_events")
    with pytest.raises(stripe.APIError) as first:
        client.v1.billing.meter_events.create(meter_event("u1"), {"idempotency_key": "g0"})
    assert first.value.http_status == 500
    assert first.value.headers["Stripe-Should-Retry"] == "false"
    assert emu.counted("u1") == 0

    with pytest.raises(stripe.APIError) as replayed:
        client.v1.billing.meter_events.create(meter_event("u1"), {"idempotency_key": "g0"})
    assert replayed.value.http_status == 500
    assert replayed.value.headers["Idempotent-Replayed"] == "true"
    assert replayed.value.http_body == first.value.http_body
    assert emu.counted("u1") == 0

    client.v1.billing.meter_events.create(meter_event("u1"), {"idempotency_key": "g1"})
    assert emu.counted("u1") == 1
    with pytest.raises(stripe.InvalidRequestError):  # and the identifier guards the next key
        client.v1.billing.meter_events.create(meter_event("u1"), {"idempotency_key": "g2"})
    assert emu.counted("u1") == 1


def test_validation_errors_are_not_saved(emu: Emulator, client: stripe.StripeClient) -> None:
    """A 400 from parameter validation leaves no record: the key can be used for real."""
    future = int(emu.now()) + 3600
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(
            meter_event("v1", timestamp=future), {"idempotency_key": "kv"}
        )
    emu.advance_clock(3600)
    client.v1.billing.meter_events.create(
        meter_event("v1", timestamp=future), {"idempotency_key": "kv"}
    )
    assert emu.counted("v1") == 1


def test_same_key_while_in_flight_is_409(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(enforce_concurrency=False)
    client = make_client(emu)
    gate = emu.hold("/v1/billing/meter_events")
    options = {"idempotency_key": "slow"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.v1.billing.meter_events.create, meter_event("s1"), options)
        gate.wait_arrived(1)

        with pytest.raises(stripe.APIError) as info:
            client.v1.billing.meter_events.create(meter_event("s1"), options)
        assert info.value.http_status == 409
        assert info.value.json_body["error"]["code"] == "idempotency_key_in_use"

        gate.release()
        assert first.result(timeout=10).identifier == "s1"

    replay = client.v1.billing.meter_events.create(meter_event("s1"), options)
    assert replay.last_response.headers["Idempotent-Replayed"] == "true"
    assert emu.counted("s1") == 1


def test_expired_key_is_forgotten(emu: Emulator, client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(meter_event("x1"), {"idempotency_key": "old"})
    emu.advance_clock(24 * 3600 + 1)
    event = client.v1.billing.meter_events.create(meter_event("x2"), {"idempotency_key": "old"})
    assert event.identifier == "x2"


def test_overlong_key_is_rejected(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(meter_event("x"), {"idempotency_key": "k" * 256})
