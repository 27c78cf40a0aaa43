"""v1 meter events through the official SDK: wire format, validation, auth, rate limits."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests
import stripe

from relay.emulator import Emulator
from tests.support.emulator import API_KEY, LIVE_KEY, make_client, meter_event

DAY = 86400


def test_create_returns_a_billing_meter_event(emu: Emulator, client: stripe.StripeClient) -> None:
    now = int(emu.now())
    event = client.v1.billing.meter_events.create(meter_event("e1", value="5", timestamp=now))

    assert event.object == "billing.meter_event"
    assert event.identifier == "e1"
    assert event.event_name == "api_calls"
    assert event.payload.to_dict() == {"stripe_customer_id": "cus_1", "value": "5"}
    assert event.timestamp == now
    assert event.livemode is False
    assert "id" not in event
    assert event.last_response.headers["Request-Id"].startswith("req_")
    assert emu.counted("e1") == 1
    assert emu.total("api_calls", "cus_1") == 5


def test_identifier_and_timestamp_default(emu: Emulator, client: stripe.StripeClient) -> None:
    before = int(emu.now())
    event = client.v1.billing.meter_events.create(meter_event())

    assert event.identifier
    assert before <= event.timestamp <= int(emu.now())
    assert emu.counted(event.identifier) == 1


def test_live_key_is_livemode(emu: Emulator) -> None:
    event = make_client(emu, LIVE_KEY).v1.billing.meter_events.create(meter_event("live-1"))
    assert event.livemode is True


def test_duplicate_identifier_is_400_should_not_retry(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    client.v1.billing.meter_events.create(meter_event("dup", value="3"))

    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(meter_event("dup", value="3"))

    error = info.value
    assert error.http_status == 400
    assert error.code == "resource_already_exists"
    assert error.param == "identifier"
    assert "An event already exists with identifier dup" in str(error.user_message)
    assert error.headers["Stripe-Should-Retry"] == "false"
    assert emu.counted("dup") == 1
    assert emu.total("api_calls", "cus_1") == 3


def test_identifier_window_expires_and_a_resend_double_counts(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    """Past the 24 h window Stripe accepts the identifier again: the ledger shows it."""
    client.v1.billing.meter_events.create(meter_event("again"))
    emu.advance_clock(DAY - 1)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(meter_event("again"))

    emu.advance_clock(1)
    client.v1.billing.meter_events.create(meter_event("again"))
    assert emu.counted("again") == 2


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (-35 * DAY - 1, "timestamp_too_far_in_past"),
        # A minute past the 5-minute limit: the emulator's clock runs on between the test's
        # reading (truncated to the second) and the request's arrival; one second past it was
        # accepted whenever those added up to a second (seen once in CI on a loaded machine).
        (5 * 60 + 60, "timestamp_in_future"),
    ],
)
def test_timestamp_outside_window(
    emu: Emulator, client: stripe.StripeClient, offset: int, code: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(meter_event("ts", timestamp=int(emu.now()) + offset))
    assert (info.value.code, info.value.param) == (code, "timestamp")
    assert emu.counted("ts") == 0


def test_timestamp_window_edges_follow_the_emulator_clock(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    old = int(emu.now())
    client.v1.billing.meter_events.create(meter_event("edge-old", timestamp=old))
    client.v1.billing.meter_events.create(meter_event("edge-future", timestamp=old + 299))

    emu.advance_clock(35 * DAY + 2)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(meter_event("edge-late", timestamp=old))
    assert info.value.code == "timestamp_too_far_in_past"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("1.5", "meter_event_invalid_value"),
        ("-3", "meter_event_invalid_value"),
        ("abc", "meter_event_invalid_value"),
        ("1234567890123456", "meter_event_value_too_many_digits"),
    ],
)
def test_invalid_values(emu: Emulator, client: stripe.StripeClient, value: str, code: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(meter_event("v", value=value))
    assert (info.value.code, info.value.param) == (code, "payload[value]")
    assert emu.counted("v") == 0


def test_fifteen_digits_are_fine(emu: Emulator, client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(meter_event("big", value="123456789012345"))
    assert emu.total("api_calls", "cus_1") == 123456789012345


def test_negative_and_decimal_values_when_enabled(
    make_emulator: Callable[..., Emulator],
) -> None:
    emu = make_emulator(allow_negative_values=True, allow_decimal_values=True)
    client = make_client(emu)
    client.v1.billing.meter_events.create(meter_event("n", value="-2"))
    client.v1.billing.meter_events.create(meter_event("d", value="2.5"))
    assert emu.total("api_calls", "cus_1") == pytest.approx(0.5)


def test_missing_params(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create({"event_name": "api_calls"})  # type: ignore[typeddict-item]
    assert (info.value.code, info.value.param) == ("parameter_missing", "payload")


def test_unknown_parameter_is_rejected(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create({**meter_event("u"), "identifer": "typo"})
    assert (info.value.code, info.value.param) == ("parameter_unknown", "identifer")


@pytest.mark.parametrize("key", ["sk_nope_123", "pk_test_123", "rk_test_", "sk_test_"])
def test_bad_api_key_is_authentication_error(emu: Emulator, key: str) -> None:
    with pytest.raises(stripe.AuthenticationError) as info:
        make_client(emu, key).v1.billing.meter_events.create(meter_event("a"))
    assert info.value.http_status == 401
    assert info.value.headers["Request-Id"].startswith("req_")


def test_rejected_key_is_masked_in_the_error(emu: Emulator) -> None:
    key = "sk_nope_0123456789abcdefWXYZ"
    with pytest.raises(stripe.AuthenticationError) as info:
        make_client(emu, key).v1.billing.meter_events.create(meter_event("a"))
    body = str(info.value.http_body)
    assert key not in body
    assert "WXYZ" in body


def test_missing_authorization_header(emu: Emulator) -> None:
    response = requests.post(
        f"{emu.base_url}/v1/billing/meter_events", data={"event_name": "api_calls"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["Request-Id"].startswith("req_")


def test_configured_api_keys_only(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(api_keys={API_KEY})
    make_client(emu).v1.billing.meter_events.create(meter_event("ok"))
    with pytest.raises(stripe.AuthenticationError):
        make_client(emu, "sk_test_other").v1.billing.meter_events.create(meter_event("no"))


def test_basic_auth_like_curl(emu: Emulator) -> None:
    response = requests.post(
        f"{emu.base_url}/v1/billing/meter_events",
        auth=(API_KEY, ""),
        data={
            "event_name": "api_calls",
            "identifier": "curl-1",
            "payload[stripe_customer_id]": "cus_9",
            "payload[value]": "4",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["payload"] == {"stripe_customer_id": "cus_9", "value": "4"}
    assert emu.total("api_calls", "cus_9") == 4


def test_rate_limit_429_is_not_saved_under_the_key(
    make_emulator: Callable[..., Emulator],
) -> None:
    """Sandbox: 25/s. The limiter runs before idempotency, so the same key works later."""
    emu = make_emulator(rate_limit_test=25)
    frozen = [1000.0]
    emu.state.limiter.now = lambda: frozen[0]
    client = make_client(emu)
    for i in range(25):
        client.v1.billing.meter_events.create(meter_event(f"r{i}"))

    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.billing.meter_events.create(meter_event("r25"), {"idempotency_key": "k-25"})
    assert info.value.http_status == 429
    assert emu.stats()["status_429"] == 1

    frozen[0] += 1
    event = client.v1.billing.meter_events.create(meter_event("r25"), {"idempotency_key": "k-25"})
    assert event.identifier == "r25"
    assert emu.counted("r25") == 1


def test_live_rate_limit_is_separate(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(rate_limit_test=1, rate_limit_live=2)
    emu.state.limiter.now = lambda: 5.0
    live, test = make_client(emu, LIVE_KEY), make_client(emu)
    test.v1.billing.meter_events.create(meter_event("t1"))
    live.v1.billing.meter_events.create(meter_event("l1"))
    live.v1.billing.meter_events.create(meter_event("l2"))
    with pytest.raises(stripe.RateLimitError):
        live.v1.billing.meter_events.create(meter_event("l3"))
    with pytest.raises(stripe.RateLimitError):
        test.v1.billing.meter_events.create(meter_event("t2"))


def test_stripe_account_header_keeps_separate_ledgers(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    client.v1.billing.meter_events.create(meter_event("same", value="2"))
    client.v1.billing.meter_events.create(
        meter_event("same", value="7"), {"stripe_account": "acct_connected"}
    )

    assert emu.total("api_calls", "cus_1", account="acct_emulator") == 2
    assert emu.total("api_calls", "cus_1", account="acct_connected") == 7
    assert emu.total("api_calls", "cus_1") == 9
    assert emu.counted("same", account="acct_connected") == 1
    totals = emu.ledger().totals
    assert totals[("acct_connected", "api_calls", "cus_1")] == 7


def test_unknown_url_is_a_json_404(emu: Emulator) -> None:
    response = requests.get(f"{emu.base_url}/v1/nothing", headers={"Authorization": "Bearer x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "resource_missing"


def test_ledger_lists_events_with_receipt_time(emu: Emulator, client: stripe.StripeClient) -> None:
    started = time.time()
    client.v1.billing.meter_events.create(meter_event("l1", value="4", customer="cus_a"))
    snapshot = emu.ledger()

    [event] = snapshot.events
    assert (event.identifier, event.value, event.customer, event.cancelled) == (
        "l1",
        4,
        "cus_a",
        False,
    )
    assert event.received_at >= started - 1
    assert snapshot.total("api_calls", "cus_a") == 4
    assert snapshot.as_dict()["totals"] == [
        {"account": "acct_emulator", "event_name": "api_calls", "customer": "cus_a", "value": 4}
    ]
