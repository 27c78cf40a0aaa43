"""The relay's PostgreSQL cost per event while it keeps up with a steady stream of usage.

    python -m bench.keep_up [--trees /work/main,$PWD] [--rate 2000] [--seconds 10] [--rounds 2]
        [--mode v2-stream] [--history 100000] [--vacuum-idle]

The throughput benches ((c), (e)) start from a backlog: every row is due at once. A relay in
production mostly keeps up instead: a few rows are committed between two claims, and each claim
takes every due row. This bench measures that regime. A private PostgreSQL cluster
(bench.db_cost's) with pg_stat_statements; per round and checkout, in turn: a fresh database, the
emulator (0 ms), that checkout's relay as its own process (live key, the mode given), and one
application connection committing `rate` facts a second over 1,000 customers, a transaction every
10 ms (with the wake-up hint): after `history` settled rows (accepted, 100,000 by default) and
ANALYZE (as autovacuum would have by then), one second of it, then `seconds` measured. Autovacuum
is on for every table but the outbox (a large table's comes rarely: its history). The relay's
plans of the lease table are the ones of a new outbox, made while that table was small, until its
first VACUUM (autovacuum's naptime is a minute). `--vacuum-idle` VACUUMs the small tables once
after that second, while no lease is live, as autovacuum does when a relay has been idle: the
plans made then take the lease table for empty (docs/benchmarks.md). Then, per event: the CPU of
the database's backends other than the application's (from /proc: the relay's connections), and
the relay's statements from pg_stat_statements (calls, execution time). Medians over rounds.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    cpu_seconds,
    emulator_process,
    postgres_cpu_between,
    postgres_cpu_seconds,
    relay_process,
    scratch_database,
    table,
    wait_drained,
)
from bench.db_cost import private_cluster
from bench.statement_share import SERVER, _names

# Autovacuum as a database in service runs it (bench.db_cost's cluster turns it off).
AUTOVACUUM = ("autovacuum=on",)

TICK = 0.01  # seconds between the application's transactions
CUSTOMERS = 1000
WARM_UP = 1.0  # seconds of the stream before the measured ones


def _write(url: str, rate: float, seconds: float, first: int = 0) -> tuple[int, int]:
    """Commit `rate` facts a second for `seconds`, numbered from `first`; returns (facts, the
    writer's backend pid)."""
    per_tick = max(1, round(rate * TICK))
    written = first
    with psycopg.connect(url) as conn:
        pid = conn.info.backend_pid
        start = time.monotonic()
        ticks = int(seconds / TICK)
        for tick in range(ticks):
            delay = start + tick * TICK - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute(
                "SELECT outbox_record_usage('api_calls', 'cus_' || ((%s + g) %% %s), 1,"
                " 'k' || (%s + g), notify => g = %s) FROM generate_series(1, %s) g",
                (written, CUSTOMERS, written, per_tick, per_tick),
            )
            conn.commit()
            written += per_tick
    return written - first, pid


def _history(url: str, n: int) -> None:
    """`n` settled rows (accepted, as the relay leaves them), then ANALYZE. Autovacuum stays off
    for the outbox: on a table of millions of rows it comes after a fifth of them changed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE meter_event_outbox SET (autovacuum_enabled = false)")
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
            " SELECT 'h' || g, 'api_calls', 'cus_' || (g %% %s), 1 FROM generate_series(1, %s) g",
            (CUSTOMERS, n),
        )
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now(),"
            " first_attempt_at = now(), updated_at = now() WHERE state = 'pending'"
        )
        conn.execute("VACUUM ANALYZE meter_event_outbox")


def _vacuum_small_tables(url: str) -> None:
    """VACUUM every table of the outbox's schema but the outbox. It also invalidates the relay's
    cached plans that read them: each is planned again with what this VACUUM saw."""
    with psycopg.connect(url, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relkind = 'r'"
                " AND relnamespace = 'public'::regnamespace AND relname <> 'meter_event_outbox'"
            )
        ]
        for name in names:
            conn.execute(f'VACUUM "{name}"')


def _statements(admin_url: str, url: str) -> dict[str, tuple[int, float]]:
    """The relay's named statements in `url`'s database: calls and total execution ms."""
    firsts = _names()
    found: dict[str, list[Any]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        (database,) = conn.execute("SELECT current_database()").fetchone() or ("",)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
            (database,),
        ).fetchall()
    for query, calls, ms in rows:
        head = query.strip().splitlines()[0] if query.strip() else ""
        name = next((k for k, first in firsts.items() if head == first), None)
        if name is not None:
            entry = found.setdefault(name, [0, 0.0])
            entry[0] += calls
            entry[1] += ms
    return {k: (int(v[0]), float(v[1])) for k, v in found.items()}


def one_run(admin_url: str, tree: str, args: argparse.Namespace) -> dict[str, float]:
    with (
        scratch_database(admin_url) as url,
        emulator_process("--rate-limit", "0") as emulator,
        relay_process(
            url,
            emulator.url,
            cwd=tree,
            STRIPE_API_KEY="sk_live_bench",
            OUTBOX_STRIPE_API_MODE=args.mode,
            OUTBOX_STRIPE_CLIENT="lean",
        ) as relay,
    ):
        time.sleep(1.0)  # the relay connects and LISTENs before the first commit
        # An outbox in service: its history, and the statistics autovacuum (off on this
        # cluster) would have gathered. Plans made for an empty, never analyzed table, or for
        # one analyzed while it was a tenth of its size, are not the ones a relay in service
        # runs. Then a second of the stream before the measured ones.
        _history(url, args.history)
        warm, _ = _write(url, args.rate, WARM_UP)
        wait_drained(url, 60)
        if args.vacuum_idle:
            _vacuum_small_tables(url)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        before = postgres_cpu_seconds(url)
        relay_before = cpu_seconds(relay.pid)
        n, writer = _write(url, args.rate, args.seconds, first=warm)
        wait_drained(url, 60)
        after = postgres_cpu_seconds(url)
        relay_after = cpu_seconds(relay.pid)
        after.pop(writer, None)
        before.pop(writer, None)
        result = {
            "pg us": 1e6 * postgres_cpu_between(before, after) / n,
            "relay us": 1e6 * (relay_after - relay_before) / n,
        }
        for name, (calls, ms) in _statements(admin_url, url).items():
            result[f"{name} calls"] = calls
            result[f"{name} us"] = 1000 * ms / n
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=str(Path.cwd()))
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", default="v2-stream", choices=["v1", "v2-stream"])
    parser.add_argument("--history", type=int, default=100_000, help="settled rows to start with")
    parser.add_argument(
        "--vacuum-idle",
        action="store_true",
        help="VACUUM the small tables after the warm-up, while no lease is live",
    )
    args = parser.parse_args()
    trees = args.trees.split(",")
    runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
    with private_cluster((*SERVER, *AUTOVACUUM)) as admin_url:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        for i in range(args.rounds):
            for tree in trees if i % 2 == 0 else trees[::-1]:
                result = one_run(admin_url, tree, args)
                runs[tree].append(result)
                print(f"round {i + 1} {tree}: pg us={result['pg us']:.1f}", flush=True)
    keys = sorted({k for rs in runs.values() for r in rs for k in r})
    keys = ["pg us", "relay us"] + [k for k in keys if k not in ("pg us", "relay us")]
    table(
        f"per event while the relay keeps up: {args.mode}, {args.rate:g} facts/s over "
        f"{CUSTOMERS:,} customers, {args.seconds:g} s"
        f"{', small tables vacuumed while idle' if args.vacuum_idle else ''}"
        f", median of {args.rounds} round(s)",
        ["figure", *trees],
        [[k, *(statistics.median(r.get(k, 0.0) for r in runs[t]) for t in trees)] for k in keys],
    )


if __name__ == "__main__":
    main()
