"""The status tallies (alembic/versions/0015_status_tallies.up.sql, 0018_held_tallies.up.sql):
exact under concurrent writers, rollbacks, claims, outcomes, deletes and folds, the rows held for
their meter per account, event name and code too; and every statement behind `status`, the
console's overview and /metrics reads a bounded number of rows however large the backlog
(regressions: each counted the pending rows, 0.7-0.9 s of SQL with a million of them; the held
rows were grouped one by one, 60-75 ms with 13,333 of them)."""

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from outbox.sqlfile import for_psycopg
from relay.core.meters import HELD_CODES
from relay.db import migrate
from relay.db import operations as ops
from relay.db.pool import QUERIES, make_pool
from relay.db.store import ATTEMPT_WINDOW_CAP, FINISHED_CAP, ConsoleStore, Store, SyncStore
from tests.helpers import rows, run_concurrently

REAL = """
SELECT state,
       CASE WHEN state IN ('pending', 'failed', 'rejected') THEN coalesce(last_error_code, '')
            ELSE '' END,
       CASE WHEN state = 'pending' AND last_error_code IS NOT NULL
            THEN coalesce(stripe_account, '') ELSE '' END,
       '', count(*)
FROM meter_event_outbox GROUP BY 1, 2, 3
UNION ALL
SELECT '', '', '', customer, count(*) FROM meter_event_outbox
WHERE state IN ('pending', 'in_flight') GROUP BY customer
"""
TALLY = "SELECT state, code, stripe_account, customer, n FROM meter_event_outbox_tally"
# Rows held for their meter, counted: what held_by_meter must answer from the tallies.
HELD_REAL = """
SELECT coalesce(stripe_account, ''), event_name, last_error_code, count(*), min(occurred_at)
FROM meter_event_outbox WHERE state = 'pending' AND last_error_code = ANY(%s)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
HELD_SQL = for_psycopg(QUERIES["held_by_meter"])
# the relay below leaves rows pending with these codes (two of them holds)
CODES = ["code_0", "meter_missing", "meter_inactive"]


def held(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    """held_by_meter's groups: (account, event name, code, rows, oldest occurred_at)."""
    return [tuple(r) for r in db.execute(HELD_SQL).fetchall()]


def _writer(w: int) -> Callable[[psycopg.Connection, int], None]:
    def step(conn: psycopg.Connection, i: int) -> None:
        with conn.transaction(force_rollback=i % 4 == 3):  # every fourth one rolls back
            conn.execute(
                "SELECT outbox_record_usage(%s, %s, 1, %s, stripe_account => %s,"
                " occurred_at => now() - make_interval(secs => %s))",
                (
                    ("api_calls", "storage_gb")[i % 3 // 2],
                    f"cus_{i % 7}",
                    f"w{w}-{i}",
                    "acct_x" if i % 2 else None,
                    (w * 1000 + i * 37) % 3600,
                ),
            )

    return step


def _relay(conn: psycopg.Connection, i: int) -> None:
    """Claim a batch, then settle it in one statement: accepted, back to pending with a code,
    or failed; now and then prune accepted rows. Each relay settles only the rows of its own
    lease, as the relay does (settling every in-flight row took the other relay's rows in
    another order: a deadlock between the two test relays, not a property of the tallies)."""
    lease = uuid.uuid4()
    conn.execute(
        "UPDATE meter_event_outbox SET state = 'in_flight', lease_token = %s"
        " WHERE id IN (SELECT id FROM meter_event_outbox WHERE state = 'pending'"
        " ORDER BY id LIMIT 7 FOR UPDATE SKIP LOCKED)",
        (lease,),
    )
    conn.execute(
        "UPDATE meter_event_outbox SET lease_token = NULL,"
        " state = CASE id %% 3 WHEN 0 THEN 'accepted' WHEN 1 THEN 'pending' ELSE 'failed' END,"
        " last_error_code = CASE id %% 3 WHEN 0 THEN NULL ELSE %s END"
        " WHERE state = 'in_flight' AND lease_token = %s",
        (CODES[i % 3], lease),
    )
    if i % 5 == 0:
        conn.execute("DELETE FROM meter_event_outbox WHERE state = 'accepted' AND id % 2 = 0")


def test_tallies_stay_exact_under_concurrent_writers_relays_and_folds(database_url, db):
    steps: list[tuple[int, Callable[[psycopg.Connection, int], None]]] = [
        (120, _writer(w)) for w in range(3)
    ]
    steps += [
        (60, _relay),
        (60, _relay),
        (150, lambda c, i: c.execute("SELECT outbox_fold_counts()")),
        (150, lambda c, i: c.execute("SELECT outbox_fold_counts()")),  # folds overlap too
    ]
    assert not run_concurrently(database_url, steps)

    def keyed(found: list[tuple[Any, ...]]) -> dict[tuple[str, str, str, str], int]:
        return {(s, c, a, u): n for s, c, a, u, n in found if n}

    real = keyed(rows(db, REAL))
    assert sum(n for (s, *_), n in real.items() if s == "pending") > 0
    assert keyed(rows(db, TALLY)) == real  # folded or not
    held_real = rows(db, HELD_REAL, list(HELD_CODES))
    assert len({(a, e) for a, e, *_ in held_real}) >= 2  # several meters, each compared
    assert held(db) == held_real
    db.execute("SELECT outbox_fold_counts()")
    assert keyed(rows(db, TALLY)) == real
    assert held(db) == held_real
    assert rows(db, "SELECT count(*) FROM meter_event_outbox_tally_deltas") == [(0,)]
    assert rows(
        db,
        "SELECT count(*) FROM meter_event_outbox_tallies WHERE n = 0 AND state"
        " NOT IN ('accepted', 'cancelled')",
    ) == [(0,)]


def _lose_the_deltas(conn: psycopg.Connection, i: int) -> None:
    """A writer that now and then does what a crash of PostgreSQL does to the UNLOGGED delta
    table and its marker (outbox_0032): both come back empty, whatever was not folded is gone.
    Its last loss comes well before the other writers finish, so the recount after it runs
    beside them."""
    if i % 15 == 7:  # in the order a fold locks them (no deadlock of the test's own making)
        conn.execute("TRUNCATE meter_event_outbox_tally_epoch, meter_event_outbox_tally_deltas")
    else:
        _writer(9)(conn, i)


def test_the_fold_recounts_the_tallies_after_the_deltas_were_lost(database_url, db):
    """outbox_0032: the deltas are UNLOGGED, so a crash (or a failover, or a restored base
    backup) empties them with their marker. The next fold recounts every tally from the outbox,
    in one snapshot, while writers, relays and other folds run: exact again. With the fold of
    outbox_0027 (no recount) the tallies lose every delta not folded when they were lost."""
    steps: list[tuple[int, Callable[[psycopg.Connection, int], None]]] = [
        (120, _writer(w)) for w in range(3)
    ]
    steps += [
        (60, _relay),
        (150, lambda c, i: c.execute("SELECT outbox_fold_counts()")),
        (150, lambda c, i: c.execute("SELECT outbox_fold_counts()")),
        (45, _lose_the_deltas),
    ]
    assert not run_concurrently(database_url, steps)
    db.execute("SELECT outbox_fold_counts()")

    def keyed(found: list[tuple[Any, ...]]) -> dict[tuple[str, str, str, str], int]:
        return {(s, c, a, u): n for s, c, a, u, n in found if n}

    real = keyed(rows(db, REAL))
    assert sum(n for (s, *_), n in real.items() if s == "pending") > 0
    assert keyed(rows(db, TALLY)) == real
    assert held(db) == rows(db, HELD_REAL, list(HELD_CODES))
    assert rows(db, "SELECT count(*) FROM meter_event_outbox_tally_epoch") == [(1,)]
    # and the folds after it add deltas again
    db.execute("SELECT outbox_record_usage('api_calls', 'cus_later', 1, 'later')")
    db.execute("SELECT outbox_fold_counts()")
    assert keyed(rows(db, TALLY)) == keyed(rows(db, REAL))
    assert rows(
        db,
        "SELECT count(*) FROM meter_event_outbox_tallies WHERE n = 0 AND state"
        " NOT IN ('accepted', 'cancelled')",
    ) == [(0,)]


async def test_the_relays_fold_recounts_under_a_shorter_statement_timeout(database_url, db):
    """The recount after lost deltas is one statement over the whole outbox (about 1 us per
    row). Under a database's statement_timeout shorter than that, it was cancelled on every try
    and no fold ever ran again; the relay's fold runs with none (`fold_plan`)."""
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
        " SELECT 't' || g, 'api_calls', 'cus_' || (g % 500), 1 FROM generate_series(1, 100000) g"
    )
    name = db.execute("SELECT current_database()").fetchone()[0]
    db.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '5ms'")
    db.execute("TRUNCATE meter_event_outbox_tally_epoch, meter_event_outbox_tally_deltas")
    pool = make_pool(database_url, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:  # the timeout is the session's
            found = await conn.execute("SHOW statement_timeout")
            assert await found.fetchone() == ("5ms",)
        await Store(pool).fold_counts()
    finally:
        await pool.close()
    db.execute(f'ALTER DATABASE "{name}" RESET statement_timeout')
    assert rows(db, "SELECT lost_noticed_at FROM meter_event_outbox_tally_epoch") == [(None,)]
    assert {(s, c, a, u): n for s, c, a, u, n in rows(db, TALLY) if n} == {
        (s, c, a, u): n for s, c, a, u, n in rows(db, REAL) if n
    }


def test_a_downgrade_runs_the_recount_the_lost_deltas_owe(database_url, db):
    """outbox_0032's downgrade restores a fold that never recounts: a recount still owed when
    it runs (the deltas lost, no fold since) is done first, or the tallies would stay short of
    the lost deltas for good."""
    for i in range(12):
        db.execute("SELECT outbox_record_usage('api_calls', %s, 1, %s)", (f"cus_{i % 3}", f"d{i}"))
    db.execute("SELECT outbox_fold_counts()")
    for i in range(5):
        db.execute("SELECT outbox_record_usage('api_calls', 'cus_x', 1, %s)", (f"e{i}",))
    db.execute("TRUNCATE meter_event_outbox_tally_epoch, meter_event_outbox_tally_deltas")
    db.commit()
    migrate.downgrade(database_url, "outbox_0031")
    db.execute("SELECT outbox_fold_counts()")
    assert {(s, c, a, u): n for s, c, a, u, n in rows(db, TALLY) if n} == {
        (s, c, a, u): n for s, c, a, u, n in rows(db, REAL) if n
    }


def test_a_fold_updates_the_customer_tallies_in_place(db):
    # outbox_0023: half of each tally page stays free, so a fold's update of a customer's
    # unsent count is HOT (no new entry in the five-column primary key). Full pages made
    # nearly every one of them a new index entry (a fold of 10,000 customers: 217 -> 141 ms).
    customers = 2000
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
        " SELECT 'hot' || g, 'api_calls', 'cus_' || g, 1 FROM generate_series(1, %s) g",
        (customers,),
    )
    db.execute("SELECT outbox_fold_counts()")
    db.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
    with db.transaction():
        db.execute("SELECT outbox_fold_counts()")
        ((updated, hot),) = rows(
            db,
            "SELECT pg_stat_get_xact_tuples_updated(c.oid),"
            " pg_stat_get_xact_tuples_hot_updated(c.oid)"
            " FROM pg_class c WHERE c.oid = 'meter_event_outbox_tallies'::regclass",
        )
    assert updated >= customers  # each customer's unsent count went to 0 in place
    assert hot >= 0.9 * updated


# Every statement of `status`, the console's overview and /metrics, with its parameters.
SURFACE: dict[str, dict[str, Any]] = {
    "status_tally": {},
    "state_counts": {},
    "oldest_unsent": {},
    "next_attempts": {"codes": ["http_503", "connection_error", "meter_missing"]},
    "last_status_for_code": {"code": "http_503"},
    "failures_with_identifiers": {"per_code": 5},
    "customer_backlog": {"limit": 10},
    "held_by_meter": {},
    "live_relays": {"stale_seconds": 5},
    "meter_reads": {},
    "latest_drift_report": {},
    "finished_last_hour": {"cap": FINISHED_CAP},
    "attempts_last_hour": {"cap": ATTEMPT_WINDOW_CAP},
    "attempt_errors_last_hour": {"cap": ATTEMPT_WINDOW_CAP, "limit": 10},
}
BACKLOG = 20_000  # pending rows; a statement bounded by an index reads a few of them
BOUND = 1_000  # rows any plan node may produce or filter out


def _most_rows(plan: dict[str, Any]) -> int:
    here = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) + plan.get(
        "Rows Removed by Filter", 0
    )
    return max([here, *(_most_rows(p) for p in plan.get("Plans", []))])


def test_status_console_and_metrics_statements_read_bounded_rows(database_url, db):
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " last_error_code, created_at, occurred_at, updated_at, accepted_at)"
        " SELECT 'b' || g, 'api_calls', 'cus_' || (g %% 500), 1,"
        " CASE WHEN g %% 5 = 0 THEN 'accepted' ELSE 'pending' END,"
        " CASE WHEN g %% 5 = 1 THEN 'http_503' WHEN g %% 10 = 2 THEN 'meter_missing' END,"
        " now() - interval '2 hours', now() - interval '2 hours', now() - interval '2 hours',"
        " CASE WHEN g %% 5 = 0 THEN now() - interval '2 hours' END"
        " FROM generate_series(1, %s) g",
        (BACKLOG + BACKLOG // 4,),
    )
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', last_error_code = 'boom'"
        " WHERE id IN (SELECT id FROM meter_event_outbox ORDER BY id LIMIT 3000)"
    )
    # Held rows (2,500 here, more than any statement may read) over accounts and event names
    db.execute(
        "UPDATE meter_event_outbox SET stripe_account = (ARRAY[NULL, 'acct_b'])[id % 2 + 1],"
        " event_name = (ARRAY['api_calls', 'storage_gb', 'seats'])[id % 3 + 1]"
        " WHERE state = 'pending' AND last_error_code = 'meter_missing'"
    )
    # A busy last hour: more rows finished in it than "the last hour" counts.
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " accepted_at) SELECT 'h' || g, 'api_calls', 'cus_' || (g %% 500), 1, 'accepted', now()"
        " FROM generate_series(1, %s) g",
        (FINISHED_CAP + 2_000,),
    )
    db.execute("SELECT outbox_fold_counts()")
    db.execute("VACUUM ANALYZE meter_event_outbox")
    # the last hour's finished rows are counted up to their cap
    bounds = {"finished_last_hour": FINISHED_CAP}
    for name, params in SURFACE.items():
        sql = "EXPLAIN (ANALYZE, FORMAT JSON) " + for_psycopg(QUERIES[name])
        (plan,) = db.execute(sql, params).fetchone()
        plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
        most = _most_rows(plan["Plan"])
        assert most <= bounds.get(name, BOUND), (name, most, json.dumps(plan, indent=1))


def test_the_migration_seeds_the_tallies_from_the_rows_and_the_old_counters(database_url, db):
    """At 0014 (history counted by the old counters, some deltas not folded), then 0015."""
    migrate.downgrade(database_url, "outbox_0014")
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " last_error_code, stripe_account, lease_token)"
        " SELECT 'm' || g, 'api_calls', 'cus_' || (g % 4), 1,"
        " (ARRAY['pending', 'pending', 'in_flight', 'failed', 'rejected'])[g % 5 + 1],"
        " CASE WHEN g % 5 = 1 THEN 'http_503' WHEN g % 5 >= 3 THEN 'boom' END,"
        " CASE WHEN g % 2 = 0 THEN 'acct_m' END,"
        " CASE WHEN g % 5 = 2 THEN gen_random_uuid() END"
        " FROM generate_series(1, 100) g"
    )
    db.execute(
        "UPDATE meter_event_outbox SET state = 'accepted', last_error_code = NULL"
        " WHERE identifier IN ('m5', 'm10', 'm15')"
    )  # folded below
    db.execute("SELECT outbox_fold_counts()")
    db.execute(
        "UPDATE meter_event_outbox SET state = 'cancelled', last_error_code = NULL"
        " WHERE identifier = 'm20'"
    )  # a delta not folded
    migrate.upgrade(database_url)
    assert {tuple(k): n for *k, n in rows(db, TALLY)} == {
        tuple(k): n for *k, n in rows(db, REAL) if n
    }


def test_0018_keys_the_held_rows_by_event_name_and_back(database_url, db):
    """At 0017 (held rows of several meters, some deltas not folded), up to 0018: the tallies
    and held_by_meter match the rows; down again: the 0017 tallies match them too, and both
    trigger versions keep them exact afterwards."""
    migrate.downgrade(database_url, "outbox_0017")
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " last_error_code, stripe_account, lease_token, occurred_at)"
        " SELECT 'm' || g, (ARRAY['api_calls', 'storage_gb', 'seats'])[g % 3 + 1],"
        " 'cus_' || (g % 4), 1,"
        " (ARRAY['pending', 'pending', 'in_flight', 'failed', 'pending'])[g % 5 + 1],"
        " (ARRAY['meter_missing', 'http_503', NULL, 'boom', 'meter_inactive'])[g % 5 + 1],"
        " CASE WHEN g % 2 = 0 THEN 'acct_m' END,"
        " CASE WHEN g % 5 = 2 THEN gen_random_uuid() END,"
        " now() - make_interval(mins => g)"
        " FROM generate_series(1, 200) g"
    )
    db.execute("SELECT outbox_fold_counts()")
    db.execute(
        "UPDATE meter_event_outbox SET state = 'pending', last_error_code = 'meter_missing',"
        " lease_token = NULL WHERE state = 'in_flight' AND id % 2 = 0"
    )  # deltas not folded
    codes = list(HELD_CODES)

    def exact() -> None:
        assert {tuple(k): n for *k, n in rows(db, TALLY)} == {
            tuple(k): n for *k, n in rows(db, REAL) if n
        }

    migrate.upgrade(database_url)
    exact()
    held_real = rows(db, HELD_REAL, codes)
    assert len(held_real) == 12  # 2 accounts x 3 event names x 2 codes
    assert held(db) == held_real
    db.execute(
        "UPDATE meter_event_outbox SET last_error_code = 'meter_inactive'"
        " WHERE last_error_code = 'meter_missing' AND id % 3 = 0"
    )
    assert held(db) == rows(db, HELD_REAL, codes)
    migrate.downgrade(database_url, "outbox_0017")
    exact()
    # `status` of this release on the older schema groups the held rows as before
    assert [tuple(g) for g in SyncStore(db).held_by_meter()] == rows(db, HELD_REAL, codes)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', lease_token = NULL WHERE id % 7 = 0"
    )
    db.execute("SELECT outbox_fold_counts()")
    exact()
    migrate.upgrade(database_url)
    exact()
    assert held(db) == rows(db, HELD_REAL, codes)


async def test_every_reader_of_held_rows_agrees_with_a_live_count(database_url, db):
    """`status` (text and --json read the same dict), the console's overview and the /metrics
    gauges, from the tallies, against the rows counted."""
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
        " last_error_code, stripe_account, occurred_at)"
        " SELECT 'h' || g, (ARRAY['api_calls', 'seats'])[g / 4 % 2 + 1], 'cus_1', 1, 'pending',"
        " (ARRAY['meter_missing', 'meter_checking', 'http_503', NULL])[g % 4 + 1],"
        " CASE WHEN g / 8 % 2 = 0 THEN 'acct_h' END, now() - make_interval(mins => g)"
        " FROM generate_series(1, 120) g"
    )
    db.execute("SELECT outbox_fold_counts()")
    db.execute("UPDATE meter_event_outbox SET last_error_code = 'meter_inactive' WHERE id < 20")
    real = rows(db, HELD_REAL, list(HELD_CODES))
    assert len(real) > 8  # 2 accounts x 2 event names x 2 codes, and some meter_inactive
    with ops.connect(database_url) as conn:
        status = ops.status(conn)["held_for_meter"]
    assert [
        (h["stripe_account"] or "", h["event_name"], h["code"], h["rows"], h["oldest_occurred_at"])
        for h in status
    ] == real
    pool = make_pool(database_url, max_size=2)
    await pool.open(wait=True)
    try:
        store = ConsoleStore(pool)
        console = await store.held_for_meter()
        before = datetime.now(UTC)
        by_reason = await store.held_by_reason()
        after = datetime.now(UTC)
    finally:
        await pool.close()
    assert [
        (h["account"], h["event_name"], h["code"], h["n"], h["oldest_occurred_at"]) for h in console
    ] == real
    assert {c: n for c, (n, _) in by_reason.items()} == {
        c: sum(n for _, _, code, n, _ in real if code == c) for _, _, c, _, _ in real
    }
    for code, (_, age) in by_reason.items():
        oldest = min(o for _, _, c, _, o in real if c == code)
        assert (before - oldest).total_seconds() <= age <= (after - oldest).total_seconds()


def test_the_held_index_and_held_by_meter_name_every_held_code(db):
    """held_by_meter names the held codes as the index's predicate has them (so the planner
    can use the index); a code added to HELD_CODES but not to both would drop its groups."""
    (predicate,) = db.execute(
        "SELECT pg_get_expr(indpred, indrelid) FROM pg_index"
        " WHERE indexrelid = 'meter_event_outbox_held_by_meter'::regclass"
    ).fetchone()
    in_index = set(re.findall(r"'(\w+)'::text", predicate)) - {"pending"}
    sql = QUERIES["held_by_meter"]
    listed = [set(re.findall(r"'(\w+)'", m)) for m in re.findall(r"IN \(([^)]*)\)", sql)]
    assert in_index == set(HELD_CODES)
    assert listed == [set(HELD_CODES)] * 2
