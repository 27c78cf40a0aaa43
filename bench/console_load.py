"""Does loading the web console slow the relay down? Fresh rows' commit-to-accepted time,
`/readyz` and the sending rate, idle and while 20 clients load the console.

    python -m bench.console_load                       # 1,000,000 settled rows
    python -m bench.console_load --rows 700000 --waiting 300000 --seconds 20 --rounds 3 \
        --before /work/wt-before                       # this checkout against another, alternating
    python -m bench.console_load --rows 700000 --pending 300000   # a backlog being sent

The table holds ROWS rows: 70 % accepted history, 30 % rejected under 20 codes (rejected rows
are never pruned; their pages are the console's heaviest); --waiting adds unsent rows backing
off for an hour after a 503 (the console's unsent buckets; the relay does not send them). The
relay runs as its own process against the emulator (a live-mode key: 1,000 calls/s), with no
console token (loopback: read-only console). Each phase inserts a fresh row every 20 ms, each
for its own customer (one call in flight per customer and meter: rows of one customer would
queue behind each other), for SECONDS and probes /readyz every 100 ms; the load phase adds
CLIENTS loops fetching /console and a failures page. The idle phase starts once /readyz says
200. With --before, each checkout gets its own database migrated by its own code, and their
relays run one after the other, ROUNDS times, the order alternating. With --pending, PENDING
unsent rows over 5,000 customers are added (a backlog the relay sends during both phases, so
fresh rows wait behind it). "sent/s" is the rows the relay accepted per second of the phase, by
the database's clock; "relay CPU %" the relay process's CPU time (user + system) over the
phase's wall time (100 % is one core). Each phase's figures go to stderr as it ends (the
per-round values). Nothing is asserted: read the table.
"""

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from bench.common import (
    cpu_seconds,
    emulator_process,
    free_port,
    percentile,
    scratch_database,
    table,
    wait_port,
)

SEED = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state, last_error_code,
    accepted_at)
SELECT 'seed' || g, 'api_calls', 'cus_' || (g %% 5000), 1,
       CASE WHEN g %% 10 < 7 THEN 'accepted' ELSE 'rejected' END,
       CASE WHEN g %% 10 >= 7 THEN 'code_' || (g %% 20) END, now()
FROM generate_series(1, %(rows)s) g
"""
WAITING = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value, last_error_code,
    attempts, available_at)
SELECT 'waiting' || g, 'api_calls', 'cus_' || (g %% 5000), 1, 'http_503', 1,
       now() + interval '1 hour'
FROM generate_series(1, %(rows)s) g
"""
BACKLOG = """
INSERT INTO meter_event_outbox (identifier, event_name, customer, value)
SELECT 'backlog' || g, 'api_calls', 'cus_' || (g %% 5000), 1
FROM generate_series(1, %(rows)s) g
"""


async def phase(
    url: str, base: str, seconds: float, clients: int, tag: str, pid: int
) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        started = conn.execute("SELECT now()").fetchone()
    cpu = cpu_seconds(pid)
    stop = time.monotonic() + seconds
    ready: list[int] = []
    pages = 0
    statuses: dict[int, int] = {}

    async def inserter() -> None:
        n = 0
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while time.monotonic() < stop:
                n += 1
                # Its own customer: one call in flight per (customer, meter), so fresh rows of
                # one customer would queue behind each other and measure that lane
                await conn.execute(
                    "SELECT outbox_record_usage('api_calls', %s, 1, %s)",
                    (f"cus_fresh_{tag}{n}", f"{tag}{n}"),
                )
                await asyncio.sleep(0.02)

    async def prober(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            try:
                async with session.get(f"{base}/readyz") as answer:
                    ready.append(answer.status)
            except aiohttp.ClientError:
                ready.append(0)
            await asyncio.sleep(0.1)

    async def viewer(i: int) -> None:
        """One client from its own loopback address (127.0.0.2, .3, ...): the console limits
        requests at once per address, so clients sharing one would mostly be refused."""
        nonlocal pages
        paths = ["/console", f"/console/failures?code=code_{i % 20}"]
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{i + 2}", 0))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while time.monotonic() < stop:
                try:
                    async with session.get(base + paths[pages % 2]) as answer:
                        await answer.read()
                        pages += answer.status == 200
                        statuses[answer.status] = statuses.get(answer.status, 0) + 1
                except aiohttp.ClientError:
                    statuses[0] = statuses.get(0, 0) + 1

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(inserter(), prober(session), *(viewer(i) for i in range(clients)))
    cpu = cpu_seconds(pid) - cpu
    with psycopg.connect(url) as conn:
        sent = conn.execute(
            "SELECT count(*) FROM meter_event_outbox WHERE state = 'accepted'"
            " AND accepted_at >= %s AND accepted_at < now()",
            (started[0] if started else None,),
        ).fetchone()
    await asyncio.sleep(5)  # let the last fresh rows be sent
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM accepted_at - created_at) * 1000, accepted_at"
            " FROM meter_event_outbox WHERE identifier LIKE %s",
            (f"{tag}%",),
        ).fetchall()
    latencies = [float(ms) for ms, at in rows if at is not None]
    return {
        "sent/s": round((sent[0] if sent else 0) / seconds),
        "relay CPU %": round(100 * cpu / seconds),
        "fresh rows": len(rows),
        "accepted": len(latencies),
        "p50 ms": percentile(latencies, 0.5) if latencies else None,
        "p99 ms": percentile(latencies, 0.99) if latencies else None,
        "readyz non-200": sum(1 for s in ready if s != 200),
        "readyz probes": len(ready),
        "console pages 200": pages,
        "console pages other": sum(n for status, n in statuses.items() if status != 200),
        "other statuses": " ".join(f"{k}:{v}" for k, v in sorted(statuses.items()) if k != 200),
    }


@contextlib.contextmanager
def relay(url: str, api_base: str, port: int, root: str) -> Iterator[subprocess.Popen[bytes]]:
    """`outbox-relay run` of the checkout at `root` on `port`, once /readyz says 200 (so the
    idle phase does not measure the start); stopped with SIGTERM."""
    env = {
        **os.environ,
        "PYTHONPATH": root,
        "OUTBOX_DATABASE_URL": url,
        "OUTBOX_STRIPE_API_BASE": api_base,
        # A live-mode key: the emulator allows 1,000 calls/s (25/s in test mode, which would
        # be the sending rate of a backlog)
        "STRIPE_API_KEY": "sk_live_bench",
        "OUTBOX_HTTP_PORT": str(port),
        "OUTBOX_RATE_LIMIT": "1000",
    }
    cmd = [sys.executable, "-m", "relay.cli", "run", "--log-level", "WARNING"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, timeout=60)
        asyncio.run(ready(f"http://127.0.0.1:{port}/readyz", 60))
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


async def ready(url: str, seconds: float) -> None:
    """Wait for the first 200 of /readyz."""
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} never answered 200")


def prepare(root: str, args: argparse.Namespace) -> contextlib.AbstractContextManager[str]:
    """A scratch database migrated by the checkout at `root` (its own schema) and seeded."""
    scratch = scratch_database(migrated=False)
    url = scratch.__enter__()
    env = {**os.environ, "PYTHONPATH": root, "OUTBOX_DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "relay.cli", "migrate"],
        env=env,
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED, {"rows": args.rows})
        if args.pending:
            conn.execute(BACKLOG, {"rows": args.pending})
        if args.waiting:
            conn.execute(WAITING, {"rows": args.waiting})
        conn.execute("VACUUM ANALYZE meter_event_outbox")
    return _dropping(scratch, url)


@contextlib.contextmanager
def _dropping(scratch: contextlib.AbstractContextManager[str], url: str) -> Iterator[str]:
    try:
        yield url
    finally:
        scratch.__exit__(None, None, None)


def summary(label: str, phase_name: str, runs: list[dict[str, Any]]) -> list[Any]:
    """Medians of the rounds' figures; /readyz and pages summed over the rounds."""
    medians = [statistics.median(r[k] for r in runs) for k in MEDIANS]
    sums = [sum(r[k] for r in runs) for k in SUMMED]
    others = " / ".join(r["other statuses"] or "-" for r in runs)
    return [label, phase_name, *medians, *sums, others]


MEDIANS = ("sent/s", "relay CPU %", "p50 ms", "p99 ms")
SUMMED = ("fresh rows", "accepted", "readyz non-200", "readyz probes", "console pages 200",
          "console pages other")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pending", type=int, default=0)
    parser.add_argument(
        "--waiting", type=int, default=0, help="unsent rows backing off for an hour (not sent)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--before", help="another checkout's root: its relay runs alternately with this one"
    )
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    versions = [("this checkout", here)] + ([("before", args.before)] if args.before else [])
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        urls = {label: stack.enter_context(prepare(root, args)) for label, root in versions}
        emulator = stack.enter_context(emulator_process())
        for n in range(args.rounds):
            for label, root in versions if n % 2 else versions[::-1]:
                port = free_port()
                with relay(urls[label], emulator.url, port, root) as proc:
                    base = f"http://127.0.0.1:{port}"
                    for clients, name in ((0, "idle"), (args.clients, f"{args.clients} clients")):
                        tag = f"{label[0]}{n}{name[0]}-"
                        run = asyncio.run(
                            phase(urls[label], base, args.seconds, clients, tag, proc.pid)
                        )
                        print(label, name, n, run, file=sys.stderr, flush=True)
                        results.setdefault((label, name), []).append(run)
    header = ["version", "phase", *MEDIANS, *SUMMED, "other statuses"]
    table(
        f"{args.rows:,} settled rows + {args.waiting:,} backing off + {args.pending:,} pending; "
        f"a fresh row every 20 ms; {args.clients} console clients; {args.seconds:g} s per "
        f"phase; {args.rounds} rounds alternating (medians; counts summed)",
        header,
        [summary(label, name, runs) for (label, name), runs in results.items()],
    )


if __name__ == "__main__":
    main()
