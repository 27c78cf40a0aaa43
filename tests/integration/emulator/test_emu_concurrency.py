"""One call at a time per (customer, meter): conflicts, their status, and the observation."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import stripe

from relay.emulator import Emulator
from tests.support.emulator import make_client, meter_event


def _overlap(emu: Emulator, second: dict, options: dict | None = None) -> Exception | None:
    """Hold a first call for cus_1 mid-flight, send `second`, return its error (if any)."""
    client = make_client(emu)
    gate = emu.hold("/v1/billing/meter_events")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.v1.billing.meter_events.create, meter_event("first"))
        gate.wait_arrived(1)
        error: Exception | None = None
        try:
            client.v1.billing.meter_events.create(second, options)
        except stripe.StripeError as exc:
            error = exc
        gate.release()
        first.result(timeout=10)
    return error


def test_concurrent_call_for_same_customer_and_meter_is_409(emu: Emulator) -> None:
    error = _overlap(emu, meter_event("second"), {"idempotency_key": "k2"})

    assert isinstance(error, stripe.APIError)
    assert error.http_status == 409
    assert error.json_body["error"]["code"] == "too_many_concurrent_requests"
    assert error.headers["Stripe-Should-Retry"] == "true"
    stats = emu.stats()
    assert stats["concurrency_conflicts"] == 1
    assert stats["max_concurrent"] == 2
    assert emu.counted("second") == 0

    # Checked before idempotency: the same key is usable once the first call finished.
    make_client(emu).v1.billing.meter_events.create(
        meter_event("second"), {"idempotency_key": "k2"}
    )
    assert emu.counted("second") == 1


def test_conflict_status_can_be_429(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(concurrency_status=429)
    error = _overlap(emu, meter_event("second"))
    assert isinstance(error, stripe.RateLimitError)
    assert error.http_status == 429


def test_other_customers_do_not_conflict(emu: Emulator) -> None:
    assert _overlap(emu, meter_event("other", customer="cus_2")) is None
    assert emu.stats()["max_concurrent"] == 1


def test_sequential_calls_stay_at_one_in_flight(emu: Emulator, client: stripe.StripeClient) -> None:
    for i in range(5):
        client.v1.billing.meter_events.create(meter_event(f"seq{i}"))
    [lane] = emu.stats()["max_concurrent_per_customer_meter"]
    assert lane == {
        "account": "acct_emulator",
        "meter": "mtr_api_calls",
        "customer": "cus_1",
        "max_concurrent": 1,
    }


def test_observation_without_enforcement(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(enforce_concurrency=False)
    assert _overlap(emu, meter_event("second")) is None
    assert emu.stats()["max_concurrent"] == 2
    assert emu.counted("second") == 1


@pytest.mark.parametrize("path", ["/v1/billing/meter_event_adjustments"])
def test_adjustments_are_not_per_customer(emu: Emulator, path: str) -> None:
    client = make_client(emu)
    client.v1.billing.meter_events.create(meter_event("c1"))
    gate = emu.hold(path)
    params = {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "c1"}}
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.v1.billing.meter_event_adjustments.create, params)
        gate.wait_arrived(1)
        client.v1.billing.meter_events.create(meter_event("c2"))
        gate.release()
        held.result(timeout=10)
    assert emu.total("api_calls", "cus_1") == 1
