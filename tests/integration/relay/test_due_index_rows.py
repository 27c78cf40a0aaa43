"""The due index's own predicate (outbox_0031) holds exactly the unsent rows, whatever their
available_at, and the claim's top-up still reads it from its cursor."""

import psycopg
import pytest

from outbox.sqlfile import for_psycopg
from relay.db.pool import QUERIES
from relay.db.store import claim_params
from tests.support.plans import CLAIM_TYPES, explain, run_prepared
from tests.support.relay import insert_usage

DUE_WORDS = (
    "(state IN ('pending', 'in_flight')) IS TRUE"
    " AND (isfinite(available_at) OR NOT isfinite(available_at))"
)
ODD = [
    "-infinity",
    "infinity",
    "4713-01-01 00:00:00+00 BC",
    "294276-12-31 23:59:59+00",
    "2000-01-01 00:00:00+00",
]
STATES = ["pending", "in_flight", "accepted", "failed", "rejected", "cancelled"]


def test_the_due_index_holds_exactly_the_unsent_rows_whatever_available_at(
    database_url: str, db: psycopg.Connection
) -> None:
    """Every unsent row, at -infinity, infinity, before year 1, at the last timestamptz and at
    an ordinary time, is in the due index, and no settled row is: read through the index
    alone (an index-only scan after VACUUM), against the plain state test read from the heap."""
    insert_usage(database_url, len(ODD) * len(STATES), customers=3)
    db.execute(
        "UPDATE meter_event_outbox o SET available_at = v.at::timestamptz, state = v.st,"
        " lease_token = CASE WHEN v.st = 'in_flight' THEN gen_random_uuid() END"
        " FROM (SELECT row_number() OVER () AS n, at, st FROM unnest(%s::text[]) at"
        " CROSS JOIN unnest(%s::text[]) st) v"
        " WHERE o.id = (SELECT min(id) FROM meter_event_outbox) + v.n - 1",
        (ODD, STATES),
    )
    db.execute("VACUUM ANALYZE meter_event_outbox")
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL enable_seqscan = off")
        db.execute("SET LOCAL enable_bitmapscan = off")
        sql = f"SELECT id FROM meter_event_outbox WHERE {DUE_WORDS} ORDER BY available_at, id"
        plan = explain(db.execute("EXPLAIN " + sql).fetchall())
        assert "Index Only Scan using meter_event_outbox_due " in plan, plan
        through_index = [r[0] for r in db.execute(sql)]
    db.execute("SET enable_indexscan = off")
    db.execute("SET enable_indexonlyscan = off")
    db.execute("SET enable_bitmapscan = off")
    from_heap = [
        r[0]
        for r in db.execute(
            "SELECT id FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')"
            " ORDER BY available_at, id"
        )
    ]
    assert through_index == from_heap
    assert len(from_heap) == 2 * len(ODD)
    infinite = db.execute(
        "SELECT count(*) FROM meter_event_outbox WHERE NOT isfinite(available_at)"
        " AND state IN ('pending', 'in_flight')"
    ).fetchone()
    assert infinite == (4,)


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_the_top_up_takes_a_row_due_since_minus_infinity_first(
    database_url: str, db: psycopg.Connection, mode: str
) -> None:
    """A '-infinity' row is the due index's first entry: the top-up without a cursor takes it,
    an 'infinity' row never, under either plan."""
    insert_usage(database_url, 5, customers=1)
    db.execute("UPDATE meter_event_outbox SET available_at = '-infinity' WHERE identifier = 'u4'")
    db.execute("UPDATE meter_event_outbox SET available_at = 'infinity' WHERE identifier = 'u5'")
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        db.execute(f"SET LOCAL plan_cache_mode = {mode}")
        params = claim_params([], {"fill": 1, "exclusive": False, "one_walk": True})
        rows = run_prepared(db, "claim", params, CLAIM_TYPES)
    (minus_inf,) = db.execute(
        "SELECT id FROM meter_event_outbox WHERE identifier = 'u4'"
    ).fetchone()
    assert [r[0] for r in rows] == [minus_inf]
    assert rows[0][1] is None  # no cursor move for a row before year 1


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_the_top_up_starts_at_its_cursor_in_a_backlog(
    database_url: str, db: psycopg.Connection, mode: str
) -> None:
    """History analyzed, then a backlog: the top-up is the ordered scan of the due index with
    the cursor as its Index Cond, and reads a few buffers (not the backlog)."""
    insert_usage(database_url, 20_000, customers=100, prefix="h")
    db.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
    db.execute("VACUUM ANALYZE meter_event_outbox")
    insert_usage(database_url, 20_000, customers=100, prefix="b")
    after = db.execute(
        "SELECT available_at, id FROM meter_event_outbox WHERE identifier = 'b10000'"
    ).fetchone()
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        db.execute(f"SET LOCAL plan_cache_mode = {mode}")
        params = claim_params([], {"fill": 100, "exclusive": False, "one_walk": True}, after)
        plan = explain(
            run_prepared(
                db, "claim", params, CLAIM_TYPES, "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) EXECUTE"
            )
        )
    top_up = plan[plan.index("CTE filled") : plan.index("CTE Scan on chosen")]
    assert "Index Scan using meter_event_outbox_due " in top_up, plan
    assert "Index Cond: (ROW(available_at, id) > ROW(" in top_up, plan
    assert "actual rows=100 " in top_up, plan
    hit = int(top_up.split("Buffers: shared hit=")[1].split()[0])
    assert hit < 1_000, plan
