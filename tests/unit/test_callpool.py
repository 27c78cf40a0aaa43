"""The v1 call pool: calls that never wait share one worker; calls that wait each get their
own, all at once; shutdown ends parked workers and hands back rows no call started."""

import asyncio
from collections.abc import Coroutine
from typing import Any

from relay.authgate import AuthGate
from relay.callpool import CallPool
from relay.classify import Classified
from relay.config import Settings
from relay.executor import Executor
from relay.ratelimit import RateLimiter
from relay.rows import Claimed, Outcome
from tests.unit.rows import claimed


def rows(n: int) -> list[Claimed]:
    return [claimed(id=i, identifier=f"u{i}") for i in range(1, n + 1)]


class Tasks:
    """A spawn that keeps the workers (the executor's role)."""

    def __init__(self) -> None:
        self.started: list[asyncio.Task[None]] = []

    def spawn(self, call: Coroutine[Any, Any, None]) -> None:
        self.started.append(asyncio.create_task(call))

    async def close(self, pool: CallPool) -> None:
        pool.close()
        await asyncio.wait_for(asyncio.gather(*self.started), 1)


async def test_calls_that_never_wait_share_one_worker() -> None:
    done: list[str] = []

    async def call(row: Claimed) -> None:
        done.append(row.identifier)

    tasks = Tasks()
    pool = CallPool(call, tasks.spawn)
    pool.add(rows(500))
    pool.add(rows(3))
    await tasks.close(pool)
    assert len(done) == 503
    # One worker ran everything; at most one more was woken for the queue and found it empty.
    assert len(tasks.started) <= 2


async def test_calls_that_wait_each_get_a_worker_at_once() -> None:
    release = asyncio.Event()
    in_flight: set[str] = set()
    everyone_out = asyncio.Event()

    async def call(row: Claimed) -> None:
        in_flight.add(row.identifier)
        if len(in_flight) == 50:
            everyone_out.set()
        await release.wait()

    tasks = Tasks()
    pool = CallPool(call, tasks.spawn)
    pool.add(rows(50))
    await asyncio.wait_for(everyone_out.wait(), 1)  # all 50 calls out before any returns
    release.set()
    await tasks.close(pool)
    assert len(tasks.started) == 50  # one per call in flight


async def test_parked_workers_are_reused() -> None:
    gate = asyncio.Event()
    calls = 0

    async def call(row: Claimed) -> None:
        nonlocal calls
        calls += 1
        await gate.wait()

    tasks = Tasks()
    pool = CallPool(call, tasks.spawn)
    gate.set()
    for _ in range(20):
        pool.add(rows(5))
        await asyncio.sleep(0.01)
    await tasks.close(pool)
    assert calls == 100 and len(tasks.started) <= 6


async def test_shutdown_hands_back_rows_no_call_started() -> None:
    class Silent:
        async def send(self, row: Claimed) -> tuple[Classified, float]:
            raise AssertionError("no call should start")

        async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
            raise AssertionError("no call should start")

    outcomes: list[Outcome] = []
    gate = AuthGate(lambda ok: None, 1.0, 10.0)
    executor = Executor(Settings(), Silent(), RateLimiter(10**6), gate, outcomes.append)
    executor.start(rows(3))
    await executor.drain(0)  # before any worker ran
    assert [(o.row.identifier, o.state, o.code, o.counted) for o in outcomes] == [
        (f"u{i}", "pending", "shutdown", 0) for i in (1, 2, 3)
    ]
    assert not any(o.reached_stripe for o in outcomes)  # nothing sent: the dedup clock stops
