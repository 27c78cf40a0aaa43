"""Pruning keeps the created_at block range index tight (migration outbox_0025).

VACUUM gives the pages of pruned rows to new rows, and a block range summary only ever widens:
without tending, a range that held 40-day-old rows and took today's covers both for good, and
every read bounded by time reads it. The plan property checked here is the number of heap
blocks a time-bounded bitmap scan visits, not a time.
"""

import json

import psycopg

from relay.db import migrate, roles
from relay.db import operations as ops
from tests.acceptance.process.test_roles import _as_user
from tests.helpers import scalar
from tests.pg import admin_execute, unique_name

OLD = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, created_at,"
    " occurred_at, updated_at, accepted_at)"
    " SELECT %s || g, 'api_calls', 'cus_' || (g %% 50), 1, 'accepted', t, t, t, t"
    " FROM generate_series(1, %s) g, LATERAL (SELECT now() - make_interval(days => %s)) a(t)"
)


def _heap_blocks_older_than(db: psycopg.Connection, days: int) -> int:
    """Heap blocks a bitmap scan of the range index visits for rows older than `days`."""
    db.execute("SET enable_seqscan = off")
    try:
        (plan,) = db.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM meter_event_outbox"
            f" WHERE created_at < now() - interval '{days} days'"
        ).fetchone()
    finally:
        db.execute("RESET enable_seqscan")
    nodes = [json.loads(plan) if isinstance(plan, str) else plan][0][0]["Plan"]
    stack, blocks, used_range_index = [nodes], 0, False
    while stack:
        node = stack.pop()
        used_range_index |= node.get("Index Name") == "meter_event_outbox_created_brin"
        blocks += node.get("Exact Heap Blocks", 0) + node.get("Lossy Heap Blocks", 0)
        stack.extend(node.get("Plans", []))
    assert used_range_index, "the time-bounded count did not use the range index"
    return blocks


def test_pages_refilled_after_a_prune_leave_old_time_ranges(db):
    db.execute(OLD, ("old-", 3000, 40))  # past the retention: pruned
    db.execute(OLD, ("kept-", 3000, 10))
    db.execute("SELECT brin_summarize_new_values('meter_event_outbox_created_brin')")
    assert _heap_blocks_older_than(db, 30) > 0  # the old rows' ranges, before the prune
    last_old_block = scalar(
        db,
        "SELECT max((ctid::text::point)[0]) FROM meter_event_outbox WHERE identifier LIKE 'old-%%'",
    )

    assert ops.prune(db, older_than_days=35) == 3000
    db.execute("VACUUM meter_event_outbox")  # their pages are free for new rows
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
        " SELECT 'new-' || g, 'api_calls', 'cus_' || (g % 50), 1 FROM generate_series(1, 2000) g"
    )
    refilled = scalar(
        db,
        "SELECT count(DISTINCT (ctid::text::point)[0]) FROM meter_event_outbox"
        " WHERE identifier LIKE 'new-%%' AND (ctid::text::point)[0] <= %s",
        last_old_block,
    )
    assert refilled > 0, "the new rows did not reuse the pruned pages: nothing to check"

    ops.prune(db, older_than_days=35)  # the next run: summarizes the refilled ranges first
    assert _heap_blocks_older_than(db, 30) == 0


def test_a_prune_waits_for_no_vacuum_to_tend_the_ranges(db, database_url):
    """Tending takes the table's SHARE UPDATE EXCLUSIVE lock; when something holds it (a VACUUM,
    another prune's tending), the prune skips tending instead of waiting."""
    db.execute(OLD, ("old-", 100, 40))
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE meter_event_outbox IN SHARE UPDATE EXCLUSIVE MODE")
        with psycopg.connect(database_url, autocommit=True) as conn:
            assert scalar(conn, "SELECT meter_event_outbox_summarize_ranges()") == -1
            assert ops.prune(conn, older_than_days=35) == 100
        holder.rollback()


def test_a_relay_role_granted_before_the_tending_functions_still_prunes(
    db, database_url, pg_admin_url
):
    """Roles granted before outbox_0025 (`outbox-relay roles` not run again) lack EXECUTE on
    the tending functions: the prune deletes as before and leaves the ranges alone. PostgreSQL
    checks EXECUTE when it prepares a statement, even for a call a guard would never reach."""
    roles.apply(database_url)
    db.execute(
        "REVOKE EXECUTE ON FUNCTION meter_event_outbox_forget_ranges(bigint[]),"
        " meter_event_outbox_summarize_ranges() FROM outbox_relay"
    )
    db.execute(OLD, ("old-", 100, 40))
    login = unique_name("t_relay")
    admin_execute(pg_admin_url, f'CREATE ROLE "{login}" LOGIN IN ROLE outbox_relay')
    try:
        with psycopg.connect(_as_user(database_url, login), autocommit=True) as conn:
            assert ops.prune(conn, older_than_days=35) == 100
    finally:
        admin_execute(pg_admin_url, f'DROP ROLE IF EXISTS "{login}"')


def test_a_prune_of_this_release_on_a_schema_before_the_tending_functions_still_prunes(
    db, database_url
):
    """The command upgraded before `migrate` ran (a prune cron between the two): no tending."""
    migrate.downgrade(database_url, "outbox_0024")
    db.execute(OLD, ("old-", 100, 40))
    assert ops.prune(db, older_than_days=35) == 100
