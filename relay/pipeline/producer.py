"""The producer: choose due rows (walk), lease them (claim), hand them to the executor.

One loop: while there is capacity, walk the lanes round robin and claim what the walk chose;
otherwise wait for a hint, a poke (capacity or a lane was freed), the poll timer or the stop
signal. The walk is awaited (it is short and sets where the next one starts); the claim runs in
the background, so the next batch is chosen while the previous one is leased.

When a v2 claim walks (docs/design.md, "When a v2 claim walks"): round robin and oldest first
only differ when there is a backlog, more rows due than a claim takes. A v2 claim whose top-up
came back short took every due row it could, so the next claim skips the walk (a statement and
a round trip before every claim, and per row about twice the top-up's cost) and takes the due
rows alone; a full top-up, or a walk that filled the batch, may have left rows behind, so the
next claim walks. A backlog is walked from its second claim, however it is spread over lanes.
"""

import asyncio
import time
from collections.abc import Callable

import structlog

from relay.core import metrics, tracing
from relay.core.config import Settings
from relay.core.retryable import RETRYABLE
from relay.core.rows import Claimed, Outcome
from relay.core.top_up import TopUp
from relay.core.vocabulary import SHUTDOWN
from relay.db.store import FIRST_LANE, Lane, Store, Walked
from relay.pipeline.executor import RelayState
from relay.pipeline.streams import STREAM_BATCH
from relay.pipeline.wakeup import Wakeup

log = structlog.get_logger("relay")

# Claim statements running at once: the next batch is chosen while the previous one is leased.
MAX_CLAIMS = 2
CLOCK_SLACK = 0.002  # seconds: an event loop's timer may fire this early (see _look_again_due)


class Capacity:
    """How many rows this relay holds at once, and how many to claim next.

    A row counts from the moment a walk chooses it (`reserve`) until its outcome is written
    (`release`): a queued outcome's row is still in flight in the database, so counting it stops
    claims from outrunning the outcome writes. `limit` is read on every decision because the
    rate share (and so the concurrency) changes while the relay runs.
    """

    def __init__(self, limit: Callable[[], int], batch_size: int) -> None:
        self._limit = limit
        self._batch_size = batch_size
        self.reserved = 0  # chosen by a walk, claim still running
        self.held = 0  # claimed, outcome not written yet

    @property
    def limit(self) -> int:
        return self._limit()

    def wanted(self) -> int:
        """Rows to claim now: none while capacity is nearly used up.

        Claiming a few rows after every completion would put one claim per handful of rows on
        the critical path; waiting until a quarter of the capacity is free (or the relay is
        idle, for latency) keeps claims large and rare under load.
        """
        limit = self._limit()
        used = self.held + self.reserved
        free = limit - used
        threshold = min(self._batch_size, max(1, limit // 4))
        if free <= 0 or (used and free < threshold):
            return 0
        return min(self._batch_size, free)

    def reserve(self, n: int) -> None:
        self.reserved += n

    def settle(self, reserved: int, claimed: int) -> None:
        """A claim finished: of the `reserved` rows, `claimed` are now held."""
        self.reserved -= reserved
        self.held += claimed
        metrics.INFLIGHT.set(self.held)

    def release(self, n: int) -> None:
        """Outcomes of `n` rows were written (or given up): the rows are no longer held."""
        self.held -= n
        metrics.INFLIGHT.set(self.held)


def capacity_limit(settings: Settings, rate: float, ceiling: float) -> int:
    """Rows held at once: the concurrency (in v2 stream mode, calls of up to 100 rows each), but
    never more than the rate limiter can send within a third of the lease (a row queued behind
    the limiter must not outlive it)."""
    per_call = 1 if settings.stripe_api_mode == "v1" else STREAM_BATCH
    paced = int(rate * settings.lease_seconds / 3) + 1
    concurrency = settings.effective_concurrency(ceiling)  # of the share
    return max(1, min(concurrency, paced) * per_call)


class Producer:
    """Walks and claims while there is capacity (also while Stripe refuses a key or account:
    the executor holds those rows back); claimed rows go to
    `send` (the executor); rows claimed after the stop signal go back unsent via `hand_back`
    (the completer)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        wakeup: Wakeup,
        capacity: Capacity,
        state: RelayState,
        send: Callable[[list[Claimed]], None],
        hand_back: Callable[[Outcome], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.wakeup = wakeup
        self.capacity = capacity
        self.state = state
        self._send = send
        self._hand_back = hand_back
        # v1: one call in flight per (customer, meter), so a lane with a call out is skipped.
        self._exclusive = settings.stripe_api_mode == "v1"
        self._cursor: Lane = FIRST_LANE
        self._top_up = TopUp()  # v2: where the next top-up starts (this relay's own)
        self._walk = True  # v2: whether the next claim walks first (module docstring)
        self._recheck_at = 0.0  # a look owed this long after the last claim that took rows
        self._look_again: asyncio.TimerHandle | None = None  # see _arm_look_again
        self._claims: set[asyncio.Task[None]] = set()
        self._claim_crash: BaseException | None = None  # raised by run() (a bug, not the db)
        self._owed = False  # a wake-up came while no claim could start (see run)
        self._stop = asyncio.Event()  # run()'s stop signal

    async def run(self, stop: asyncio.Event) -> None:
        """Walk and claim until `stop` is set; a claim that crashed ends the loop with its
        error (claims run in the background, the supervisor watches this loop)."""
        self._stop = stop
        while not stop.is_set():
            if self._claim_crash is not None:
                raise self._claim_crash
            self.state.last_loop = time.monotonic()  # /healthz and the watchdog: still turning
            # Nothing is claimed from a read-only database (relay/pipeline/database_watch.py).
            writable = self.state.read_only_since is None
            wanted = self.capacity.wanted() if writable and len(self._claims) < MAX_CLAIMS else 0
            if wanted and await self._walk_and_claim(wanted):
                continue  # more may be due right now
            if not wanted and self._claims:
                # Woken (a hint, a poke) while the running claims leave no room: look again
                # when one ends, or that wake-up is spent and its row waits for the poll.
                self._owed = True
            await self.wakeup.wait(self._wait_timeout(bool(wanted)), stop)

    # `timeout` is a share of the shutdown grace: past it, finish returns (it never raises).
    async def finish(self, timeout: float) -> None:  # noqa: ASYNC109
        """After the stop signal: let running claims end (short statements); whatever they
        claim goes back unsent."""
        if self._claims:
            await asyncio.wait(set(self._claims), timeout=timeout)

    def _wait_timeout(self, room: bool) -> float:
        """Until the poll, or sooner: the look again after a short claim, and (with `room` to
        claim) the top-up's next restart, which takes rows left behind its window
        (relay.core.top_up) when nothing else wakes the relay first."""
        now = time.monotonic()
        timeout = self.settings.poll_interval
        if self._look_again is None and self._recheck_at > now:  # else the timer pokes then
            timeout = min(timeout, self._recheck_at - now)
        if room and (restart := self._top_up.restart_at()) is not None:
            timeout = min(timeout, max(restart - now, self.settings.hint_recheck))
        return timeout

    async def _walk_and_claim(self, wanted: int) -> bool:
        """Walk for up to `wanted` lane heads (round robin) and start claiming them.

        Returns True when more may be due right now: the batch filled up, lanes after the cursor
        are unseen, or a v2 top-up was asked for (its result is not awaited: the finished claim
        pokes the wakeup, and a walk that finds nothing due ends the burst).
        A v2 relay whose last top-up came back short (no backlog) takes the due rows alone.
        """
        if not self._exclusive and not self._walk:
            self._start_claim([], wanted, one_walk=True)
            return False  # as a top-up alone below: its claim pokes the wakeup
        walked = await self.walk(self._cursor, wanted)
        ids, cursor = walked.ids, walked.cursor
        one_walk = True
        if len(ids) < wanted and cursor is None and self._cursor != FIRST_LANE:
            wrapped = await self.walk(FIRST_LANE, wanted - len(ids))  # wrap around
            one_walk = not (ids and wrapped.ids)  # else a head seen twice is claimed once
            ids, cursor = ids + wrapped.ids, wrapped.cursor
        self._cursor = cursor or FIRST_LANE
        if not ids and (cursor is not None or self._exclusive):
            return cursor is not None
        # v2 stream: top up with the oldest other due rows (lanes need no exclusivity there),
        # after where this relay's previous top-up stopped (relay.core.top_up). Also when the
        # walk found no head at all: a leased row stays its lane's head (outbox_0020), so a
        # lane whose head is in flight, or held by a relay that died, still has due rows.
        fill = 0 if self._exclusive else wanted - len(ids)
        self._start_claim(ids, fill, one_walk)
        if not ids:  # a top-up alone: its claim pokes the wakeup if it found rows
            return False
        return len(ids) == wanted or cursor is not None or fill > 0

    def _start_claim(self, ids: list[int], fill: int, one_walk: bool) -> None:
        self.capacity.reserve(len(ids) + fill)
        task = asyncio.create_task(self.claim(ids, fill, one_walk), name="claim")
        self._claims.add(task)
        task.add_done_callback(self._claimed)

    def _claimed(self, task: asyncio.Task[None]) -> None:
        self._claims.discard(task)
        if self._owed:
            self._owed = False
            self.wakeup.poke()
        if not task.cancelled() and (error := task.exception()) is not None:
            self._claim_crash = self._claim_crash or error
            self.wakeup.poke()  # run() raises it at once

    async def walk(self, after: Lane, wanted: int) -> Walked:
        """The `walk` query; on a database error back off and report nothing found."""
        try:
            return await self.store.walk(after, wanted, exclusive=self._exclusive)
        except RETRYABLE as err:  # database down: back off, nothing is lost
            if self.state.read_only_since is None:  # else the database watch said it, once
                log.error("walk_failed", error=str(err))
            metrics.DB_ERRORS.inc()
            await asyncio.sleep(1.0)
            return Walked([], None)

    async def claim(self, ids: list[int], fill: int, one_walk: bool) -> None:
        """The `claim` query (lock and lease the walked rows), then hand them to the sender."""
        reserved = len(ids) + fill
        rows: list[Claimed] = []
        tracer = tracing.active
        start_ns = time.time_ns() if tracer else 0
        failed = False
        try:
            rows = await self.store.claim(
                ids,
                fill=fill,
                exclusive=self._exclusive,
                relay_id=self.settings.relay_id,
                lease_seconds=self.settings.lease_seconds,
                one_walk=one_walk,
                top_up=self._top_up,
            )
        except RETRYABLE as err:  # nothing leased, or leases that expire: nothing is lost
            if self.state.read_only_since is None:  # else the database watch said it, once
                log.error("claim_failed", error=str(err))
            metrics.DB_ERRORS.inc()
            failed = True
        finally:
            self.capacity.settle(reserved, len(rows))
        if not self._exclusive and not failed:  # v2: may rows be waiting behind this batch?
            self._walk = self._top_up.full if fill else True  # no top-up: the walk filled it
        if not rows:
            return
        if tracer:
            await tracer.claimed(rows, start_ns)
        if self._stop.is_set():  # claimed while shutting down: hand back unsent, no attempt counted
            for row in rows:
                self._hand_back(Outcome.unsent(row, SHUTDOWN, "not sent"))
            return
        self._recheck_at = time.monotonic() + self.settings.hint_recheck
        metrics.CLAIMED.inc(len(rows))
        self._send(rows)
        # Capacity reserved for this claim is settled: look again. After a short v2 claim of a
        # relay that listens for hints, look again HINT_RECHECK later rather than at once: the
        # claim took every due row its snapshot saw, so looking at once found nothing, at the
        # price of a claim, about every other claim of a relay that keeps up (bench.keep_up).
        # The later look still finds a row committed while the claim ran whose hint the
        # writers' gate skipped, or that woke the producer while it could not claim.
        # Without hints (poll-only) the look at once is what finds them.
        if self._exclusive or not self.wakeup.listens or len(rows) >= reserved:
            self.wakeup.poke()
        else:
            self._arm_look_again()

    def _arm_look_again(self) -> None:
        """One look again, HINT_RECHECK after the last claim that took rows (`_recheck_at`),
        not one per short claim. A claim that starts later sees every row committed before it,
        so of short claims closer together than HINT_RECHECK (a relay that keeps up: one per
        hint) only the last one's look is owed; a look per claim was a second claim per hint,
        which found nothing (bench.keep_up). A row committed while a claim ran, whose hint the
        gate skipped, is still seen by the next claim or by the look after the last one, at
        most HINT_RECHECK after the last claim that took rows ends (with two claims at once,
        that can be the one that ends later)."""
        if self._look_again is None:
            loop = asyncio.get_running_loop()
            self._look_again = loop.call_later(self.settings.hint_recheck, self._look_again_due)

    def _look_again_due(self) -> None:
        """The timer: poke, or wait on if a claim that took rows moved `_recheck_at` since. A
        timer may fire a little early (uvloop's clock counts milliseconds): within
        CLOCK_SLACK of the mark counts as due, or the loop would spin on zero-delay timers."""
        self._look_again = None
        left = self._recheck_at - time.monotonic()
        if left > CLOCK_SLACK:
            self._look_again = asyncio.get_running_loop().call_later(left, self._look_again_due)
        else:
            self.wakeup.poke()
