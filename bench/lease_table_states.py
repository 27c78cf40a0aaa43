"""The claim and the outcome in each state the lease table's statistics can be in, each checkout
side by side. The lease table is written once and emptied once per event, so what its last
VACUUM saw depends on the moment, and the relay's prepared statements keep the plan made from
it until the next one (docs/design.md, "The lease table's statistics"):

- in service: vacuumed while a batch's leases were live;
- after an idle VACUUM: vacuumed while no lease was live (a quiet night, an outage of Stripe);
- after a crash: the table had no page when the statements were planned (a crash of
  PostgreSQL empties an UNLOGGED table), and has grown since.

In each, DEAD_LEASES leases were written and deleted since the last VACUUM, as a minute of a
busy relay leaves them.

    python -m bench.lease_table_states --trees /work/base,$PWD [--rounds 2] [--reps 5]
        [--rows 1000]

Per round, state and checkout (a child process with that tree on PYTHONPATH: its migrations, its
queries.sql and its store): a scratch database, the state, then WARM_UP + REPS batches, each a
claim of `rows` due rows (v2-stream's top-up) and the outcome of all of them (accepted), through
the tree's own SyncStore on one connection that prepares every statement at its first run under
a generic plan (the relay prepares its statements; its claim forces a generic plan and its
outcome settles on one). The figure is the serving backend's CPU time across the call
(/proc/<pid>/schedstat) per row, median of the measured batches and rounds, in microseconds.
Nothing is asserted: read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg

from bench.store_statements import _label, backend_cpu_ns

ADMIN_URL = os.environ.get("OUTBOX_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 2  # batches before the measured ones
DEAD_LEASES = 20_000
STATES = ("in service", "after an idle VACUUM", "after a crash")
FIGURES = ("claim", "outcome")


def child(admin_url: str, state: str, rows: int, reps: int) -> dict[str, list[float]]:
    """One checkout in one state: each figure's samples, us of backend CPU per row."""
    from relay.db import migrate

    name = f"leases_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = re.sub(r"/[^/]*$", f"/{name}", admin_url)
    try:
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
                " SELECT 'u' || g, 'api_calls', 'cus_' || (g %% 1000), 1"
                " FROM generate_series(1, %s) g",
                ((WARM_UP + reps + 1) * rows,),
            )
            admin.execute("VACUUM ANALYZE meter_event_outbox")
            with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
                conn.execute("SET plan_cache_mode = force_generic_plan")
                _state(admin, conn, state, rows)
                return _measure(conn, rows, reps)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dead_leases(admin: psycopg.Connection[Any]) -> None:
    admin.execute(
        "INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by, leased_until,"
        " first_claimed_at, customer, event_name, action)"
        " SELECT -g, gen_random_uuid(), 'gone', now(), now(), 'c', 'e', 'report'"
        " FROM generate_series(1, %s) g",
        (DEAD_LEASES,),
    )
    admin.execute("DELETE FROM meter_event_outbox_leases WHERE outbox_id < 0")


def _state(
    admin: psycopg.Connection[Any], conn: psycopg.Connection[Any], state: str, rows: int
) -> None:
    """The lease table's statistics as `state` says, and `conn`'s plans made from them."""
    if state == "after a crash":
        admin.execute("VACUUM meter_event_outbox_leases")
        admin.execute("ALTER TABLE meter_event_outbox_leases SET (vacuum_truncate = true)")
        admin.execute("VACUUM meter_event_outbox_leases")  # no page left
        admin.execute("ALTER TABLE meter_event_outbox_leases SET (vacuum_truncate = false)")
        _batch(conn, 1)  # the plans, made while the table has no page
        _dead_leases(admin)  # then it grows
        return
    _dead_leases(admin)
    if state == "in service":
        held = _claim(conn, rows)
        admin.execute("VACUUM meter_event_outbox_leases")  # while a batch's leases are live
        _outcome(conn, held)
    else:
        admin.execute("VACUUM meter_event_outbox_leases")  # while no lease is live
    _dead_leases(admin)


def _claim(conn: psycopg.Connection[Any], rows: int) -> list[Any]:
    from relay.db.store import SyncStore

    return SyncStore(conn).claim(
        [], fill=rows, exclusive=False, relay_id="bench", lease_seconds=600, one_walk=True
    )


def _outcome(conn: psycopg.Connection[Any], held: list[Any]) -> set[int]:
    from relay.core.rows import Outcome
    from relay.db.store import SyncStore

    accepted = [Outcome.answered(r, "accepted", request_id="req", http_status=200) for r in held]
    return SyncStore(conn).record_outcomes(accepted, "bench")


def _batch(conn: psycopg.Connection[Any], rows: int) -> tuple[float, float]:
    """One claim of `rows` and their outcome: us of backend CPU per row of each."""
    pid = conn.info.backend_pid
    before = backend_cpu_ns(pid)
    held = _claim(conn, rows)
    claimed = backend_cpu_ns(pid)
    written = _outcome(conn, held)
    after = backend_cpu_ns(pid)
    if len(held) != rows or len(written) != rows:
        raise SystemExit(f"claimed {len(held)}, wrote {len(written)} of {rows}")
    return (claimed - before) / 1e3 / rows, (after - claimed) / 1e3 / rows


def _measure(conn: psycopg.Connection[Any], rows: int, reps: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = defaultdict(list)
    for rep in range(WARM_UP + reps):
        claim, outcome = _batch(conn, rows)
        if rep >= WARM_UP:
            found["claim"].append(claim)
            found["outcome"].append(outcome)
    return found


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(*json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", default=os.getcwd(), help="comma-separated checkouts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="measured batches per state")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch")
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    from bench.common import run_in_tree

    found: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in range(args.rounds):
        for state in STATES:
            for tree in trees if r % 2 == 0 else trees[::-1]:
                payload = [ADMIN_URL, state, args.rows, args.reps]
                for figure, values in run_in_tree(__file__, tree, payload, f"({state})").items():
                    found[(tree, state)][figure] += values
        print(f"round {r + 1} done", flush=True)
    print(
        f"\nbackend CPU per row, us, batches of {args.rows:,}, median of {args.rounds} round(s)"
        f" x {args.reps} batches; {DEAD_LEASES:,} dead leases since the lease table's last VACUUM\n"
    )
    print("| state | figure | " + " | ".join(_label(t) for t in trees) + " |")
    print("|---|---|" + "---:|" * len(trees))
    for state in STATES:
        for figure in FIGURES:
            values = [statistics.median(found[(t, state)][figure]) for t in trees]
            print(f"| {state} | {figure} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
