"""The relay's own statements, one at a time: PostgreSQL CPU per row of `walk`, `claim`, `lease`
and `record_outcomes`, each checkout's relay side by side in the same rounds.

    python -m bench.store_statements --trees /work/main,$PWD [--rounds 3] [--reps 12]
        [--metadata-bytes 1024 --dimensions 3]

Per round and checkout (a child process with that tree on PYTHONPATH: its migrations, its
queries.sql, its store.py building the parameters), in each mode (v1: the lane walk, one call
per row, each with its own request id; v2-stream: one decision per call of 100 rows): a scratch
database of ROWS pending rows over CUSTOMERS customers (each with metadata of METADATA_BYTES,
`{}` by default, and DIMENSIONS dimension keys, none by default), 1,000 of them leased by
another relay (a batch in flight), vacuumed and analyzed. Then REPS times, in one transaction
that is rolled back (so every repetition sees the same table; a VACUUM from another connection
between them): the walk of 1,000 lane heads from the first lane, the claim and the lease of what
it chose, and the outcome of every leased row (accepted; on every other repetition one row in
ten has a cancel requested while in flight, set before the outcome and not measured, so both
routes of `record_outcomes` run). Each statement's figure is the serving backend's CPU time from
/proc/<pid>/schedstat (nanoseconds) across that statement alone, divided by its rows; the first
WARMUP repetitions are not counted (prepared statements settle on their plan).
`--plan-cache-mode force_generic_plan` gives the prepared statements (all but `claim`) the
generic plans a running relay's settle on (auto_explain shows them in (e)).
Also the client's CPU (this process) per row of the outcome call: building its parameters and
reading its answer. Medians over repetitions and rounds. Nothing is asserted: read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg

ADMIN_URL = os.environ.get("OUTBOX_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BATCH = 1000
WARMUP = 4
MODES = ("v1", "v2-stream")
FIGURES = (
    "walk",
    "claim",
    "lease",
    "outcome, clean",
    "outcome, 1 in 10 cancelled",
    "client: outcome call",
)


def backend_cpu_ns(pid: int) -> int:
    """Time the process has run on a CPU, in nanoseconds (the first field of schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def child(
    admin_url: str,
    mode: str,
    rows: int,
    customers: int,
    reps: int,
    plan_cache_mode: str,
    metadata_bytes: int = 2,
    dimensions: int = 0,
) -> dict[str, Any]:
    """One checkout, one mode: every figure's samples in us per row (this tree's relay)."""
    from relay.db import migrate

    name = f"stmts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = re.sub(r"/[^/]*$", f"/{name}", admin_url)
    try:
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as setup:
            setup.execute(
                "INSERT INTO meter_event_outbox"
                " (identifier, event_name, customer, value, metadata, dimensions)"
                " SELECT 'r' || g, 'api_calls', 'cus_' || (g %% %s), 1, %s::jsonb, %s::jsonb"
                " FROM generate_series(1, %s) g",
                (customers, _metadata(metadata_bytes), _dimensions(dimensions), rows),
            )
            _held_batch(setup, mode)
            setup.execute("VACUUM ANALYZE meter_event_outbox, meter_event_outbox_leases")
            return _repetitions(url, setup, mode, reps, plan_cache_mode)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _metadata(size: int) -> str:
    """A metadata object of `size` bytes as jsonb prints it ({} for 2)."""
    return "{}" if size <= 2 else json.dumps({"pad": "x" * max(size - 11, 0)})


def _dimensions(keys: int) -> str:
    return json.dumps({f"dim_{k}": f"value-{k}" for k in range(keys)})


def _held_batch(conn: psycopg.Connection, mode: str) -> None:
    """Another batch in flight, as under load (the relay holds two): 1,000 live leases on
    lanes the measured walk does not reach. The lease table's statistics then describe a
    table of a thousand rows, as autovacuum sees it under load; an empty one (just vacuumed)
    makes the planner probe it with sequential scans that the lease statement's own inserts
    lengthen."""
    from relay.db.store import SyncStore

    store = SyncStore(conn)
    walked = store.walk(("cus_5", ""), BATCH, exclusive=mode == "v1")
    held = store.claim(
        walked.ids,
        fill=0,
        exclusive=mode == "v1",
        relay_id="other",
        lease_seconds=36000,
        one_walk=True,
    )
    assert len(held) == BATCH, len(held)


def _repetitions(
    url: str, vacuum: psycopg.Connection, mode: str, reps: int, plan_cache_mode: str
) -> dict[str, Any]:
    from relay.db import queries as q
    from relay.db.store import FIRST_LANE, SyncStore, claim_params, lease_params

    exclusive = mode == "v1"
    how: Any = {
        "fill": 0,
        "exclusive": exclusive,
        "relay_id": "bench",
        "lease_seconds": 300,
        "one_walk": True,
    }
    samples: dict[str, list[float]] = defaultdict(list)
    # The relay's pool prepares its statements at once (store.fetch: prepare=True).
    with psycopg.connect(url, prepare_threshold=0) as conn:
        store = SyncStore(conn)
        pid = conn.info.backend_pid
        conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
        conn.commit()
        walk = lambda: store.walk(FIRST_LANE, BATCH, exclusive=exclusive)  # noqa: E731
        for i in range(reps + WARMUP):
            kept = samples if i >= WARMUP else defaultdict(list)
            walked = _timed(pid, kept["walk"], BATCH, walk)
            claim = q.CLAIM(claim_params(walked.ids, how))
            found = _timed(pid, kept["claim"], len(walked.ids), store.all, claim)
            locked = [r if isinstance(r, int) else r.id for r in found]  # ids, or rows with one
            leased = _timed(
                pid, kept["lease"], len(locked), store.all, q.LEASE(lease_params(locked, how))
            )
            cancels = i % 2 == 1
            if cancels:
                conn.execute(
                    "UPDATE meter_event_outbox SET cancel_requested_at = now()"
                    " WHERE id = ANY(%s) AND id %% 10 = 0",
                    ([r.id for r in leased],),
                )
            batch = _outcomes(leased, mode)
            figure = "outcome, 1 in 10 cancelled" if cancels else "outcome, clean"
            client = time.process_time()
            written = _timed(pid, kept[figure], len(batch), store.record_outcomes, batch, "bench")
            kept["client: outcome call"].append((time.process_time() - client) * 1e6 / len(batch))
            assert len(written) == len(batch) == BATCH, (len(written), len(batch))
            conn.rollback()
            vacuum.execute("VACUUM meter_event_outbox, meter_event_outbox_leases")
    return dict(samples)


def _timed(pid: int, into: list[float], rows: int, run: Any, *args: Any) -> Any:
    """run(*args), its backend CPU per row appended to `into`."""
    start = backend_cpu_ns(pid)
    found = run(*args)
    into.append((backend_cpu_ns(pid) - start) / 1e3 / max(rows, 1))
    return found


def _outcomes(leased: list[Any], mode: str) -> list[Any]:
    """Accepted outcomes as the executor builds them: one per v1 call (its own request id),
    one decision copied over each v2-stream call's 100 rows."""
    from relay.core.rows import Outcome

    if mode == "v1":
        return [
            Outcome.answered(
                r, "accepted", request_id=f"req_{r.id}", latency_ms=12.5, http_status=200
            )
            for r in leased
        ]
    found = []
    for k in range(0, len(leased), 100):
        call = leased[k : k + 100]
        first = Outcome.answered(
            call[0], "accepted", request_id=f"req_{k}", latency_ms=80.0, http_status=200
        )
        found += first.for_rows(call)
    return found


def run_child(tree: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import run_in_tree

    payload = [
        ADMIN_URL,
        mode,
        args.rows,
        args.customers,
        args.reps,
        args.plan_cache_mode,
        args.metadata_bytes,
        args.dimensions,
    ]
    return run_in_tree(__file__, tree, payload, mode, timeout=1800)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(*json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", default=os.getcwd(), help="comma-separated checkouts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=12, help="measured repetitions per child")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument(
        "--metadata-bytes", type=int, default=2, help="each row's metadata, as printed ({}: 2)"
    )
    parser.add_argument("--dimensions", type=int, default=0, help="dimension keys per row")
    parser.add_argument(
        "--plan-cache-mode",
        default="auto",
        choices=("auto", "force_generic_plan", "force_custom_plan"),
        help="for the prepared statements (the relay's settle on generic plans under load)",
    )
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    print(f"uptime before: {_uptime()}", flush=True)
    found: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        for mode in MODES:
            for tree in order:
                out = run_child(tree, mode, args)
                for figure, values in out.items():
                    found[(tree, mode)][figure] += values
                shown = ", ".join(f"{f} {statistics.median(v):.1f}" for f, v in out.items())
                print(f"round {r + 1} {_label(tree)} {mode}: {shown}", flush=True)
    print(f"uptime after: {_uptime()}")
    for mode in MODES:
        print(
            f"\n{mode}: us per row, median of {args.rounds} round(s) x {args.reps} reps,"
            f" plan_cache_mode {args.plan_cache_mode}, metadata {args.metadata_bytes} bytes,"
            f" {args.dimensions} dimensions\n"
        )
        head = ["statement", *(_label(t) for t in trees)]
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * len(trees))
        total = dict.fromkeys(trees, 0.0)
        for figure in FIGURES:
            values = [statistics.median(found[(t, mode)][figure] or [0.0]) for t in trees]
            if figure in ("walk", "claim", "lease", "outcome, clean"):
                for t, v in zip(trees, values, strict=True):
                    total[t] += v
            print(f"| {figure} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
        print("| PostgreSQL total, clean | " + " | ".join(f"{total[t]:.1f}" for t in trees) + " |")


def _label(tree: str) -> str:
    head = subprocess.run(
        ["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{Path(tree).name}@{head}{'+' if dirty else ''}"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
