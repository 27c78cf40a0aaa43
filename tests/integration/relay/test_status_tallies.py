"""The status tallies (alembic/versions/0015_status_tallies.up.sql): exact under concurrent
writers, rollbacks, claims, outcomes, deletes and folds; and every statement behind `status`,
the console's overview and /metrics reads a bounded number of rows however large the backlog
(regression: each counted the pending rows, 0.7-0.9 s of SQL with a million of them)."""

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from outbox.sqlfile import for_psycopg
from relay.db import migrate
from relay.db.pool import QUERIES
from relay.db.store import ATTEMPT_WINDOW_CAP, FINISHED_CAP
from tests.helpers import rows

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


ERRORS: list[BaseException] = []


def _repeat(database_url: str, n: int, step: Callable[[psycopg.Connection, int], None]) -> None:
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for i in range(n):
                step(conn, i)
    except BaseException as err:  # the test asserts none happened
        ERRORS.append(err)


def _writer(w: int) -> Callable[[psycopg.Connection, int], None]:
    def step(conn: psycopg.Connection, i: int) -> None:
        with conn.transaction(force_rollback=i % 4 == 3):  # every fourth one rolls back
            conn.execute(
                "SELECT outbox_record_usage('api_calls', %s, 1, %s, stripe_account => %s)",
                (f"cus_{i % 7}", f"w{w}-{i}", "acct_x" if i % 2 else None),
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
        (f"code_{i % 3}", lease),
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
    threads = [threading.Thread(target=_repeat, args=(database_url, n, s)) for n, s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not ERRORS

    def keyed(found: list[tuple[Any, ...]]) -> dict[tuple[str, str, str, str], int]:
        return {(s, c, a, u): n for s, c, a, u, n in found if n}

    real = keyed(rows(db, REAL))
    assert sum(n for (s, *_), n in real.items() if s == "pending") > 0
    assert keyed(rows(db, TALLY)) == real  # folded or not
    db.execute("SELECT outbox_fold_counts()")
    assert keyed(rows(db, TALLY)) == real
    assert rows(db, "SELECT count(*) FROM meter_event_outbox_tally_deltas") == [(0,)]
    assert rows(
        db,
        "SELECT count(*) FROM meter_event_outbox_tallies WHERE n = 0 AND state"
        " NOT IN ('accepted', 'cancelled')",
    ) == [(0,)]


# Every statement of `status`, the console's overview and /metrics, with its parameters.
SURFACE: dict[str, dict[str, Any]] = {
    "status_tally": {},
    "state_counts": {},
    "oldest_unsent": {},
    "next_attempts": {"codes": ["http_503", "connection_error", "meter_missing"]},
    "last_status_for_code": {"code": "http_503"},
    "failures_with_identifiers": {"per_code": 5},
    "customer_backlog": {"limit": 10},
    "held_by_meter": {"code": "meter_missing"},
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
        " CASE WHEN g %% 5 = 1 THEN 'http_503' WHEN g %% 50 = 2 THEN 'meter_missing' END,"
        " now() - interval '2 hours', now() - interval '2 hours', now() - interval '2 hours',"
        " CASE WHEN g %% 5 = 0 THEN now() - interval '2 hours' END"
        " FROM generate_series(1, %s) g",
        (BACKLOG + BACKLOG // 4,),
    )
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', last_error_code = 'boom'"
        " WHERE id IN (SELECT id FROM meter_event_outbox ORDER BY id LIMIT 3000)"
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
    # held_by_meter's cost follows the held rows (a few of the backlog here, as when one meter
    # of many is missing), never the rest; the last hour's finished rows are counted up to
    # their cap
    bounds = {"held_by_meter": BACKLOG // 40 + 10, "finished_last_hour": FINISHED_CAP}
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
