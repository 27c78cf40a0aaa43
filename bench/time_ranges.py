"""Reads bounded by time after daily prunes: what pruning does to the created_at range index.

Run from the repository root:

    python -m bench.time_ranges --trees /work/main,$PWD      # two releases side by side
    python -m bench.time_ranges --rows-per-day 100000        # a bigger history

Per tree (a child process with that tree first on PYTHONPATH, on a scratch database of the
server in OUTBOX_DATABASE_URL migrated by that tree's code): `--days` days of accepted history
in time order, `--rows-per-day` rows a day, its block range index summarized; then `--cycles`
daily cycles as production runs them: the tree's own `prune` (the oldest day goes), VACUUM
(its pages become free), and one new day of rows (they take the freed pages). Then reads bounded
by time, each with EXPLAIN (ANALYZE, BUFFERS), the planner free to choose: a count over one old
day (what `drift` reads for an hour of the past) and over the newest day (`list --since`).
Prints the heap blocks each visits, its buffers and milliseconds (median of 5), and the plan.
A block range summary only widens: without tending, a refilled page's range covers the pruned
day and the new one. Benchmarks print tables and never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ADMIN = os.environ.get("OUTBOX_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DAY = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, created_at,"
    " occurred_at, updated_at, accepted_at)"
    " SELECT %(tag)s || g, 'api_calls', 'cus_' || (g %% 5000), 1, 'accepted', t, t, t, t"
    " FROM generate_series(0, %(n)s - 1) g,"
    " LATERAL (SELECT now() - make_interval(days => %(ago)s)"
    "          + make_interval(secs => 86400.0 * g / %(n)s)) a(t)"
)
READS = {
    "one old day (drift's past)": "created_at >= now() - interval '{old} days'"
    " AND created_at < now() - interval '{old_end} days'",
    "the newest day (list --since)": "created_at >= now() - interval '2 days'",
}


def _read(conn: psycopg.Connection, where: str) -> dict[str, Any]:
    sql = f"SELECT count(*) FROM meter_event_outbox WHERE {where}"
    (plan,) = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").fetchone()
    times = []
    for _ in range(5):
        began = time.perf_counter()
        conn.execute(sql).fetchone()
        times.append(1000 * (time.perf_counter() - began))
    stack, blocks, kinds = [plan[0]["Plan"]], 0, []
    top = plan[0]["Plan"]
    while stack:
        node = stack.pop()
        blocks += node.get("Exact Heap Blocks", 0) + node.get("Lossy Heap Blocks", 0)
        if node["Node Type"] in ("Seq Scan", "Bitmap Index Scan", "Index Scan"):
            kinds.append(node.get("Index Name", node["Node Type"]))
        stack.extend(node.get("Plans", []))
    return {
        "blocks": blocks,
        "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
        "ms": statistics.median(times),
        "path": "+".join(kinds),
    }


def child(days: int, per_day: int, cycles: int) -> dict[str, Any]:
    from bench.common import scratch_database  # the measured tree's: migrated by its code
    from relay.db import operations

    oldest = days + cycles + 1  # history from `oldest` days ago; new days fill in after it
    with scratch_database(ADMIN) as url, psycopg.connect(url, autocommit=True) as conn:
        for d in range(days):
            conn.execute(DAY, {"tag": f"h{d}-", "n": per_day, "ago": oldest - d})
        conn.execute("VACUUM ANALYZE meter_event_outbox")
        conn.execute("SELECT brin_summarize_new_values('meter_event_outbox_created_brin')")
        pruned = 0
        for c in range(cycles):
            pruned += operations.prune(conn, older_than_days=oldest - c - 1)
            conn.execute("VACUUM ANALYZE meter_event_outbox")
            conn.execute(DAY, {"tag": f"n{c}-", "n": per_day, "ago": oldest - days - c})
        conn.execute("ANALYZE meter_event_outbox")
        old = oldest - cycles - 5
        reads = {
            name: _read(conn, where.format(old=old, old_end=old - 1))
            for name, where in READS.items()
        }
        (pages,) = conn.execute("SELECT pg_relation_size('meter_event_outbox') / 8192").fetchone()
    return {"pruned": pruned, "pages": pages, "reads": reads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=os.getcwd(), help="comma-separated checkouts")
    parser.add_argument("--days", type=int, default=40, help="days of history")
    parser.add_argument("--rows-per-day", type=int, default=25_000)
    parser.add_argument("--cycles", type=int, default=5, help="daily prune cycles")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.days, args.rows_per_day, args.cycles)))
        return
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    print(f"load before: {os.getloadavg()[0]:.1f}")
    results = {}
    for tree in trees:
        ran = subprocess.run(  # this file, with the tree's packages first on the path
            [sys.executable, __file__, "--child", "--days", str(args.days),
             "--rows-per-day", str(args.rows_per_day), "--cycles", str(args.cycles)],
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd=tree, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if ran.returncode != 0:
            raise SystemExit(f"child for {tree} failed:\n{ran.stderr[-3000:]}")
        results[tree] = json.loads(ran.stdout.strip().splitlines()[-1])
    print(f"load after: {os.getloadavg()[0]:.1f}")
    print(
        f"\n{args.days} days x {args.rows_per_day:,} rows of history, {args.cycles} daily cycles"
        " (prune the oldest day, VACUUM, one new day)\n"
    )
    print("| read | tree | heap blocks visited | buffers | ms (median of 5) | access path |")
    print("|---|---|---:|---:|---:|---|")
    for name in READS:
        for tree, out in results.items():
            r = out["reads"][name]
            print(
                f"| {name} | {tree.name} | {r['blocks']:,} of {out['pages']:,} |"
                f" {r['buffers']:,} | {r['ms']:.1f} | {r['path']} |"
            )


if __name__ == "__main__":
    main()
