"""How PostgreSQL plans the claim (queries.sql, `claim_plan` and `claim`): the relay prepares
it and runs its generic plan, so a claim is not planned afresh each time (about 0.4 ms, most of
what a relay that keeps up cost PostgreSQL), and every plan of the v2 top-up, generic or made
for the parameters at hand (behind a pooler nothing is prepared), is the ordered scan of the
due index that stops once the batch is full, never a read and a sort of every due row."""

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from outbox.sqlfile import for_psycopg
from relay.core.rows import Outcome
from relay.core.top_up import TopUp
from relay.db.pool import QUERIES, make_pool
from relay.db.store import Store, SyncStore, claim_params
from tests.support.plans import explain, run_prepared
from tests.support.relay import insert_usage

DUE = 16_000  # due rows: enough that a plan knowing a top-up of 1,000 prefers a sort
FILL = 1000


async def _plans(pool: AsyncConnectionPool, opening: str) -> list[tuple[int, int]]:
    """(generic, custom) plans of the pool's prepared statements that begin with `opening`."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE starts_with(statement, %s)",
            (opening,),
        )
        return [(int(g), int(c)) for g, c in await cur.fetchall()]


async def test_the_relay_runs_the_claim_on_its_prepared_generic_plan(database_url: str) -> None:
    """Ten v2 claims on one pooled connection: the claim is prepared and runs its generic
    plan, never a custom plan."""
    insert_usage(database_url, 200, customers=20)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE meter_event_outbox")
    pool = make_pool(database_url, max_size=1)
    await pool.open(wait=True)
    try:
        store, cursor = Store(pool), TopUp()
        for _ in range(10):
            claimed = await store.claim(
                [], fill=20, exclusive=False, relay_id="r", lease_seconds=60, top_up=cursor
            )
            assert len(claimed) == 20
        plans = await _plans(pool, "-- The claim's first statement")
    finally:
        await pool.close()
    # one statement per set of parameter types (the first claim has no cursor)
    assert sum(generic for generic, _ in plans) == 10
    assert [custom for _, custom in plans] == [0] * len(plans)


async def test_the_relay_runs_the_outcome_on_its_prepared_generic_plan(database_url: str) -> None:
    """Outcomes of 1 to 10 rows, as a relay that keeps up writes them, on one pooled
    connection: the outcome runs its generic plan. Left to choose (before `outcome_plan` set
    plan_cache_mode), PostgreSQL planned most of them afresh: a plan made for a small batch
    looks cheaper than one that cannot know its size (0.3 ms of planning for one row)."""
    insert_usage(database_url, 200, customers=20)
    pool = make_pool(database_url, max_size=1)
    await pool.open(wait=True)
    try:
        store = Store(pool)
        for n in [*range(1, 11), *range(1, 11)]:
            held = await store.claim([], fill=n, exclusive=False, relay_id="r", lease_seconds=60)
            outcomes = [
                Outcome.answered(r, "accepted", request_id="q", http_status=200) for r in held
            ]
            assert await store.record_outcomes(outcomes, "r") == {r.id for r in held}
        plans = await _plans(pool, "-- Write a batch of outcomes in one statement")
    finally:
        await pool.close()
    assert plans == [(20, 0)]


def _due_rows(database_url: str) -> None:
    insert_usage(database_url, DUE, customers=100)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE meter_event_outbox")


def _top_up_scan(plan: str) -> str:
    """The plan of the claim's top-up (the `filled` CTE), up to the statement's final part."""
    return plan.split("CTE filled")[1].split("CTE Scan on chosen")[0]


@pytest.mark.parametrize("cursor", [False, True], ids=["from-the-start", "after-a-cursor"])
def test_a_plan_made_for_the_parameters_scans_the_due_index_in_order(
    database_url: str, db: psycopg.Connection, cursor: bool
) -> None:
    """Behind a pooler the claim is planned with its parameters, LIMIT included: with the
    claim's settings that is still the ordered scan (without them, this table's 16,000 due
    rows were read through a bitmap and sorted for a top-up of 1,000)."""
    _due_rows(database_url)
    after = db.execute(
        "SELECT available_at, id FROM meter_event_outbox ORDER BY available_at, id"
        " OFFSET 10 LIMIT 1"
    ).fetchone()
    params = claim_params([], {"fill": FILL, "exclusive": False}, after if cursor else None)
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        db.execute("SET LOCAL plan_cache_mode = force_custom_plan")  # as if unprepared
        explained = db.execute(
            "EXPLAIN " + for_psycopg(QUERIES["claim"]), params, prepare=False
        ).fetchall()
    top_up = _top_up_scan("\n".join(r[0] for r in explained))
    assert "Index Scan using meter_event_outbox_due" in top_up, top_up
    assert "Sort" not in top_up and "Bitmap" not in top_up, top_up


def test_the_generic_plan_scans_the_due_index_in_order(
    database_url: str, db: psycopg.Connection
) -> None:
    """The plan the relay runs: the top-up's bound is a sub-select, so the generic plan starts
    the ordered scan at the cursor (an `IS NULL OR` on the parameter left it a filter, read
    past every row before the cursor)."""
    _due_rows(database_url)
    params = claim_params([], {"fill": FILL, "exclusive": False})
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        plan = explain(run_prepared(db, "claim", params, {"fill": "int"}, "EXPLAIN EXECUTE"))
    top_up = _top_up_scan(plan)
    assert "Index Scan using meter_event_outbox_due" in top_up, top_up
    assert "Index Cond: (ROW(available_at, id) > ROW(" in top_up, top_up
    assert "Sort" not in top_up and "Bitmap" not in top_up, top_up


def test_the_claims_settings_end_with_its_transaction(db: psycopg.Connection) -> None:
    """LOCAL: the relay's other statements on that connection keep PostgreSQL's own choices."""
    store = SyncStore(db)
    store.claim([], fill=10, exclusive=False, relay_id="r", lease_seconds=60)
    assert db.execute("SHOW plan_cache_mode").fetchone() == ("auto",)
    assert db.execute("SHOW enable_bitmapscan").fetchone() == ("on",)
    assert db.execute("SHOW jit").fetchone() == ("on",)


def test_the_claim_is_never_compiled(database_url: str, db: psycopg.Connection) -> None:
    """Behind a pooler the relay's connections keep the server's JIT settings, and the claim's
    estimated cost grows with the backlog: its transaction turns JIT off. With every plan
    compiled (jit_above_cost 0), the claim's is not."""
    _due_rows(database_url)
    params = claim_params([], {"fill": FILL, "exclusive": False})
    db.execute("SET jit_above_cost = 0")
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        plan = explain(
            run_prepared(db, "claim", params, {"fill": "int"}, "EXPLAIN ANALYZE EXECUTE")
        )
    assert "JIT:" not in plan, plan
