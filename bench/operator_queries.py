"""Operator reads (status, list, inspect helpers, retry/prune previews, drift) on a long history.

    python -m bench.operator_queries                 # 2,000,000 rows of history (~1 minute)
    python -m bench.operator_queries --rows 10000000 # the 10M-row case (~5 minutes)

Builds a scratch database: ROWS accepted rows, one a second back in time over 5,000 customers,
plus 5,000 unsent/failed rows; then runs each query with EXPLAIN ANALYZE and prints its plan's
access paths and execution time. Nothing is asserted: read the table.
"""

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import scratch_database
from outbox.sqlfile import for_psycopg
from relay.db.pool import QUERIES

HISTORY = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, created_at,
    occurred_at, updated_at, accepted_at)
SELECT 'h' || g, 'api_calls', 'cus_' || (g %% 5000), 1, 'accepted', t, t, t, t
FROM generate_series(1, %(rows)s) g,
     LATERAL (SELECT now() - make_interval(secs => %(rows)s - g)) s(t)
"""
UNSENT = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, last_error_code)
SELECT 'p' || g, 'api_calls', 'cus_' || (g % 50), 1,
       CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'pending' END,
       CASE WHEN g % 3 = 0 THEN 'http_503' END
FROM generate_series(1, 5000) g
"""


def cases(now: datetime) -> list[tuple[str, str, dict[str, Any]]]:
    none = {"state": None, "code": None, "customer": None, "event_name": None, "since": None}
    return [
        ("status: tallies", "status_tally", {}),
        ("status: auth check per code", "last_status_for_code", {"code": "http_503"}),
        ("list (newest 100)", "list_rows", {**none, "limit": 100}),
        ("list --state failed", "list_rows", {**none, "state": "failed", "limit": 100}),
        (
            "list --since 1 h",
            "list_rows",
            {**none, "since": now - timedelta(hours=1), "limit": 100},
        ),
        ("list --customer (1 of 5,000)", "list_rows", {**none, "customer": "cus_7", "limit": 100}),
        (
            "retry --code --dry-run",
            "retry",
            {
                "identifier": None,
                "code": "http_503",
                "force": False,
                "window_seconds": 72000,
                "rejected": False,
                "dry_run": True,
            },
        ),
        ("prune --dry-run (10 days)", "prune_preview", {"age_seconds": 864000}),
        ("drift: our side, 24 h", "drift_ours", {"since": now - timedelta(hours=24), "until": now}),
    ]


def explain(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> tuple[float, str]:
    sql = "EXPLAIN (ANALYZE, COSTS OFF) " + for_psycopg(QUERIES[name])
    plan = [r[0] for r in conn.execute(sql, params)]
    ms = next(float(line.split()[-2]) for line in plan if "Execution Time" in line)
    paths = sorted(
        {
            line.split(" on ")[0].split("->")[-1].strip() + " " + line.split(" on ")[1].split()[0]
            for line in plan
            if " Scan" in line and " on " in line
        }
    )
    return ms, "; ".join(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    with scratch_database() as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(HISTORY, {"rows": args.rows})
        conn.execute(UNSENT)
        conn.execute("VACUUM ANALYZE meter_event_outbox")
        print(f"| query ({args.rows:,} rows of history) | ms | access paths |")
        print("|---|---:|---|")
        for label, name, params in cases(datetime.now(UTC)):
            ms, paths = explain(conn, name, params)
            print(f"| {label} | {ms:.1f} | {paths} |")


if __name__ == "__main__":
    main()
