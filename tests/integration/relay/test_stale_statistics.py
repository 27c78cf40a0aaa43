"""The relay's statements that read rows by id or from their leases, in the state an outbox in
service meets after an outage: its last VACUUM saw almost nothing pending (so the planner takes
the partial queue indexes, due and lane, for empty until the next one), then a backlog was
committed. Each such statement must probe the rows it names (primary key, identifier), never
read every pending row through a queue index. With a plain `state = 'pending'` each one did:
the planner found both indexes' predicate proved and their size nothing (outbox_0031, and the
`IS TRUE` state tests in relay/db/queries.sql). Checked with the plan made for the arguments
and with the generic one (the relay prepares its statements). (`list_rows --state in_flight`
reads every unsent row through a queue index, by design: rows of an earlier release's relay
are found among them.)"""

import re
from typing import Any

import psycopg
import pytest

from bench.common import DRAIN_PROBE
from tests.support.plans import explain, run_prepared
from tests.support.relay import claim, insert_usage

HISTORY = 20_000  # settled rows, vacuumed and analyzed: almost nothing pending, as it saw
BACKLOG = 20_000  # pending rows committed since (an outage)
QUEUE_INDEXES = ("meter_event_outbox_due ", "meter_event_outbox_lane ")


@pytest.fixture
def after_an_outage(database_url: str, db: psycopg.Connection) -> list[int]:
    """The state above, with 10 of the backlog's rows leased (live leases); their ids."""
    insert_usage(database_url, HISTORY, customers=100, prefix="h")
    db.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
    db.execute("VACUUM ANALYZE meter_event_outbox")
    insert_usage(database_url, BACKLOG, customers=1000, prefix="b")
    with psycopg.connect(database_url) as conn:
        leased = [c.id for c in claim(conn, "relay-a", lease=600, n=10)]
        conn.commit()
    assert len(leased) == 10
    return leased


# Each statement with arguments that name rows of the backlog (or none), and its parameters'
# types where text would not do.
STATEMENTS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "reset_in_flight": ({"ids": "{}"}, {"ids": "bigint[]"}),
    "status_tally": ({}, {}),
    "state_counts": ({}, {}),
    "reject": (
        {"identifiers": "{b1,b2}", "account": None, "code": "x", "message": "m"},
        {"identifiers": "text[]"},
    ),
    "fold_counts": ({}, {}),
}


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_after_an_outage_statements_by_id_or_lease_never_read_a_queue_index(
    after_an_outage: list[int], db: psycopg.Connection, name: str, plan_cache_mode: str
) -> None:
    params, types = STATEMENTS[name]
    if name == "reset_in_flight":
        params = {"ids": "{" + ",".join(map(str, after_an_outage)) + "}"}
    with db.transaction(force_rollback=True):
        db.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
        command = "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) EXECUTE"
        plan = explain(run_prepared(db, name, params, types, command))
    assert not [i for i in QUEUE_INDEXES if i in plan], plan
    assert "Seq Scan on meter_event_outbox " not in plan, plan


def test_after_an_outage_the_counts_still_see_the_leases(
    after_an_outage: list[int], db: psycopg.Connection
) -> None:
    """The rewritten probes count what the plain joins counted: the 10 leased rows are in
    flight, the rest of the backlog pending."""
    counts = dict(db.execute("SELECT state, n FROM meter_event_outbox_status").fetchall())
    assert (counts["pending"], counts["in_flight"]) == (BACKLOG - 10, 10)
    tally = db.execute(
        "SELECT state, sum(n) FROM meter_event_outbox_tally WHERE state <> '' GROUP BY state"
    ).fetchall()
    assert dict(tally)["pending"] == BACKLOG  # the tallies count a leased row pending


def test_after_an_outage_the_leased_rows_listed_are_probed_per_lease(
    after_an_outage: list[int], db: psycopg.Connection
) -> None:
    """`list --state in_flight`: its leased rows are one primary-key probe per live lease,
    never a join of the leases with every pending row. (Its other branch, the rows an earlier
    release's relay has in flight, reads the unsent rows through a queue index by design.)"""
    params = {"state": "in_flight", "code": None, "customer": None, "event_name": None}
    params |= {"since": None, "limit": 50}
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        command = "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) EXECUTE"
        types = {"since": "timestamptz", "limit": "int"}
        plan = explain(run_prepared(db, "list_rows", params, types, command))
    assert f"loops={BACKLOG}" not in plan, plan
    assert re.search(r"Index Cond: \(id = l\w*\.outbox_id\)", plan), plan


@pytest.mark.parametrize("name", ["oldest_unsent", "event_names_in_use"])
def test_the_readers_of_due_rows_still_read_the_due_index(
    after_an_outage: list[int], db: psycopg.Connection, name: str
) -> None:
    """The other side of the due index's own predicate: the statements written for it say its
    words, so they still use it (the claim's top-up: test_claim_plan.py). With fresh statistics
    of this table, half of it unsent, a sequential scan is the better plan and is chosen."""
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = explain(run_prepared(db, name, {}, {}, "EXPLAIN EXECUTE"))
    assert "using meter_event_outbox_due " in plan, plan


@pytest.mark.parametrize("analyzed", [False, True], ids=["stale", "analyzed"])
def test_the_benches_drain_probe_reads_the_due_index(
    after_an_outage: list[int], db: psycopg.Connection, analyzed: bool
) -> None:
    """bench.common's poll (ten times a second during the throughput benches) is one ordered
    probe of the due index, not a read and sort of every unsent row."""
    if analyzed:
        db.execute("ANALYZE meter_event_outbox")
    plan = explain(db.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + DRAIN_PROBE).fetchall())
    assert "using meter_event_outbox_due " in plan, plan
    assert "Sort" not in plan, plan
