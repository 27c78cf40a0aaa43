"""Relay throughput and CPU per event against the Stripe emulator, and the database path alone.

Run from the repository root:  python -m bench.relay_throughput [--rounds 3] [--quick]
                                 [--only a,b,b-burn,c,d,e] [--history ROWS]

(a) v1, 0 ms Stripe latency, 5,000 customers, 128 calls in flight: events/s through the real
    relay process and the emulator process, once with each Stripe client
    (OUTBOX_STRIPE_CLIENT=sdk, the stripe SDK; lean, relay/stripe/calls.py), side by side.
    Target: relay CPU <= 200 us per call.
(b) v1, 150 ms Stripe latency, 10,000 customers, live key: Stripe's cap is 1,000 calls/s and
    one call in flight per (customer, meter); the emulator enforces both. Target: >= 1,000
    events/s sustained with zero 429s. (b-burn): the same while another process spins on a
    core (a bounded busy loop, killed at the end).
(c) the database path alone: claim + batched outcome writes with a no-op sender (in-process),
    for the v1 lane claim and the v2 claim. Target: >= 20,000 rows/s.
(c-history) with --history N (e.g. 10000000): (c) again, in the same rounds, on a table that
    already holds N accepted rows of history (generated once, dead tuples vacuumed; N rows take
    minutes to generate). Target: within 1.2x of (c) on the empty table. The status queries
    (what `outbox-relay status` runs) and `outbox-relay list` with each filter are timed with
    EXPLAIN ANALYZE on that table: < 50 ms.
(d) side by side with (c), in the same rounds: procrastinate (a PostgreSQL job queue) running
    no-op jobs on the same PostgreSQL server; the ratio of (c) to it.
(e) v2-stream end to end, 10,000 customers, default settings (live key), at 0 ms (both
    clients) and 150 ms Stripe latency. Targets: >= 20,000 events/s; relay CPU <= 20 us per
    event.

CPU per event (the figure the machine's noise moves least): CPU seconds of the relay process,
the emulator process and this scratch database's PostgreSQL backends (from /proc), counted
from the moment the started relay is idle until the outbox is drained, divided by events. For
(c) the relay runs in this process, so its column is this process's CPU. Rows are inserted
only once the relay is up, so start-up (imports, connecting) is not counted.
Sustained rates are measured between the 10th and 90th percentile of completion times.
"""

import argparse
import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import (
    admin_execute,
    burning_core,
    cpu_seconds,
    emulator_process,
    insert_rows,
    median,
    postgres_cpu_between,
    postgres_cpu_seconds,
    relay_process,
    scratch_database,
    self_cpu_seconds,
    sustained_rate,
    table,
    wait_drained,
)
from outbox.sqlfile import for_psycopg
from relay.core import logs
from relay.core.config import Settings
from relay.core.rows import Claimed
from relay.daemon import run_loop
from relay.db.pool import QUERIES, make_pool
from relay.db.store import Store
from relay.pipeline.supervisor import Relay
from relay.pipeline.wakeup import Wakeup
from relay.stripe.classify import Classified, Verdict

Result = dict[str, float]


def end_to_end(
    n: int,
    customers: int,
    emulator_args: tuple[str, ...],
    timeout: float,
    relay_url: Callable[[str], str] | None = None,
    **relay_env: str,
) -> Result:
    """Start emulator and relay, then insert `n` rows and measure until they are drained.
    `relay_url` maps the scratch database's URL to the one the relay uses (a pooler's)."""
    with (
        scratch_database() as url,
        emulator_process(*emulator_args) as emulator,
        relay_process(relay_url(url) if relay_url else url, emulator.url, **relay_env) as relay,
    ):
        before = (cpu_seconds(relay.pid), cpu_seconds(emulator.pid), postgres_cpu_seconds(url))
        insert_rows(url, n, customers)
        began = time.monotonic()
        wait_drained(url, timeout)
        wall = time.monotonic() - began
        after = (cpu_seconds(relay.pid), cpu_seconds(emulator.pid), postgres_cpu_seconds(url))
        return {
            "events/s": sustained_rate(url),
            "wall s": wall,
            "retries": _retries(url),
            "relay us": 1e6 * (after[0] - before[0]) / n,
            "emulator us": 1e6 * (after[1] - before[1]) / n,
            "pg us": 1e6 * postgres_cpu_between(before[2], after[2]) / n,
        }


def _retries(url: str) -> float:
    with psycopg.connect(url) as conn:
        # Every 429 or conflict leaves a retried attempt behind: attempts beyond the first.
        (extra,) = conn.execute("SELECT sum(attempts - 1) FROM meter_event_outbox").fetchone()
    return float(extra or 0)


def scenario_a(n: int, client: str) -> Result:
    return end_to_end(
        n,
        5000,
        ("--rate-limit", "0"),
        300,
        STRIPE_API_KEY="sk_live_bench",
        OUTBOX_RATE_LIMIT="100000",
        OUTBOX_CONCURRENCY="128",
        OUTBOX_STRIPE_CLIENT=client,
    )


def scenario_b(n: int, burn: bool = False) -> Result:
    args = ("--latency-ms", "150", "--rate-limit-live", "1000", "--rate-limit-test", "0")
    with burning_core() if burn else contextlib.nullcontext():
        return end_to_end(
            n,
            10_000,
            args,
            600,
            STRIPE_API_KEY="sk_live_bench",
            OUTBOX_CONCURRENCY="400",
            OUTBOX_BATCH_SIZE="200",
        )


def scenario_e(n: int, latency_ms: int, client: str) -> Result:
    """v2-stream with the defaults a user gets (a live key: 1,000 calls/s, batch 100)."""
    args = ("--latency-ms", str(latency_ms), "--rate-limit", "0")
    return end_to_end(
        n,
        10_000,
        args,
        600,
        STRIPE_API_KEY="sk_live_bench",
        OUTBOX_STRIPE_API_MODE="v2-stream",
        OUTBOX_STRIPE_CLIENT=client,
    )


class NoopSender:
    """Accepts everything instantly: isolates the database path."""

    async def send(self, row: Claimed) -> tuple[Classified, float]:
        return Classified(Verdict.ACCEPTED), 0.0

    async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
        return Classified(Verdict.ACCEPTED), 0.0

    async def auth_ok(self) -> bool:
        return True


async def _db_path(url: str, mode: str, n: int, out: Result) -> None:
    settings = Settings(
        database_url=url,
        stripe_api_key="sk_test_noop",
        rate_limit=100_000,  # the largest the settings accept: 5x what (c) reaches, never the limit
        concurrency=2000,
        batch_size=1000,
        stripe_api_mode=mode,
        poll_interval=0.05,
    )
    pool = make_pool(url)
    await pool.open(wait=True)
    relay = Relay(settings, Store(pool), NoopSender(), Wakeup(url, listen=False))
    telemetry = _in_memory_telemetry(settings, Store(pool)) if OTEL else None
    stop = asyncio.Event()
    pg_before, cpu_before = postgres_cpu_seconds(url), self_cpu_seconds()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.to_thread(wait_drained, url, 300)
    out["relay us"] = 1e6 * (self_cpu_seconds() - cpu_before) / n
    out["pg us"] = 1e6 * postgres_cpu_between(pg_before, postgres_cpu_seconds(url)) / n
    stop.set()
    await task
    if telemetry is not None:
        await telemetry.stop()
    await pool.close()


# --otel: (c) with OpenTelemetry on, spans kept in memory (the SDK's cost, no network).
OTEL = False


def _in_memory_telemetry(settings: Settings, store: Store) -> Any:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from relay.pipeline import telemetry

    processor = SimpleSpanProcessor(InMemorySpanExporter())
    return telemetry.start(settings, store, lambda: True, processor, InMemoryMetricReader())


def scenario_c(n: int, mode: str, history_url: str | None = None) -> Result:
    """The database path on a fresh table, or (`history_url`) on the shared table with history:
    its pending rows get a fresh prefix and the rate counts only them."""
    with contextlib.nullcontext(history_url) if history_url else scratch_database() as url:
        prefix = f"h{time.monotonic_ns()}_" if history_url else "r"
        insert_rows(url, n, customers=10_000, prefix=prefix)
        out: Result = {}
        run_loop(_db_path(url, mode, n, out))  # the event loop `outbox-relay run` uses
        rate = sustained_rate(url, prefix) if history_url else sustained_rate(url)
        if history_url:
            admin_execute(url, "VACUUM ANALYZE meter_event_outbox")  # as autovacuum would
        return {"rows/s": rate, **out}


def history_database(rows: int) -> contextlib.AbstractContextManager[str]:
    """A scratch database holding `rows` accepted rows (the retained history of a busy meter),
    over 10,000 customers, vacuumed and analyzed."""
    fill = f"""
        INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state,
            attempts, first_attempt_at, accepted_at, created_at, occurred_at, updated_at)
        SELECT 'old' || g, 'api_calls', 'cus_' || (g % 10000), 1, 'accepted', 1,
            now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
            now() - interval '1 day', now() - interval '1 day'
        FROM generate_series(1, {int(rows)}) g;
        INSERT INTO meter_event_outbox_counts (state, n) VALUES ('accepted', {int(rows)})
        ON CONFLICT (state) DO UPDATE SET n = excluded.n;
    """
    return scratch_database(setup_sql=fill)


STATUS_QUERIES = ("state_counts", "unsent_by_group", "failures_by_code")
# `outbox-relay list` as operators run it (100 newest rows), by filter.
LIST_DEFAULTS: dict[str, Any] = dict.fromkeys(
    ("state", "code", "customer", "event_name", "since"), None
) | {"limit": 100}
LIST_FILTERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("(no filter)", {}),
    ("--state failed", {"state": "failed"}),
    ("--state pending", {"state": "pending"}),
    ("--customer cus_1", {"customer": "cus_1"}),
    ("--state accepted --customer cus_1", {"state": "accepted", "customer": "cus_1"}),
    ("--since 1h", {"since": datetime.now(UTC) - timedelta(hours=1)}),
)


def status_timings(url: str) -> list[list[Any]]:
    """Execution time of each query `outbox-relay status` runs (EXPLAIN ANALYZE), in ms."""
    rows = []
    with psycopg.connect(url, autocommit=True) as conn:
        (total,) = conn.execute("SELECT count(*) FROM meter_event_outbox").fetchone()
        for name in STATUS_QUERIES:
            plan = conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + for_psycopg(QUERIES[name])
            ).fetchone()[0]
            rows.append([name, f"{total:,}", plan[0]["Execution Time"]])
        for label, filters in LIST_FILTERS:
            params = {**LIST_DEFAULTS, **filters}
            plan = conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + for_psycopg(QUERIES["list_rows"]), params
            ).fetchone()[0]
            rows.append([f"list {label}", f"{total:,}", plan[0]["Execution Time"]])
    return rows


def scenario_d(n: int) -> Result:
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


def plan(scale: float, history_url: str | None) -> dict[str, tuple[str, Callable[[], Result]]]:
    """Scenario key -> (table label, run). Runs interleave within a round."""
    k = int(1000 * scale)
    h = history_url
    return {
        "c_v1": ("(c) database path, v1 lane claim", lambda: scenario_c(60 * k, "v1")),
        "c_v1_hist": ("(c) v1 lane claim, with history", lambda: scenario_c(60 * k, "v1", h)),
        "c_v2_hist": ("(c) v2 claim, with history", lambda: scenario_c(60 * k, "v2-stream", h)),
        "d": ("(d) procrastinate no-op jobs", lambda: scenario_d(20 * k)),
        "c_v2": ("(c) database path, v2 claim", lambda: scenario_c(60 * k, "v2-stream")),
        "a_sdk": ("(a) v1 0 ms, sdk client", lambda: scenario_a(20 * k, "sdk")),
        "a_lean": ("(a) v1 0 ms, lean client", lambda: scenario_a(20 * k, "lean")),
        "b": ("(b) v1 150 ms, 1,000/s cap", lambda: scenario_b(20 * k)),
        "b_burn": ("(b-burn) (b) + a core burnt", lambda: scenario_b(20 * k, burn=True)),
        "e0_sdk": ("(e) v2-stream 0 ms, sdk client", lambda: scenario_e(100 * k, 0, "sdk")),
        "e0_lean": ("(e) v2-stream 0 ms, lean client", lambda: scenario_e(100 * k, 0, "lean")),
        "e150": ("(e) v2-stream 150 ms, lean client", lambda: scenario_e(100 * k, 150, "lean")),
    }


GROUPS = {
    "a": ("a_sdk", "a_lean"),
    "b": ("b",),
    "b-burn": ("b_burn",),
    "c": ("c_v1", "c_v2"),
    "c-history": ("c_v1_hist", "c_v2_hist"),
    "d": ("d",),
    "e": ("e0_sdk", "e0_lean", "e150"),
}


@contextlib.contextmanager
def load_noted(loads: list[float]) -> Iterator[None]:
    """Record the 1-minute load average after each run (the machine may be shared)."""
    yield
    loads.append(os.getloadavg()[0])


def report(results: dict[str, list[Result]], labels: dict[str, str], rounds: int) -> None:
    def m(key: str, field: str) -> Any:
        values = [r[field] for r in results.get(key, []) if field in r]
        return median(values) if values else "-"

    rows = []
    for key, runs in results.items():
        if not runs:
            continue
        rate = m(key, "events/s") if "events/s" in runs[0] else m(key, "rows/s")
        if "jobs/s" in runs[0]:
            rate = m(key, "jobs/s")
        costs = [m(key, f) for f in ("relay us", "emulator us", "pg us", "retries")]
        rows.append([labels[key], rate, *costs])
    table(
        f"relay throughput and CPU per event, median of {rounds} round(s)",
        ["scenario", "events/s", "relay us/ev", "emulator us/ev", "PostgreSQL us/ev", "retries"],
        rows,
    )
    if results.get("d"):
        ratios = [
            ["(c v1) / (d)", _ratio(results, "c_v1")],
            ["(c v2) / (d)", _ratio(results, "c_v2")],
        ]
        table("database path against procrastinate (same rounds)", ["ratio", "x"], ratios)
    if results.get("c_v1_hist") or results.get("c_v2_hist"):
        flat = [
            [
                f"({mode}) with history / empty",
                _ratio_of(results, f"{key}_hist", key),
                _cpu_ratio(results, f"{key}_hist", key),
            ]
            for mode, key in (("c v1", "c_v1"), ("c v2", "c_v2"))
        ]
        table(
            "cost in history (same rounds; target <= 1.2x)",
            ["ratio", "x (rows/s)", "x (relay + PostgreSQL CPU per row)"],
            flat,
        )
    print(
        "\ntargets: (a) relay <= 200 us per call; (b), (b-burn) >= 1,000 events/s, 0 retries;"
        " (c) >= 20,000 rows/s and >= 40x (d); (e) >= 20,000 events/s, relay <= 20 us/event"
    )


def _ratio_of(results: dict[str, list[Result]], slow: str, fast: str) -> float | str:
    """How many times slower `slow` ran than `fast`, round by round (median)."""
    pairs = zip(results.get(fast, []), results.get(slow, []), strict=False)
    values = [f["rows/s"] / s["rows/s"] for f, s in pairs]
    return median(values) if values else "-"


def _cpu_ratio(results: dict[str, list[Result]], slow: str, fast: str) -> float | str:
    """CPU per row with history over CPU per row without: the figure load moves least."""
    pairs = zip(results.get(fast, []), results.get(slow, []), strict=False)
    values = [(s["relay us"] + s["pg us"]) / (f["relay us"] + f["pg us"]) for f, s in pairs]
    return median(values) if values else "-"


def _ratio(results: dict[str, list[Result]], key: str) -> float | str:
    pairs = zip(results.get(key, []), results["d"], strict=False)
    values = [c["rows/s"] / d["jobs/s"] for c, d in pairs]
    return median(values) if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small row counts, one round")
    parser.add_argument("--only", default=",".join(GROUPS), help="scenarios: " + ",".join(GROUPS))
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="accepted rows of history for (c-history), e.g. 10000000 (takes minutes)",
    )
    parser.add_argument("--otel", action="store_true", help="(c) with OpenTelemetry spans on")
    args = parser.parse_args()
    global OTEL
    OTEL = args.otel
    logs.configure(level="WARNING", json=True)  # the in-process relay of (c): failures only
    rounds = 1 if args.quick else args.rounds
    chosen = [key for group in args.only.split(",") for key in GROUPS[group.strip()]]
    if args.history and "c_v1_hist" not in chosen:
        chosen += GROUPS["c-history"]
    if "c_v1_hist" in chosen:  # compared with the empty table in the same rounds
        chosen += [key for key in GROUPS["c"] if key not in chosen]
    with contextlib.ExitStack() as stack:
        history_url = None
        if any(key.endswith("_hist") for key in chosen):
            rows = args.history or 1_000_000
            began = time.monotonic()
            history_url = stack.enter_context(history_database(rows))
            print(f"history: {rows:,} accepted rows in {time.monotonic() - began:.0f} s")
        run_rounds(plan(0.1 if args.quick else 1.0, history_url), chosen, rounds)
        if history_url:
            table(
                "status and list queries with history (EXPLAIN ANALYZE; target < 50 ms)",
                ["query", "rows in table", "ms"],
                status_timings(history_url),
            )


def run_rounds(
    scenarios: dict[str, tuple[str, Callable[[], Result]]], chosen: list[str], rounds: int
) -> None:
    results: dict[str, list[Result]] = {key: [] for key in scenarios if key in chosen}
    loads: list[float] = []
    print(f"cores: {os.cpu_count()}, uptime before: {uptime()}", flush=True)
    for i in range(rounds):
        for key in results:
            with load_noted(loads):
                result = scenarios[key][1]()
            results[key].append(result)
            shown = ", ".join(f"{k}={v:,.1f}" for k, v in result.items())
            print(f"round {i + 1} {key}: {shown} (load {loads[-1]:.1f})", flush=True)
    report(results, {k: v[0] for k, v in scenarios.items()}, rounds)
    print(f"1-minute load average after runs: median {median(loads):.1f}, max {max(loads):.1f}")
    print(f"uptime after the runs: {uptime()}")


def uptime() -> str:
    """The machine's load (it may be shared), as `uptime` prints it."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
