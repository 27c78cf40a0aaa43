"""Cancellations: within 24 h of receipt, unknown identifiers, ledger effect."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import stripe

from relay.emulator import Emulator
from tests.support.emulator import make_client, meter_event


def _cancel(identifier: str, event_name: str = "api_calls") -> dict:
    return {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}}


def test_cancel_removes_the_event_from_the_total(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    client.v1.billing.meter_events.create(meter_event("a", value="3"))
    client.v1.billing.meter_events.create(meter_event("b", value="4"))

    adjustment = client.v1.billing.meter_event_adjustments.create(_cancel("a"))

    assert adjustment.object == "billing.meter_event_adjustment"
    assert adjustment.type == "cancel"
    assert adjustment.status == "pending"
    assert adjustment.cancel.identifier == "a"
    assert adjustment.event_name == "api_calls"
    assert adjustment.id
    assert emu.total("api_calls", "cus_1") == 4
    assert emu.counted("a") == 0
    [cancelled] = [e for e in emu.ledger().events if e.identifier == "a"]
    assert cancelled.cancelled and cancelled.cancelled_at is not None


def test_repeated_cancel_is_harmless(emu: Emulator, client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(meter_event("a", value="3"))
    client.v1.billing.meter_event_adjustments.create(_cancel("a"))
    client.v1.billing.meter_event_adjustments.create(_cancel("a"))
    assert emu.total("api_calls", "cus_1") == 0


def test_cancel_only_within_24h_of_receipt(emu: Emulator, client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(meter_event("a"))
    client.v1.billing.meter_events.create(meter_event("b"))
    emu.advance_clock(24 * 3600 - 1)
    client.v1.billing.meter_event_adjustments.create(_cancel("a"))

    emu.advance_clock(2)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_event_adjustments.create(_cancel("b"))
    assert info.value.code == "meter_event_adjustment_window_expired"
    assert info.value.param == "cancel[identifier]"
    assert emu.counted("b") == 1


def test_unknown_identifier_is_resource_missing(emu: Emulator, client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_event_adjustments.create(_cancel("nope"), {"idempotency_key": "c1"})
    assert (info.value.code, info.value.http_status) == ("resource_missing", 400)

    # Not saved under the key: once the event landed, the same cancel goes through.
    client.v1.billing.meter_events.create(meter_event("nope"))
    client.v1.billing.meter_event_adjustments.create(_cancel("nope"), {"idempotency_key": "c1"})
    assert emu.counted("nope") == 0


def test_wrong_event_name_counts_as_unknown(client: stripe.StripeClient) -> None:
    client.v1.billing.meter_events.create(meter_event("a"))
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_event_adjustments.create(_cancel("a", event_name="other"))


def test_unknown_identifier_accepted_when_configured(
    make_emulator: Callable[..., Emulator],
) -> None:
    emu = make_emulator(unknown_cancel="accept")
    adjustment = make_client(emu).v1.billing.meter_event_adjustments.create(_cancel("nope"))
    assert adjustment.status == "pending"


def test_cancel_requires_identifier(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_calls", "type": "cancel"}
        )
    assert info.value.param == "cancel[identifier]"
