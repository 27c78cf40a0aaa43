"""A cancel requested while its report is in flight: sent after acceptance, or not at all after
a definitive refusal."""

from typing import Any

import psycopg
import pytest
import stripe

import outbox
from relay.core.rows import Claimed, Outcome
from relay.db.store import FIRST_LANE, SyncStore
from relay.emulator import Emulator, Faults, Latency
from tests.support.relay import (
    TEST_KEY,
    code_is,
    insert_usage,
    make_settings,
    row,
    running_relay,
    state_is,
)


async def test_cancel_requested_while_in_flight_is_sent_after_acceptance(database_url):
    async with Emulator(rate_limit_test=None) as emulator:
        emulator.set_faults(Faults(latency=Latency.fixed(800)))
        insert_usage(database_url, 1)
        async with running_relay(make_settings(database_url, emulator)) as relay:
            await relay.until(lambda: state_is(database_url, "u1", "in_flight"))
            with psycopg.connect(database_url) as app:
                assert outbox.cancel_usage(app, identifier="u1").state == "in_flight"
            await relay.until(lambda: state_is(database_url, "u1", "cancelled"), timeout=15)
        assert emulator.total("api_calls", "cus_1") == 0


def _in_flight_with_cancel_requested(database_url: str, db) -> Claimed:
    """A report leased to a relay, then cancelled by the application while it is in flight."""
    insert_usage(database_url, 1)
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, 1, exclusive=True)
    (claimed,) = store.claim(
        walked.ids, fill=0, exclusive=True, relay_id="test-relay", lease_seconds=30
    )
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    return claimed


@pytest.mark.parametrize(
    ("outcome", "state", "action", "cancelled"),
    [
        # Stripe counted it: now cancel it.
        ({"state": "accepted"}, "pending", "cancel", False),
        # Failed, but an earlier call's outcome is unknown: cancel it to be sure.
        (
            {"state": "failed", "code": "connection_error", "may_have_counted": True},
            "pending",
            "cancel",
            False,
        ),
        # A definitive refusal: nothing was counted, nothing to cancel.
        ({"state": "failed", "code": "timestamp_too_far_in_past"}, "cancelled", "report", True),
        # Unknown outcome: resolve the report first (same key), then cancel.
        ({"state": "pending", "code": "connection_error"}, "pending", "report", False),
    ],
)
def test_the_outcome_decides_how_a_pending_cancel_goes_on(
    database_url: str, db, outcome: dict[str, Any], state: str, action: str, cancelled: bool
) -> None:
    """The outcome carries the decision (`may_have_counted`); the statement matches no error
    code, so a code it does not know (here connection_error) is routed like the others."""
    claimed = _in_flight_with_cancel_requested(database_url, db)
    assert SyncStore(db).record_outcomes([Outcome(claimed, **outcome)], "test-relay") == {
        claimed.id
    }
    r = row(database_url, "u1")
    assert (r["state"], r["action"], r["cancelled_at"] is not None) == (state, action, cancelled)


def _adjustments(emulator: Emulator, status: int | None = None) -> int:
    return emulator.requests("/v1/billing/meter_event_adjustments", status)


def _attempts(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        ((n,),) = conn.execute("SELECT count(*) FROM meter_event_outbox_attempts").fetchall()
    return int(n)


async def _made_calls(database_url: str, n: int) -> bool:
    return _attempts(database_url) >= n


async def test_cancel_after_an_unknown_outcome_resolves_the_report_first(database_url, emulator):
    """Invariant 10: the report timed out while Stripe was still processing it; a cancel
    requested then must not send the adjustment ahead of the event (Stripe would answer
    resource_missing and the event would land and be billed). The report is resolved with the
    same key first, then cancelled."""
    insert_usage(database_url, 1)
    held = emulator.hold("/v1/billing/meter_events", count=1)
    settings = make_settings(database_url, emulator, request_timeout=1, lease_seconds=3)
    async with running_relay(settings) as relay:
        await relay.until(lambda: code_is(database_url, "u1", "connection_error"))
        with psycopg.connect(database_url) as app:
            request = outbox.cancel_usage(app, identifier="u1")
        assert (request.state, request.action) == ("pending", "report")
        await relay.until(lambda: _made_calls(database_url, 2))  # a call after the cancel
        held.release()  # Stripe finishes processing the original report: the event lands
        await relay.until(lambda: state_is(database_url, "u1", "cancelled"))
    assert _adjustments(emulator, 400) == 0  # no adjustment overtook its event
    assert emulator.total("api_calls", "cus_1") == 0


async def test_a_cancel_answered_resource_missing_is_retried_until_the_event_lands(
    database_url, emulator
):
    """Invariant 10: Stripe processes events asynchronously, so a cancel may reach it
    before the accepted event is visible; resource_missing then means "not yet", not "never"."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
            " first_attempt_at, accepted_at) VALUES ('u1', 'api_calls', 'cus_1', 1, 'accepted',"
            " now(), now())"
        )
        assert outbox.cancel_usage(conn, identifier="u1").action == "cancel"
    async with running_relay(make_settings(database_url, emulator)) as relay:
        await relay.until(lambda: code_is(database_url, "u1", "resource_missing"))
        assert row(database_url, "u1")["state"] == "pending"
        client = stripe.StripeClient(TEST_KEY, base_addresses={"api": emulator.base_url})
        client.v1.billing.meter_events.create(  # the event becomes visible at Stripe
            {
                "event_name": "api_calls",
                "identifier": "u1",
                "payload": {"stripe_customer_id": "cus_1", "value": "1"},
            }
        )
        await relay.until(lambda: state_is(database_url, "u1", "cancelled"), timeout=30)
    assert emulator.total("api_calls", "cus_1") == 0


async def test_cancel_of_a_row_only_refused_definitively_ends_cancelled_locally(
    database_url, emulator
):
    """Invariant 10: a 500 then a 400 (both definitive: nothing counted) leave nothing at
    Stripe to cancel; the cancel ends `cancelled` at once, without an adjustment."""
    insert_usage(database_url, 1)
    emulator.fail_next(1, status=500, path="/v1/billing/meter_events")
    emulator.fail_next(1, status=400, path="/v1/billing/meter_events")
    async with running_relay(make_settings(database_url, emulator)) as relay:
        await relay.until(lambda: state_is(database_url, "u1", "failed"))
    with psycopg.connect(database_url) as app:
        assert outbox.cancel_usage(app, identifier="u1").state == "cancelled"
    assert row(database_url, "u1")["first_attempt_at"] is None
    assert _adjustments(emulator) == 0
