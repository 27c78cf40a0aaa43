"""v2 stream calls filled from a queue per account, not one call per claim.

Claims arrive in any size (a trickle of single rows, or a thousand at once); a stream call
carries up to 100 events of one account. Claimed reports wait in their account's queue. One
call per account is "forming" at a time: it lingers until a full call's worth is queued (or
the oldest row has waited `linger`), waits for its rate-limiter slot, and only then takes up
to 100 rows. Rows keep arriving while a call waits for its slot, so a slow limiter makes
fuller calls rather than a longer queue of small ones (at 25 calls/s and 300 events/s each
call carries ~12 events instead of one claim's 1-8, which let the backlog outlive its lease).

A row never waits past `max_wait` (a fraction of its lease) for its call: it is released
unsent (pending, attempt not counted, same identifier) before another relay could re-claim
it while it is still queued here.
"""

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from relay.core.rows import Claimed, Outcome
from relay.core.vocabulary import RELAY_ERROR, SHUTDOWN, STREAM_WAIT_EXPIRED, RelayCode
from relay.stripe.rate_limit import RateLimiter

STREAM_BATCH = 100  # Stripe's maximum events per meter event stream request


class StreamBatcher:
    """Queues claimed reports per account (`add`) and forms their calls.

    `send(rows)` makes one call (the limiter slot already taken) and records every row's
    outcome; `record` takes the outcome of a row released unsent. `spawn` runs a coroutine as
    one of the executor's call tasks (so draining at shutdown covers forming calls too).
    """

    def __init__(
        self,
        limiter: RateLimiter,
        linger: float,
        max_wait: float,
        send: Callable[[list[Claimed]], Awaitable[None]],
        record: Callable[[Outcome], None],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._linger = linger
        self._max_wait = max_wait
        self._send = send
        self._record = record
        self._spawn = spawn
        self._clock = clock
        self._queues: dict[str | None, deque[tuple[float, Claimed]]] = {}
        self._full: dict[str | None, asyncio.Event] = {}  # wakes a lingering call

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def add(self, rows: list[Claimed]) -> None:
        """Queue claimed reports; start a forming call for each account that has none."""
        now = self._clock()
        touched: set[str | None] = set()
        for row in rows:
            account = row.stripe_account
            queue = self._queues.get(account)
            if queue is None:
                queue = self._queues[account] = deque()
                self._full[account] = asyncio.Event()
                self._spawn(self._form(account, queue))
            queue.append((now, row))
            touched.add(account)
        for account in touched:
            if len(self._queues[account]) >= STREAM_BATCH:
                self._full[account].set()

    async def _form(self, account: str | None, queue: deque[tuple[float, Claimed]]) -> None:
        """Linger, take a limiter slot, then take the batch; the next call starts forming at
        once (calls overlap), and this one is sent."""
        try:
            await self._linger_on(account, queue)
            await self._limiter.acquire()
        except asyncio.CancelledError:  # shutdown before the call formed: nothing was sent
            self._release_all(account, queue, SHUTDOWN, "released at shutdown")
            raise
        except Exception as err:  # a bug of ours: nothing was sent; the executor stops the relay
            self._release_all(account, queue, RELAY_ERROR, f"{type(err).__name__}: {err}"[:500])
            raise
        batch = self._take(queue)
        if queue:
            self._full[account] = asyncio.Event()
            self._spawn(self._form(account, queue))
            if len(queue) >= STREAM_BATCH:
                self._full[account].set()
        else:
            del self._queues[account], self._full[account]
        if batch:
            await self._send(batch)

    async def _linger_on(self, account: str | None, queue: deque[tuple[float, Claimed]]) -> None:
        full = self._full[account]
        while len(queue) < STREAM_BATCH:
            remaining = queue[0][0] + self._linger - self._clock()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(full.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, queue: deque[tuple[float, Claimed]]) -> list[Claimed]:
        """Up to 100 rows, oldest first; rows queued longer than `max_wait` go back unsent."""
        deadline = self._clock() - self._max_wait
        while queue and queue[0][0] < deadline:
            self._record(held_too_long(queue.popleft()[1]))
        return [queue.popleft()[1] for _ in range(min(STREAM_BATCH, len(queue)))]

    def _release_all(
        self,
        account: str | None,
        queue: deque[tuple[float, Claimed]],
        code: RelayCode,
        message: str,
    ) -> None:
        while queue:
            self._record(Outcome.unsent(queue.popleft()[1], code, message))
        self._queues.pop(account, None)
        self._full.pop(account, None)


def held_too_long(row: Claimed) -> Outcome:
    return Outcome.unsent(row, STREAM_WAIT_EXPIRED, "waited too long for a stream call; released")
