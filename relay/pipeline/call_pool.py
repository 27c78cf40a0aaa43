"""Reusable worker tasks for v1 calls (one row each), instead of a new task per call.

Why: a task per call cost the relay about a quarter of its CPU per row on the database path
(creating and registering the task, its done callback, one more event-loop round each). Here a
queued row is taken by a worker that is already running: a worker whose call returns takes the
next row at once, so calls that never wait (refused locally, held back) cost no round of the
event loop at all.

Concurrency is unchanged: a worker that starts (woken, or new) and leaves rows in the queue
brings in two more workers, so a claim of n rows whose calls wait for Stripe has them all in
flight within about log2(n) rounds of the event loop, each on its own worker, and a worker
whose call returned keeps one more coming while rows wait. Parked workers cost a suspended
coroutine each; there are never more than the peak number of calls in flight, plus two.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from relay.core.rows import Claimed

log = structlog.get_logger("relay")

FAN_OUT = 2  # workers a starting worker brings in while rows wait


class CallPool:
    """Runs `call(row)` for every row `add`ed, at most one row per worker at a time.

    `spawn` starts a worker as one of the executor's tasks (so draining at shutdown covers
    them) and returns it. After `close`, workers finish the queue and end instead of parking;
    `take_queued` hands back what no worker started.
    """

    def __init__(
        self,
        call: Callable[[Claimed], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        crashed: Callable[[Exception], None],
    ) -> None:
        self._call = call
        self._spawn = spawn
        self._crashed = crashed  # a bug of ours: the relay stops (docs/design.md, "Errors")
        self._queue: deque[Claimed] = deque()
        self._parked: list[asyncio.Future[None]] = []
        self._coming = 0  # workers woken or started for the queue, not running yet
        self._unstarted: set[asyncio.Task[None]] = set()  # new workers before their first step
        self._closed = False

    def add(self, rows: list[Claimed]) -> None:
        self._queue.extend(rows)
        if not self._coming:
            self._bring(1)

    def close(self) -> None:
        """Shutdown: parked workers end now, busy ones once the queue is empty."""
        self._closed = True
        while self._parked:
            waker = self._parked.pop()
            if not waker.done():
                self._coming += 1  # as for any woken worker, until it runs
                waker.set_result(None)

    def take_queued(self) -> list[Claimed]:
        """The rows no worker has started (after the drain's grace)."""
        rows = list(self._queue)
        self._queue.clear()
        return rows

    def _bring(self, n: int) -> None:
        """Bring up to `n` more workers to the queue (no more than it has rows for): wake
        parked ones, start new ones for the rest."""
        n = min(n, len(self._queue) - self._coming)
        while n > 0:
            self._coming += 1
            n -= 1
            while self._parked:
                waker = self._parked.pop()
                if not waker.done():  # a worker cancelled while parked left a done future
                    waker.set_result(None)
                    break
            else:
                task = self._spawn(self._work())
                self._unstarted.add(task)
                task.add_done_callback(self._ended)

    def _arrived(self) -> None:
        """A worker brought in by `_bring` is running: it no longer counts as coming."""
        self._coming -= 1

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A new worker ended; if it never ran (cancelled before its first step), it never
        arrived: someone else must come for the queue (unless the pool is closed)."""
        if task in self._unstarted:
            self._unstarted.discard(task)
            self._arrived()
            if not self._closed:  # at shutdown, `take_queued` hands the rows back
                self._bring(1)

    async def _work(self) -> None:
        if (me := asyncio.current_task()) is not None:
            self._unstarted.discard(me)
        queue = self._queue
        while True:
            self._arrived()
            starting = True
            while queue:
                row = queue.popleft()
                if queue and starting:
                    self._bring(FAN_OUT)
                elif queue and not self._coming:  # back from a call: keep one coming
                    self._bring(1)
                starting = False
                try:
                    await self._call(row)
                except Exception as err:  # a bug of ours: the worker lives on to drain the queue
                    log.exception("call_crashed", identifier=row.identifier)
                    self._crashed(err)
            if self._closed:
                return
            waker = asyncio.get_running_loop().create_future()
            self._parked.append(waker)
            try:
                await waker
            except asyncio.CancelledError:
                if waker.done() and not waker.cancelled():  # woken, then cancelled: not coming
                    self._arrived()
                    if not self._closed:
                        self._bring(1)
                raise
