"""The completer: write outcomes back in batches, each row with a compare-and-set on its lease.

One loop: take the queued outcomes (up to OUTCOME_BATCH, after a short pause that lets a batch
fill), write them in one `record_outcomes` statement, up to MAX_FLUSHES batches at once (they
hold disjoint rows). A row stays held (counted against the capacity) until its outcome is
written. A database error (relay.core.retryable) is retried until the database is back; any
other error ends the loop, and so the relay (the supervisor stops it): without outcome writes
nothing is recorded.
"""

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime

import structlog

from relay.core import metrics, tracing
from relay.core.clock import host_clock
from relay.core.config import Settings
from relay.core.retryable import RETRYABLE
from relay.core.rows import Outcome
from relay.db.store import Store
from relay.pipeline.producer import Capacity
from relay.pipeline.wakeup import Wakeup

log = structlog.get_logger("relay")

OUTCOME_BATCH = 1000  # outcomes per write statement, at most
MAX_FLUSHES = 2  # outcome batches being written at once


class Completer:
    """Queues outcomes (`record`) and writes them (`run`)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        capacity: Capacity,
        wakeup: Wakeup,
        database_now: Callable[[], datetime] = host_clock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.capacity = capacity
        self.wakeup = wakeup
        self._database_now = database_now  # relay.core.clock.Clocks.database_now
        # A plain deque and two events, not an asyncio.Queue: `record` runs once per row, and
        # the queue's bookkeeping (put, get, task_done) was a visible share of the CPU per event.
        self._queue: deque[Outcome] = deque()
        self._queued = asyncio.Event()
        self._unwritten = 0  # recorded, not written yet (queued or being written)
        self._all_written = asyncio.Event()
        self._all_written.set()
        # Positions in the order of `record`: how many were recorded, how many taken into a
        # batch, and the first position of each batch being written (written_through_now).
        self._recorded = 0
        self._taken = 0
        self._writing: set[int] = set()
        self._settled = asyncio.Condition()
        # Notified after every outcome batch is written: tests and tools await it instead of
        # sleeping.
        self.flushed = asyncio.Condition()

    def record(self, outcome: Outcome) -> None:
        self._queue.append(outcome)
        self._recorded += 1
        self._unwritten += 1
        if self._unwritten == 1:
            self._all_written.clear()
        if not self._queued.is_set():
            self._queued.set()

    async def run(self) -> None:
        """Write batches until cancelled; a batch that fails for a reason other than the
        database being away ends the loop with its error."""
        async with asyncio.TaskGroup() as flushes:
            slots = asyncio.Semaphore(MAX_FLUSHES)
            while True:
                batch = await self._next_batch()
                start, self._taken = self._taken, self._taken + len(batch)
                self._writing.add(start)
                await slots.acquire()
                flushes.create_task(self._write(batch, slots, start), name="flush")

    # `timeout` bounds the wait (the database may be away): past it, the caller goes on.
    async def written_through_now(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until every outcome recorded before this call has been written (or its batch
        failed for good); False if `timeout` passed first. The meter refresh waits so before it
        releases held rows: a row held by a verdict of the catalogue it just replaced is then
        in the table, and released with the others."""
        target = self._recorded

        def done() -> bool:
            return self._taken >= target and all(start >= target for start in self._writing)

        try:
            async with self._settled:
                await asyncio.wait_for(self._settled.wait_for(done), timeout)
        except TimeoutError:
            return False
        return True

    # `timeout` is a share of the shutdown grace: past it, finish returns (it never raises).
    async def finish(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait (bounded) until every queued outcome is written."""
        try:
            await asyncio.wait_for(self._all_written.wait(), timeout)
        except TimeoutError:
            log.error("outcomes_not_written", rows=self._unwritten)

    async def _next_batch(self) -> list[Outcome]:
        queue = self._queue
        while not queue:
            self._queued.clear()
            await self._queued.wait()
        if len(queue) < OUTCOME_BATCH:
            await asyncio.sleep(self.settings.outcome_flush_delay)  # let the batch fill
        return [queue.popleft() for _ in range(min(OUTCOME_BATCH, len(queue)))]

    async def _write(self, batch: list[Outcome], slots: asyncio.Semaphore, start: int) -> None:
        try:
            tracer = tracing.active
            start_ns = time.time_ns() if tracer else 0
            written = await self._record_outcomes(batch)
            if tracer:
                tracer.written(batch, start_ns)
            report_batch(batch, written, self._database_now())
            self.wakeup.poke()  # lanes and capacity were freed
            async with self.flushed:
                self.flushed.notify_all()
        finally:
            self.capacity.release(len(batch))
            self._unwritten -= len(batch)
            if not self._unwritten:
                self._all_written.set()
            slots.release()
            self._writing.discard(start)
            async with self._settled:
                self._settled.notify_all()

    async def _record_outcomes(self, batch: list[Outcome]) -> set[int]:
        """The `record_outcomes` query, retried while the database is away."""
        delay = 0.2
        while True:
            try:
                return await self.store.record_outcomes(batch, self.settings.relay_id)
            except RETRYABLE as err:
                log.error("outcome_write_failed", error=str(err), rows=len(batch), retry_in_s=delay)
                metrics.DB_ERRORS.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def report_batch(batch: list[Outcome], written: set[int], now: datetime) -> None:
    """One log event per batch, one per failure; outcome counters per batch; the time from
    commit to acceptance of every accepted report (observed as one batch): `now` is the
    database's clock, the one `created_at` was written by."""
    waits: list[float] = []
    for o in batch:
        if o.row.id not in written:
            log.warning(
                "lease_lost",
                identifier=o.row.identifier,
                state=o.state,
                detail="row was re-claimed after the lease expired; outcome dropped",
            )
        elif o.state == "accepted":  # the hot path
            waits.append((now - o.row.created_at).total_seconds())
        elif o.state == "failed" or (o.state == "pending" and o.code and o.called):
            # Rows put back without a call (held on a 401/403, not due yet, shutdown) are
            # logged by what decided it, once per change, not once per row.
            log.warning(
                "outcome_failure",
                identifier=o.row.identifier,
                action=o.row.action,
                attempt=o.row.attempts + o.counted,
                state=o.state,
                code=o.code,
                message=o.message,
                stripe_request_id=o.request_id,
                latency_ms=o.latency_ms and round(o.latency_ms, 1),
            )
    metrics.COMMIT_TO_ACCEPTED.observe_many(waits)
    states: Counter[str] = Counter()
    for (state, code), n in Counter((o.state, o.code) for o in batch).items():
        metrics.outcome(state, code).inc(n)
        states[state] += n
    log.info("outcomes", rows=len(batch), written=len(written), **states)
