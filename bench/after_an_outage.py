"""The relay's statements right after an outage, each checkout side by side: an outbox in
service (its history vacuumed and analyzed while almost nothing was pending), then a backlog
committed since, which autovacuum has not analyzed yet (it waits for a tenth of the table to
change). The planner then takes the partial queue indexes for empty: the state where
statements that read rows by id or from their leases could read every pending row instead.

    python -m bench.after_an_outage --trees /work/base,$PWD [--rounds 2] [--reps 5]
        [--history 100000] [--backlog 200000]

Per round and checkout (a child process with that tree on PYTHONPATH: its migrations and its
queries.sql): a scratch database of HISTORY accepted rows over 100 customers, VACUUM ANALYZE,
then BACKLOG pending rows over 1,000 customers and 10 live v1 leases (the tree's own claim).
Each statement then runs WARM_UP + REPS times, prepared as the relay runs it (the claim after
its `claim_plan`), each in a transaction that is rolled back; the figure is the serving
backend's CPU time across the statement (/proc/<pid>/schedstat), median of the measured runs
and rounds, in milliseconds. Nothing is asserted: read the table.
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
WARM_UP = 6  # past the five custom plans PostgreSQL tries before it may settle on a generic one
STATEMENTS = (
    "walk, v1 (100 lanes)",
    "claim, v1 (10 heads)",
    "status_tally",
    "state_counts",
    "fold_counts",
    "reject (2 rows)",
    "reset_in_flight (10 ids)",
)


def child(admin_url: str, history: int, backlog: int, reps: int) -> dict[str, list[float]]:
    """One checkout: each statement's samples, in ms of backend CPU."""
    from relay.db import migrate

    name = f"outage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = re.sub(r"/[^/]*$", f"/{name}", admin_url)
    try:
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            _outage(conn, history, backlog)
            return _measure(conn, reps)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _outage(conn: psycopg.Connection[Any], history: int, backlog: int) -> None:
    from relay.db.store import FIRST_LANE, SyncStore

    insert = (
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
        " SELECT %s || g, 'api_calls', 'cus_' || (g %% %s), 1 FROM generate_series(1, %s) g"
    )
    conn.execute(insert, ("h", 100, history))
    conn.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
    conn.execute("VACUUM ANALYZE meter_event_outbox")
    conn.execute(insert, ("b", 1000, backlog))
    with psycopg.connect(conn.info.dsn) as own:
        store = SyncStore(own)
        walked = store.walk(FIRST_LANE, 10, exclusive=True)
        store.claim(
            walked.ids, fill=0, exclusive=True, relay_id="bench", lease_seconds=600, one_walk=True
        )
        own.commit()


def _measure(conn: psycopg.Connection[Any], reps: int) -> dict[str, list[float]]:
    from outbox.sqlfile import for_psycopg
    from relay.db.pool import QUERIES
    from relay.db.store import FIRST_LANE, claim_params, walk_params

    pid = conn.info.backend_pid
    heads = [  # of 10 lanes with no call in flight: their claim probes the lane
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT ON (customer) id FROM meter_event_outbox o WHERE state = 'pending'"
            " AND NOT EXISTS (SELECT FROM meter_event_outbox_leases l"
            "                 WHERE l.customer = o.customer AND l.event_name = o.event_name)"
            " ORDER BY customer, available_at, id LIMIT 10"
        )
    ]
    leased = [r[0] for r in conn.execute("SELECT outbox_id FROM meter_event_outbox_leases")]
    runs: dict[str, tuple[str, dict[str, Any]]] = {
        STATEMENTS[0]: ("walk", dict(walk_params(FIRST_LANE, 100, True))),
        STATEMENTS[1]: (
            "claim",
            dict(claim_params(heads, {"fill": 0, "exclusive": True, "one_walk": False})),
        ),
        STATEMENTS[2]: ("status_tally", {}),
        STATEMENTS[3]: ("state_counts", {}),
        STATEMENTS[4]: ("fold_counts", {}),
        STATEMENTS[5]: (
            "reject",
            {"identifiers": ["b1", "b2"], "account": None, "code": "x", "message": "m"},
        ),
        STATEMENTS[6]: ("reset_in_flight", {"ids": leased}),
    }
    found: dict[str, list[float]] = defaultdict(list)
    for label, (query, params) in runs.items():
        sql = for_psycopg(QUERIES[query])
        for rep in range(WARM_UP + reps):
            with conn.transaction(force_rollback=True):
                if query == "claim":
                    conn.execute(for_psycopg(QUERIES["claim_plan"]), prepare=True)
                before = backend_cpu_ns(pid)
                done = conn.execute(sql, params, prepare=True)
                if done.description is not None:
                    done.fetchall()
                spent = backend_cpu_ns(pid) - before
            if rep >= WARM_UP:
                found[label].append(spent / 1e6)
    return found


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(*json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", default=os.getcwd(), help="comma-separated checkouts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="measured runs per statement")
    parser.add_argument("--history", type=int, default=100_000, help="settled rows, analyzed")
    parser.add_argument("--backlog", type=int, default=200_000, help="pending rows since")
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    from bench.common import run_in_tree

    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in range(args.rounds):
        for tree in trees if r % 2 == 0 else trees[::-1]:
            payload = [ADMIN_URL, args.history, args.backlog, args.reps]
            for label, values in run_in_tree(__file__, tree, payload, "").items():
                found[tree][label] += values
            print(f"round {r + 1} {_label(tree)} done", flush=True)
    print(
        f"\nbackend CPU per statement, ms, median of {args.rounds} round(s) x {args.reps} runs;"
        f" {args.history:,} rows of history analyzed, {args.backlog:,} pending since\n"
    )
    print("| statement | " + " | ".join(_label(t) for t in trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for label in STATEMENTS:
        values = [statistics.median(found[t][label]) for t in trees]
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
