"""What recording usage costs the application's own transaction.

Run from the repository root:  python -m bench.insert_overhead [--quick] [--database-url URL]

`outbox.record_usage()` runs inside the caller's transaction, so every millisecond it adds is
paid by the application's request path, and anything it serialises (NOTIFY takes a cluster-wide
lock at commit) caps the application's commit rate. Each application transaction here is a
business write into a small `orders` table plus the usage write, then COMMIT, on a psycopg 3
sync connection. The usage write is one of:

  plain      INSERT of an equivalent row into meter_event_outbox (the columns record_usage
             fills), the floor an outbox can cost
  rec        record_usage(..., notify=False)
  rec+gate   record_usage(..., notify=True): the coalescing outbox_wake() gate
  plain+NOTIFY  plain INSERT, then a raw `NOTIFY meter_event_outbox` statement (no gate), for
             comparison (one more round trip than plain)

Part 1: per-transaction latency on one connection (targets: rec/plain <= 1.3,
rec+gate/plain <= 1.5), with the client CPU per transaction (Python: record_usage validates and
dispatches) and the NOTIFYs per transaction the listener received.
Part 2: closed-loop commit throughput of 8 concurrent writers.
Part 3: 8 writers paced to 2,000 tx/s combined for a few seconds: achieved rate, latency
percentiles and the NOTIFYs a LISTENing connection actually received ("commits must not
serialise at 2,000 transactions/s from 8 concurrent writers").

Writers are separate processes (one psycopg connection each), so the GIL does not cap them; a
separate listener process counts delivered notifications. Variants are interleaved round by
round (shuffled order), the tables are truncated before each block, and medians of rounds are
reported. Benchmarks print tables and never assert: read them on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

import outbox
from bench.common import ADMIN_URL, median, percentile, scratch_database, table

CHANNEL = "meter_event_outbox"
TRUNCATE = "TRUNCATE meter_event_outbox, meter_event_outbox_attempts, orders"
MARKER = "bench_insert_marker"
WRITERS = 8
PACED_RATE = 2000.0  # combined tx/s of the paced test
VARIANTS = ("plain", "rec", "rec+gate", "plain+NOTIFY")
ORDER_SQL = "INSERT INTO orders (customer, amount) VALUES (%s, %s)"
PLAIN_SQL = (
    "INSERT INTO meter_event_outbox"
    " (identifier, event_name, customer, value, dimensions, metadata, occurred_at)"
    " VALUES (%s, %s, %s, %s, CAST(%s AS jsonb), CAST(%s AS jsonb), %s)"
)
SETUP_SQL = (
    "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " customer text NOT NULL, amount numeric NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)
CUSTOMER = "cus_bench"
EVENT = "api_calls"
DIMENSIONS = {"region": "eu-west-1"}


# ---------------------------------------------------------------- the transactions


def _metadata(ident: str) -> dict[str, str]:
    return {"request_id": ident}


def usage_plain(conn: psycopg.Connection, ident: str, ts: datetime) -> None:
    dims, meta = json.dumps(DIMENSIONS), json.dumps(_metadata(ident))
    conn.execute(PLAIN_SQL, (ident, EVENT, CUSTOMER, 1, dims, meta, ts))


def usage_raw_notify(conn: psycopg.Connection, ident: str, ts: datetime) -> None:
    usage_plain(conn, ident, ts)
    conn.execute(f"NOTIFY {CHANNEL}")


def _usage_record(notify: bool) -> Callable[[psycopg.Connection, str, datetime], None]:
    def write(conn: psycopg.Connection, ident: str, ts: datetime) -> None:
        outbox.record_usage(
            conn,
            event_name=EVENT,
            customer=CUSTOMER,
            value=1,
            identifier=ident,
            timestamp=ts,
            dimensions=DIMENSIONS,
            metadata=_metadata(ident),
            notify=notify,
        )

    return write


USAGE: dict[str, Callable[[psycopg.Connection, str, datetime], None]] = {
    "plain": usage_plain,
    "rec": _usage_record(False),
    "rec+gate": _usage_record(True),
    "plain+NOTIFY": usage_raw_notify,
}


def one_transaction(conn: psycopg.Connection, variant: str, ident: str) -> tuple[float, float]:
    """Business write + usage write + COMMIT; returns (transaction seconds, commit seconds)."""
    started = time.perf_counter()
    conn.execute(ORDER_SQL, (CUSTOMER, 42))
    USAGE[variant](conn, ident, datetime.now(UTC))
    committing = time.perf_counter()
    conn.commit()
    done = time.perf_counter()
    return done - started, done - committing


# ---------------------------------------------------------------- processes


@dataclass
class Block:
    """One measured block of one writer: what to run and until when."""

    variant: str
    tag: str
    start_at: float  # time.monotonic() (system-wide on Linux)
    duration: float
    rate: float | None = None  # tx/s for this writer; None = as fast as possible


@dataclass
class BlockResult:
    committed: int = 0
    elapsed: float = 0.0
    tx: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # end minus scheduled start (paced)


def writer_main(url: str, worker: int, commands: Any, results: Any) -> None:
    """A writer process: one connection, runs blocks until it receives None."""
    with psycopg.connect(url) as conn:
        results.put(worker)  # ready
        while (block := commands.get()) is not None:
            results.put(run_block(conn, worker, block))


def run_block(conn: psycopg.Connection, worker: int, block: Block) -> BlockResult:
    while (wait := block.start_at - time.monotonic()) > 0:
        time.sleep(wait)
    if block.rate is None:
        return _closed_loop(conn, worker, block)
    return _paced(conn, worker, block)


def _closed_loop(conn: psycopg.Connection, worker: int, block: Block) -> BlockResult:
    res, deadline, i = BlockResult(), block.start_at + block.duration, 0
    while time.monotonic() < deadline:
        tx, commit = one_transaction(conn, block.variant, f"{block.tag}-{worker}-{i}")
        i += 1
        if time.monotonic() <= deadline:
            res.committed += 1
            res.tx.append(tx)
            res.commit.append(commit)
    res.elapsed = block.duration
    return res


def _paced(conn: psycopg.Connection, worker: int, block: Block) -> BlockResult:
    """Open loop: transaction i is due at start + i/rate; a late writer skips none but stops at
    the end of the block, so a rate the server cannot sustain shows as a lower achieved rate."""
    rate = block.rate or PACED_RATE / WRITERS
    res, deadline = BlockResult(), block.start_at + block.duration
    start = block.start_at + worker / (rate * WRITERS)  # spread the writers over one period
    for i in range(int(rate * block.duration)):
        due = start + i / rate
        while (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        if time.monotonic() >= deadline:
            break
        tx, commit = one_transaction(conn, block.variant, f"{block.tag}-{worker}-{i}")
        res.committed += 1
        res.tx.append(tx)
        res.commit.append(commit)
        res.lag.append(time.monotonic() - due)
    res.elapsed = block.duration
    return res


def listener_main(url: str, count: Any, marker: Any) -> None:
    """LISTEN like the relay does; count wake-ups, echo marker payloads (flush barrier)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        conn.execute(f"LISTEN {MARKER}")
        for note in conn.notifies():
            if note.channel == CHANNEL:
                count.value += 1
            elif note.payload == "stop":
                return
            else:
                marker.value = int(note.payload)


class Fleet:
    """The writer processes, the listener process and the control connection."""

    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.url = url
        self.count = ctx.Value("q", 0, lock=False)
        self.marker = ctx.Value("q", 0, lock=False)
        self.results: Any = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(WRITERS)]
        self.listener = ctx.Process(target=listener_main, args=(url, self.count, self.marker))
        self.writers = [
            ctx.Process(target=writer_main, args=(url, i, self.commands[i], self.results))
            for i in range(WRITERS)
        ]
        self.control = psycopg.connect(url, autocommit=True)
        self._seq = 0

    def start(self) -> None:
        self.listener.start()
        for proc in self.writers:
            proc.start()
        for _ in self.writers:
            self.results.get(timeout=60)
        self.delivered()  # the listener is up once it echoes a marker

    def delivered(self) -> int:
        """Notifications the listener received for everything committed so far."""
        self._seq += 1
        self.control.execute("SELECT pg_notify(%s, %s)", (MARKER, str(self._seq)))
        deadline = time.monotonic() + 30
        while self.marker.value != self._seq:
            if time.monotonic() > deadline:
                raise TimeoutError("listener did not see the marker")
            time.sleep(0.005)
        return int(self.count.value)

    def run(self, variant: str, duration: float, rate: float | None) -> BlockResult:
        """All writers run one block together; the merged result."""
        self.control.execute(TRUNCATE)
        start_at = time.monotonic() + 0.2
        tag = uuid.uuid4().hex[:8]
        for queue in self.commands:
            queue.put(Block(variant, tag, start_at, duration, rate))
        parts = [self.results.get(timeout=duration + 120) for _ in self.writers]
        return merge(parts)

    def stop(self) -> None:
        for queue in self.commands:
            queue.put(None)
        for proc in self.writers:
            proc.join(30)
        with contextlib.suppress(psycopg.Error):
            self.control.execute("SELECT pg_notify(%s, 'stop')", (MARKER,))
        self.listener.join(10)
        for proc in [*self.writers, self.listener]:
            if proc.is_alive():
                proc.terminate()
        self.control.close()


def merge(parts: list[BlockResult]) -> BlockResult:
    out = BlockResult()
    for part in parts:
        out.committed += part.committed
        out.elapsed = max(out.elapsed, part.elapsed)
        out.tx += part.tx
        out.commit += part.commit
        out.lag += part.lag
    return out


# ---------------------------------------------------------------- scratch database


# ---------------------------------------------------------------- measurements


def shuffled(rng: random.Random) -> list[str]:
    order = list(VARIANTS)
    rng.shuffle(order)
    return order


@dataclass
class LatencyResult:
    """Part 1, per variant: per-round median wall time and client CPU per transaction."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    notifies: int = 0


def latency_rounds(
    fleet: Fleet, rounds: int, per_block: int, rng: random.Random
) -> dict[str, LatencyResult]:
    """Part 1: blocks of transactions on one connection, variants shuffled in every round."""
    out = {v: LatencyResult() for v in VARIANTS}
    with psycopg.connect(fleet.url) as conn:
        for r in range(-1, rounds):  # round -1 warms up (prepared statements, plpgsql cache)
            fleet.control.execute(TRUNCATE)
            for variant in shuffled(rng):
                tag, before, cpu = uuid.uuid4().hex[:8], fleet.delivered(), time.thread_time()
                times = [one_transaction(conn, variant, f"{tag}-{i}")[0] for i in range(per_block)]
                cpu = (time.thread_time() - cpu) / per_block
                if r >= 0:
                    out[variant].wall.append(median(times))
                    out[variant].cpu.append(cpu)
                    out[variant].notifies += fleet.delivered() - before
    return out


def throughput_rounds(
    fleet: Fleet, rounds: int, duration: float, rng: random.Random
) -> dict[str, list[BlockResult]]:
    """Part 2: 8 writers as fast as they can, one block per variant per round."""
    for variant in VARIANTS:  # warm-up, unreported
        fleet.run(variant, 0.3, None)
    out: dict[str, list[BlockResult]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in shuffled(rng):
            res = fleet.run(variant, duration, None)
            out[variant].append(res)
            print(
                f"  throughput round {r + 1} {variant}: {res.committed / duration:,.0f} tx/s",
                flush=True,
            )
    return out


def paced_rounds(
    fleet: Fleet, rounds: int, duration: float, rng: random.Random
) -> dict[str, list[tuple[BlockResult, int]]]:
    """Part 3: 8 writers paced to 2,000 tx/s combined; with the NOTIFYs delivered."""
    out: dict[str, list[tuple[BlockResult, int]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in shuffled(rng):
            before = fleet.delivered()
            res = fleet.run(variant, duration, PACED_RATE / WRITERS)
            notes = fleet.delivered() - before
            out[variant].append((res, notes))
            print(
                f"  paced round {r + 1} {variant}: {res.committed / res.elapsed:,.0f} tx/s,"
                f" p99 {percentile(res.tx, 0.99) * 1e3:.2f} ms, {notes} NOTIFYs",
                flush=True,
            )
    return out


# ---------------------------------------------------------------- reporting


def report_latency(results: dict[str, LatencyResult], rounds: int, per_block: int) -> None:
    plain = results["plain"]
    targets = {"rec": "<= 1.3", "rec+gate": "<= 1.5"}
    rows = []
    for v in VARIANTS:
        res, m = results[v], median(results[v].wall)
        ratios = [x / p for x, p in zip(res.wall, plain.wall, strict=True)]
        rows.append(
            [
                v,
                f"{m * 1e3:.3f}",
                f"{min(res.wall) * 1e3:.3f}",
                f"{max(res.wall) * 1e3:.3f}",
                f"{m / median(plain.wall):.2f}",
                f"{median(ratios):.2f}",
                targets.get(v, "-"),
                f"{median(res.cpu) * 1e6:.0f}",
                f"{res.notifies / (rounds * per_block):.2f}",
            ]
        )
    table(
        f"Part 1: per-transaction latency, 1 connection (orders INSERT + usage write + COMMIT),"
        f" median of {rounds} rounds x {per_block} tx",
        [
            "usage write",
            "median ms",
            "min round",
            "max round",
            "ratio to plain",
            "median paired ratio",
            "target",
            "client CPU us/tx",
            "NOTIFYs per tx",
        ],
        rows,
    )


def report_throughput(results: dict[str, list[BlockResult]], duration: float) -> None:
    base = median([r.committed / duration for r in results["plain"]])
    rows = []
    for v in VARIANTS:
        rates = [r.committed / duration for r in results[v]]
        rows.append(
            [
                v,
                f"{median(rates):,.0f}",
                f"{min(rates):,.0f}",
                f"{max(rates):,.0f}",
                f"{median(rates) / base:.2f}",
                f"{median([percentile(r.commit, 0.5) for r in results[v]]) * 1e3:.2f}",
                f"{median([percentile(r.commit, 0.99) for r in results[v]]) * 1e3:.2f}",
            ]
        )
    table(
        f"Part 2: commit throughput, {WRITERS} writer processes (own connection each), closed"
        f" loop, {duration:g} s blocks, median of {len(results['plain'])} rounds",
        [
            "usage write",
            "tx/s",
            "min round",
            "max round",
            "vs plain",
            "commit p50 ms",
            "commit p99 ms",
        ],
        rows,
    )


def report_paced(results: dict[str, list[tuple[BlockResult, int]]], duration: float) -> None:
    rows = []
    for v in VARIANTS:
        blocks = [b for b, _ in results[v]]
        notes = [n for _, n in results[v]]
        per_note = [b.committed / n for b, n in results[v] if n]
        rows.append(
            [
                v,
                f"{median([b.committed / b.elapsed for b in blocks]):,.0f}",
                *(
                    f"{median([percentile(getattr(b, k), q) for b in blocks]) * 1e3:.2f}"
                    for k, q in (
                        ("tx", 0.5),
                        ("tx", 0.99),
                        ("commit", 0.5),
                        ("commit", 0.99),
                        ("lag", 0.99),
                    )
                ),
                f"{median([float(n) for n in notes]):,.0f}",
                f"{median(per_note):,.1f}" if per_note else "-",
            ]
        )
    table(
        f"Part 3: paced, {WRITERS} writers x {PACED_RATE / WRITERS:g} tx/s ="
        f" {PACED_RATE:,.0f} tx/s target, {duration:g} s, median of {len(results['plain'])}"
        " rounds",
        [
            "usage write",
            "achieved tx/s",
            "tx p50 ms",
            "tx p99 ms",
            "commit p50 ms",
            "commit p99 ms",
            "due->done p99 ms",
            "NOTIFYs delivered",
            "tx per NOTIFY",
        ],
        rows,
    )


def server_settings(url: str) -> str:
    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "commit_delay")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(names),)
        ).fetchall()
    return ", ".join(f"{k}={v}" for k, v in sorted(rows))


# ---------------------------------------------------------------- main


@dataclass(frozen=True)
class Plan:
    latency_rounds: int
    latency_block: int
    throughput_rounds: int
    throughput_seconds: float
    paced_rounds: int
    paced_seconds: float


FULL = Plan(20, 100, 3, 3.0, 3, 5.0)
QUICK = Plan(5, 50, 1, 1.5, 1, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=ADMIN_URL,
        help="admin URL; a scratch database is created and dropped there",
    )
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--seed", type=int, default=None, help="variant order shuffling seed")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    rng = random.Random(args.seed)
    began = time.monotonic()
    with scratch_database(args.database_url, setup_sql=SETUP_SQL) as url:
        print(f"server: {server_settings(url)}; cores: {os.cpu_count()}", flush=True)
        fleet = Fleet(url)
        try:
            fleet.start()
            lat = latency_rounds(fleet, plan.latency_rounds, plan.latency_block, rng)
            report_latency(lat, plan.latency_rounds, plan.latency_block)
            thr = throughput_rounds(fleet, plan.throughput_rounds, plan.throughput_seconds, rng)
            report_throughput(thr, plan.throughput_seconds)
            paced = paced_rounds(fleet, plan.paced_rounds, plan.paced_seconds, rng)
            report_paced(paced, plan.paced_seconds)
        finally:
            fleet.stop()
    print(f"\ntotal {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
