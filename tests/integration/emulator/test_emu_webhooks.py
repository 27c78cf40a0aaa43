"""Asynchronous validation -> signed thin events -> full events from /v2/core/events."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import stripe

from relay.emulator import Emulator, signature_header
from tests.support.emulator import Receiver, make_client, meter_event, stream_event

SECRET = "whsec_test_emulator"


def _bad_customer(client: stripe.StripeClient, identifier: str, **kw: str) -> None:
    event = client.v1.billing.meter_events.create(meter_event(identifier, **kw))
    assert event.identifier == identifier  # accepted: validation is asynchronous


async def test_error_report_is_signed_and_fetchable(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=60, customers={"cus_1"})
    client = make_client(emu)
    _bad_customer(client, "bad-1", customer="cus_unknown")
    client.v1.billing.meter_events.create(meter_event("good-1"))

    [event_id] = await emu.flush_error_reports_async()
    body, signature = await receiver.next()

    notification = client.parse_event_notification(body, signature, SECRET)
    assert notification.id == event_id
    assert notification.type == "v1.billing.meter.error_report_triggered"
    assert notification.related_object.id == "mtr_api_calls"
    assert notification.related_object.url == "/v1/billing/meters/mtr_api_calls"
    assert notification.livemode is False

    event = notification.fetch_event()
    assert event.id == event_id
    assert event.data.reason.error_count == 1
    [error_type] = event.data.reason.error_types
    assert error_type.code == "meter_event_customer_not_found"
    assert error_type.error_count == 1
    assert error_type.sample_errors[0].request.identifier == "bad-1"
    assert "1 invalid event" in event.data.developer_message_summary
    assert event.data.validation_start <= event.data.validation_end

    meter = notification.fetch_related_object()
    assert meter.event_name == "api_calls"
    assert emu.counted("bad-1") == 0
    assert emu.counted("good-1") == 1


async def test_wrong_secret_fails_verification(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=60)
    client = make_client(emu)
    _bad_customer(client, "bad", customer="nobody")
    await emu.flush_error_reports_async()
    body, signature = await receiver.next()

    with pytest.raises(stripe.SignatureVerificationError):
        client.parse_event_notification(body, signature, "whsec_wrong")
    with pytest.raises(stripe.SignatureVerificationError):
        client.parse_event_notification(body.replace(b"v2", b"v3"), signature, SECRET)


async def test_reports_are_delivered_without_flushing(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=0.05)
    _bad_customer(make_client(emu), "later", customer="nobody")
    body, signature = await receiver.next(timeout=10)
    notification = make_client(emu).parse_event_notification(body, signature, SECRET)
    assert notification.type == "v1.billing.meter.error_report_triggered"


async def test_failed_deliveries_are_retried(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=60)
    receiver.fail_first = 2
    _bad_customer(make_client(emu), "retry-me", customer="nobody")

    await emu.flush_error_reports_async()
    await receiver.next()

    attempts = emu.webhook_attempts()
    assert [(a.attempt, a.ok, a.status) for a in attempts] == [
        (1, False, 500),
        (2, False, 500),
        (3, True, 200),
    ]


async def test_delivery_gives_up_after_max_attempts(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=60, webhook_max_attempts=2)
    receiver.fail_first = 10
    _bad_customer(make_client(emu), "lost", customer="nobody")
    [event_id] = await emu.flush_error_reports_async()

    assert receiver.received == 2
    assert emu.stats()["webhook_delivered"] == 0
    # The event still exists and can be fetched, as at Stripe.
    assert make_client(emu).v2.core.events.retrieve(event_id).id == event_id


async def test_errors_in_one_window_are_aggregated(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=60)
    client = make_client(emu)
    _bad_customer(client, "a", customer="x1")
    _bad_customer(client, "b", customer="x2")
    client.v1.billing.meter_events.create(
        {"event_name": "api_calls", "identifier": "c", "payload": {"value": "1"}}
    )
    await emu.flush_error_reports_async()
    body, signature = await receiver.next()

    event = client.parse_event_notification(body, signature, SECRET).fetch_event()
    assert event.data.reason.error_count == 3
    by_code = {t.code: t for t in event.data.reason.error_types}
    assert by_code["meter_event_customer_not_found"].error_count == 2
    assert [
        s.request.identifier for s in by_code["meter_event_customer_not_found"].sample_errors
    ] == ["a", "b"]
    assert by_code["meter_event_no_customer_defined"].error_count == 1


async def test_unknown_event_name_is_no_meter_found(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=60)
    client = make_client(emu)
    token = client.v2.billing.meter_event_session.create().authentication_token
    client.v2.billing.meter_event_stream.create(
        {"events": [stream_event("nm-1", event_name="not_a_meter")]}, {"api_key": token}
    )
    await emu.flush_error_reports_async()
    body, signature = await receiver.next()

    notification = client.parse_event_notification(body, signature, SECRET)
    assert notification.type == "v1.billing.meter.no_meter_found"
    event = notification.fetch_event()
    [error_type] = event.data.reason.error_types
    assert error_type.code == "no_meter"
    assert error_type.sample_errors[0].request.identifier == "nm-1"


async def test_connected_account_events_carry_context(
    make_emulator: Callable[..., Emulator], receiver: Receiver
) -> None:
    emu = make_emulator(webhook_url=receiver.url, error_report_delay=60)
    client = make_client(emu)
    client.v1.billing.meter_events.create(
        meter_event("ctx", customer="nobody"), {"stripe_account": "acct_conn"}
    )
    await emu.flush_error_reports_async()
    body, signature = await receiver.next()

    notification = client.parse_event_notification(body, signature, SECRET)
    assert str(notification.context) == "acct_conn"
    event = notification.fetch_event()  # sends Stripe-Context: acct_conn
    assert event.data.reason.error_types[0].sample_errors[0].request.identifier == "ctx"
    with pytest.raises(stripe.InvalidRequestError):  # not visible from the platform
        client.v2.core.events.retrieve(event.id)


def test_events_can_be_listed_and_filtered(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(error_report_delay=60)  # no webhook URL: events are only stored
    client = make_client(emu)
    _bad_customer(client, "l1", customer="nobody")
    client.v1.billing.meter_events.create(meter_event("l2", event_name="ghost"))
    created = emu.flush_error_reports()
    assert len(created) == 2

    every = client.v2.core.events.list()
    assert {e.id for e in every.data} == set(created)
    errors_only = client.v2.core.events.list({"types": ["v1.billing.meter.error_report_triggered"]})
    assert [e.type for e in errors_only.data] == ["v1.billing.meter.error_report_triggered"]
    by_meter = client.v2.core.events.list({"object_id": "mtr_api_calls", "limit": 1})
    assert len(by_meter.data) == 1
    assert len(list(client.v2.core.events.list({"limit": 1}).auto_paging_iter())) == 2


def test_signature_header_matches_stripe_python() -> None:
    payload = '{"id":"evt_1"}'
    ours = signature_header(payload, ["whsec_a", "whsec_b"], timestamp=1_700_000_000)
    theirs = stripe.WebhookSignature.generate_signature_header(
        payload, "whsec_b", timestamp=1_700_000_000
    )
    assert ours.split(",")[0] == theirs.split(",")[0]
    assert theirs.split(",")[1] in ours.split(",")[1:]
