"""v2 meter event sessions and the high-throughput stream."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import stripe

from relay.emulator import Emulator
from tests.support.emulator import API_KEY, stream_event


def _session_token(client: stripe.StripeClient) -> str:
    return client.v2.billing.meter_event_session.create().authentication_token


def test_session_object(emu: Emulator, client: stripe.StripeClient) -> None:
    session = client.v2.billing.meter_event_session.create()

    assert session.object == "v2.billing.meter_event_session"
    assert session.id and session.authentication_token
    created = datetime.fromisoformat(session.created.replace("Z", "+00:00"))
    expires = datetime.fromisoformat(session.expires_at.replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == pytest.approx(15 * 60, abs=0.01)
    assert created.tzinfo == UTC
    assert session.livemode is False


def test_stream_counts_events_and_ignores_duplicates(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    token = _session_token(client)
    events = [stream_event(f"s{i}", value="2") for i in range(100)]
    result = client.v2.billing.meter_event_stream.create({"events": events}, {"api_key": token})
    assert result is None  # the SDK discards the `{}` body

    again = [stream_event("s0", value="2"), stream_event("s100", value="2")]
    client.v2.billing.meter_event_stream.create({"events": again}, {"api_key": token})

    assert emu.counted("s0") == 1
    assert emu.counted("s100") == 1
    assert emu.total("api_calls", "cus_1") == 202
    assert emu.stats()["stream_duplicates_ignored"] == 1


def test_stream_event_timestamps_are_rfc3339(emu: Emulator, client: stripe.StripeClient) -> None:
    token = _session_token(client)
    when = datetime.fromtimestamp(int(emu.now()) - 3600, tz=UTC)
    event = {**stream_event("t1"), "timestamp": when.isoformat().replace("+00:00", "Z")}
    client.v2.billing.meter_event_stream.create({"events": [event]}, {"api_key": token})
    [recorded] = emu.ledger().events
    assert recorded.timestamp == int(when.timestamp())
    assert recorded.source == "v2_stream"


def test_more_than_100_events_is_400(client: stripe.StripeClient) -> None:
    token = _session_token(client)
    events = [stream_event(f"s{i}") for i in range(101)]
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v2.billing.meter_event_stream.create({"events": events}, {"api_key": token})
    assert info.value.http_status == 400
    assert info.value.code == "too_many_events"


def test_invalid_events_are_accepted_and_not_counted(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    token = _session_token(client)
    events = [
        stream_event("bad-value", value="1.5"),
        stream_event("bad-meter", event_name="nope"),
        stream_event("bad-customer", customer="someone"),
        {**stream_event("too-old"), "timestamp": "2000-01-01T00:00:00Z"},
        stream_event("good"),
    ]
    client.v2.billing.meter_event_stream.create({"events": events}, {"api_key": token})

    assert emu.total("api_calls", "cus_1") == 1
    rejected = {e.identifier: e.error_code for e in emu.ledger().rejected}
    assert rejected == {
        "bad-value": "meter_event_invalid_value",
        "bad-meter": "no_meter",
        "bad-customer": "meter_event_customer_not_found",
        "too-old": "timestamp_too_far_in_past",
    }


def test_session_expires_after_15_minutes(emu: Emulator, client: stripe.StripeClient) -> None:
    token = _session_token(client)
    emu.advance_clock(14 * 60)
    client.v2.billing.meter_event_stream.create(
        {"events": [stream_event("before")]}, {"api_key": token}
    )

    emu.advance_clock(2 * 60)
    with pytest.raises(stripe.TemporarySessionExpiredError) as info:
        client.v2.billing.meter_event_stream.create(
            {"events": [stream_event("after")]}, {"api_key": token}
        )
    assert info.value.http_status == 401
    assert emu.counted("after") == 0

    fresh = _session_token(client)
    client.v2.billing.meter_event_stream.create(
        {"events": [stream_event("after")]}, {"api_key": fresh}
    )
    assert emu.counted("after") == 1


@pytest.mark.parametrize("token", [API_KEY, "mes_tok_unknown"])
def test_stream_needs_a_session_token(client: stripe.StripeClient, token: str) -> None:
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_stream.create(
            {"events": [stream_event("x")]}, {"api_key": token}
        )


def test_session_needs_a_secret_key(emu: Emulator) -> None:
    from tests.support.emulator import make_client

    with pytest.raises(stripe.AuthenticationError):
        make_client(emu, "mes_tok_nope").v2.billing.meter_event_session.create()


def test_stream_session_is_bound_to_its_account(emu: Emulator, client: stripe.StripeClient) -> None:
    session = client.v2.billing.meter_event_session.create(options={"stripe_account": "acct_conn"})
    client.v2.billing.meter_event_stream.create(
        {"events": [stream_event("acc")]}, {"api_key": session.authentication_token}
    )
    assert emu.counted("acc", account="acct_conn") == 1
    assert emu.counted("acc", account="acct_emulator") == 0
