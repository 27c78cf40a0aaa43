"""Outcome writes: the attempt history written with each outcome, the metrics they drive."""

from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from relay.core.rows import Claimed, Outcome
from relay.db.store import FIRST_LANE, SyncStore, outcome_params
from relay.emulator import Emulator
from tests.support.plans import explain, run_prepared
from tests.support.relay import accepted, insert_usage, running_relay

ATTEMPTS = (
    "SELECT attempt, key_generation, action, state, http_status, stripe_request_id IS NOT NULL,"
    " latency_ms IS NOT NULL, relay_id FROM meter_event_outbox_attempts ORDER BY id"
)


def attempts(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(ATTEMPTS).fetchall()


def claim_one(db: psycopg.Connection) -> Claimed:
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, 1, exclusive=True)
    (claimed,) = store.claim(
        walked.ids, fill=0, exclusive=True, relay_id="test-relay", lease_seconds=30
    )
    return claimed


def story(database_url: str) -> list[tuple[Any, ...]]:
    """The row's attempt history as `inspect` reads it (history rows and the carried call)."""
    with psycopg.connect(database_url) as conn:
        (outbox_id,) = conn.execute("SELECT id FROM meter_event_outbox").fetchone()
        return [
            (
                a["attempt"],
                a["key_generation"],
                a["action"],
                a["state"],
                a["http_status"],
                a["stripe_request_id"] is not None,
                a["latency_ms"] is not None,
                a["relay_id"],
            )
            for a in SyncStore(conn).row_attempts(outbox_id)
        ]


async def test_each_stripe_call_is_one_entry_of_the_story(
    database_url: str, emulator: Emulator, settings: Any
) -> None:
    """A cached 500, then a success under the next key: two calls, two entries of history; the
    success is carried on the row (no history row), the failure has its row."""
    insert_usage(database_url, 1)
    emulator.fail_next(1, status=500, path="/v1/billing/meter_events")
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 1))
    assert story(database_url) == [
        (1, 0, "report", "pending", 500, True, True, "test-relay"),
        (2, 1, "report", "accepted", 200, True, True, "test-relay"),
    ]
    assert attempts(database_url) == [(1, 0, "report", "pending", 500, True, True, "test-relay")]


def test_outcomes_without_a_call_leave_no_attempt_row(database_url: str, db) -> None:
    """A local refusal or a shutdown release made no call: the row changes, the history not."""
    insert_usage(database_url, 1)
    claimed = claim_one(db)
    refused = Outcome(claimed, "pending", counted=0, code="timestamp_in_future", delay=60)
    assert SyncStore(db).record_outcomes([refused], "test-relay") == {claimed.id}
    assert attempts(database_url) == []


def test_an_outcome_whose_lease_was_lost_leaves_no_attempt_row(database_url: str, db) -> None:
    insert_usage(database_url, 1)
    claimed = claim_one(db)
    db.execute("UPDATE meter_event_outbox_leases SET lease_token = gen_random_uuid()")  # re-claimed
    late = Outcome(claimed, "accepted", http_status=200, called=True, latency_ms=5.0)
    assert SyncStore(db).record_outcomes([late], "test-relay") == set()
    assert attempts(database_url) == []


async def test_rows_held_gauge_returns_to_zero_when_the_relay_is_idle(database_url, settings):
    """The gauge follows the rows held (claimed, outcome not written), not the calls started."""
    insert_usage(database_url, 3, customers=3)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 3))
        await relay.until(_nothing_held)
        assert relay.relay.capacity.held == 0


async def _nothing_held() -> bool:
    return REGISTRY.get_sample_value("outbox_relay_inflight_calls") == 0


async def test_commit_to_accepted_time_is_observed_per_accepted_row(database_url, settings):
    before = REGISTRY.get_sample_value("outbox_relay_commit_to_accepted_seconds_count") or 0
    insert_usage(database_url, 4, customers=4)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 4))
    after = REGISTRY.get_sample_value("outbox_relay_commit_to_accepted_seconds_count")
    assert after == before + 4


# Request ids as Stripe could send them, and some no request id should be: each must reach its
# own row exactly (the batch travels as text arrays, relay.db.store.text_array).
REQUEST_IDS = ("req_plain", 'req_"quoted"', "req_back\\slash", "req_line\nbreak", "NULL", None)


def test_a_batch_writes_each_rows_own_call_to_its_row(database_url: str, db) -> None:
    """One batch of v1 calls answered alike but each with its own request id and latency
    (one decision, per-row values), a failure between them, and a lost lease: every row
    carries its own call, the failure has its history row, the lost row is left alone."""
    insert_usage(database_url, 8, customers=8)
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, 8, exclusive=True)
    rows = store.claim(walked.ids, fill=0, exclusive=True, relay_id="test-relay", lease_seconds=30)
    *accepted_rows, failing, lost = rows
    batch = [
        Outcome.answered(r, "accepted", request_id=rid, latency_ms=10.0 + i, http_status=200)
        for i, (r, rid) in enumerate(zip(accepted_rows, REQUEST_IDS, strict=True))
    ]
    batch.insert(
        2,
        Outcome.answered(
            failing,
            "pending",
            code="http_500",
            http_status=500,
            request_id="req_500",
            latency_ms=99.0,
            new_key=1,
            delay=5,
        ),
    )
    batch.append(Outcome.answered(lost, "accepted", request_id="req_lost", http_status=200))
    db.execute(
        "UPDATE meter_event_outbox_leases SET lease_token = gen_random_uuid() WHERE outbox_id = %s",
        (lost.id,),
    )
    assert store.record_outcomes(batch, "test-relay") == {r.id for r in rows} - {lost.id}
    found = {
        r[0]: r[1:]
        for r in db.execute(
            "SELECT id, state, stripe_request_id, accepted_request_id, accepted_latency_ms,"
            " accepted_attempt, key_generation FROM meter_event_outbox"
        )
    }
    for i, (r, rid) in enumerate(zip(accepted_rows, REQUEST_IDS, strict=True)):
        assert found[r.id] == ("accepted", rid, rid, 10.0 + i, 1, 0)
    assert found[failing.id] == ("pending", "req_500", None, None, None, 1)
    assert found[lost.id] == ("pending", None, None, None, None, 0)
    history = db.execute(
        "SELECT outbox_id, stripe_request_id, latency_ms, key_generation"
        " FROM meter_event_outbox_attempts"
    ).fetchall()
    assert history == [(failing.id, "req_500", 99.0, 0)]


@pytest.mark.parametrize("table", ["backlog", "in-service"])
def test_the_outcomes_generic_plan_joins_each_row_once(
    database_url: str, db: psycopg.Connection, table: str
) -> None:
    """The relay prepares record_outcomes, and PostgreSQL may settle on a generic plan, which
    guesses 10 rows for the unnest of a parameter. The update then reads only the deleted
    leases (they return their input) and probes the outbox by primary key: no join of the
    input with the leases, which that guess made a nested loop over both (1,000 x 1,000).
    Also in a table whose statistics say almost nothing is pending (an outbox in service, its
    history settled): no scan of the due index's pending rows for each batch."""
    if table == "in-service":
        insert_usage(database_url, 20_000, customers=100, prefix="h")
        db.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
        db.execute("ANALYZE meter_event_outbox")  # as autovacuum would have
        insert_usage(database_url, 50, customers=2)
    else:
        insert_usage(database_url, 5000, customers=2)
        db.execute("ANALYZE meter_event_outbox")  # a table of some size, as the relay's is
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, 2, exclusive=True)
    rows = store.claim(walked.ids, fill=0, exclusive=True, relay_id="test-relay", lease_seconds=30)
    params = outcome_params([Outcome.answered(r, "accepted", http_status=200) for r in rows], "r")
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = explain(run_prepared(db, "record_outcomes", params, command="EXPLAIN EXECUTE"))  # type: ignore[arg-type]
    update = plan.split("CTE written")[1].split("CTE history")[0]
    assert "on input" not in update, plan
    assert "Index Scan using meter_event_outbox_pkey" in update, plan
    assert "meter_event_outbox_due" not in update, plan
