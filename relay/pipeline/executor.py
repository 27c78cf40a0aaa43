"""The executor: call Stripe for claimed rows, paced by the rate limiter, and react to verdicts.

A v1 call sends one row (`send_v1`), on a pool of reusable worker tasks
(relay/pipeline/call_pool.py); v2 stream reports queue per account and calls of up to 100 are
formed from the queue (relay/pipeline/streams.py), a task per call. Every row leaves with
exactly one outcome, whatever happens to its call; outcomes go to the completer, and a call that
crashes (a bug) then stops the relay (`Executor.watch`). Verdicts steer
pacing (429: slower), the auth gate (401/403: rows of the refused key or account wait, see
relay.stripe.auth_gate) and the outage breaker (no answers: every row waits but one probe call,
see relay.stripe.outage).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import structlog

from relay.core import metrics, tracing
from relay.core.clock import Clocks
from relay.core.config import Settings
from relay.core.rows import Claimed, Outcome
from relay.core.vocabulary import RELAY_ERROR, SHUTDOWN, STRIPE_OUTAGE
from relay.pipeline.call_pool import CallPool
from relay.pipeline.streams import StreamBatcher
from relay.stripe.auth_gate import AuthGate
from relay.stripe.catalogue import MeterCatalogue
from relay.stripe.classify import Classified, Verdict
from relay.stripe.outage import HELD_MESSAGE, OutageBreaker
from relay.stripe.policy import Refusals, decide
from relay.stripe.rate_limit import RateLimiter

log = structlog.get_logger("relay")

# A queued stream row is sent within this fraction of its lease or released unsent: with the
# call itself (at most the request timeout, itself at most half the lease) it stays well inside.
STREAM_MAX_WAIT = 1 / 3


class Sender(Protocol):
    async def send(self, row: Claimed) -> tuple[Classified, float]: ...
    async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]: ...


@dataclass
class RelayState:
    """What /readyz and /healthz report about this relay."""

    auth_ok: bool = True
    started: bool = False
    last_loop: float = field(default_factory=time.monotonic)
    read_only_since: float | None = None  # monotonic time the database was found read-only

    def read_only_past(self, grace: float) -> bool:
        """The database has been read-only for more than `grace` seconds: /healthz fails and
        systemd's watchdog goes unpetted, so the relay is restarted (and, at start, a read-only
        database is exit 1 until the primary is back)."""
        since = self.read_only_since
        return since is not None and time.monotonic() - since > grace


class Executor:
    """Runs the calls of claimed rows; `record` takes each row's outcome."""

    def __init__(
        self,
        settings: Settings,
        sender: Sender,
        limiter: RateLimiter,
        auth: AuthGate,
        record: Callable[[Outcome], None],
        meters: MeterCatalogue | None = None,
        outage: OutageBreaker | None = None,
        clocks: Clocks | None = None,
    ) -> None:
        self.settings = settings
        self.outage = outage
        self.clocks = clocks or Clocks(timedelta(seconds=settings.clock_margin))
        self.meters = meters
        self.sender = sender
        self.limiter = limiter
        self.auth = auth
        self._record = record
        self._dedup_window = timedelta(hours=settings.dedup_window_hours)
        self._tasks: set[asyncio.Task[None]] = set()
        self.crash: Exception | None = None  # the first bug a call ran into (see `watch`)
        self._crashed = asyncio.Event()
        self._calls = CallPool(self.send_v1, spawn=self._spawn, crashed=self._crash)
        self._streams = StreamBatcher(
            limiter,
            linger=settings.stream_linger_ms / 1000,
            max_wait=settings.lease_seconds * STREAM_MAX_WAIT,
            send=self.send_stream,
            record=record,
            spawn=self._spawn,
        )

    def start(self, rows: list[Claimed]) -> None:
        """Start the calls for freshly claimed rows. v1: one call per row. v2 stream: reports
        join their account's stream queue; cancels exist in v1 only."""
        if self.settings.stripe_api_mode == "v1":
            self._calls.add(rows)
            return
        reports = [r for r in rows if r.action == "report"]
        if len(reports) < len(rows):
            self._calls.add([r for r in rows if r.action != "report"])
        self._streams.add(reports)

    def _spawn(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and isinstance(error := task.exception(), Exception):
            log.error("call_task_crashed", error=repr(error))
            self._crash(error)

    def _crash(self, err: Exception) -> None:
        """A bug of ours in a call (its rows have their outcome already): stop the relay."""
        if self.crash is None:
            self.crash = err
            self._crashed.set()

    async def watch(self) -> None:
        """The executor as a supervised service: it ends with the first call's crash, so a bug
        stops the relay (docs/design.md, "Errors: who retries what") instead of releasing
        rows into the same crash forever."""
        await self._crashed.wait()
        if self.crash is not None:
            raise self.crash

    async def drain(self, grace: float) -> None:
        """Let calls in flight (and stream calls still forming) finish within `grace`
        seconds; cancel (release) the rest, and release the rows no call started."""
        self._calls.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        finished = 0
        while self._tasks and (remaining := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait(set(self._tasks), timeout=remaining)
            finished += len(done)  # a forming stream call may have started the next one
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        unstarted = self._calls.take_queued()
        for row in unstarted:
            self._record(Outcome.unsent(row, SHUTDOWN, "released at shutdown"))
        if finished or pending or unstarted:
            # Tasks are call workers (parked ones included) and stream calls, not rows.
            log.info(
                "drained",
                tasks_finished=finished,
                tasks_cancelled=len(pending),
                rows_never_sent=len(unstarted),
            )

    async def send_v1(self, row: Claimed) -> None:
        """One v1 call (a meter event or a cancellation) for one row."""
        await self._call([row], lambda sendable: self.sender.send(sendable[0]))

    async def send_stream(self, rows: list[Claimed]) -> None:
        """One v2 meter event stream call for up to 100 reports of one account; the stream
        queue has taken its rate-limiter slot already."""
        await self._call(rows, self.sender.send_stream, paced=False)

    async def _call(
        self,
        rows: list[Claimed],
        send: Callable[[list[Claimed]], Awaitable[tuple[Classified, float]]],
        paced: bool = True,
    ) -> None:
        """Refuse locally what Stripe would refuse, send the rest in one call, record every
        row's outcome. Cancellation (shutdown) and unexpected errors release the rows as
        "unknown outcome": pending, same idempotency key, so the retry replays whatever Stripe
        did. An unexpected error is a bug: once the rows have their outcome, it stops the relay
        (`watch`)."""
        refusals = Refusals(self.clocks.now(), self._dedup_window, self.clocks.margin)
        outcomes: list[Outcome] = []
        sendable: list[Claimed] = []
        for r in rows:
            try:
                outcome = refusals.check(r)
                if outcome is None and self.meters is not None:  # before the auth probe
                    routed = self.meters.check(r)
                    if isinstance(routed, Outcome):
                        outcome = routed
                    else:
                        r = routed  # the payload under the meter's keys
                outcome = outcome or self._held(r)
            except Exception as err:  # a bug of ours, about this row: it waits, the rest go,
                # then the relay stops
                log.exception("row_check_crashed", identifier=r.identifier)
                message = f"{type(err).__name__}: {err}"[:500]
                outcome = Outcome.unsent(r, RELAY_ERROR, message, delay=5.0)
                self._crash(err)
            if outcome is None:
                sendable.append(r)
            else:
                outcomes.append(outcome)
        # Rows decided here (held for their meter, refused) are recorded before the call of the
        # others: a meter refresh that changes the catalogue then finds them recorded, waits
        # for them to be written, and releases them with the rest (meter_refresh.py).
        self._record_all(outcomes)
        outcomes = []
        try:
            if sendable:
                if paced:
                    await self.limiter.acquire()
                outcomes += await self._send(sendable, send)
        except asyncio.CancelledError:
            # Cut off by shutdown: no answer, so not an attempt (invariant 12), but it may have
            # reached Stripe.
            outcomes += [
                Outcome.released(r, SHUTDOWN, "released at shutdown", 0.0, called=False, counted=0)
                for r in sendable
            ]
            raise
        except Exception as err:  # a bug of ours or an unwrapped library error
            log.exception("send_crashed", identifiers=[r.identifier for r in sendable][:10])
            self._crash(err)
            message = f"{type(err).__name__}: {err}"
            outcomes += [
                Outcome.released(r, RELAY_ERROR, message, 5.0, called=True, counted=1)
                for r in sendable
            ]
        finally:
            if sendable and self.outage is not None:
                self.outage.release(sendable[0].id)  # a no-op once the call has settled it
            self._record_all(outcomes)

    def _record_all(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.kind != "answered":  # no answer: another row may probe
                self.auth.release(outcome.row)
            self._record(outcome)

    async def _send(
        self,
        rows: list[Claimed],
        send: Callable[[list[Claimed]], Awaitable[tuple[Classified, float]]],
    ) -> list[Outcome]:
        """One call for `rows`, unless the outage breaker holds it back (then the rows wait
        unsent: no attempt, same key)."""
        if self.outage is not None and (wait := await self.outage.admit(rows[0].id)) is not None:
            return [Outcome.unsent(r, STRIPE_OUTAGE, HELD_MESSAGE, delay=wait) for r in rows]
        start_ns = time.time_ns() if tracing.active else 0
        result, latency_ms = await send(rows)
        self._react(result)
        if self.outage is not None:
            await self.outage.settle(rows[0].id, result)
        metrics.LATENCY.observe(latency_ms / 1000)  # once per call, not per row
        decided = self._decide(rows, result, latency_ms)
        if tracing.active:
            tracing.active.called(decided, start_ns)
        return decided

    def _held(self, row: Claimed) -> Outcome | None:
        """A row of a scope paused on a 401/403 waits (unless it is the scope's probe)."""
        wait = self.auth.admit(row)
        if wait is None:
            return None
        return Outcome.unsent(
            row,
            self.auth.code_for(row),
            "Stripe refused the key or account; waiting for a probe to get through",
            delay=wait,
        )

    def _decide(self, rows: list[Claimed], result: Classified, latency_ms: float) -> list[Outcome]:
        """Each row's outcome. An accepted call with no auth pause to settle decides once: its
        rows' outcomes differ only in the row (a call carries one action: one v1 row, or a
        stream call's reports), so one is decided and copied."""
        if result.verdict is Verdict.ACCEPTED and not self.auth.paused:
            first = decide(rows[0], result, self.settings.max_attempts, latency_ms)
            if len(rows) == 1:  # a v1 call
                return [first]
            return first.for_rows(rows)
        return [self._decide_row(r, result, latency_ms) for r in rows]

    def _decide_row(self, row: Claimed, result: Classified, latency_ms: float) -> Outcome:
        outcome = decide(row, result, self.settings.max_attempts, latency_ms, self.clocks.now())
        wait = self.auth.settle(row, result)
        if wait is None:
            return outcome
        return outcome._replace(delay=wait, code=self.auth.code_for(row))

    def _react(self, result: Classified) -> None:
        metrics.stripe_call(result.verdict.value).inc()
        if result.verdict is Verdict.RETRY_SLOWER:
            self.limiter.on_rate_limited()
            metrics.RATE.set(self.limiter.rate)
