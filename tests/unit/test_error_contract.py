"""The error contract (docs/design.md, "Errors: who retries what"), service by service.

A service retries only the errors of the resource it waits on (relay.core.retryable); a bug
(here a `TypeError` from its store or dependency) reaches the supervisor: `service_died` is
logged and the relay stops. A psycopg OperationalError is still retried.
"""

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import structlog.testing

from relay.cli.commands import _failure
from relay.core.config import Settings
from relay.core.errors import ServiceDied
from relay.core.rows import Claimed, Outcome
from relay.db.store import Beat, Walked
from relay.pipeline import maintenance
from relay.pipeline.completer import Completer
from relay.pipeline.executor import Executor, RelayState
from relay.pipeline.producer import Capacity, Producer
from relay.pipeline.supervisor import Services
from relay.pipeline.wakeup import Wakeup
from relay.stripe.auth_gate import AuthGate
from relay.stripe.classify import Classified
from relay.stripe.rate_limit import RateLimiter
from relay.stripe.rate_share import RateShare
from tests.unit.rows import claimed

BUG = TypeError("bug")
DOWN = psycopg.OperationalError("server closed the connection unexpectedly")


class Faulty:
    """A store whose statements answer with the next scripted error, then with `ok`;
    `called` is set on every statement, so a test awaits it instead of sleeping."""

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.called = asyncio.Event()

    def _next(self) -> None:
        self.calls += 1
        self.called.set()
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error

    async def walk(self, after: Any, wanted: int, *, exclusive: bool) -> Walked:
        self._next()
        return Walked([1], None)

    async def claim(self, ids: Any, **params: Any) -> list[Claimed]:
        self._next()
        return []

    async def record_outcomes(self, batch: Any, relay_id: str) -> set[int]:
        self._next()
        return {o.row.id for o in batch}

    async def fold_counts(self) -> None:
        self._next()

    async def heartbeat(self, relay_id: str, token: Any, stale_seconds: float) -> Beat:
        self._next()
        return Beat(1, True)

    async def leave(self, relay_id: str, token: Any) -> None:
        self._next()


async def deaths(name: str, service: Coroutine[Any, Any, None], stop: asyncio.Event) -> list[Any]:
    """Run one service under the supervisor until it stops the relay; its service_died lines."""
    services = Services(stop)
    with structlog.testing.capture_logs() as logs:
        services.start(name, service)
        await asyncio.wait_for(stop.wait(), 5)
        await services.stop_all()
    assert services.died is not None  # Relay.run raises it after draining: exit code 1
    return [(e["service"], e["error"]) for e in logs if e["event"] == "service_died"]


def producer(store: Faulty) -> Producer:
    settings = Settings(stripe_api_mode="v1")
    return Producer(
        settings,
        store,  # type: ignore[arg-type]
        Wakeup("postgresql://", listen=False),
        Capacity(lambda: 10, 10),
        RelayState(),
        send=lambda rows: None,
        hand_back=lambda outcome: None,
    )


def completer(store: Faulty) -> Completer:
    settings = Settings(outcome_flush_delay=0)
    wakeup = Wakeup("postgresql://", listen=False)
    return Completer(settings, store, Capacity(lambda: 10, 10), wakeup)  # type: ignore[arg-type]


def share(store: Faulty) -> RateShare:
    return RateShare(store, RateLimiter(100), "r1", 100.0, interval=0.0)


async def test_a_walk_bug_stops_the_relay() -> None:
    stop = asyncio.Event()
    died = await deaths("producer", producer(Faulty(BUG)).run(stop), stop)
    assert died == [("producer", "TypeError('bug')")]


async def test_a_claim_bug_stops_the_relay() -> None:
    """The claim runs in the background: its crash still reaches the producer's loop."""
    stop = asyncio.Event()
    died = await deaths("producer", producer(Faulty(None, BUG)).run(stop), stop)
    assert died == [("producer", "TypeError('bug')")]


async def test_a_walk_the_database_failed_is_retried() -> None:
    store = Faulty(DOWN)
    stop = asyncio.Event()
    services = Services(stop)
    with structlog.testing.capture_logs() as logs:
        services.start("producer", producer(store).run(stop))
        while store.calls < 3:  # the failed walk, then a walk and its claim
            store.called.clear()
            await asyncio.wait_for(store.called.wait(), 5)
        await services.stop_all()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["walk_failed"]
    assert not stop.is_set() and services.died is None


async def test_an_outcome_write_bug_stops_the_relay() -> None:
    stop = asyncio.Event()
    writer = completer(Faulty(BUG))
    writer.record(Outcome.unsent(claimed(), "shutdown", "not sent"))
    died = await deaths("completer", writer.run(), stop)
    assert died == [("completer", "TypeError('bug')")]


async def test_an_outcome_write_the_database_failed_is_retried() -> None:
    store = Faulty(DOWN)
    writer = completer(store)
    stop = asyncio.Event()
    services = Services(stop)
    with structlog.testing.capture_logs() as logs:
        async with writer.flushed:
            services.start("completer", writer.run())
            writer.record(Outcome.unsent(claimed(), "shutdown", "not sent"))
            await asyncio.wait_for(writer.flushed.wait(), 5)
        await services.stop_all()
    assert store.calls == 2
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["outcome_write_failed"]
    assert services.died is None


async def test_a_fold_counts_bug_stops_the_relay() -> None:
    stop = asyncio.Event()
    died = await deaths(
        "fold_counts", maintenance.fold_counts(Faulty(BUG), 0.0, RelayState()), stop
    )  # type: ignore[arg-type]
    assert died == [("fold_counts", "TypeError('bug')")]


async def test_fold_counts_the_database_failed_is_retried() -> None:
    store = Faulty(DOWN)
    stop = asyncio.Event()
    services = Services(stop)
    services.start("fold_counts", maintenance.fold_counts(store, 0.0, RelayState()))  # type: ignore[arg-type]
    while store.calls < 2:
        store.called.clear()
        await asyncio.wait_for(store.called.wait(), 5)
    await services.stop_all()
    assert services.died is None


async def test_a_heartbeat_bug_stops_the_relay() -> None:
    stop = asyncio.Event()
    died = await deaths("heartbeat", maintenance.heartbeat(share(Faulty(BUG)), 0.0), stop)
    assert died == [("heartbeat", "TypeError('bug')")]


async def test_a_heartbeat_the_database_failed_fences_and_is_retried() -> None:
    store = Faulty(DOWN)
    rate_share = share(store)
    stop = asyncio.Event()
    services = Services(stop)
    services.start("heartbeat", maintenance.heartbeat(rate_share, 0.0))
    while store.calls < 2:
        store.called.clear()
        await asyncio.wait_for(store.called.wait(), 5)
    await services.stop_all()
    assert services.died is None and rate_share.live == 1


async def test_a_listener_bug_stops_the_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connect(*args: Any, **kwargs: Any) -> None:
        raise BUG

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)
    stop = asyncio.Event()
    died = await deaths("listener", Wakeup("postgresql://", listen=True).listen(), stop)
    assert died == [("listener", "TypeError('bug')")]


async def test_a_listener_connection_the_database_refused_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = Faulty(DOWN, DOWN)

    async def connect(*args: Any, **kwargs: Any) -> None:
        attempts._next()
        await asyncio.Event().wait()  # connected: listening

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)
    stop = asyncio.Event()
    services = Services(stop)
    services.start("listener", Wakeup("postgresql://", listen=True).listen())
    while attempts.calls < 3:
        attempts.called.clear()
        await asyncio.wait_for(attempts.called.wait(), 5)
    await services.stop_all()
    assert services.died is None


async def test_a_call_bug_stops_the_relay_after_its_rows_have_an_outcome() -> None:
    class Buggy:
        async def send(self, row: Claimed) -> tuple[Classified, float]:
            raise BUG

        async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
            raise BUG

    outcomes: list[Outcome] = []
    gate = AuthGate(lambda ok: None, 1.0, 10.0)
    executor = Executor(Settings(), Buggy(), RateLimiter(10**6), gate, outcomes.append)
    stop = asyncio.Event()
    with structlog.testing.capture_logs():
        executor.start([claimed(occurred_at=datetime.now(UTC))])  # due: it is sent
        died = await deaths("executor", executor.watch(), stop)
    assert died == [("executor", "TypeError('bug')")]
    assert [(o.state, o.code, o.kind) for o in outcomes] == [("pending", "relay_error", "released")]


def test_a_dead_service_ends_the_process_with_exit_code_1() -> None:
    message, code, foreseen = _failure(ServiceDied("completer", "TypeError('bug')"))
    assert code == 1 and foreseen
    assert message.startswith("the relay's completer service failed (TypeError('bug'))")


async def test_a_stream_call_that_crashes_while_forming_releases_its_rows_and_stops_the_relay() -> (
    None
):
    """The crash happens in the stream queue's own task, before any call: its rows go back
    unsent (not left without an outcome, their capacity held) and the relay stops."""

    class BrokenLimiter(RateLimiter):
        async def acquire(self) -> None:
            raise BUG

    outcomes: list[Outcome] = []
    gate = AuthGate(lambda ok: None, 1.0, 10.0)
    settings = Settings(stripe_api_mode="v2-stream", stream_linger_ms=0)
    executor = Executor(settings, Idle(), BrokenLimiter(10**6), gate, outcomes.append)
    stop = asyncio.Event()
    now = datetime.now(UTC)
    with structlog.testing.capture_logs():
        executor.start([claimed(id=i, identifier=f"u{i}", occurred_at=now) for i in (1, 2)])
        died = await deaths("executor", executor.watch(), stop)
    assert died == [("executor", "TypeError('bug')")]
    assert [(o.state, o.code, o.kind, o.counted) for o in outcomes] == [
        ("pending", "relay_error", "unsent", 0)
    ] * 2


class Idle:
    async def send(self, row: Claimed) -> tuple[Classified, float]:
        raise AssertionError("no call")

    async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
        raise AssertionError("no call")
