"""Two versions of the claim's `lease` statement on the same backend, turn about: PostgreSQL CPU
per row of each.

    python -m bench.lease_ab --trees /work/main-before,$PWD [--reps 40] [--dimensions 3]

`bench.store_statements` runs each checkout in its own child, minutes apart; on a shared
machine the host's load moves a whole child's figures by a third from one minute to the next,
more than a statement's change. Here one scratch database (this tree's schema) and one
connection run both statements: each repetition claims 1,000 walked heads (the relay's walk and
claim) and leases them with one tree's `lease` from its relay/db/queries.sql, rolls back, then
does the same with the other tree's, the order alternating. Each figure is the backend's CPU
(/proc/<pid>/schedstat) across the lease statement alone, per row; medians over repetitions
after WARMUP. Both versions must run on this tree's schema. Nothing is asserted: read the table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

import psycopg

from bench.common import scratch_database, table
from bench.store_statements import backend_cpu_ns
from outbox.sqlfile import for_psycopg
from relay.db import queries as q
from relay.db.store import FIRST_LANE, SyncStore, claim_params, lease_params

BATCH = 1000
WARMUP = 4
NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def lease_sql(tree: str) -> str:
    """That checkout's `lease` statement, as psycopg runs it."""
    parts = NAME.split((Path(tree) / "relay/db/queries.sql").read_text())
    found = dict(zip(parts[1::2], parts[2::2], strict=True))
    return for_psycopg(found["lease"].strip())


def measure(url: str, statements: dict[str, str], reps: int) -> dict[str, list[float]]:
    """Per label, the lease statement's backend CPU per row, one sample per repetition (a
    VACUUM of the lease table from another connection after each: the rolled-back leases would
    otherwise pile up as dead index entries, a cost each later repetition pays)."""
    how: Any = {"fill": 0, "exclusive": False, "relay_id": "b", "lease_seconds": 300}
    samples: dict[str, list[float]] = {label: [] for label in statements}
    with (
        psycopg.connect(url, prepare_threshold=0) as conn,
        psycopg.connect(url, autocommit=True) as vacuum,
    ):
        store, pid = SyncStore(conn), conn.info.backend_pid
        labels = list(statements)
        for i in range(reps + WARMUP):
            for label in labels if i % 2 == 0 else labels[::-1]:
                walked = store.walk(FIRST_LANE, BATCH, exclusive=False)
                claim: Any = {**how, "one_walk": True}
                found = store.all(q.CLAIM(claim_params(walked.ids, claim)))
                ids = [r if isinstance(r, int) else r.id for r in found]
                start = backend_cpu_ns(pid)
                leased = conn.execute(statements[label], lease_params(ids, how)).fetchall()
                spent = (backend_cpu_ns(pid) - start) / 1e3 / max(len(leased), 1)
                assert len(leased) == len(ids) == BATCH, (len(leased), len(ids))
                conn.rollback()
                vacuum.execute("VACUUM meter_event_outbox, meter_event_outbox_leases")
                if i >= WARMUP:
                    samples[label].append(spent)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="two comma-separated checkouts")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dimensions", type=int, default=0, help="dimension keys per row")
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    statements = {Path(t).name: lease_sql(t) for t in trees}
    with scratch_database() as url:  # this tree's schema, dropped afterwards
        dimensions = json.dumps({f"dim_{k}": f"value-{k}" for k in range(args.dimensions)})
        with psycopg.connect(url, autocommit=True) as setup:
            setup.execute(
                "INSERT INTO meter_event_outbox (identifier, event_name, customer, value,"
                " dimensions) SELECT 'r' || g, 'api_calls', 'cus_' || (g %% 2000), 1, %s::jsonb"
                " FROM generate_series(1, %s) g",
                (dimensions, args.rows),
            )
            setup.execute("VACUUM ANALYZE meter_event_outbox, meter_event_outbox_leases")
        samples = measure(url, statements, args.reps)
    first, *_ = samples
    rows = [
        [
            label,
            f"{statistics.median(v):.2f}",
            f"{statistics.median(b - a for a, b in zip(samples[first], v, strict=True)):+.2f}",
            f"{min(v):.2f}",
            f"{max(v):.2f}",
            len(v),
        ]
        for label, v in samples.items()
    ]
    table(
        f"lease: us of PostgreSQL CPU per row, {args.dimensions} dimension(s), turn about",
        ["tree", "median", f"median of paired differences with {first}", "min", "max", "reps"],
        rows,
    )


if __name__ == "__main__":
    main()
