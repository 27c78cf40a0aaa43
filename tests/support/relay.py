"""Fixtures for relay tests: the emulator (a real HTTP server) and a relay in-process.

Loaded for the whole suite by tests/conftest.py (`pytest_plugins`), so integration and
acceptance tests of every area share one `emulator` fixture; a module overrides
`emulator_config` (or `emulator`) to change it."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from relay.core.config import Settings
from relay.core.rows import Claimed
from relay.db import queries
from relay.db.pool import make_pool
from relay.db.store import FIRST_LANE, Store, SyncStore
from relay.emulator import Emulator, EmulatorConfig
from relay.pipeline.supervisor import Relay
from relay.pipeline.wakeup import Wakeup
from relay.stripe.egress import Egress
from relay.stripe.sender import StripeSender

TEST_KEY = "sk_test_relaysuite"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Override in a test module to change emulator options."""
    return EmulatorConfig(rate_limit_test=None, rate_limit_live=None)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[Emulator]:
    with Emulator(emulator_config) as emu:
        yield emu


@pytest.fixture
def settings(database_url: str, emulator: Emulator) -> Settings:
    return make_settings(database_url, emulator)


def make_settings(database_url: str, emulator: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "stripe_api_key": TEST_KEY,
        "stripe_api_base": emulator.base_url,
        "rate_limit": 5000,
        "poll_interval": 0.2,
        "lease_seconds": 30,
        "request_timeout": 5,
        "auth_probe_interval": 0.2,
        "shutdown_grace": 5,
        "relay_id": "test-relay",
        # Shortened so tests do not wait on the relay's own timers.
        "heartbeat_interval": 0.25,
        "relay_stale_after": 2.5,
        "upkeep_interval": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


class RunningRelay:
    """A relay running as a task in the test's event loop."""

    def __init__(self, relay: Relay, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.relay = relay
        self.stop = stop
        self.task = task

    async def until(self, condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
        """Wait until `condition()` holds, re-checking after each outcome batch is written."""

        async def loop() -> None:
            while not await condition():
                await self.next_flush(timeout=0.5)

        await asyncio.wait_for(loop(), timeout)

    async def next_flush(self, timeout: float) -> None:
        """Wait for the next outcome batch to be written (or `timeout`: bounded so conditions
        changed by something else, e.g. webhooks, are seen)."""
        flushed = self.relay.completer.flushed
        async with flushed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flushed.wait(), timeout)


@contextlib.asynccontextmanager
async def running_relay(
    settings: Settings, store: type[Store] = Store
) -> AsyncIterator[RunningRelay]:
    """Start a relay; on exit, stop it gracefully and wait for it to finish. `store` may be
    a subclass that delays statements (to hold the relay at a chosen point)."""
    pool = make_pool(settings.database_url, prepare=settings.database_prepare)
    await pool.open(wait=True)
    sender = StripeSender(
        settings.api_key() or "",
        settings.stripe_api_base,
        settings.request_timeout,
        settings.effective_concurrency() + 4,
        client=settings.stripe_client,
        egress=Egress.from_settings(settings),
    )
    relay = Relay(
        settings, store(pool), sender, Wakeup(settings.database_url, not settings.poll_only)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield RunningRelay(relay, stop, task)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, settings.shutdown_grace + 10)
        finally:  # also when the relay failed: a pool left open outlives the test's loop
            await sender.close()
            await pool.close()


def states(database_url: str) -> dict[str, int]:
    """Rows per state as operators see them: pending with a live lease is in flight."""
    with psycopg.connect(database_url) as conn:
        return dict(
            conn.execute(
                "SELECT CASE WHEN l.outbox_id IS NOT NULL THEN 'in_flight' ELSE o.state END,"
                " count(*) FROM meter_event_outbox o LEFT JOIN meter_event_outbox_leases l"
                " ON l.outbox_id = o.id AND o.state = 'pending' AND l.leased_until > now()"
                " GROUP BY 1"
            )
        )


def row(database_url: str, identifier: str) -> dict[str, Any]:
    """A row as operators see it: pending with a live lease is in flight (migration
    outbox_0020: the lease lives in the lease table), held by the lease's relay until its
    deadline."""
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT o.*, l.leased_by AS lease_holder, l.leased_until, l.lease_token AS lease"
            " FROM meter_event_outbox o LEFT JOIN meter_event_outbox_leases l"
            " ON l.outbox_id = o.id AND o.state = 'pending' AND l.leased_until > now()"
            " WHERE o.identifier = %s",
            (identifier,),
        )
        values = cur.fetchone()
        assert values is not None, identifier
        found = dict(zip([c.name for c in cur.description or []], values, strict=True))
        holder, until, lease = (
            found.pop("lease_holder"),
            found.pop("leased_until"),
            found.pop("lease"),
        )
        if lease is not None:
            found.update(state="in_flight", leased_by=holder, available_at=until, lease_token=lease)
        return found


def expire_leases(conn: psycopg.Connection[Any]) -> None:
    """Every lease runs out now (a dead relay's lease simply expires), of either kind."""
    conn.execute("UPDATE meter_event_outbox_leases SET leased_until = now() - interval '1 second'")
    conn.execute(
        "UPDATE meter_event_outbox SET available_at = now() - interval '1 second'"
        " WHERE state = 'in_flight'"
    )


def insert_usage(
    database_url: str,
    n: int,
    customer: str = "cus_1",
    prefix: str = "u",
    event_name: str = "api_calls",
    customers: int = 1,
) -> list[str]:
    """Bulk-insert n usage rows through the SQL function (fast, no per-row round trip)."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage(%s, CASE WHEN %s = 1 THEN %s ELSE %s || (g %% %s) END,"
            " 1, %s || g, notify => g = %s) FROM generate_series(1, %s) g",
            (event_name, customers, customer, customer, customers, prefix, n, n),
        )
    return [f"{prefix}{g}" for g in range(1, n + 1)]


def max_concurrent_per_lane(emulator: Emulator) -> int:
    """The most calls the emulator ever saw at once for one (customer, meter)."""
    lanes = emulator.stats()["max_concurrent_per_customer_meter"]
    return max((lane["max_concurrent"] for lane in lanes), default=0)


# Conditions for RunningRelay.until (async: `until` awaits them between outcome batches).


async def accepted(database_url: str, n: int) -> bool:
    """Exactly `n` rows are accepted."""
    return states(database_url).get("accepted", 0) == n


async def count_is(database_url: str, state: str, n: int) -> bool:
    return states(database_url).get(state, 0) == n


async def at_least(database_url: str, state: str, n: int) -> bool:
    return states(database_url).get(state, 0) >= n


async def state_is(database_url: str, identifier: str, state: str) -> bool:
    return row(database_url, identifier)["state"] == state


async def code_is(database_url: str, identifier: str, code: str) -> bool:
    return row(database_url, identifier)["last_error_code"] == code


def claim(conn: psycopg.Connection, relay_id: str, lease: float, n: int = 10) -> list[Claimed]:
    """The relay's two statements: the read-only walk, then the claim of what it chose."""
    store = SyncStore(conn)
    walked = store.walk(FIRST_LANE, n, exclusive=True)
    return store.claim(
        walked.ids, fill=0, exclusive=True, relay_id=relay_id, lease_seconds=lease, one_walk=True
    )


def fold(conn: psycopg.Connection) -> None:
    """The relay's fold (each upkeep turn): it folds the tally deltas, and notices a crash's
    reset of the UNLOGGED tables (their markers gone)."""
    SyncStore(conn).all(queries.FOLD_COUNTS({}))
