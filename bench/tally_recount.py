"""What the fold's recount costs (migration outbox_0032): the tally deltas are UNLOGGED, so a
crash of PostgreSQL, a failover or a restored base backup empties them, and the next fold
recounts every tally from the outbox. How long does that take on an outbox of N rows?

    python -m bench.tally_recount --rows 1000000,10000000 [--reps 3]

Per size, one kept database (`bench_tally_recount_<rows>`, seeded once: a history of accepted
rows with a backlog of pending rows over 10,000 customers, some failed, some held with a code;
the seed takes minutes at ten million rows and is reused by later runs). Each repetition empties
the marker (as the crash does), runs `outbox_fold_counts()` and times it: wall clock and the
backend's CPU (/proc/<pid>/schedstat); then a fold with nothing to fold, for comparison, and a
check that the tallies equal a live count. Medians over repetitions. Nothing is asserted:
read the table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from bench.common import kept_database, mark_seeded, table
from bench.store_statements import backend_cpu_ns

CUSTOMERS = 10_000
SEED_BATCH = 1_000_000
# A live count of every tally key, as outbox_tally_keys() gives them (migration outbox_0018).
LIVE = """
SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name, count(*)
FROM meter_event_outbox o,
     outbox_tally_keys(o.state, o.last_error_code, o.stripe_account, o.customer, o.event_name) k
GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
"""
TALLIES = """
SELECT state, code, stripe_account, customer, event_name, n FROM meter_event_outbox_tallies
WHERE n <> 0 ORDER BY 1, 2, 3, 4, 5
"""


def seed(url: str, rows: int) -> None:
    """`rows` facts: 90 % accepted, 7 % pending, 2 % failed, 1 % pending held for a meter."""
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, rows, SEED_BATCH):
            conn.execute(
                "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,"
                " last_error_code, accepted_at, created_at, occurred_at, updated_at)"
                " SELECT 'r' || g, (ARRAY['api_calls', 'storage_gb'])[g %% 2 + 1],"
                " 'cus_' || (g %% %(customers)s), 1,"
                " CASE WHEN g %% 100 < 90 THEN 'accepted' WHEN g %% 100 < 97 THEN 'pending'"
                "      WHEN g %% 100 < 99 THEN 'failed' ELSE 'pending' END,"
                " CASE WHEN g %% 100 BETWEEN 97 AND 98 THEN 'http_400'"
                "      WHEN g %% 100 = 99 THEN 'meter_missing' END,"
                " CASE WHEN g %% 100 < 90 THEN now() END, now(), now(), now()"
                " FROM generate_series(%(start)s::bigint, %(end)s::bigint) g",
                {"customers": CUSTOMERS, "start": start, "end": min(start + SEED_BATCH, rows) - 1},
            )
            conn.execute("SELECT outbox_fold_counts()")
        conn.execute("VACUUM ANALYZE meter_event_outbox")
    mark_seeded(url)


def timed_fold(conn: psycopg.Connection) -> tuple[float, float]:
    """(wall ms, backend CPU ms) of one fold."""
    pid = conn.info.backend_pid
    cpu, wall = backend_cpu_ns(pid), time.perf_counter()
    conn.execute("SELECT outbox_fold_counts()")
    return (time.perf_counter() - wall) * 1e3, (backend_cpu_ns(pid) - cpu) / 1e6


def measure(url: str, reps: int) -> dict[str, float]:
    recount_wall, recount_cpu, idle_wall = [], [], []
    exact = True
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(reps):
            conn.execute("TRUNCATE meter_event_outbox_tally_epoch")  # what a crash does
            wall, cpu = timed_fold(conn)
            recount_wall.append(wall)
            recount_cpu.append(cpu)
            idle_wall.append(timed_fold(conn)[0])
            exact = exact and conn.execute(TALLIES).fetchall() == conn.execute(LIVE).fetchall()
    return {
        "recount_wall_ms": statistics.median(recount_wall),
        "recount_cpu_ms": statistics.median(recount_cpu),
        "idle_wall_ms": statistics.median(idle_wall),
        "exact": float(exact),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000", help="comma-separated outbox sizes")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    found: list[list[object]] = []
    for rows in [int(r) for r in args.rows.split(",")]:
        with kept_database(f"bench_tally_recount_{rows}") as (url, seeded):
            if not seeded:
                seed(url, rows)
            m = measure(url, args.reps)
        found.append(
            [
                f"{rows:,}",
                m["recount_wall_ms"],
                m["recount_cpu_ms"],
                m["idle_wall_ms"],
                "yes" if m["exact"] else "NO",
            ]
        )
    table(
        f"The fold's recount after the deltas were lost (medians of {args.reps})",
        ["outbox rows", "recount wall ms", "recount backend CPU ms", "idle fold ms", "exact"],
        found,
    )


if __name__ == "__main__":
    main()
