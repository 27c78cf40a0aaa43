"""Replicas share Stripe's per-account rate limit (OUTBOX_RATE_LIMIT_SCOPE=account, default).

Every relay upserts its row in `meter_event_outbox_relays` each HEARTBEAT_S and counts the
relays seen within LIVE_S; its limiter's ceiling is the account's limit divided by that count.
The errors all lean towards sending less:
- a share goes down at once and up only when two consecutive counts agree, so relays coming
  back one by one after a database outage never each believe they are alone;
- a relay whose heartbeat has failed for LIVE_S - HEARTBEAT_S (the others are about to count it
  out and raise their shares) fences itself to FENCED_RATE until a heartbeat succeeds; a relay
  starts fenced, so it never sends at a share it has not counted;
- a relay that joins others waits two heartbeats before sending (they lower their shares and
  use up the send slots reserved at the old share meanwhile), then counts again.
"""

import asyncio
import collections
import contextlib
import time

import structlog

from relay import metrics
from relay.db import Database
from relay.ratelimit import RateLimiter

log = structlog.get_logger("relay.share")

HEARTBEAT_S = 1.0
LIVE_S = 5.0
FENCED_RATE = 1.0  # calls/s while this relay cannot tell how many others run


class RateShare:
    """This relay's share of the account's rate limit, kept up to date by a heartbeat."""

    def __init__(
        self, db: Database, limiter: RateLimiter, relay_id: str, account_rate: float
    ) -> None:
        self.db = db
        self.limiter = limiter
        self.relay_id = relay_id
        self.account_rate = account_rate
        self.live = 0  # relays counted by the last successful heartbeat
        self._counts: collections.deque[int] = collections.deque(maxlen=2)
        self._last_ok: float | None = None
        self._fenced = False

    async def join(self, stop: asyncio.Event) -> None:
        """Count the relays before sending anything (retrying while the database is away)."""
        self._fence()
        while not stop.is_set() and not await self.beat():
            await _wait(stop, HEARTBEAT_S)
        if self.live == 1:  # two relays starting together may each have missed the other
            await asyncio.sleep(0.05)
            await self.beat()
        if self.live > 1:
            await _wait(stop, 2 * HEARTBEAT_S)
            await self.beat()

    async def run(self) -> None:
        """Heartbeat until cancelled (after the relay has drained: it sends until then)."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self.beat()

    async def beat(self) -> int:
        """Refresh this relay's row and take a share; returns the count, 0 on failure."""
        params = {"relay_id": self.relay_id, "stale_seconds": LIVE_S}
        try:
            ((live,),) = await self.db.fetch("heartbeat", params)
        except Exception as err:
            stale = self._last_ok is None or time.monotonic() - self._last_ok > LIVE_S - HEARTBEAT_S
            if stale and not self._fenced:
                log.error("rate_share_fenced", error=str(err), rate_limit=FENCED_RATE)
                self._fence()
            return 0
        self._last_ok = time.monotonic()
        self._counts.append(live)
        self._take(max(self._counts))  # down at once, up when two counts agree
        return live

    async def leave(self) -> None:
        """Give the share back now rather than when this relay's row goes stale."""
        with contextlib.suppress(Exception):
            await self.db.fetch("leave", {"relay_id": self.relay_id})

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


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
