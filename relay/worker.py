"""The relay loop: claim due rows, send each outside any transaction, write outcomes in batches.

Cooperating tasks:
- the dispatcher chooses rows (a read-only walk, round robin over lanes) while there is
  capacity, and otherwise waits for a hint, a freed lane, the poll timer or the stop signal;
- each chosen batch is claimed (locked and leased in one short transaction) in the background,
  so the next batch is chosen meanwhile; at most MAX_CLAIMS claims run at once;
- one task per claimed row (v1) or per stream batch (v2) calls Stripe, paced by the rate
  limiter, and queues the outcome;
- the outcome writer flushes queued outcomes in one `UPDATE ... FROM jsonb_to_recordset(...)`
  per batch, with a compare-and-set on each row's lease token.
"""

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
import structlog

from relay import metrics
from relay.classify import Classified, Verdict
from relay.config import Settings
from relay.db import Database
from relay.policy import decide, local_refusal
from relay.ratelimit import RateLimiter
from relay.rows import Claimed, Outcome
from relay.share import RateShare
from relay.wakeup import Wakeup

log = structlog.get_logger("relay")

# After a hint, look again this soon: writers that committed just after the notifying one were
# coalesced into its hint (see outbox_wake()).
HINT_RECHECK_S = 0.02
OUTCOME_FLUSH_S = 0.005
OUTCOME_BATCH = 1000  # outcomes per write statement, at most
UPKEEP_INTERVAL_S = 10.0
STREAM_BATCH = 100  # Stripe's maximum events per meter event stream request
# Claim statements running at once: the next batch is chosen while the previous one is leased.
MAX_CLAIMS = 2
MAX_FLUSHES = 2  # outcome batches being written at once


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
        account = settings.rate_limit_scope == "account"
        self.share = RateShare(db, self.limiter, settings.relay_id, rate) if account else None
        self.state = RelayState()
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cursor = ("", "")
        self._recheck_at = 0.0
        self._dedup_window = timedelta(hours=settings.dedup_window_hours)
        # v1: one call in flight per (customer, meter), so a lane with a call out is skipped.
        self._exclusive = settings.stripe_api_mode == "v1"
        self._claims: set[asyncio.Task[None]] = set()
        self._leasing = 0  # rows chosen by a walk whose claim is still running
        self._held = 0  # rows claimed whose outcome is not written yet
        self._fill_full = True  # the last v2 top-up found as many rows as it asked for
        self._stopping = False
        # Notified after every outcome batch is written: tests and tools await it instead of
        # sleeping.
        self.flushed = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain within the shutdown grace period."""
        writer = asyncio.create_task(self._write_outcomes(stop), name="outcome-writer")
        writer.add_done_callback(lambda task: self._writer_died(task, stop))
        upkeep = asyncio.create_task(self._upkeep(stop), name="upkeep")
        if self.share:
            await self.share.join(stop)
            heartbeat = asyncio.create_task(self.share.run(), name="heartbeat")
        self.wakeup.start()
        self.state.started = True
        log.info(
            "relay_started",
            relay_id=self.settings.relay_id,
            rate_limit=self.limiter.ceiling,
            concurrency=self._capacity(),
            mode=self.settings.stripe_api_mode,
            poll_only=self.settings.poll_only,
        )
        try:
            await self._dispatch(stop)
        finally:
            await self._drain()
            if self.share:  # sent the last call: give the share back
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                await self.share.leave()
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
            if wanted and await self._claim(wanted):
                continue  # more may be due right now
            await self.wakeup.wait(self._wait_timeout(), stop)

    def _wanted(self) -> int:
        """Rows to claim now: none while capacity is nearly used up or claims are queued.

        Claiming a few rows after every completion would put one claim per handful of rows on
        the critical path; waiting until a quarter of the capacity is free (or the relay is
        idle, for latency) keeps claims large and rare under load. A row is held from its
        claim until its outcome is written (a queued outcome's row is still in flight in the
        database: counting it stops claims from outrunning the writer).
        """
        if len(self._claims) >= MAX_CLAIMS:
            return 0
        held = self._held + self._leasing
        free = self._capacity() - held
        threshold = min(self.settings.batch_size, max(1, self._capacity() // 4))
        if free <= 0 or (held and free < threshold):
            return 0
        return min(self.settings.batch_size, free)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        if self._recheck_at > now:
            return min(self.settings.poll_interval, self._recheck_at - now)
        return self.settings.poll_interval

    def _capacity(self) -> int:
        """Rows held at once: the concurrency (in v2 stream mode, calls of up to 100 rows
        each), but never more than the rate limiter can send within a third of the lease (a
        row queued behind the limiter must not outlive it)."""
        per_call = 1 if self._exclusive else STREAM_BATCH
        paced = int(self.limiter.rate * self.settings.lease_seconds / 3) + 1
        concurrency = self.settings.effective_concurrency(self.limiter.ceiling)  # of the share
        return max(1, min(concurrency, paced) * per_call)

    async def _claim(self, wanted: int) -> bool:
        """Choose up to `wanted` rows (round robin over lanes) and start leasing them.

        The walk is awaited (it is short and sets where the next one starts); the lease runs in
        the background, so the next batch is chosen while this one is leased. Returns True when
        more may be due right now (the batch filled up, or lanes after the cursor are unseen).
        """
        ids, found, cursor = await self._walk(self._cursor, wanted)
        if found < wanted and cursor is None and self._cursor != ("", ""):
            more, extra, cursor = await self._walk(("", ""), wanted - found)  # wrap around
            ids, found = ids + more, found + extra  # a head seen twice is claimed once
        self._cursor = cursor or ("", "")
        if not found:
            return cursor is not None
        # v2 stream: top up with the oldest other due rows (lanes need no exclusivity there).
        fill = 0 if self._exclusive else wanted - found
        self._leasing += found + fill
        task = asyncio.create_task(self._lease(ids, found, fill), name="claim")
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)
        return found == wanted or cursor is not None or (fill > 0 and self._fill_full)

    async def _walk(
        self, after: tuple[str, str], wanted: int
    ) -> tuple[list[str], int, tuple[str, str] | None]:
        """Pick lane heads after `after`. Returns their ids (as array literals, never parsed
        here), how many, and where the next walk should start (None: the walk reached the
        last lane, start again from the first)."""
        try:
            result = await self.db.fetch(
                "walk",
                {
                    "after_customer": after[0],
                    "after_event_name": after[1],
                    # Lanes right after the cursor are rarely busy (round robin): the walk
                    # stops when the batch is full, the bound only caps a walk past busy lanes.
                    "max_lanes": 4 * wanted + 64,
                    "batch_size": wanted,
                    "exclusive": self._exclusive,
                },
            )
        except Exception as err:  # database down: back off, nothing is lost
            log.error("claim_failed", error=str(err))
            metrics.DB_ERRORS.inc()
            await asyncio.sleep(1.0)
            return [], 0, None
        if not result:  # no lane after the cursor
            return [], 0, None
        ids, found, customer, event_name, wrap = result[0]
        return [ids], found, None if wrap else (customer, event_name)

    async def _lease(self, ids: list[str], found: int, fill: int) -> None:
        """The claim transaction: lock and lease the chosen rows, then start sending them."""
        requested = found + fill
        try:
            result = await self.db.fetch(
                "claim",
                {
                    "ids": "{" + ",".join(part.strip("{}") for part in ids if part != "{}") + "}",
                    "fill": fill,
                    "exclusive": self._exclusive,
                    "relay_id": self.settings.relay_id,
                    "lease_seconds": self.settings.lease_seconds,
                },
            )
        except Exception as err:  # nothing leased, or leases that expire: nothing is lost
            log.error("claim_failed", error=str(err))
            metrics.DB_ERRORS.inc()
            return
        finally:
            self._leasing -= requested
        rows = [Claimed.from_row(r) for r in result]
        self._fill_full = fill > 0 and len(rows) == requested
        if not rows:
            return
        self._held += len(rows)
        if self._stopping:  # claimed while shutting down: hand back unsent, no attempt counted
            for row in rows:
                self._outcomes.put_nowait(
                    Outcome(row, "pending", counted=0, code="shutdown", message="not sent")
                )
            return
        self._recheck_at = time.monotonic() + HINT_RECHECK_S
        metrics.CLAIMED.inc(len(rows))
        for job in self._jobs(rows):
            task = asyncio.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.state.inflight = len(self._tasks)
        metrics.INFLIGHT.set(len(self._tasks))
        self.wakeup.poke()  # capacity reserved for this claim is settled: look again

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
                metrics.LATENCY.observe(latency_ms / 1000)  # once per call, not per row
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
        """Let in-flight calls finish within the grace period; cancel (release) the rest.
        Claims still running hand their rows back unsent (see _lease)."""
        self._stopping = True
        deadline = time.monotonic() + self.settings.shutdown_grace
        if self._claims:  # short statements: let them finish
            await asyncio.wait(set(self._claims), timeout=self.settings.shutdown_grace)
        if not self._tasks:
            return
        left = max(0.0, deadline - time.monotonic())
        done, pending = await asyncio.wait(set(self._tasks), timeout=left)
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

    async def _write_outcomes(self, stop: asyncio.Event) -> None:
        """Batch outcomes into CAS updates, up to MAX_FLUSHES at once (batches hold disjoint
        rows). A flush retries until the database is back; a bug in one stops the relay."""
        slots = asyncio.Semaphore(MAX_FLUSHES)
        flushing: set[asyncio.Task[None]] = set()
        try:
            while True:
                batch = [await self._outcomes.get()]
                if self._outcomes.qsize() < OUTCOME_BATCH - 1:
                    await asyncio.sleep(OUTCOME_FLUSH_S)  # let the batch fill
                while len(batch) < OUTCOME_BATCH and not self._outcomes.empty():
                    batch.append(self._outcomes.get_nowait())
                await slots.acquire()
                task = asyncio.create_task(self._write_batch(batch, slots, stop), name="flush")
                flushing.add(task)
                task.add_done_callback(flushing.discard)
        finally:
            for task in flushing:
                task.cancel()
            await asyncio.gather(*flushing, return_exceptions=True)

    async def _write_batch(
        self, batch: list[Outcome], slots: asyncio.Semaphore, stop: asyncio.Event
    ) -> None:
        try:
            await self._flush(batch)
            self.wakeup.poke()  # lanes and capacity were freed
            async with self.flushed:
                self.flushed.notify_all()
        except Exception as err:
            # Without working outcome writes nothing is ever recorded: stop (and let the
            # supervisor restart us) rather than keep sending rows whose results are lost.
            log.error("outcome_writer_died", error=repr(err))
            stop.set()
        finally:
            self._held -= len(batch)
            for _ in batch:
                self._outcomes.task_done()
            slots.release()

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
    """The batch as one JSON document for `record_outcomes` (UPDATE ... FROM a record set).

    orjson: it writes UUIDs and datetimes itself, several times faster than the json module.
    """
    return {
        "batch": orjson.dumps(
            [
                {
                    "id": o.row.id,
                    "token": o.row.lease_token,
                    "state": o.state,
                    "delay": o.delay,
                    "counted": o.counted,
                    "new_key": o.new_key,
                    "code": o.code,
                    "message": o.message and o.message.replace("\x00", ""),  # jsonb refuses NUL
                    "request_id": o.request_id,
                    "first_attempt_at": o.first_attempt_at,
                }
                for o in batch
            ]
        ).decode()
    }


def report_batch(batch: list[Outcome], written: set[int]) -> None:
    """One log event per batch, one per failure; outcome counters per batch."""
    states: dict[str, int] = {}
    by_code: dict[tuple[str, str | None], int] = {}
    for o in batch:
        states[o.state] = states.get(o.state, 0) + 1
        by_code[o.state, o.code] = by_code.get((o.state, o.code), 0) + 1
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
    for (state, code), n in by_code.items():
        metrics.outcome(state, code).inc(n)
    log.info("outcomes", rows=len(batch), written=len(written), **states)
