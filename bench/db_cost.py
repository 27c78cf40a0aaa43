"""What the outbox costs the application's own database: WAL per fact, PostgreSQL CPU, HOT.

Run from the repository root:

    python -m bench.db_cost                                   # this tree, ~2 minutes
    python -m bench.db_cost --trees /work/main,$PWD --rounds 3 # two releases side by side

Everything runs on a private PostgreSQL cluster made for the run (`pg_createcluster` on a free
port, removed at the end): no other database writes WAL there, so the WAL between two
`pg_current_wal_insert_lsn()` readings is this bench's alone. Checkpoints are far apart
(`checkpoint_timeout` 1 h) and autovacuum is off while measuring, so the only checkpoints are
the bench's own.

Per round, for every tree (a checkout whose `relay` and `outbox` packages are measured: each
runs in a child process with that tree on PYTHONPATH, migrating its own fresh database) and
each mode (v1, v2-stream), in shuffled order:

1. `plain`: the application's own INSERT of a comparable row (an `app_usage` table with the
   same columns record_usage fills, a primary key and a unique key on the idempotency
   identifier, as an application's own usage table would have), one transaction each, after a
   CHECKPOINT.
2. `record_usage`: `outbox.record_usage()` of the same facts, one transaction each, after a
   CHECKPOINT (full-page writes fall where they fall).
3. `relay`: the real relay in-process with a sender that accepts everything at once (the
   database path of relay_throughput's (c)), until every fact is accepted. No checkpoint
   between 2 and 3: in production the relay sends a fact milliseconds after its commit, in
   the same checkpoint cycle.

WAL per fact for each phase; PostgreSQL CPU per fact of the relay phase (this database's
backends, from /proc); the outbox's HOT update ratio (pg_stat_user_tables); and the
record_usage and relay phases' WAL split by relation and record kind (pg_walinspect), which
says where the bytes go. With `--prune-rows`, the WAL and time of pruning that many settled
rows; with `--heap-rounds N`, one database per tree taken through N rounds of record, relay
and VACUUM: the relay's WAL per fact, the full-page images in it (by relation for the last
round: what grows with the history) and the heap's bytes per row as the table fills (what the
fillfactor costs in room); with `--server-option NAME=VALUE` the private cluster runs with that
setting too (e.g. wal_compression=lz4, what it does to those images).
Benchmarks print tables and never assert.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

MODES = ("v1", "v2-stream")
SERVER_OPTIONS = (
    "max_connections=100",
    "shared_buffers=256MB",
    "checkpoint_timeout=3600",
    "max_wal_size=20GB",
    "autovacuum=off",
)
APP_TABLE = """
CREATE TABLE app_usage (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    identifier text NOT NULL UNIQUE,
    event_name text NOT NULL,
    customer text NOT NULL,
    value numeric NOT NULL,
    dimensions jsonb NOT NULL DEFAULT '{}',
    metadata jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    created_at timestamptz NOT NULL DEFAULT statement_timestamp()
)
"""
PLAIN = (
    "INSERT INTO app_usage (identifier, event_name, customer, value, dimensions, metadata)"
    " VALUES (%s, %s, %s, %s, CAST(%s AS jsonb), CAST(%s AS jsonb))"
)
DIMENSIONS = {"region": "eu-west-1"}


# ------------------------------------------------------------------ the child (one tree, one mode)


def _lsn(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])


def _wal_between(conn: psycopg.Connection, a: str, b: str) -> int:
    return int(conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (b, a)).fetchone()[0])


def _facts(n: int, customers: int) -> Iterator[tuple[str, str, int]]:
    tag = uuid.uuid4().hex[:8]
    for i in range(n):
        yield f"{tag}-{i}", f"cus_{i % customers}", 1 + i % 5


def _phase_plain(conn: psycopg.Connection, n: int, customers: int) -> int:
    conn.execute("CHECKPOINT")
    before = _lsn(conn)
    dims = json.dumps(DIMENSIONS)
    for ident, customer, value in _facts(n, customers):
        conn.execute(PLAIN, (ident, "api_calls", customer, value, dims, json.dumps({"r": ident})))
        conn.commit()
    return _wal_between(conn, before, _lsn(conn))


def _phase_record(conn: psycopg.Connection, n: int, customers: int) -> tuple[int, str, str]:
    import outbox

    conn.execute("CHECKPOINT")
    conn.commit()
    before = _lsn(conn)
    conn.commit()
    for ident, customer, value in _facts(n, customers):
        outbox.record_usage(
            conn,
            event_name="api_calls",
            customer=customer,
            value=value,
            identifier=ident,
            dimensions=DIMENSIONS,
            metadata={"r": ident},
        )
        conn.commit()
    after = _lsn(conn)
    conn.commit()
    return _wal_between(conn, before, after), before, after


class _Accept:
    """Accepts everything at once: the database path alone."""

    async def send(self, row: Any) -> Any:
        from relay.stripe.classify import Classified, Verdict

        return Classified(Verdict.ACCEPTED), 0.0

    async def send_stream(self, rows: Any) -> Any:
        from relay.stripe.classify import Classified, Verdict

        return Classified(Verdict.ACCEPTED), 0.0

    async def auth_ok(self) -> bool:
        return True


def _backend_cpu(conn: psycopg.Connection) -> dict[int, float]:
    pids = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    ).fetchall()
    out = {}
    for (pid,) in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _wait_drained(conn: psycopg.Connection) -> None:
    while not _drained(conn):
        time.sleep(0.05)


def _drained(conn: psycopg.Connection) -> bool:
    (busy,) = conn.execute(
        "SELECT count(*) FROM meter_event_outbox WHERE state NOT IN"
        " ('accepted', 'failed', 'rejected', 'cancelled')"
    ).fetchone()
    return busy == 0


async def _relay_phase(url: str, mode: str, watch: psycopg.Connection) -> tuple[float, float]:
    from relay.core.config import Settings
    from relay.db.pool import make_pool
    from relay.db.store import Store
    from relay.pipeline.supervisor import Relay
    from relay.pipeline.wakeup import Wakeup

    settings = Settings(
        database_url=url,
        stripe_api_key="sk_test_noop",
        rate_limit=100_000,
        concurrency=2000,
        batch_size=1000,
        stripe_api_mode=mode,
        poll_interval=0.05,
    )
    pool = make_pool(url)
    await pool.open(wait=True)
    relay = Relay(settings, Store(pool), _Accept(), Wakeup(url, listen=False))
    stop = asyncio.Event()
    # Measured from before the start: the relay polls at once and, on a quiet machine, has
    # sent every row within the first half second (the figures were 0 us and 800,000 rows/s).
    # The pool's backends exist already; the relay's start-up reads are counted too.
    cpu_before, began = _backend_cpu(watch), time.monotonic()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.to_thread(_wait_drained, watch)
    wall = time.monotonic() - began
    cpu_after = _backend_cpu(watch)
    stop.set()
    await task
    await pool.close()  # the backends exit and flush their table statistics
    cpu = sum(v - cpu_before.get(pid, 0.0) for pid, v in cpu_after.items())
    return cpu, wall


def _relations(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute(
        "SELECT relfilenode::text, relname FROM pg_class WHERE relfilenode <> 0"
    ).fetchall()
    return dict(rows)


BLOCK = re.compile(r"rel \d+/\d+/(\d+)")


def _wal_split(conn: psycopg.Connection, start: str, end: str) -> dict[str, list[int]]:
    """WAL bytes of the range by (relation of the first block, record kind): [bytes, fpi bytes]."""
    names = _relations(conn)
    split: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rmgr, kind, length, fpi, refs in conn.execute(
        "SELECT resource_manager, record_type, record_length, fpi_length, block_ref"
        " FROM pg_get_wal_records_info(%s, %s)",
        (start, end),
    ):
        found = BLOCK.search(refs or "")
        rel = names.get(found.group(1), "?") if found else "-"
        key = f"{rel} {rmgr}/{kind}"
        split[key][0] += int(length)
        split[key][1] += int(fpi)
    return dict(split)


@contextlib.contextmanager
def _scratch(admin_url: str) -> Iterator[str]:
    """A fresh database migrated by the measured tree's own code, dropped afterwards (not
    bench.common's: the child runs against older trees, whose bench/ may differ)."""
    from relay.db import migrate

    name = f"dbcost_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = re.sub(r"/[^/]*$", f"/{name}", admin_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def child(admin_url: str, mode: str, n: int, customers: int) -> dict[str, Any]:
    with _scratch(admin_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            conn.execute(APP_TABLE)
            # The migrations leave dead catalog tuples (pg_class, pg_depend, ...): without this
            # their pruning, and its full-page images, fell into the measured phases (about 50
            # bytes per fact of record_usage at 4,000 facts), which production never pays.
            conn.execute("VACUUM")
        with psycopg.connect(url) as conn:
            plain = _phase_plain(conn, n, customers)
            record, recorded_from, start = _phase_record(conn, n, customers)
        with psycopg.connect(url, autocommit=True) as watch:
            hot_before = _hot(watch)
            cpu, wall = asyncio.run(_relay_phase(url, mode, watch))
            end = _lsn(watch)
            relay_wal = _wal_between(watch, start, end)
            time.sleep(0.2)
            upd, hot = (a - b for a, b in zip(_hot(watch), hot_before, strict=True))
            split = _wal_split(watch, start, end)
            record_split = _wal_split(watch, recorded_from, start)
            (accepted,) = watch.execute(
                "SELECT count(*) FROM meter_event_outbox WHERE state = 'accepted'"
            ).fetchone()
        return {
            "plain": plain / n,
            "record_usage": record / n,
            "relay": relay_wal / n,
            "pg_us": 1e6 * cpu / n,
            "rows_s": n / wall,
            "hot": hot / upd if upd else 0.0,
            "updates": upd / n,
            "accepted": accepted,
            "split": {k: [v[0] / n, v[1] / n] for k, v in split.items()},
            "record_split": {k: [v[0] / n, v[1] / n] for k, v in record_split.items()},
        }


HISTORY = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, attempts,
    first_attempt_at, accepted_at, created_at, occurred_at, updated_at, stripe_request_id)
SELECT 'old' || g, 'api_calls', 'cus_' || (g % 10000), 1, 'accepted', 1, t, t, t, t, t,
       'req_' || g
FROM generate_series(1, %(n)s) g, LATERAL (SELECT now() - interval '40 days' AS t) at;
INSERT INTO meter_event_outbox_attempts (outbox_id, attempted_at, attempt, key_generation,
    action, state, http_status, stripe_request_id, latency_ms, relay_id)
SELECT id, accepted_at, 1, 0, 'report', 'accepted', 200, stripe_request_id, 40, 'r1'
FROM meter_event_outbox;
"""
# From outbox_0019 on, a clean acceptance is carried on its row instead of a history row.
CARRIED_HISTORY = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, attempts,
    first_attempt_at, accepted_at, created_at, occurred_at, updated_at, stripe_request_id,
    accepted_request_id, accepted_attempt, accepted_key_generation, accepted_latency_ms,
    accepted_by)
SELECT 'old' || g, 'api_calls', 'cus_' || (g % 10000), 1, 'accepted', 1, t, t, t, t, t,
       'req_' || g, 'req_' || g, 1, 0, 40, 'r1'
FROM generate_series(1, %(n)s) g, LATERAL (SELECT now() - interval '40 days' AS t) at;
"""


def prune_child(admin_url: str, n: int) -> dict[str, Any]:
    """Prune `n` accepted rows past the retention, in the default batches, and measure the WAL
    and the time per row. Each has its accepted call as the tree writes it: one attempt row,
    or (outbox_0019 on) carried on the row."""
    from relay.db import operations

    with _scratch(admin_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            carried = conn.execute(
                "SELECT 1 FROM pg_attribute WHERE attrelid = 'meter_event_outbox'::regclass"
                " AND attname = 'accepted_attempt'"
            ).fetchone()
            conn.execute((CARRIED_HISTORY if carried else HISTORY).replace("%(n)s", str(int(n))))
            conn.execute("VACUUM ANALYZE meter_event_outbox, meter_event_outbox_attempts")
            conn.execute("CHECKPOINT")
            before, began = _lsn(conn), time.monotonic()
            deleted = operations.prune(conn, older_than_days=35)
            seconds = time.monotonic() - began
            wal = _wal_between(conn, before, _lsn(conn))
        return {"deleted": deleted, "wal": wal / max(deleted, 1), "us": 1e6 * seconds / n}


def heap_child(admin_url: str, rounds: int, n: int, customers: int) -> dict[str, Any]:
    """The steady state of one database: `rounds` times, record `n` facts, relay them (v1) and
    VACUUM. Per round the relay's WAL per fact and the heap's bytes per row: whether settled
    pages fill up again (the room a fillfactor costs) and what the relay writes as the table
    and its indexes grow (each round's record phase starts with a CHECKPOINT)."""
    per_round = []
    with _scratch(admin_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        for _ in range(rounds):
            with psycopg.connect(url) as conn:
                _phase_record(conn, n, customers)
            with psycopg.connect(url, autocommit=True) as watch:
                start = _lsn(watch)
                asyncio.run(_relay_phase(url, "v1", watch))
                end = _lsn(watch)
                wal = _wal_between(watch, start, end)
                split = _wal_split(watch, start, end)
                fpi = sum(f for _, f in split.values())
                by_relation: dict[str, float] = defaultdict(float)
                for key, (_, f) in split.items():
                    by_relation[key.split(" ")[0]] += f / n
                watch.execute("VACUUM meter_event_outbox")
                size, rows = watch.execute(
                    "SELECT pg_relation_size('meter_event_outbox'), count(*)"
                    " FROM meter_event_outbox"
                ).fetchone()
            per_round.append({"relay": wal / n, "fpi": fpi / n, "heap": size / rows})
    return {"rounds": per_round, "last_fpi": dict(by_relation)}


def _hot(conn: psycopg.Connection) -> tuple[int, int]:
    row = conn.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
        " WHERE relname = 'meter_event_outbox'"
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


# ------------------------------------------------------------------ the parent


@contextlib.contextmanager
def private_cluster(extra: tuple[str, ...] = ()) -> Iterator[str]:
    if shutil.which("pg_createcluster") is None:
        raise SystemExit("pg_createcluster not found: install postgresql-common")
    version = sorted((p.name for p in Path("/usr/lib/postgresql").iterdir()), key=int)[-1]
    name = f"dbcost_{os.getpid()}"
    with socket_port() as port:
        pass
    options = [arg for option in (*SERVER_OPTIONS, *extra) for arg in ("-o", option)]
    try:
        subprocess.run(
            ["pg_createcluster", version, name, "-p", str(port), "--start-conf=manual",
             *options, "--", "-A", "trust"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        subprocess.run(
            ["pg_ctlcluster", version, name, "start"], check=True, capture_output=True, timeout=120
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", version, name], check=False, capture_output=True
        )


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def run_child(tree: str, admin_url: str, mode: str, n: int, customers: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": tree}
    cmd = [sys.executable, __file__, "--child", admin_url, mode, str(n), str(customers)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child for {tree} {mode} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_extra(tree: str, *args: str) -> dict[str, Any]:
    """A prune or heap child for one tree (its arguments after the flag)."""
    env = {**os.environ, "PYTHONPATH": tree}
    cmd = [sys.executable, __file__, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} for {tree} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


V1_CAP_PER_DAY = 1000 * 86400  # facts a day at Stripe's v1 limit


def report_prune(prunes: dict[str, dict[str, Any]]) -> None:
    rows = [
        [
            _label(t),
            p["deleted"],
            p["wal"],
            p["us"],
            p["wal"] * V1_CAP_PER_DAY / 1e9,
            p["us"] * V1_CAP_PER_DAY / 1e6 / 60,
        ]
        for t, p in prunes.items()
    ]
    header = ["tree", "rows pruned", "WAL bytes/row", "us/row", "GB WAL/day", "min/day"]
    _table("prune (batches of 1,000; per day of history at 1,000 facts/s)", header, rows)


def report_heap(heaps: dict[str, dict[str, Any]]) -> None:
    columns = {"relay": "relay B/fact", "fpi": "of which FPI", "heap": "heap B/row"}
    header = ["round"] + [f"{_label(t)} {c}" for t in heaps for c in columns.values()]
    rounds = len(next(iter(heaps.values()))["rounds"])
    rows = [
        [r + 1] + [h["rounds"][r].get(k, 0.0) for h in heaps.values() for k in columns]
        for r in range(rounds)
    ]
    _table("steady state (one database per tree, v1; VACUUM after each round)", header, rows)
    names = sorted(
        {k for h in heaps.values() for k, v in h.get("last_fpi", {}).items() if v >= 1},
        key=lambda k: -max(h.get("last_fpi", {}).get(k, 0.0) for h in heaps.values()),
    )
    _table(
        "steady state, the last round's full-page images by relation (bytes per fact)",
        ["relation"] + [_label(t) for t in heaps],
        [[k] + [h.get("last_fpi", {}).get(k, 0.0) for h in heaps.values()] for k in names],
    )


def _label(tree: str) -> str:
    return Path(tree).name or tree


def report(results: dict[tuple[str, str], list[dict[str, Any]]], trees: list[str]) -> None:
    def med(key: tuple[str, str], field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    header = ["figure (per fact, median of rounds)"] + [
        f"{_label(t)} {m}" for m in MODES for t in trees
    ]
    rows = []
    for field, label in (
        ("plain", "WAL bytes: application's plain INSERT, 1 tx each"),
        ("record_usage", "WAL bytes: record_usage, 1 tx each"),
        ("relay", "WAL bytes: the relay's work until accepted"),
        ("pg_us", "PostgreSQL CPU us (relay phase)"),
        ("rows_s", "rows/s (relay phase, no-op sender)"),
        ("hot", "HOT ratio of outbox updates"),
        ("updates", "outbox row updates per fact"),
    ):
        rows.append([label] + [med((t, m), field) for m in MODES for t in trees])
    rows.append(
        ["record_usage / plain"]
        + [med((t, m), "record_usage") / med((t, m), "plain") for m in MODES for t in trees]
    )
    _table("WAL and CPU per usage fact", header, rows)
    # record_usage writes the same whatever the mode: its split once, from v1's children.
    _split_table(results, trees, "v1", "record_split", "record_usage WAL per fact")
    for mode in MODES:
        _split_table(results, trees, mode, "split", f"Relay phase WAL per fact, {mode}")


def _split_table(
    results: dict[tuple[str, str], list[dict[str, Any]]],
    trees: list[str],
    mode: str,
    field: str,
    title: str,
) -> None:
    keys: set[str] = set()
    for t in trees:
        for r in results[(t, mode)]:
            keys |= set(r[field])
    split_rows = []
    for k in sorted(keys):
        vals = []
        for t in trees:
            b = statistics.median(r[field].get(k, [0, 0])[0] for r in results[(t, mode)])
            f = statistics.median(r[field].get(k, [0, 0])[1] for r in results[(t, mode)])
            vals += [b, f]
        if max(vals) >= 1:
            split_rows.append([k, *vals])
    split_rows.sort(key=lambda r: -max(r[1:]))
    head = ["relation record (pg_walinspect)"]
    for t in trees:
        head += [f"{_label(t)} bytes", f"{_label(t)} of which FPI"]
    _table(f"{title} by relation and record", head, split_rows)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(_fmt(v) for v in row) + " |")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 10 else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    return str(v)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--prune-child":
        print(json.dumps(prune_child(sys.argv[2], int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--heap-child":
        rounds, n, customers = (int(a) for a in sys.argv[3:6])
        print(json.dumps(heap_child(sys.argv[2], rounds, n, customers)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        admin_url, mode, n, customers = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(child(admin_url, mode, n, customers)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", default=os.getcwd(), help="comma-separated checkouts")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--facts", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--prune-rows", type=int, default=0, help="also measure prune")
    parser.add_argument(
        "--heap-rounds", type=int, default=0, help="also the steady state: rounds on one database"
    )
    parser.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the private cluster (repeatable), e.g. wal_compression=lz4",
    )
    args = parser.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    # SIGTERM unwinds like Ctrl-C, so the private cluster is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    print(f"load before: {os.getloadavg()[0]:.2f}")
    results: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    if args.server_option:
        print("server options: " + ", ".join(args.server_option))
    with private_cluster(tuple(args.server_option)) as admin_url:
        for r in range(args.rounds):
            order = [(t, m) for t in trees for m in MODES]
            random.Random(r).shuffle(order)
            for tree, mode in order:
                out = run_child(tree, admin_url, mode, args.facts, args.customers)
                line = f"relay {out['relay']:.0f} B/fact, {out['pg_us']:.1f} us"
                print(f"round {r + 1} {_label(tree)} {mode}: {line}", flush=True)
                results[(tree, mode)].append(out)
        prunes = {
            t: run_extra(t, "--prune-child", admin_url, str(args.prune_rows))
            for t in trees
            if args.prune_rows
        }
        heap_args = [str(args.heap_rounds), str(args.facts), str(args.customers)]
        heaps = {
            t: run_extra(t, "--heap-child", admin_url, *heap_args)
            for t in trees
            if args.heap_rounds
        }
    print(f"load after: {os.getloadavg()[0]:.2f}")
    report(results, trees)
    if prunes:
        report_prune(prunes)
    if heaps:
        report_heap(heaps)


if __name__ == "__main__":
    main()
