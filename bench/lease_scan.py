"""What the v2 claim's top-up pays for rows already leased (migration outbox_0020 keeps them
in the due index: the claim no longer updates them), with and without the top-up cursor.

Run from the repository root:

    python -m bench.lease_scan --trees /work/main,$PWD

Per tree (each in a child process with that tree on PYTHONPATH, on a scratch database of the
server in OUTBOX_DATABASE_URL, migrated by that tree), per number of rows already leased and
per spread of available_at: 30,000 due rows over 100 customers, either 1 ms apart or all from
one INSERT statement (one available_at), `held` of them leased by a relay's v2 claims of 1,000,
then the same relay's next claim of 1,000, rolled back and repeated 25 times: the median time
of the statement and the shared buffers of one EXPLAIN (ANALYZE, BUFFERS). A tree with the
top-up cursor (relay.core.top_up) continues after its earlier top-ups, the realistic case; it
is also measured restarting from the start (`restart`), which it does once a second and after
an idle spell. Prints a table and never asserts.
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import table

ROWS = 30_000
HELD = (0, 4_000, 10_000)
SPREADS = ("1 ms apart", "one statement")
REPEATS = 25
ADMIN = os.environ.get("OUTBOX_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def measure(held: int, spread: str) -> dict[str, float]:
    """In the child: one tree's claim with `held` rows leased before it by the same relay."""
    import psycopg

    from bench.common import scratch_database

    try:  # a tree with the top-up cursor
        from relay.core.top_up import TopUp
    except ImportError:
        TopUp = None

    step = "1 ms" if spread == SPREADS[0] else "0"
    with scratch_database(ADMIN) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value,"
            " available_at) SELECT 'x' || g, 'api_calls', 'cus_' || (g %% 100), 1,"
            " now() - interval '1 hour' + g * %s::interval FROM generate_series(1, %s) g",
            (step, ROWS),
        )
        conn.execute("VACUUM ANALYZE meter_event_outbox")
        cursor = TopUp() if TopUp else None
        leased = 0
        while leased < held:
            leased += len(claim(conn, cursor))
        found = time_claim(conn, copy.copy(cursor))
        if TopUp:
            restart = time_claim(conn, TopUp())
            found |= {"restart ms": restart["ms"], "restart buffers": restart["buffers"]}
        return found


def claim(conn: Any, cursor: Any) -> list[Any]:
    """A v2 claim of 1,000 rows, all of them top-up (continuing after `cursor` if given)."""
    from relay.db.store import SyncStore

    how: dict[str, Any] = {"fill": 1000, "exclusive": False, "relay_id": "r", "lease_seconds": 600}
    if cursor is not None:
        how["top_up"] = cursor
    return SyncStore(conn).claim([], **how)


def time_claim(conn: Any, cursor: Any) -> dict[str, float]:
    """The median of REPEATS claims rolled back (each from the same cursor), and the buffers of
    one EXPLAIN (ANALYZE, BUFFERS) of the claim's first statement from it."""
    from outbox.sqlfile import for_psycopg
    from relay.db.pool import QUERIES
    from relay.db.store import claim_params

    times = []
    for _ in range(REPEATS):
        with conn.transaction(force_rollback=True):  # the claim's own block: a savepoint
            began = time.perf_counter()
            claim(conn, copy.copy(cursor))
            times.append((time.perf_counter() - began) * 1000)
        # Each rolled-back lease leaves a dead entry under the keys the next repeat probes.
        conn.execute("VACUUM meter_event_outbox_leases")
    how: Any = {"fill": 1000, "exclusive": False}
    params = claim_params([], how, cursor.after) if cursor is not None else claim_params([], how)
    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + for_psycopg(QUERIES["claim"])
    with conn.transaction(force_rollback=True):
        row = conn.execute(explain, params).fetchone()
    plan = row[0][0]["Plan"] if row else {}
    return {
        "ms": statistics.median(times),
        "buffers": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=os.getcwd(), help="comma-separated checkouts")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        held, spread = args.child.split(":", 1)
        print(json.dumps(measure(int(held), spread)))
        return
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    results: dict[tuple[str, int, Path], dict[str, float]] = {}
    print(f"load before: {os.getloadavg()[0]:.1f}")
    for spread in SPREADS:
        for held in HELD:
            for tree in trees:
                ran = subprocess.run(  # this file, with the tree's packages first on the path
                    [sys.executable, __file__, "--child", f"{held}:{spread}"],
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    cwd=tree,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results[(spread, held, tree)] = json.loads(ran.stdout.strip().splitlines()[-1])
    print(f"load after: {os.getloadavg()[0]:.1f}")
    header = ["available_at", "rows leased before the claim"]
    for tree in trees:
        header += [f"{tree.name}: buffers", f"{tree.name}: ms"]
        if any("restart ms" in results[(s, h, tree)] for s in SPREADS for h in HELD):
            header += [f"{tree.name} restart: buffers", f"{tree.name} restart: ms"]
    rows = [[spread, f"{held:,}", *cells(results, spread, held, trees)]
            for spread in SPREADS for held in HELD]  # fmt: skip
    table(f"v2 claim of 1,000 rows over {ROWS:,} due rows, median of {REPEATS}", header, rows)


def cells(results: dict[tuple[str, int, Path], dict[str, float]], spread: str, held: int,
          trees: list[Path]) -> list[str]:  # fmt: skip
    """One table row's figures: per tree, its claim (and its restart, if it has a cursor)."""
    out = []
    for tree in trees:
        found = results[(spread, held, tree)]
        out += [f"{found['buffers']:,.0f}", f"{found['ms']:.1f}"]
        if "restart ms" in found:
            out += [f"{found['restart buffers']:,.0f}", f"{found['restart ms']:.1f}"]
    return out


if __name__ == "__main__":
    main()
