"""The relay loop: claim due rows, send each outside any transaction, write outcomes in batches.

Three cooperating tasks:
- the dispatcher claims rows (round robin over lanes) while there is capacity, and otherwise
  waits for a hint, a freed lane, the poll timer or the stop signal;
- one task per claimed row calls Stripe (paced by the rate limiter) and queues its outcome;
- the outcome writer flushes queued outcomes in one `UPDATE ... FROM unnest(...)` per batch,
  with a compare-and-set on each row's lease token.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from relay import metrics
from relay.classify import Classified, Verdict
from relay.config import Settings
from relay.db import Database
from relay.policy import decide, local_refusal
from relay.ratelimit import RateLimiter
from relay.rows import Claimed, Outcome
from relay.wakeup import Wakeup

log = structlog.get_logger("relay")

# After a hint, look again this soon: writers that committed just after the notifying one were
# coalesced into its hint (see outbox_wake()).
HINT_RECHECK_S = 0.02
OUTCOME_FLUSH_S = 0.005
OUTCOME_BATCH = 500
UPKEEP_INTERVAL_S = 10.0
STREAM_BATCH = 100  # Stripe's maximum events per meter event stream request


class Sender(Protocol):
    async def send(self, row: Claimed) -> tuple[Classified, float]: ...
    async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]: ...
    async def auth_ok(self) -> bool: ...


@dataclass
class RelayState:
    """What /readyz and metrics report about this relay."""

    auth_ok: bool = True
    started: bool = False
    last_loop: float = field(default_factory=time.monotonic)
    inflight: int = 0


class Relay:
    """One relay process; several can run against the same database."""

    def __init__(self, settings: Settings, db: Database, sender: Sender, wakeup: Wakeup) -> None:
        self.settings = settings
        self.db = db
        self.sender = sender
        self.wakeup = wakeup
        rate = settings.effective_rate_limit()
        # A small catch-up burst (1% of a second) so a momentarily idle limiter does not lose
        # slots; any one-second window still sees at most 1.01 x the rate.
        self.limiter = RateLimiter(rate, burst=max(1.0, rate / 100))
        self.state = RelayState()
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cursor = ("", "")
        self._recheck_at = 0.0
        self._dedup_window = timedelta(hours=settings.dedup_window_hours)
        self._claim_query = "claim" if settings.stripe_api_mode == "v1" else "claim_any"
        # Notified after every outcome batch is written: tests and tools await it instead of
        # sleeping.
        self.flushed = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain within the shutdown grace period."""
        writer = asyncio.create_task(self._write_outcomes(), name="outcome-writer")
        writer.add_done_callback(lambda task: self._writer_died(task, stop))
        upkeep = asyncio.create_task(self._upkeep(stop), name="upkeep")
        self.wakeup.start()
        self.state.started = True
        log.info(
            "relay_started",
            relay_id=self.settings.relay_id,
            rate_limit=self.limiter.ceiling,
            concurrency=self.settings.concurrency,
            mode=self.settings.stripe_api_mode,
            poll_only=self.settings.poll_only,
        )
        try:
            await self._dispatch(stop)
        finally:
            await self._drain()
            if not writer.done():
                with contextlib.suppress(TimeoutError):  # bounded: never hang on exit
                    await asyncio.wait_for(self._outcomes.join(), self.settings.shutdown_grace + 10)
            upkeep.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await self.wakeup.stop()
            log.info("relay_stopped", relay_id=self.settings.relay_id)

    async def _dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.state.last_loop = time.monotonic()
            if not self.state.auth_ok:
                await self._wait_for_auth(stop)
                continue
            wanted = self._wanted()
            if wanted and await self._claim(wanted) == wanted:
                continue  # more may be due right now
            await self.wakeup.wait(self._wait_timeout(), stop)

    def _wanted(self) -> int:
        """Rows to claim now: none while capacity is nearly used up.

        Claiming a few rows after every completion would put one claim per handful of rows on
        the critical path; waiting until a quarter of the capacity is free (or the relay is
        idle, for latency) keeps claims large and rare under load.
        """
        free = self._capacity() - len(self._tasks)
        threshold = min(self.settings.batch_size, max(1, self._capacity() // 4))
        if free <= 0 or (self._tasks and free < threshold):
            return 0
        return min(self.settings.batch_size, free)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        if self._recheck_at > now:
            return min(self.settings.poll_interval, self._recheck_at - now)
        return self.settings.poll_interval

    def _capacity(self) -> int:
        """Rows held at once: the concurrency, but never more than the rate limiter can send
        within a third of the lease (a row queued behind the limiter must not outlive it)."""
        paced = int(self.limiter.rate * self.settings.lease_seconds / 3) + 1
        return max(1, min(self.settings.concurrency, paced))

    async def _claim(self, wanted: int) -> int:
        """Claim up to `wanted` rows (round robin over lanes) and start sending them."""
        rows, cursor = await self._claim_from(self._cursor, wanted)
        if len(rows) < wanted and cursor is None and self._cursor != ("", ""):
            more, cursor = await self._claim_from(("", ""), wanted - len(rows))  # wrap around
            rows += more
        self._cursor = cursor or ("", "")
        if rows:
            self._recheck_at = time.monotonic() + HINT_RECHECK_S
            metrics.CLAIMED.inc(len(rows))
        for job in self._jobs(rows):
            task = asyncio.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.state.inflight = len(self._tasks)
        metrics.INFLIGHT.set(len(self._tasks))
        return len(rows)

    def _jobs(self, rows: list[Claimed]) -> list[Coroutine[Any, Any, None]]:
        """v1: one call per row. v2 stream: reports share calls of up to 100 events."""
        if self.settings.stripe_api_mode == "v1":
            return [self._handle(row) for row in rows]
        reports = [r for r in rows if r.action == "report"]
        jobs = [self._handle(r) for r in rows if r.action != "report"]  # cancels are v1 only
        by_account: dict[str | None, list[Claimed]] = {}
        for r in reports:  # a stream session belongs to one (connected) account
            by_account.setdefault(r.stripe_account, []).append(r)
        return jobs + [
            self._handle_stream(group[i : i + STREAM_BATCH])
            for group in by_account.values()
            for i in range(0, len(group), STREAM_BATCH)
        ]

    async def _claim_from(
        self, after: tuple[str, str], wanted: int
    ) -> tuple[list[Claimed], tuple[str, str] | None]:
        """One claim statement; returns the rows and where the next claim should start
        (None: the walk reached the last lane, start again from the first)."""
        try:
            result = await self.db.fetch(
                self._claim_query,
                {
                    "after_customer": after[0],
                    "after_event_name": after[1],
                    # Lanes right after the cursor are rarely busy (round robin): small margin.
                    "max_lanes": 2 * wanted + 16,
                    "batch_size": wanted,
                    "relay_id": self.settings.relay_id,
                    "lease_seconds": self.settings.lease_seconds,
                },
            )
        except Exception as err:  # database down: back off, nothing is lost
            log.error("claim_failed", error=str(err))
            metrics.DB_ERRORS.inc()
            await asyncio.sleep(1.0)
            return [], None
        rows = [Claimed.from_row(r[:-3]) for r in result if r[0] is not None]
        if not result or result[0][-1]:  # no lanes after the cursor, or the walk ran out
            return rows, None
        return rows, (result[0][-3], result[0][-2])

    async def _handle(self, row: Claimed) -> None:
        """Send one row and queue its outcome, whatever happens to the call."""
        await self._handle_stream([row], single=True)

    async def _handle_stream(self, rows: list[Claimed], single: bool = False) -> None:
        """Send rows (one v1 call, or one v2 stream call for many) and queue every outcome.

        Cancellation (shutdown) and unexpected errors release the rows as "unknown outcome":
        pending, same idempotency key, so the retry replays whatever Stripe did.
        """
        now = datetime.now(UTC)
        refused = [o for o in (local_refusal(r, now, self._dedup_window) for r in rows) if o]
        refused_ids = {o.row.id for o in refused}
        sendable = [r for r in rows if r.id not in refused_ids]
        outcomes = list(refused)
        try:
            if sendable:
                await self.limiter.acquire()
                if single:
                    result, latency_ms = await self.sender.send(sendable[0])
                else:
                    result, latency_ms = await self.sender.send_stream(sendable)
                self._react(result)
                outcomes += [
                    decide(r, result, self.settings.max_attempts, latency_ms) for r in sendable
                ]
        except asyncio.CancelledError:
            outcomes += [_released(r, "shutdown", "released at shutdown", 0.0) for r in sendable]
            raise
        except Exception as err:  # a bug of ours or an unwrapped library error
            log.exception("send_crashed", identifiers=[r.identifier for r in sendable][:10])
            message = f"{type(err).__name__}: {err}"
            outcomes += [_released(r, "relay_error", message, 5.0) for r in sendable]
        finally:
            for outcome in outcomes:
                self._outcomes.put_nowait(outcome)

    def _react(self, result: Classified) -> None:
        metrics.stripe_call(result.verdict.value).inc()
        if result.verdict is Verdict.RETRY_SLOWER:
            self.limiter.on_rate_limited()
            metrics.RATE.set(self.limiter.rate)
        elif result.verdict is Verdict.AUTH and self.state.auth_ok:
            self.state.auth_ok = False
            metrics.AUTH_PAUSED.set(1)
            log.error(
                "stripe_auth_failed",
                code=result.code,
                message=result.message,
                action="sending paused; rows stay pending; re-checking the key",
            )

    async def _wait_for_auth(self, stop: asyncio.Event) -> None:
        """Probe the key periodically; resume sending when it works again."""
        while not stop.is_set():
            if await self.sender.auth_ok():
                self.state.auth_ok = True
                metrics.AUTH_PAUSED.set(0)
                log.info("stripe_auth_restored")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.auth_probe_interval)

    async def _drain(self) -> None:
        """Let in-flight calls finish within the grace period; cancel (release) the rest."""
        if not self._tasks:
            return
        done, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        log.info("drained", finished=len(done), released=len(pending))

    def _writer_died(self, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        """Without the writer no outcome is ever recorded: stop (and let the supervisor
        restart us) rather than keep sending rows whose results are lost."""
        if not task.cancelled() and task.exception() is not None:
            log.error("outcome_writer_died", error=repr(task.exception()))
            stop.set()

    async def _upkeep(self, stop: asyncio.Event) -> None:
        """Small periodic duties: fold the status counters (see outbox_fold_counts())."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), UPKEEP_INTERVAL_S)
            try:
                await self.db.fetch("fold_counts")
            except Exception as err:
                log.warning("fold_counts_failed", error=str(err))

    async def _write_outcomes(self) -> None:
        """Batch outcomes into one CAS update; retry the batch if the database is away."""
        while True:
            batch = [await self._outcomes.get()]
            await asyncio.sleep(OUTCOME_FLUSH_S)  # let the batch fill
            while len(batch) < OUTCOME_BATCH and not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            await self._flush(batch)
            for _ in batch:
                self._outcomes.task_done()
            self.wakeup.poke()  # lanes and capacity were freed
            async with self.flushed:
                self.flushed.notify_all()

    async def _flush(self, batch: list[Outcome]) -> None:
        delay = 0.2
        while True:
            try:
                written = await self.db.fetch("record_outcomes", outcome_params(batch))
                break
            except Exception as err:
                log.error("outcome_write_failed", error=str(err), rows=len(batch), retry_in_s=delay)
                metrics.DB_ERRORS.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        report_batch(batch, {row_id for (row_id,) in written})


def _released(row: Claimed, code: str, message: str, delay: float) -> Outcome:
    """Outcome unknown: back to pending with the same key (the attempt counts)."""
    return Outcome(row=row, state="pending", delay=delay, code=code, message=message[:500])


def outcome_params(batch: list[Outcome]) -> dict[str, str]:
    """The batch as one JSON document for `record_outcomes` (UPDATE ... FROM a record set)."""
    return {
        "batch": json.dumps(
            [
                {
                    "id": o.row.id,
                    "token": str(o.row.lease_token),
                    "state": o.state,
                    "delay": o.delay,
                    "counted": o.counted,
                    "new_key": o.new_key,
                    "code": o.code,
                    "message": o.message and o.message.replace("\x00", ""),  # jsonb refuses NUL
                    "request_id": o.request_id,
                    "first_attempt_at": o.first_attempt_at and o.first_attempt_at.isoformat(),
                }
                for o in batch
            ]
        )
    }


def report_batch(batch: list[Outcome], written: set[int]) -> None:
    """One log event per batch, one per failure; metrics per outcome."""
    states: dict[str, int] = {}
    for o in batch:
        states[o.state] = states.get(o.state, 0) + 1
        metrics.outcome(o.state, o.code).inc()
        if o.latency_ms is not None:
            metrics.LATENCY.observe(o.latency_ms / 1000)
        if o.row.id not in written:
            log.warning(
                "lease_lost",
                identifier=o.row.identifier,
                state=o.state,
                detail="row was re-claimed after the lease expired; outcome dropped",
            )
        elif o.state in ("failed", "pending") and o.code:
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
    log.info("outcomes", rows=len(batch), written=len(written), **states)
