"""The v1 call pool: calls that never wait share one worker; calls that wait each get their
own, all at once; shutdown ends parked workers and hands back rows no call started."""

import asyncio
from collections.abc import Coroutine
from typing import Any

from relay.core.config import Settings
from relay.core.rows import Claimed, Outcome
from relay.pipeline.call_pool import CallPool
from relay.pipeline.executor import Executor
from relay.stripe.auth_gate import AuthGate
from relay.stripe.classify import Classified
from relay.stripe.rate_limit import RateLimiter
from tests.unit.rows import claimed


def rows(n: int) -> list[Claimed]:
    return [claimed(id=i, identifier=f"u{i}") for i in range(1, n + 1)]


class Tasks:
    """A spawn that keeps the workers (the executor's role)."""

    def __init__(self) -> None:
        self.started: list[asyncio.Task[None]] = []
        self.crashes: list[Exception] = []

    def crashed(self, err: Exception) -> None:
        self.crashes.append(err)

    def spawn(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(call)
        self.started.append(task)
        return task

    async def close(self, pool: CallPool) -> None:
        pool.close()
        await asyncio.wait_for(asyncio.gather(*self.started), 1)


async def test_calls_that_never_wait_share_one_worker() -> None:
    done: list[str] = []

    async def call(row: Claimed) -> None:
        done.append(row.identifier)

    tasks = Tasks()
    pool = CallPool(call, tasks.spawn, tasks.crashed)
    pool.add(rows(500))
    pool.add(rows(3))
    await tasks.close(pool)
    assert len(done) == 503
    # One worker ran everything; the two it brought in for the queue found it empty.
    assert len(tasks.started) <= 3


async def test_calls_that_wait_are_all_in_flight_within_a_few_loop_rounds() -> None:
    """A task per call had every call of a claim out in the next round of the event loop.
    Each starting worker brings in two more: 100 calls are out within log2(100) rounds, not
    one more per round."""
    started: list[str] = []
    gate = asyncio.Event()

    async def call(row: Claimed) -> None:
        started.append(row.identifier)
        await gate.wait()

    tasks = Tasks()
    pool = CallPool(call, tasks.spawn, tasks.crashed)
    pool.add(rows(100))
    for _ in range(10):
        await asyncio.sleep(0)  # one round of the event loop
    in_flight = len(started)
    gate.set()
    await tasks.close(pool)
    assert in_flight == 100, f"{in_flight} of 100 calls in flight after 10 rounds"


class Recorder:
    """A call that records rows and lets the test await a given row."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self._seen: dict[str, asyncio.Event] = {}

    async def call(self, row: Claimed) -> None:
        self.done.append(row.identifier)
        self._seen.setdefault(row.identifier, asyncio.Event()).set()

    async def saw(self, identifier: str) -> None:
        await asyncio.wait_for(self._seen.setdefault(identifier, asyncio.Event()).wait(), 1)


async def test_a_worker_cancelled_right_after_being_woken_does_not_stall_the_pool() -> None:
    calls, tasks = Recorder(), Tasks()
    pool = CallPool(calls.call, tasks.spawn, tasks.crashed)
    pool.add(rows(1))
    await calls.saw("u1")  # the worker ran u1 and parked
    pool.add([claimed(id=2, identifier="u2")])  # wakes the parked worker...
    tasks.started[0].cancel()  # ...which is cancelled before it runs
    await calls.saw("u2")  # another worker came instead
    assert calls.done == ["u1", "u2"]


async def test_a_new_worker_cancelled_before_its_first_step_does_not_stall_the_pool() -> None:
    calls, tasks = Recorder(), Tasks()
    pool = CallPool(calls.call, tasks.spawn, tasks.crashed)
    pool.add(rows(1))  # starts a worker
    tasks.started[0].cancel()  # cancelled before its first step
    await calls.saw("u1")
    assert calls.done == ["u1"]


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
    pool = CallPool(call, tasks.spawn, tasks.crashed)
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
    pool = CallPool(call, tasks.spawn, tasks.crashed)
    gate.set()
    for _ in range(20):
        pool.add(rows(5))
        await all_parked(pool, tasks)
    await tasks.close(pool)
    assert calls == 100 and len(tasks.started) <= 6


async def all_parked(pool: CallPool, tasks: Tasks) -> None:
    """Until every live worker has run out of calls and parked: rounds of the event loop, so
    the next `add` meets parked workers however slow the machine is (a timed pause did not).
    The pool signals no event when a worker parks, so this yields one round at a time."""
    while len(pool._parked) < sum(not task.done() for task in tasks.started):  # noqa: ASYNC110
        await asyncio.sleep(0)


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


async def test_a_call_that_crashes_is_reported_and_its_worker_goes_on() -> None:
    """A bug in a call reaches the executor (which stops the relay); the queue still drains."""
    done: list[str] = []

    async def call(row: Claimed) -> None:
        if row.identifier == "u1":
            raise TypeError("bug")
        done.append(row.identifier)

    tasks = Tasks()
    pool = CallPool(call, tasks.spawn, tasks.crashed)
    pool.add(rows(2))
    await tasks.close(pool)
    assert [repr(e) for e in tasks.crashes] == ["TypeError('bug')"] and done == ["u2"]
