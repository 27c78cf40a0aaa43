"""Where (e)'s PostgreSQL time goes, statement by statement.

    python -m bench.statement_share [--events 100000]

bench.relay_throughput's (e) (v2-stream, 0 ms Stripe latency, lean client, 10,000 customers,
default settings) against a private PostgreSQL cluster (bench.db_cost's) that loads
pg_stat_statements, then the relay's statements by their name in relay/db/queries.sql: calls,
rows, their share of all statement time, and execution time per row. Execution time is wall
time inside PostgreSQL: on a machine whose cores the relay, the emulator and PostgreSQL share,
it includes the time a backend waited for a core, so read the shares (and bench.store_statements
for CPU per row, each statement alone). The bench's own statements (the inserts that feed the
relay, its polling until drained) are left out of the shares. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import psycopg

from bench.common import table
from bench.db_cost import private_cluster

SERVER = ("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=top")


def _names() -> dict[str, str]:
    """Each named query's first line (its opening comment): how pg_stat_statements shows it."""
    from relay.db.pool import QUERIES

    return {name: sql.strip().splitlines()[0] for name, sql in QUERIES.items()}


def _statements(admin_url: str) -> list[tuple[str, int, int, float]]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls, rows, total_exec_time FROM pg_stat_statements"
        ).fetchall()
    firsts = _names()
    found: dict[str, list[Any]] = {}
    for query, calls, n, ms in rows:
        head = query.strip().splitlines()[0] if query.strip() else ""
        name = next((k for k, first in firsts.items() if head == first), None)
        if name is None:
            continue  # the bench's own statements, migrations, catalog reads
        entry = found.setdefault(name, [name, 0, 0, 0.0])
        entry[1] += calls
        entry[2] += n
        entry[3] += ms
    return [(str(v[0]), int(v[1]), int(v[2]), float(v[3])) for v in found.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with private_cluster(SERVER) as admin_url:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        env = {**os.environ, "OUTBOX_DATABASE_URL": admin_url}
        code = (
            "import json, bench.relay_throughput as rt;"
            f"print(json.dumps(rt.scenario_e({args.events}, 0, 'lean')))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        print(f"(e) v2-stream 0 ms, lean: {done.stdout.strip().splitlines()[-1]}")
        found = sorted(_statements(admin_url), key=lambda r: -r[3])
    total = sum(r[3] for r in found) or 1.0
    table(
        f"the relay's statements during (e), {args.events:,} events (pg_stat_statements)",
        ["statement", "calls", "rows", "share of time %", "exec us per row", "exec us per event"],
        [
            [name, calls, n, 100 * ms / total, 1000 * ms / max(n, 1), 1000 * ms / args.events]
            for name, calls, n, ms in found
        ],
    )


if __name__ == "__main__":
    main()
