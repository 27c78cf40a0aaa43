"""The outage breaker: when Stripe stops answering, every replica stops sending and one probe
call at a time finds out when it is back.

A call "got no answer" when it timed out, its connection failed, or a gateway in front of the
API answered 502/503/504 (relay.stripe.classify: `no_answer`, `unavailable`). After
OUTBOX_OUTAGE_THRESHOLD such calls in a row (this relay's calls; any answer from the API
resets the run), the relay opens the breaker in `meter_event_outbox_outage`, one row shared by
every replica. While it is open:
- the producer claims nothing, except one row when a probe is due (`claim_limit`);
- a call is sent only as the probe: the relay that takes the probe's lease in the database
  (`outage_probe`, one holder at a time, leased so a relay that dies with it blocks nobody)
  sends it; the others' rows go back pending unsent (`stripe_outage`: no attempt used, same
  idempotency key and identifier, so nothing is lost or counted twice);
- a probe that gets no answer either doubles the interval up to
  OUTBOX_OUTAGE_PROBE_MAX_INTERVAL; one that gets any answer from the API closes the breaker
  for every replica and makes the rows it held due at once.
Every replica looks at the row each heartbeat (`sync`), adding the calls it made, so they all
follow one state and the console and `status` of any replica show the same. One log line per
change of state, a gauge and a transitions counter (relay.core.metrics).

A refused key or account (401/403) is not an outage: Stripe answered. That pause is per key or
account and lives in relay.stripe.auth_gate; this breaker never looks at it. The database
being away changes nothing here beyond the shared view: the breaker then acts on this relay's
own calls alone.
"""

import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from relay.core import metrics
from relay.core.retryable import RETRYABLE
from relay.core.vocabulary import STRIPE_OUTAGE
from relay.db.store import OutageState
from relay.stripe.classify import GATEWAY_STATUSES, TABLE, Classified, Verdict
from relay.stripe.policy import BACKOFF_CAP
from relay.stripe.reachability import Reachability

log = structlog.get_logger("relay")

HELD_MESSAGE = "Stripe is not answering (outage); waiting for a probe call to get through"
# The codes of rows that waited on the outage, released when it ends: held back by the breaker,
# or their own call got no answer (in backoff up to BACKOFF_CAP).
WAITED_CODES = (
    STRIPE_OUTAGE,
    TABLE["no_answer"].code or "connection_error",
    *(f"http_{status}" for status in GATEWAY_STATUSES),
)


class OutageStore(Protocol):
    """The breaker's statements (relay.db.store.Store has them)."""

    async def outage_sync(self, calls: int, failed: int, status: int | None) -> OutageState: ...
    async def outage_open(
        self, relay_id: str, failed: int, status: int | None, streak: float, interval: float
    ) -> bool: ...
    async def outage_probe(self, relay_id: str, lease_seconds: float) -> float | None: ...
    async def outage_probe_failed(
        self, relay_id: str, status: int | None, cap: float
    ) -> float | None: ...
    async def outage_close(
        self, relay_id: str, horizon: float, codes: Sequence[str]
    ) -> int | None: ...


def no_answer(result: Classified) -> bool:
    """Whether a call told nothing about Stripe's API: no HTTP answer, or a gateway's."""
    if result.http_status is None:
        return result.verdict is Verdict.RETRY_SAME_KEY
    return result.http_status in GATEWAY_STATUSES


class OutageBreaker:
    """This relay's view of the shared breaker, and the decisions taken on it."""

    def __init__(
        self,
        store: OutageStore,
        relay_id: str,
        *,
        threshold: int,
        interval: float,
        cap: float,
        lease_seconds: float,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        reachability: Reachability | None = None,
    ) -> None:
        self.store = store
        self.relay_id = relay_id
        self.threshold = threshold
        self.base = interval
        self.cap = max(cap, interval)
        self.lease_seconds = lease_seconds
        self._on_change = on_change
        self._clock = clock
        self._reachability = reachability  # its gauge follows the shared state
        self.open = False
        self.interval = interval  # the current time between probes
        self._probe_due = 0.0  # monotonic: when this relay may try to take the probe
        self._probe: int | None = None  # the call (its first row's id) out as our probe
        self._busy = False  # a statement that changes the state is running
        self._streak = 0  # calls in a row with no answer (while closed)
        self._streak_start = 0.0
        self._status: int | None = None  # of the last call with no answer (None: none at all)
        self._calls = 0  # calls while open, not yet added to the shared row
        self._failed = 0

    @property
    def horizon(self) -> float:
        """How far ahead a held row can be due: `outage_close` releases rows within it."""
        return max(2 * self.cap + 1, BACKOFF_CAP + 1)

    def claim_limit(self, limit: int) -> int:
        """Rows the producer may hold: none while open, one when a probe is due."""
        if not self.open:
            return limit
        return 1 if self._probe is None and self._clock() >= self._probe_due else 0

    async def admit(self, call: int) -> float | None:
        """None: send this call (closed, or it is the probe); otherwise the seconds its rows
        wait, pending and unsent."""
        if not self.open or self._probe == call:
            return None
        if self._probe is None and not self._busy and self._clock() >= self._probe_due:
            return await self._take_probe(call)
        return self._wait()

    async def _take_probe(self, call: int) -> float | None:
        """Try to take the probe's lease for this call: None when taken (send it), or when
        the breaker closed meanwhile; otherwise the call's rows wait."""
        self._busy = True
        try:
            interval = await self.store.outage_probe(self.relay_id, self.lease_seconds)
        except RETRYABLE as err:
            log.warning("stripe_outage_probe_not_taken", error=str(err))
            interval = None
        finally:
            self._busy = False
        if not self.open:  # another replica's probe got through meanwhile
            return None
        if interval is None:  # another replica has it, or it is not due yet
            self._probe_due = self._clock() + self.interval
            return self._wait()
        self._probe, self.interval = call, interval
        return None

    def _wait(self) -> float:
        """Until the next probe could go, plus up to one interval of jitter so the rows held
        back do not all come due at once (the close releases them anyway)."""
        ahead = max(self._probe_due - self._clock(), self.interval)
        jitter = random.uniform(0, self.interval)  # noqa: S311 (jitter)
        return min(ahead + jitter, 2 * self.cap)  # within `horizon`: the close releases it

    def release(self, call: int) -> None:
        """The call never got a result (shutdown, crash): its probe lease just expires."""
        if self._probe == call:
            self._probe = None

    async def settle(self, call: int, result: Classified) -> None:
        """After a call: count it, open on a run of no answers, close on an answer."""
        failed = no_answer(result)
        if failed:
            self._status = result.http_status
        if self._probe == call:
            self._probe = None
            await (self._probe_failed() if failed else self._close())
            return
        if self.open:
            self._calls += 1
            self._failed += failed
            if not failed:  # a call sent before the breaker opened got an answer
                await self._close()
            return
        if not failed:
            self._streak = 0
            return
        if self._streak == 0:
            self._streak_start = self._clock()
        self._streak += 1
        if self.threshold and self._streak >= self.threshold and not self._busy:
            await self._open()

    async def _open(self) -> None:
        streak, seconds = self._streak, self._clock() - self._streak_start
        # Held from now on: calls that reach `admit` while the statement runs wait too.
        self.open, self._probe_due, self._busy = True, self._clock() + self.base, True
        try:
            ours = await self.store.outage_open(
                self.relay_id, streak, self._status, seconds, self.base
            )
        except RETRYABLE as err:  # not shared: this relay holds back on its own
            log.warning("stripe_outage_not_shared", error=str(err))
            ours = True
        finally:
            self._busy = False
        if not ours:  # another replica opened it first: our run counts in its figures
            self._calls += streak
            self._failed += streak
        self._enter_open(self.base, opened_by=self.relay_id if ours else None, calls=streak)

    async def _probe_failed(self) -> None:
        metrics.STRIPE_OUTAGE_PROBES.labels("no_answer").inc()
        try:
            interval = await self.store.outage_probe_failed(self.relay_id, self._status, self.cap)
        except RETRYABLE:
            interval = None
        self.interval = interval if interval is not None else min(self.cap, self.interval * 2)
        self._probe_due = self._clock() + self.interval

    async def _close(self) -> None:
        if self._busy:
            return
        metrics.STRIPE_OUTAGE_PROBES.labels("answered").inc()
        self._busy = True
        try:
            released = await self.store.outage_close(self.relay_id, self.horizon, WAITED_CODES)
        except RETRYABLE:  # the next sync closes the shared row's view, or the next probe does
            released = None
        finally:
            self._busy = False
        self._enter_closed(closed_by=self.relay_id, released=released or 0)

    async def sync(self) -> None:
        """Add this relay's calls to the shared row and follow its state (each heartbeat)."""
        calls, failed = self._calls, self._failed
        self._calls = self._failed = 0
        try:
            state = await self.store.outage_sync(calls, failed, self._status)
        except RETRYABLE:
            self._calls += calls
            self._failed += failed
            return
        self.follow(state)

    def follow(self, state: OutageState) -> None:
        """Take the shared state (a probe of ours still out decides for itself)."""
        if self._busy or self._probe is not None:
            return
        if state.state == "open":
            due = max(0.0, state.probe_in_seconds or 0.0)
            if not self.open:
                self._status = state.last_status
                self._enter_open(state.probe_interval, opened_by=state.opened_by, calls=0)
            self.interval = state.probe_interval or self.interval
            self._probe_due = self._clock() + due
        elif self.open:
            self._enter_closed(closed_by=state.closed_by, released=0)

    def _enter_open(self, interval: float, *, opened_by: str | None, calls: int) -> None:
        self.open, self.interval, self._streak = True, interval, 0
        self._probe_due = self._clock() + interval
        metrics.STRIPE_OUTAGE.set(1)
        metrics.STRIPE_OUTAGE_TRANSITIONS.labels("open").inc()
        if self._reachability is not None:
            self._reachability.follow_outage(True)
        log.warning(
            "stripe_outage_started",
            opened_by=opened_by or "another relay",
            last_status=self._status or "no answer",
            calls_in_a_row=calls or None,
            action="rows wait unsent (same keys); one probe call at a time until Stripe answers",
        )
        self._on_change()

    def _enter_closed(self, *, closed_by: str | None, released: int) -> None:
        self.open, self.interval, self._streak = False, self.base, 0
        self._probe, self._probe_due = None, 0.0
        metrics.STRIPE_OUTAGE.set(0)
        metrics.STRIPE_OUTAGE_TRANSITIONS.labels("closed").inc()
        if self._reachability is not None:
            self._reachability.follow_outage(False)
        log.info("stripe_outage_ended", closed_by=closed_by, rows_released=released)
        self._on_change()
