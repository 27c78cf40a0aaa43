"""The SDK's async twins (aiohttp and httpx clients) against both emulator modes."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from relay.emulator import Emulator
from tests.support.emulator import Receiver, make_client, meter_event, stream_event

# stripe-python's httpx client passes bytes as `data=`; httpx deprecates that. Not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")


async def test_create_and_duplicate(emu: Emulator, async_client: Any) -> None:
    event = await async_client.v1.billing.meter_events.create_async(meter_event("a1", value="2"))
    assert event.identifier == "a1"
    with pytest.raises(stripe.InvalidRequestError) as info:
        await async_client.v1.billing.meter_events.create_async(meter_event("a1", value="2"))
    assert info.value.code == "resource_already_exists"
    assert info.value.headers["Stripe-Should-Retry"] == "false"
    assert emu.counted("a1") == 1


async def test_error_classes(emu: Emulator, async_client: Any) -> None:
    create = async_client.v1.billing.meter_events.create_async
    emu.fail_next(1, kind="429")
    with pytest.raises(stripe.RateLimitError):
        await create(meter_event("e1"))

    await create(meter_event("e1", value="1"), {"idempotency_key": "k"})
    with pytest.raises(stripe.IdempotencyError):
        await create(meter_event("e1", value="2"), {"idempotency_key": "k"})

    emu.fail_next(1, status=500)
    with pytest.raises(stripe.APIError) as first:
        await create(meter_event("e2"), {"idempotency_key": "k500"})
    with pytest.raises(stripe.APIError) as replay:
        await create(meter_event("e2"), {"idempotency_key": "k500"})
    assert first.value.http_status == replay.value.http_status == 500
    await create(meter_event("e2"), {"idempotency_key": "k500-2"})
    assert emu.counted("e2") == 1

    with pytest.raises(stripe.InvalidRequestError) as bad:
        await create(meter_event("e3", value="0.5"))
    assert bad.value.code == "meter_event_invalid_value"


async def test_bad_key(emu: Emulator) -> None:
    http = stripe.AIOHTTPClient()
    client = make_client(emu, "sk_bad_key", http_client=http)
    try:
        with pytest.raises(stripe.AuthenticationError):
            await client.v1.billing.meter_events.create_async(meter_event("x"))
    finally:
        await http.close_async()


async def test_stream_and_session_expiry(emu: Emulator, async_client: Any) -> None:
    session = await async_client.v2.billing.meter_event_session.create_async()
    token = {"api_key": session.authentication_token}
    await async_client.v2.billing.meter_event_stream.create_async(
        {"events": [stream_event("s1"), stream_event("s2")]}, token
    )
    assert emu.total("api_calls", "cus_1") == 2

    emu.advance_clock(16 * 60)
    with pytest.raises(stripe.TemporarySessionExpiredError):
        await async_client.v2.billing.meter_event_stream.create_async(
            {"events": [stream_event("s3")]}, token
        )


async def test_in_loop_emulator_with_the_default_async_client(loop_emu: Emulator) -> None:
    """No http_client given: the SDK's async calls fall back to httpx."""
    pytest.importorskip("httpx", reason="stripe's async extra (httpx) is not installed")
    client = make_client(loop_emu)
    try:
        event = await client.v1.billing.meter_events.create_async(meter_event("d1", value="4"))
        assert event.identifier == "d1"
        end = (int(loop_emu.now()) // 60 + 1) * 60
        summaries = await client.v1.billing.meters.event_summaries.list_async(
            "mtr_api_calls", {"customer": "cus_1", "start_time": 0, "end_time": end}
        )
        assert summaries.data[0].aggregated_value == 4
    finally:
        # StripeClient has no public close; its default client closes the httpx fallback.
        await client._requestor._client.close_async()


async def test_in_loop_webhook_flow_with_async_fetch(
    loop_emu: Emulator, receiver: Receiver
) -> None:
    loop_emu.set_webhook(receiver.url)
    http = stripe.AIOHTTPClient()
    client = make_client(loop_emu, http_client=http)
    try:
        await client.v1.billing.meter_events.create_async(meter_event("w1", customer="bob"))
        [event_id] = await loop_emu.flush_error_reports_async()
        body, signature = await receiver.next()
        notification = client.parse_event_notification(body, signature, "whsec_test_emulator")
        event = await notification.fetch_event_async()
        assert event.id == event_id
        assert event.data.reason.error_types[0].sample_errors[0].request.identifier == "w1"
        listed = await client.v2.core.events.list_async()
        assert [e.id for e in listed.data] == [event_id]
    finally:
        await http.close_async()


async def test_sync_flush_refuses_on_the_emulator_loop(loop_emu: Emulator) -> None:
    with pytest.raises(RuntimeError):
        loop_emu.flush_error_reports()
