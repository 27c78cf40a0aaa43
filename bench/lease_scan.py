"""What the v2 claim's top-up pays for rows already leased (migration outbox_0020 keeps them
in the due index: the claim no longer updates them), against releases whose claim moved them out.

Run from the repository root:

    python -m bench.lease_scan --trees /work/main,$PWD

Per tree (each in a child process with that tree on PYTHONPATH, on a scratch database of the
server in OUTBOX_DATABASE_URL, migrated by that tree) and per number of rows already leased:
30,000 due rows over 100 customers, `held` of them leased by a first relay (v2 claims of 1,000),
then a claim of 1,000 more by a second relay, rolled back and repeated 25 times: the median
time of the statement and the shared buffers of one EXPLAIN (ANALYZE, BUFFERS). Prints a table
and never asserts.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import table

ROWS = 30_000
HELD = (0, 4_000, 10_000)
ADMIN = os.environ.get("OUTBOX_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def measure(held: int) -> dict[str, float]:
    """In the child: one tree's claim with `held` rows leased before it."""
    import psycopg

    from bench.common import scratch_database
    from outbox.sqlfile import for_psycopg
    from relay.db.pool import QUERIES
    from relay.db.store import SyncStore, claim_params

    how: dict[str, object] = {
        "fill": 1000,
        "exclusive": False,
        "relay_id": "probe",
        "lease_seconds": 600,
    }
    with scratch_database(ADMIN) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value,"
            " available_at) SELECT 'x' || g, 'api_calls', 'cus_' || (g %% 100), 1,"
            " now() - interval '1 hour' + g * interval '1 ms' FROM generate_series(1, %s) g",
            (ROWS,),
        )
        conn.execute("VACUUM ANALYZE meter_event_outbox")
        store = SyncStore(conn)
        leased = 0
        while leased < held:
            leased += len(store.claim([], **{**how, "relay_id": "holder"}))  # type: ignore[arg-type]
        conn.autocommit = False
        times = []
        for _ in range(25):
            began = time.perf_counter()
            store.claim([], **how)  # type: ignore[arg-type]
            times.append((time.perf_counter() - began) * 1000)
            conn.rollback()
        sql = for_psycopg(QUERIES["claim"])
        explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql
        row = conn.execute(explain, claim_params([], how)).fetchone()  # type: ignore[arg-type]
        conn.rollback()
        plan = row[0][0]["Plan"] if row else {}
        return {
            "ms": statistics.median(times),
            "buffers": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=os.getcwd(), help="comma-separated checkouts")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    results: dict[tuple[int, Path], dict[str, float]] = {}
    print(f"load before: {os.getloadavg()[0]:.1f}")
    for held in HELD:
        for tree in trees:
            ran = subprocess.run(  # this file, with the tree's packages first on the path
                [sys.executable, __file__, "--child", str(held)],
                env={**os.environ, "PYTHONPATH": str(tree)},
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
            )
            results[(held, tree)] = json.loads(ran.stdout.strip().splitlines()[-1])
    print(f"load after: {os.getloadavg()[0]:.1f}")
    header = ["rows leased before the claim"]
    for tree in trees:
        header += [f"{tree.name}: buffers", f"{tree.name}: ms"]
    rows = [
        [f"{held:,}"]
        + [v for t in trees for v in (f"{results[(held, t)]['buffers']:,.0f}",
                                      f"{results[(held, t)]['ms']:.1f}")]
        for held in HELD
    ]  # fmt: skip
    table(f"v2 claim of 1,000 rows over {ROWS:,} due rows", header, rows)


if __name__ == "__main__":
    main()
