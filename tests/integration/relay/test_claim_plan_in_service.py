"""The claim's plans in an outbox in service, and the scope of the claim's settings: the
planner trap of a constant state predicate (the partial due index's predicate is the pending
and in-flight states, so it can serve a primary-key probe, scanning from its start) in a table
whose statistics say almost nothing is pending, and what the transaction-local settings leave
behind (nothing) on a pooled connection and behind PgBouncer. The probes that must use the lane
index are closed by the due index's own predicate (outbox_0031); the relay's other statements
in the same state: tests/integration/relay/test_stale_statistics.py."""

import asyncio
import re
from typing import Any

import psycopg
import pytest

from outbox.sqlfile import for_psycopg
from relay.core.rows import Outcome
from relay.core.top_up import TopUp
from relay.db.pool import QUERIES, make_pool
from relay.db.store import Store, claim_params
from tests.support.pgbouncer import Bouncer, bouncer
from tests.support.plans import CLAIM_TYPES, explain, run_prepared
from tests.support.relay import insert_usage

HISTORY = 20_000  # settled rows, analyzed: the statistics say almost nothing is pending
BACKLOG = 20_000  # pending rows committed after that ANALYZE (an outage's backlog)


def _in_service(database_url: str, db: psycopg.Connection) -> None:
    insert_usage(database_url, HISTORY, customers=100, prefix="h")
    db.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
    db.execute("VACUUM ANALYZE meter_event_outbox")  # as autovacuum would have


def _heads(db: psycopg.Connection, lanes: int) -> list[int]:
    """The pending heads of the first `lanes` lanes, as a walk would choose them."""
    found = db.execute(
        "SELECT DISTINCT ON (customer) id FROM meter_event_outbox WHERE state = 'pending'"
        " ORDER BY customer, available_at, id LIMIT %s",
        (lanes,),
    )
    return [r[0] for r in found]


def _explain_claim(db: psycopg.Connection, params: Any, analyze: bool) -> str:
    """The claim's plan as the relay runs it: prepared, with its transaction's settings."""
    db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
    options = "(ANALYZE, BUFFERS, TIMING OFF) " if analyze else ""
    return explain(run_prepared(db, "claim", params, CLAIM_TYPES, f"EXPLAIN {options}EXECUTE"))


def test_the_top_up_can_read_the_due_index_only(database_url: str, db: psycopg.Connection) -> None:
    """The top-up states the due index's predicate word for word (outbox_0031), which does not
    prove the lane index's: the lane index cannot serve it at all, whatever the statistics say.
    While both indexes had the same predicate, the planner chose between them on its estimates,
    and in bench.keep_up (an outbox in service, a relay keeping up) its generic plan read the
    whole lane index and sorted (1,100-1,200 buffers a claim; the due index served 4 of 1,800
    claims; claim 65 -> 48 us per event with the due index). Shown here by taking the due index
    away (in a transaction rolled back): what is left for the top-up is no index at all."""
    _in_service(database_url, db)
    insert_usage(database_url, 50, customers=10, prefix="p")
    with db.transaction(force_rollback=True):
        db.execute("DROP INDEX meter_event_outbox_due")
        how = {"fill": 100, "exclusive": False, "one_walk": True}
        plan = _explain_claim(db, claim_params([], how), analyze=False)
    top_up = plan[plan.index("CTE filled") : plan.index("CTE Scan on chosen")]
    assert "meter_event_outbox_lane " not in top_up, plan


def test_in_service_the_top_up_reads_the_due_index(
    database_url: str, db: psycopg.Connection
) -> None:
    """A relay that keeps up: history analyzed, rows sent since, a few pending: the top-up is the
    ordered scan of the due index."""
    _in_service(database_url, db)
    insert_usage(database_url, 5_000, customers=1000, prefix="s")  # sent since the VACUUM
    db.execute("UPDATE meter_event_outbox SET state = 'accepted' WHERE state = 'pending'")
    insert_usage(database_url, 50, customers=10, prefix="p")
    with db.transaction(force_rollback=True):
        how = {"fill": 100, "exclusive": False, "one_walk": True}
        plan = _explain_claim(db, claim_params([], how), analyze=False)
    top_up = plan[plan.index("CTE filled") : plan.index("CTE Scan on chosen")]
    assert "Index Scan using meter_event_outbox_due " in top_up, plan


@pytest.mark.parametrize("exclusive", [True, False], ids=["v1", "v2"])
def test_in_service_the_claim_probes_walked_heads_by_primary_key(
    database_url: str, db: psycopg.Connection, exclusive: bool
) -> None:
    """An outbox in service (its history analyzed, a few rows pending): the walked heads are
    probed by primary key, as record_outcomes' rows are, never through the due index (an
    `id = ...` condition on its second column: a scan from its start to the head, per head)."""
    _in_service(database_url, db)
    insert_usage(database_url, 50, customers=10, prefix="p")
    ids = _heads(db, 50)
    with db.transaction(force_rollback=True):
        how = {"fill": 0 if exclusive else 100, "exclusive": exclusive, "one_walk": False}
        plan = _explain_claim(db, claim_params(ids, how), analyze=False)
    lines = plan.splitlines()
    probes = [
        lines[i - 1]
        for i, line in enumerate(lines)
        if re.search(r"Index Cond: .*\(id = [uh]", line)
    ]
    assert len(probes) == 2, plan  # heads' and chosen's
    assert all("meter_event_outbox_pkey" in p for p in probes), plan


def test_a_backlog_after_the_last_analyze_costs_no_due_index_scan_per_head(
    database_url: str, db: psycopg.Connection
) -> None:
    """An outage's backlog committed since the last ANALYZE (autovacuum analyzes after 10% of
    the table changed: a million rows for an outbox of ten million), then a v1 claim of 10
    heads. Each head's lane probe reads the lane index, a few buffers. While the due index had
    the lane index's predicate (before outbox_0031) it read every entry of the due index
    instead (BACKLOG x 10 index entries, about 1,200 buffer hits per head here; 0.6 s a claim
    with 200,000 rows pending), whether the claim was planned with its parameters or not."""
    _in_service(database_url, db)
    insert_usage(database_url, BACKLOG, customers=1000, prefix="b")
    ids = _heads(db, 10)
    with db.transaction(force_rollback=True):
        how = {"fill": 0, "exclusive": True, "one_walk": False}
        plan = _explain_claim(db, claim_params(ids, how), analyze=True)
    removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
    hits = int(re.search(r"Buffers: shared hit=(\d+)", plan).group(1))  # type: ignore[union-attr]
    assert max(removed, default=0) < 1000 and hits < 2000, plan


async def test_a_cancelled_or_failed_claim_leaves_no_setting_on_the_pooled_connection(
    database_url: str,
) -> None:
    """LOCAL: a claim cancelled while it waits (the lease table locked by someone else) or
    failing midway leaves plan_cache_mode, enable_bitmapscan and enable_seqscan as they were."""
    pool = make_pool(database_url, max_size=1)
    await pool.open(wait=True)
    try:
        store = Store(pool)
        with psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE meter_event_outbox_leases IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    store.claim(
                        [], fill=5, exclusive=False, relay_id="r", lease_seconds=60, top_up=TopUp()
                    ),
                    1.0,
                )
        with pytest.raises(psycopg.errors.InvalidRowCountInLimitClause):
            await store.claim([], fill=-1, exclusive=False, relay_id="r", lease_seconds=60)
        async with pool.connection() as conn:
            shown = [
                (await (await conn.execute(f"SHOW {g}")).fetchone())
                for g in ("plan_cache_mode", "enable_bitmapscan", "enable_seqscan")
            ]
    finally:
        await pool.close()
    assert shown == [("auto",), ("on",), ("on",)]


async def test_behind_transaction_pooling_the_settings_stay_in_the_claims_transaction(
    pg_admin_url: str, database_url: str
) -> None:
    """One server connection behind PgBouncer (transaction pooling): after the relay's claims
    and outcomes, another client handed that server connection sees PostgreSQL's own
    settings."""
    insert_usage(database_url, 50, customers=5)
    running: Bouncer
    with bouncer(pg_admin_url, "transaction", pool_size=1) as running:
        url = running.url(database_url)
        pool = make_pool(url, max_size=1)
        await pool.open(wait=True)
        try:
            store, cursor = Store(pool), TopUp()
            for _ in range(3):
                held = await store.claim(
                    [], fill=10, exclusive=False, relay_id="r", lease_seconds=60, top_up=cursor
                )
                accepted = [
                    Outcome.answered(r, "accepted", request_id="req", http_status=200) for r in held
                ]
                assert await store.record_outcomes(accepted, "r") == {r.id for r in held}
        finally:
            await pool.close()
        with psycopg.connect(url, autocommit=True) as other:
            shown = [
                other.execute(f"SHOW {g}").fetchone()
                for g in ("plan_cache_mode", "enable_bitmapscan", "enable_seqscan")
            ]
    assert shown == [("auto",), ("on",), ("on",)]


@pytest.mark.parametrize("available_at", ["-infinity", "4713-01-01 00:00:00+00 BC", "infinity"])
@pytest.mark.parametrize("cursor", [False, True], ids=["from-the-start", "after-a-cursor"])
def test_the_top_up_with_odd_available_at(
    database_url: str, db: psycopg.Connection, available_at: str, cursor: bool
) -> None:
    """Rows due since '-infinity' or before year 1 are topped up (from the start, not after
    a cursor past them); 'infinity' never; all through the prepared generic plan."""
    insert_usage(database_url, 5, customers=1)
    (odd,) = db.execute(
        "UPDATE meter_event_outbox SET available_at = %s WHERE identifier = 'u3' RETURNING id",
        (available_at,),
    ).fetchone() or (None,)
    after = (
        db.execute(
            "SELECT available_at, id FROM meter_event_outbox WHERE identifier = 'u1'"
        ).fetchone()
        if cursor
        else None
    )
    with db.transaction(force_rollback=True):
        db.execute(for_psycopg(QUERIES["claim_plan"]), prepare=False)
        params = claim_params([], {"fill": 10, "exclusive": False}, after)
        ids = [r[0] for r in run_prepared(db, "claim", params, CLAIM_TYPES)]
    others = {
        r[0]
        for r in db.execute(
            "SELECT id FROM meter_event_outbox WHERE identifier IN %s"
            % ("('u2', 'u4', 'u5')" if cursor else "('u1', 'u2', 'u4', 'u5')")
        )
    }
    expected = others | ({odd} if available_at != "infinity" and not cursor else set())
    assert sorted(ids) == sorted(expected)


@pytest.mark.parametrize("exclusive", [True, False], ids=["v1", "v2"])
def test_a_backlog_after_the_last_analyze_is_walked_through_the_lane_index(
    database_url: str, db: psycopg.Connection, exclusive: bool
) -> None:
    """The walk's loose index scan, prepared as the relay runs it, after an outage's backlog
    committed since the last ANALYZE: one probe of the lane index per lane, never a read and
    a sort of every pending row per lane."""
    _in_service(database_url, db)
    insert_usage(database_url, BACKLOG, customers=1000, prefix="b")
    types = {"max_lanes": "int", "batch_size": "int", "exclusive": "bool"}
    values = {
        "exclusive": exclusive,
        "after_customer": "",
        "after_event_name": "",
        "max_lanes": 10_000,
        "batch_size": 100,
    }
    with db.transaction(force_rollback=True):
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        command = "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) EXECUTE"
        plan = explain(run_prepared(db, "walk", values, types, command))
    assert "meter_event_outbox_due" not in plan, plan
