"""Relay throughput against the Stripe emulator, and the database path alone.

Run from the repository root:  python -m bench.relay_throughput [--rounds 3] [--quick]

(a) v1, 0 ms Stripe latency: events/s through the real relay process and the emulator process.
(b) v1, 150 ms Stripe latency, 10,000 customers, live key: Stripe's cap is 1,000 calls/s and
    one call in flight per (customer, meter); the emulator enforces both. Target: >= 1,000
    events/s sustained with zero 429s.
(c) the database path alone: claim + batched outcome writes with a no-op sender (in-process),
    for the v1 lane claim and the v2 claim. Target: >= 20,000 rows/s.
(d) side by side with (c), in the same rounds: procrastinate (a PostgreSQL job queue) running
    no-op jobs on the same PostgreSQL server; the ratio of (c) to it.
Sustained rates are measured between the 10th and 90th percentile of completion times.
"""

import argparse
import asyncio
import time

from bench.common import (
    emulator_process,
    insert_rows,
    median,
    relay_process,
    scratch_database,
    sustained_rate,
    table,
    wait_drained,
)
from relay import logs
from relay.classify import Classified, Verdict
from relay.config import Settings
from relay.db import make_pool
from relay.rows import Claimed
from relay.service import run_loop
from relay.store import Store
from relay.supervisor import Relay
from relay.wakeup import Wakeup


def scenario_a(n: int) -> dict[str, float]:
    with scratch_database() as url, emulator_process("--rate-limit", "0") as api:
        insert_rows(url, n, customers=5000)
        started = time.monotonic()
        with relay_process(url, api, OUTBOX_RATE_LIMIT="100000", OUTBOX_CONCURRENCY="128"):
            wait_drained(url, timeout=300)
        return {"events/s": sustained_rate(url), "wall s": time.monotonic() - started}


def scenario_b(n: int) -> dict[str, float]:
    args = ("--latency-ms", "150", "--rate-limit-live", "1000", "--rate-limit-test", "0")
    with scratch_database() as url, emulator_process(*args) as api:
        insert_rows(url, n, customers=10_000)
        with relay_process(
            url,
            api,
            STRIPE_API_KEY="sk_live_bench",
            OUTBOX_CONCURRENCY="400",
            OUTBOX_BATCH_SIZE="200",
        ):
            wait_drained(url, timeout=600)
        return {"events/s": sustained_rate(url), "429s": _count_429(url)}


def _count_429(url: str) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        # Every 429 leaves a retried attempt behind: attempts beyond the first.
        (extra,) = conn.execute("SELECT sum(attempts - 1) FROM meter_event_outbox").fetchone()
    return float(extra or 0)


class NoopSender:
    """Accepts everything instantly: isolates the database path."""

    async def send(self, row: Claimed) -> tuple[Classified, float]:
        return Classified(Verdict.ACCEPTED), 0.0

    async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
        return Classified(Verdict.ACCEPTED), 0.0

    async def auth_ok(self) -> bool:
        return True


async def _db_path(url: str, mode: str) -> None:
    settings = Settings(
        database_url=url,
        stripe_api_key="sk_test_noop",
        rate_limit=10**9,
        concurrency=2000,
        batch_size=1000,
        stripe_api_mode=mode,
        poll_interval=0.05,
    )
    pool = make_pool(url)
    await pool.open(wait=True)
    relay = Relay(settings, Store(pool), NoopSender(), Wakeup(url, listen=False))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.to_thread(wait_drained, url, 300)
    stop.set()
    await task
    await pool.close()


def scenario_c(n: int, mode: str) -> dict[str, float]:
    with scratch_database() as url:
        insert_rows(url, n, customers=10_000)
        run_loop(_db_path(url, mode))  # the event loop `outbox-relay run` uses
        return {"rows/s": sustained_rate(url)}


def scenario_d(n: int) -> dict[str, float]:
    """procrastinate: defer n no-op jobs, then a worker runs them until the queue is empty."""
    import procrastinate

    with scratch_database(migrated=False) as url:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

        @app.task(name="noop")
        async def noop(i: int) -> None:
            return None

        async def go() -> float:
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
                for start in range(0, n, 5000):
                    await noop.batch_defer_async(*({"i": i} for i in range(start, start + 5000)))
                began = time.monotonic()
                await app.run_worker_async(
                    concurrency=64, wait=False, install_signal_handlers=False
                )
                return n / (time.monotonic() - began)

        return {"jobs/s": asyncio.run(go())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small row counts, one round")
    args = parser.parse_args()
    logs.configure(level="WARNING", json=True)  # the in-process relay of (c): failures only
    scale = 0.1 if args.quick else 1.0
    rounds = 1 if args.quick else args.rounds
    results: dict[str, list[float]] = {
        k: [] for k in ("a", "a_wall", "b", "b429", "c_v1", "c_v2", "d")
    }
    for i in range(rounds):
        c_v1 = scenario_c(int(60_000 * scale), "v1")["rows/s"]
        d = scenario_d(int(20_000 * scale))["jobs/s"]
        c_v2 = scenario_c(int(60_000 * scale), "v2-stream")["rows/s"]
        a = scenario_a(int(20_000 * scale))
        b = scenario_b(int(20_000 * scale))
        results["c_v1"].append(c_v1)
        results["c_v2"].append(c_v2)
        results["d"].append(d)
        results["a"].append(a["events/s"])
        results["a_wall"].append(a["wall s"])
        results["b"].append(b["events/s"])
        results["b429"].append(b["429s"])
        print(
            f"round {i + 1}: a={a['events/s']:.0f}/s b={b['events/s']:.1f}/s "
            f"(retries {b['429s']:.0f}) c_v1={c_v1:.0f}/s c_v2={c_v2:.0f}/s d={d:.0f}/s",
            flush=True,
        )
    m = {k: median(v) for k, v in results.items()}
    table(
        f"relay throughput, median of {rounds} round(s)",
        ["scenario", "result", "target"],
        [
            ["(a) v1, 0 ms Stripe latency, events/s", m["a"], "-"],
            ["(b) v1, 150 ms latency, 10k customers, events/s", f"{m['b']:,.1f}", ">= 1,000"],
            ["(b) retried attempts (429s and conflicts)", m["b429"], "0"],
            ["(c) database path, v1 lane claim, rows/s", m["c_v1"], ">= 20,000"],
            ["(c) database path, v2 claim, rows/s", m["c_v2"], ">= 20,000"],
            ["(d) procrastinate no-op jobs/s (same rounds)", m["d"], "-"],
            ["(c v1) / (d) ratio", m["c_v1"] / m["d"], "-"],
            ["(c v2) / (d) ratio", m["c_v2"] / m["d"], "-"],
        ],
    )


if __name__ == "__main__":
    main()
