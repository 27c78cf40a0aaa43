"""Replicas share Stripe's per-account rate limit (OUTBOX_RATE_LIMIT_SCOPE=account, default).

Every relay upserts its row in `meter_event_outbox_relays` each heartbeat interval
(OUTBOX_HEARTBEAT_INTERVAL, 1 s) and counts the relays seen within the stale time
(OUTBOX_RELAY_STALE_AFTER, 5 s); its limiter's ceiling is the account's limit divided by that
count. The errors all lean towards sending less:
- a share goes down at once and up only when two consecutive counts agree, so relays coming
  back one by one after a database outage never each believe they are alone;
- a relay whose heartbeat has failed for the stale time less one interval (the others are
  about to count it out and raise their shares) fences itself to FENCED_RATE until a heartbeat
  succeeds; a relay starts fenced, so it never sends at a share it has not counted;
- a relay that joins others waits two heartbeats before sending (they lower their shares and
  use up the send slots reserved at the old share meanwhile), then counts again.

The row of a relay_id belongs to one process (a random token): a relay that finds the row of
its OUTBOX_RELAY_ID live and held by another process raises `DuplicateRelayId`. At start that
refuses the newcomer once the row stayed live for the stale time (a process that died leaves
its row behind: a restart waits it out), and the running relay keeps going. Later (this
relay's row went stale, e.g. the database was away, and another process took the id) it stops
this relay. Either way the process exits with code 2 and one line naming the id.
"""

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import structlog

from relay.core import metrics
from relay.core.retryable import RETRYABLE
from relay.core.stopping import sleep_unless_stopped
from relay.db.store import Beat
from relay.stripe.rate_limit import RateLimiter

log = structlog.get_logger("relay.share")

FENCED_RATE = 1.0  # calls/s while this relay cannot tell how many others run


class DuplicateRelayId(RuntimeError):
    """Another live process runs with this OUTBOX_RELAY_ID."""

    def __init__(self, relay_id: str) -> None:
        super().__init__(
            f"another relay is running with OUTBOX_RELAY_ID={relay_id!r}: give each relay "
            "process its own id (or leave it unset: hostname-pid)"
        )


class ShareStore(Protocol):
    """The two queries the share runs (relay.db.store.Store has them)."""

    async def heartbeat(self, relay_id: str, token: uuid.UUID, stale_seconds: float) -> Beat: ...
    async def leave(self, relay_id: str, token: uuid.UUID) -> None: ...


class RateShare:
    """This relay's share of the account's rate limit, kept up to date by a heartbeat."""

    def __init__(
        self,
        store: ShareStore,
        limiter: RateLimiter,
        relay_id: str,
        account_rate: float,
        *,
        interval: float = 1.0,
        stale_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.relay_id = relay_id
        self.account_rate = account_rate
        self.interval = interval
        self.stale_after = stale_after
        self._clock = clock
        self.token = uuid.uuid4()  # this process's claim on relay_id
        self.live = 0  # relays counted by the last successful heartbeat
        self._counts: collections.deque[int] = collections.deque(maxlen=2)
        self._last_ok: float | None = None
        self._fenced = False
        self._refused_since: float | None = None  # join: when the id was first found taken

    async def join(self, stop: asyncio.Event) -> None:
        """Count the relays before sending anything (retrying while the database is away)."""
        self._fence()
        while not stop.is_set() and not await self._first_beat():
            await sleep_unless_stopped(stop, self.interval)
        if self.live == 1:  # two relays starting together may each have missed the other
            await asyncio.sleep(min(0.05, self.interval))
            await self.beat()
        if self.live > 1:
            await sleep_unless_stopped(stop, 2 * self.interval)
            await self.beat()

    async def _first_beat(self) -> int:
        """A beat that waits out a row of this relay_id left by a process that died (or was
        stopped before it could give its row back): refused only while the row stays live for
        longer than the stale time."""
        try:
            return await self.beat()
        except DuplicateRelayId:
            now = self._clock()
            if self._refused_since is None:
                self._refused_since = now
            if now - self._refused_since > self.stale_after + self.interval:
                raise
            return 0

    async def beat(self) -> int:
        """Refresh this relay's row and take a share; returns the count, 0 on failure. Raises
        DuplicateRelayId when another live process holds this relay_id."""
        try:
            live, ours = await self.store.heartbeat(self.relay_id, self.token, self.stale_after)
        except RETRYABLE as err:
            stale = (
                self._last_ok is None
                or self._clock() - self._last_ok > self.stale_after - self.interval
            )
            if stale and not self._fenced:
                log.error("rate_share_fenced", error=str(err), rate_limit=FENCED_RATE)
                self._fence()
            return 0
        if not ours:
            self._fence()
            raise DuplicateRelayId(self.relay_id)
        self._last_ok = self._clock()
        self._counts.append(live)
        self._take(max(self._counts))  # down at once, up when two counts agree
        return live

    async def leave(self) -> None:
        """Give the share back now rather than when this relay's row goes stale."""
        with contextlib.suppress(*RETRYABLE):
            await self.store.leave(self.relay_id, self.token)

    def _take(self, live: int) -> None:
        if live != self.live or self._fenced:
            log.info("rate_share", relays=live, rate_limit=self.account_rate / live)
        self.live, self._fenced = live, False
        self._set(self.account_rate / live)

    def _fence(self) -> None:
        self._fenced = True
        self._set(min(FENCED_RATE, self.account_rate))

    def _set(self, ceiling: float) -> None:
        self.limiter.set_ceiling(ceiling)
        metrics.RATE.set(self.limiter.rate)
