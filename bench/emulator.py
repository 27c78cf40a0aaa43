"""Throughput benchmark of the Stripe emulator's v1 meter-event endpoint.

The emulator runs in its own process pinned to ONE core (`os.sched_setaffinity`); this
process drives it with raw aiohttp from the other core: 64 concurrent clients, unique
identifiers, disjoint customers per client (so the one-call-per-(customer, meter) rule is
never what limits throughput) and rate limits disabled. Each round sends a bounded number
of requests; the table reports req/s and latency percentiles per round and the median.

    python -m bench.emulator                 # 20,000 requests x 3 rounds
    python -m bench.emulator --requests 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk_test_bench"
TARGET_RPS = 2000


@dataclass
class Round:
    requests: int
    seconds: float
    latencies: list[float]
    failures: int
    server_cpu_seconds: float = 0.0

    @property
    def server_cpu(self) -> float:
        """Share of one core the emulator used: ~100% means the server is the bottleneck."""
        return 100 * self.server_cpu_seconds / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU per request; 1e6 / this is the one-core ceiling, whatever the load."""
        return 1e6 * self.server_cpu_seconds / self.requests

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] * 1000


def start_server(core: int | None) -> tuple[subprocess.Popen[str], str]:
    """Launch `python -m relay.emulator` on a free port and pin it to `core`."""
    command = [
        sys.executable,
        "-m",
        "relay.emulator",
        "--port",
        "0",
        "--rate-limit",
        "0",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[-1].strip()


async def run_round(base_url: str, total: int, concurrency: int, tag: str) -> Round:
    """Send `total` meter events through `concurrency` workers; measure each request."""
    url = f"{base_url}/v1/billing/meter_events"
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    latencies: list[float] = []
    failures = 0
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(worker_id: int, session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for n in counter:
            customer = f"cus_w{worker_id}_{n % 8}"
            body = (
                f"event_name=api_calls&identifier={tag}-{n}&payload[stripe_customer_id]="
                f"{customer}&payload[value]=1"
            )
            started = time.perf_counter()
            async with session.post(
                url, data=body, headers={**headers, "Idempotency-Key": f"{tag}-{n}"}
            ) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i, session) for i in range(concurrency)))
        seconds = time.perf_counter() - started
    return Round(total, seconds, latencies, failures)


async def reset(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/_emulator/reset") as response,
    ):
        response.raise_for_status()


async def counted(base_url: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_emulator/stats") as response,
    ):
        stats = await response.json()
    return stats["requests"].get("POST /v1/billing/meter_events", {}).get("200", 0)


async def bench(args: argparse.Namespace) -> list[Round]:
    process, base_url = start_server(args.server_core)
    try:
        rounds = []
        # A short warm-up so connection setup and first-call costs do not skew round 1.
        await run_round(base_url, min(2000, args.requests), args.concurrency, "warmup")
        for i in range(args.rounds):
            await reset(base_url)
            cpu_before = cpu_seconds(process.pid)
            result = await run_round(base_url, args.requests, args.concurrency, f"r{i}")
            result.server_cpu_seconds = cpu_seconds(process.pid) - cpu_before
            accepted = await counted(base_url)
            if accepted != args.requests - result.failures:
                raise RuntimeError(f"emulator counted {accepted}, expected {args.requests}")
            rounds.append(result)
        return rounds
    finally:
        process.terminate()
        process.wait(timeout=10)


def print_table(rounds: list[Round], args: argparse.Namespace) -> None:
    print(
        f"v1 meter events: {args.requests} requests/round, {args.concurrency} concurrent "
        f"clients, server pinned to core {args.server_core}, client on core {args.client_core}"
    )
    print("| round | req/s | p50 ms | p99 ms | server CPU | CPU µs/req | non-200 |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        print(
            f"| {i} | {r.rps:,.0f} | {r.percentile(0.5):.1f} | {r.percentile(0.99):.1f} "
            f"| {r.server_cpu:.0f}% | {r.cpu_us_per_request:.0f} | {r.failures} |"
        )
    median = statistics.median(r.rps for r in rounds)
    p50 = statistics.median(r.percentile(0.5) for r in rounds)
    p99 = statistics.median(r.percentile(0.99) for r in rounds)
    cpu = statistics.median(r.server_cpu for r in rounds)
    per_request = statistics.median(r.cpu_us_per_request for r in rounds)
    print(f"| median | {median:,.0f} | {p50:.1f} | {p99:.1f} | {cpu:.0f}% | {per_request:.0f} | |")
    print(f"server CPU per request implies a one-core ceiling of ~{1e6 / per_request:,.0f} req/s")
    verdict = "meets" if median >= TARGET_RPS else "BELOW"
    print(f"median {median:,.0f} req/s {verdict} the {TARGET_RPS:,} req/s target")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    args = parser.parse_args()
    cores = os.sched_getaffinity(0)
    if args.server_core not in cores:
        args.server_core = min(cores)
    if args.client_core in cores and len(cores) > 1:
        os.sched_setaffinity(0, {args.client_core})
    rounds = asyncio.run(bench(args))
    print_table(rounds, args)
    return 0 if statistics.median(r.rps for r in rounds) >= TARGET_RPS else 1


if __name__ == "__main__":
    sys.exit(main())
