"""A cancel requested while its report is in flight: sent after acceptance, or not at all after
a definitive refusal."""

from typing import Any

import psycopg
import pytest

import outbox
from relay.emulator import Emulator, Faults, Latency
from relay.rows import Claimed, Outcome
from relay.store import FIRST_LANE, SyncStore
from tests.relay.conftest import (
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
