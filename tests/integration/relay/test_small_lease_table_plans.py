"""The lease's takeover under the plan a small lease table gets. The relay prepares `lease`; a
generic plan made while the lease table was new and small (a fresh install, or after a crash of
PostgreSQL, which empties an UNLOGGED table) hashes the claim's rows and scans the lease table,
and it stays cached until the table's next VACUUM. The lease table is written once and deleted
once per event, so by then it holds every dead lease since: in bench.keep_up the takeover, which
almost never finds a lease to take over, read 650-900 buffers a claim (lease 20 -> 45 us per
event over a minute). The takeover runs only when a lease was seen expired (a one-time filter),
whatever its plan. `enable_nestloop = off` stands in for that plan here: with it, the planner
hashes as it did in the bench."""

import threading
from typing import Any

import psycopg
import pytest

from outbox.sqlfile import for_psycopg
from relay.core.rows import Outcome
from relay.db.pool import QUERIES
from relay.db.store import SyncStore, outcome_params
from tests.acceptance.process.test_process import wait_for
from tests.helpers import rows, scalar
from tests.support.plans import explain, prepared, run_prepared
from tests.support.relay import claim, insert_usage

LEASE_TYPES = {"ids": "int8[]", "lease_seconds": "float8"}
DEAD_LEASES = 20_000  # leases written and deleted since the table's last VACUUM


def _dead_leases(db: psycopg.Connection[Any]) -> None:
    """The lease table as a relay in service leaves it between two VACUUMs: full of dead leases."""
    db.execute(
        "INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by, leased_until,"
        " first_claimed_at, customer, event_name, action)"
        " SELECT -g, gen_random_uuid(), 'gone', now() + interval '1 minute', now(), 'c', 'e',"
        " 'report' FROM generate_series(1, %s) g",
        (DEAD_LEASES,),
    )
    db.execute("DELETE FROM meter_event_outbox_leases WHERE outbox_id < 0")
    db.commit()


def _lease(db: psycopg.Connection, ids: list[int], join: str) -> tuple[str, list[Any]]:
    """`lease` of `ids` as the relay runs it (the claim's settings, prepared), its plan's joins
    limited to `join`, EXPLAIN ANALYZE; the plan and the rows leased, in a rolled-back
    transaction."""
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        if join == "hash":
            db.execute("SET LOCAL enable_nestloop = off")
        params = {"ids": ids, "relay_id": "relay-b", "lease_seconds": 30}
        options = "(ANALYZE, BUFFERS, TIMING OFF, COSTS OFF)"
        with db.transaction(force_rollback=True):  # EXPLAIN ANALYZE leases them too
            plan = explain(
                run_prepared(db, "lease", params, LEASE_TYPES, f"EXPLAIN {options} EXECUTE")
            )
        leased = run_prepared(db, "lease", params, LEASE_TYPES)
    return plan, leased


def _takeover(plan: str) -> str:
    return plan[plan.index("CTE taken_over") : plan.index("CTE Scan on free k ")]


@pytest.mark.parametrize("join", ["hash", "any"])
def test_with_nothing_expired_the_takeover_reads_no_lease(
    database_url: str, db: psycopg.Connection, join: str
) -> None:
    insert_usage(database_url, 40, customers=20)
    _dead_leases(db)
    ids = [r[0] for r in db.execute("SELECT id FROM meter_event_outbox ORDER BY id LIMIT 20")]
    db.commit()
    plan, leased = _lease(db, ids, join)
    assert len(leased) == 20, plan
    takeover = _takeover(plan)
    assert "One-Time Filter" in takeover, plan
    reads = [line for line in takeover.splitlines() if "on meter_event_outbox_leases" in line]
    assert all("never executed" in line for line in reads if "Update on" not in line), plan


@pytest.mark.parametrize("join", ["hash", "any"])
def test_an_expired_lease_is_still_taken_over(
    database_url: str, db: psycopg.Connection, join: str
) -> None:
    """The gate opens when a lease was seen expired: the row is leased again, under the new
    token, its first claim kept (the dedup clock of the relay that died)."""
    insert_usage(database_url, 5, customers=5)
    _dead_leases(db)
    first = claim(db, "relay-a", lease=600, n=5)
    db.execute("UPDATE meter_event_outbox_leases SET leased_until = now() - interval '1 second'")
    (first_claimed,) = db.execute(
        "SELECT first_claimed_at FROM meter_event_outbox_leases WHERE outbox_id = %s",
        (first[0].id,),
    ).fetchone() or (None,)
    db.commit()
    plan, leased = _lease(db, [c.id for c in first], join)
    assert sorted(r[0] for r in leased) == sorted(c.id for c in first), plan
    assert {r[1] for r in leased}.isdisjoint({c.lease_token for c in first}), plan
    assert "Update on meter_event_outbox_leases" in _takeover(plan)
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        params = {"ids": [first[0].id], "relay_id": "relay-b", "lease_seconds": 30}
        run_prepared(db, "lease", params, LEASE_TYPES)
        (kept,) = db.execute(
            "SELECT first_claimed_at FROM meter_event_outbox_leases WHERE outbox_id = %s",
            (first[0].id,),
        ).fetchone() or (None,)
    assert kept == first_claimed


OUTCOME_TYPES = {
    "ids": "int8[]",
    "tokens": "uuid[]",
    "key_generations": "int4[]",
    "decision_of": "int4[]",
    "request_ids": "text[]",
    "latencies": "real[]",
    "decisions": "jsonb",
}


def _outcome_params(held: list[Any]) -> dict[str, Any]:
    """`record_outcomes`' parameters, as the relay builds them: every held row accepted."""
    accepted = [Outcome.answered(r, "accepted", request_id="req_1", http_status=200) for r in held]
    return dict(outcome_params(accepted, "relay-a"))


def test_after_an_idle_vacuum_the_outcome_probes_each_lease(
    database_url: str, db: psycopg.Connection
) -> None:
    """A relay idle while autovacuum visits the lease table (a quiet night, an outage of
    Stripe): its statistics then say the table is empty (reltuples 0), and every plan made
    until its next VACUUM under traffic believes it. The outcome's DELETE of its leases then
    puts the lease table outside and its input inside a nested loop: every live lease compared
    with every outcome of the batch, 1,000 x 1,000 for a backlog's batches (393 ms against 23
    for 1,000 rows, measured on PostgreSQL 15). Each lease should be found by its primary key."""
    _dead_leases(db)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM meter_event_outbox_leases")  # nothing live: reltuples 0
    insert_usage(database_url, 200, customers=200)
    held = SyncStore(db).claim(
        [], fill=200, exclusive=False, relay_id="relay-a", lease_seconds=600, one_walk=True
    )
    db.commit()
    assert len(held) == 200

    params = _outcome_params(held)
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["outcome_plan"]), prepare=False)
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        options = "(ANALYZE, BUFFERS, TIMING OFF, COSTS OFF)"
        plan = explain(
            run_prepared(db, "record_outcomes", params, OUTCOME_TYPES, f"EXPLAIN {options} EXECUTE")
        )
    released = plan[plan.index("CTE released") : plan.index("CTE written")]
    assert "Update on meter_event_outbox o (actual rows=200" in plan, plan
    assert "Rows Removed by Join Filter" not in released, released


def test_an_outcome_waiting_on_a_takeover_writes_nothing(
    database_url: str, db: psycopg.Connection
) -> None:
    """The outcome deletes its leases by the row versions it read. Relay A's lease expired and
    relay B's claim is taking it over (a new version of the lease, B's token) when A's outcome
    comes: A's DELETE waits for B's transaction, then READ COMMITTED re-checks the lease's
    newest version. PostgreSQL 15 refuses it on its TID alone (it is at another ctid);
    the (row, token) test refuses it too, should a release re-check no TID (the executor's
    TID re-check was long a stub). A deletes nothing and writes nothing, B keeps its lease and
    the row stays pending."""
    insert_usage(database_url, 1)
    (mine,) = claim(db, "relay-a", lease=600, n=1)
    db.execute("UPDATE meter_event_outbox_leases SET leased_until = now() - interval '1 second'")
    db.commit()
    written: list[set[int]] = []

    def outcome() -> None:
        with psycopg.connect(database_url) as conn:
            answered = Outcome.answered(mine, "accepted", request_id="req_a", http_status=200)
            written.append(SyncStore(conn).record_outcomes([answered], "relay-a"))
            conn.commit()

    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1")  # B's transaction: its claim stays uncommitted below
        (theirs,) = claim(other, "relay-b", lease=600, n=1)
        assert theirs.lease_token != mine.lease_token
        thread = threading.Thread(target=outcome)
        thread.start()
        blocked = "SELECT count(*) > 0 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        wait_for(lambda: scalar(db, blocked, other.info.backend_pid), timeout=30)
        other.commit()
    thread.join(30)
    assert written == [set()]
    assert rows(db, "SELECT outbox_id, lease_token, leased_by FROM meter_event_outbox_leases") == [
        (mine.id, theirs.lease_token, "relay-b")
    ]
    assert rows(db, "SELECT state, accepted_at FROM meter_event_outbox") == [("pending", None)]


def test_after_a_crash_the_outcome_probes_each_lease(
    database_url: str, db: psycopg.Connection
) -> None:
    """A crash of PostgreSQL empties the UNLOGGED lease table: no page. A plan made then
    (`outcome_plan`'s settings, as the relay runs it) is still the one run once the table has
    grown to hundreds of pages of dead leases, until its next VACUUM. Without the settings the
    plan scanned the whole table once per row of the batch (137 ms against 24 for 1,000 rows);
    it must find each lease by its primary key and delete it by its row version."""
    _dead_leases(db)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM meter_event_outbox_leases")  # statistics of an empty table
        conn.execute("ALTER TABLE meter_event_outbox_leases SET (vacuum_truncate = true)")
        conn.execute("VACUUM meter_event_outbox_leases")  # no page left, as after a crash
        conn.execute("ALTER TABLE meter_event_outbox_leases SET (vacuum_truncate = false)")
    insert_usage(database_url, 200, customers=200)
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["outcome_plan"]), prepare=False)
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        with prepared(db, "record_outcomes", OUTCOME_TYPES) as outcome:
            outcome(_outcome_params([]))  # the generic plan, made while the table has no page
            with psycopg.connect(database_url, autocommit=True) as other:
                _dead_leases(other)  # the table grows
            held = SyncStore(db).claim(
                [], fill=200, exclusive=False, relay_id="relay-a", lease_seconds=600, one_walk=True
            )
            assert len(held) == 200
            options = "(ANALYZE, BUFFERS, TIMING OFF, COSTS OFF)"
            plan = explain(outcome(_outcome_params(held), f"EXPLAIN {options} EXECUTE"))
    assert "Update on meter_event_outbox o (actual rows=200" in plan, plan
    leases = [line for line in plan.splitlines() if "on meter_event_outbox_leases" in line]
    assert leases and not [line for line in leases if "Seq Scan" in line], plan
