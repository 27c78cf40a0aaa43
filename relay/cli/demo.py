"""`outbox-relay demo`: the whole job end to end on embedded defaults, verified.

An embedded PostgreSQL (pgserver wheel) and the Stripe emulator stand in for production. An
"application" records usage in its own transactions (some rolled back, some replayed, one for
an unknown customer, one cancelled later); the relay reports it while the emulator injects
500s, 429s, dropped connections and processed-then-dropped answers; Stripe's asynchronous error
report arrives by webhook. The demo then checks the emulator's ledger against what the
application committed: every fact counted exactly once.
"""

import asyncio
import random
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import psycopg
from rich.console import Console
from rich.table import Table

import outbox
from relay import daemon
from relay.core.config import Settings
from relay.db import migrate
from relay.db import operations as ops
from relay.emulator import Emulator, EmulatorConfig, Faults

# The emulator's own test key and webhook secret: no Stripe account behind them.
KEY = "sk_test_demo"
SECRET = "whsec_demo"  # noqa: S105
CUSTOMERS = [f"cus_demo{i:02d}" for i in range(20)]


class _Fact(TypedDict):
    """One usage fact, recorded again as is when the job queue delivers it twice."""

    event_name: str
    customer: str
    value: int
    identifier: str
    metadata: dict[str, Any]


console = Console()


@contextmanager
def embedded_database(url: str | None) -> Iterator[str]:
    """The given URL, or a throwaway embedded PostgreSQL."""
    if url:
        yield url
        return
    try:
        from pgserver.postgres_server import get_server
    except ImportError:
        raise SystemExit(
            "the demo's embedded database needs the pgserver wheel: "
            "pip install 'outbox-relay[embedded]' (or pass --database-url)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="outbox-demo-") as datadir:
        server = get_server(datadir, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def record_application_usage(url: str, events: int, seed: int) -> Counter[str]:
    """Write usage the way an application does; returns what should be billed per customer."""
    rng = random.Random(seed)  # noqa: S311 (seeded sample usage, nothing secret)
    expected: Counter[str] = Counter()
    with psycopg.connect(url) as conn:
        for i in range(events):
            customer = rng.choice(CUSTOMERS)
            value = rng.randint(1, 9)
            fact: _Fact = {
                "event_name": "api_calls",
                "customer": customer,
                "value": value,
                "identifier": f"req-{i}",
                "metadata": {"request": i},
            }
            outbox.record_usage(conn, **fact)
            if i % 50 == 49:
                conn.rollback()  # a failed business transaction: its usage must vanish
                continue
            conn.commit()
            expected[customer] += value
            if i % 97 == 0:  # the job queue delivers the same job twice
                outbox.record_usage(conn, **fact)
                conn.commit()
        outbox.record_usage(
            conn,
            event_name="api_calls",
            customer="cus_unknown",
            value=5,
            identifier="req-unknown-customer",
        )
        conn.commit()
    return expected


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# `timeout` bounds the demo's wait and is part of its verdict (a report, not a cancellation).
async def relay_until_settled(settings: Settings, url: str, timeout: float) -> float:  # noqa: ASYNC109
    """Run the relay until nothing is pending, in flight or awaiting its error report."""
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.serve(settings, stop))
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            await asyncio.sleep(0.25)
            if task.done():
                break
            with ops.connect(url) as conn:
                counts = ops.status(conn)["counts"]
                unknown = ops.inspect(conn, "req-unknown-customer") or {}
            if counts["pending"] + counts["in_flight"] == 0 and unknown.get("state") == "rejected":
                break
    finally:
        stop.set()
        await task
    return time.monotonic() - started


def run_demo(database_url: str | None, events: int, seed: int) -> bool:
    """The whole demo; True when the ledger matches the committed usage exactly."""
    port = free_port()
    emulator_config = EmulatorConfig(
        customers=set(CUSTOMERS),
        webhook_secret=SECRET,
        rate_limit_test=200,
        seed=seed,
        webhook_url=f"http://127.0.0.1:{port}/webhooks/stripe",
        error_report_delay=0.2,
        faults=Faults(
            rate_500=0.03,
            rate_reset=0.02,
            rate_drop_after_processing=0.03,
            paths=("/v1/billing/meter_events",),
        ),
    )
    with embedded_database(database_url) as url, Emulator(emulator_config) as emulator:
        console.print(f"[bold]1.[/] database ready; migrating: schema {_migrate(url)}")
        expected = record_application_usage(url, events, seed)
        console.print(
            f"[bold]2.[/] application committed usage for {len(expected)} customers "
            f"({events} transactions, every 50th rolled back, some replayed)"
        )
        with psycopg.connect(url) as conn:
            outbox.cancel_usage(conn, identifier="req-1")
            conn.commit()
        expected[_customer_of(url, "req-1")] -= _value_of(url, "req-1")
        emulator.fail_next(3, kind="429", path="/v1/billing/meter_events")
        settings = Settings(
            database_url=url,
            stripe_api_key=KEY,
            stripe_api_base=emulator.base_url,
            stripe_webhook_secret=SECRET,
            http_port=port,
            rate_limit=200,
            poll_interval=0.2,
        )
        console.print(
            "[bold]3.[/] relay running against the Stripe emulator with injected "
            "500s, resets, 429s and processed-then-dropped answers..."
        )
        elapsed = daemon.run_loop(relay_until_settled(settings, url, timeout=120))
        return _report(url, emulator, expected, elapsed)


def _migrate(url: str) -> str:
    migrate.upgrade(url)
    return migrate.current(url) or "?"


def _customer_of(url: str, identifier: str) -> str:
    with ops.connect(url) as conn:
        customer: str = (ops.inspect(conn, identifier) or {})["customer"]
        return customer


def _value_of(url: str, identifier: str) -> int:
    with ops.connect(url) as conn:
        return int((ops.inspect(conn, identifier) or {})["value"])


def _state_rows(counts: dict[str, int]) -> list[tuple[str, str]]:
    """One row per state, so the rows add up to the outbox; confirmation is a part of the
    accepted rows, shown beside them rather than as states of their own."""
    counts = dict(counts)
    confirmed = counts.pop("confirmed", None)
    awaiting = counts.pop("awaiting_confirmation", None)
    rows = []
    for state, n in counts.items():
        if state == "accepted" and confirmed is not None:
            parts = f"{confirmed} confirmed, {awaiting or 0} awaiting confirmation"
            rows.append((state, f"{n} ({parts})"))
        else:
            rows.append((state, str(n)))
    return rows


def _report(url: str, emulator: Emulator, expected: Counter[str], elapsed: float) -> bool:
    with ops.connect(url) as conn:
        status = ops.status(conn)
    table = Table("state", "rows", title=f"outbox after {elapsed:.1f} s")
    for state, rows in _state_rows(status["counts"]):
        table.add_row(state, rows)
    console.print(table)
    stats = emulator.stats()
    console.print(
        f"emulator saw {stats['total_requests']} requests: "
        f"{stats['faults_injected']} injected faults, "
        f"{stats['idempotent_replays']} idempotent replays"
    )
    mismatches = {
        c: (want, emulator.total("api_calls", c))
        for c, want in expected.items()
        if emulator.total("api_calls", c) != want
    }
    counted = Counter(e.identifier for e in emulator.ledger().events)
    twice = [identifier for identifier, n in counted.items() if n > 1]
    ok = not mismatches and not twice and status["counts"]["rejected"] == 1
    if ok:
        console.print(
            f"[bold green]OK[/]: Stripe's ledger matches the committed usage of all "
            f"{len(expected)} customers; every fact counted exactly once; the "
            "unknown customer's event was reported back and marked rejected."
        )
    else:
        console.print(f"[bold red]MISMATCH[/]: {mismatches or ''} {twice or ''}")
    return ok
