"""Client-side pacing of Stripe calls (invariant 4): GCRA scheduling, adaptive on 429.

Stripe's limit is per account per second (live 1,000/s, sandbox 25/s). Each call reserves the
next send slot, spaced 1/rate apart (the generic cell rate algorithm, i.e. a token bucket
written as "theoretical arrival time"); callers sleep until their slot concurrently. Unlike a
lock-and-sleep-per-token bucket, this does not lose throughput when the event loop is busy:
late wake-ups find their slots already due. Calls in any one-second window stay within
rate + burst. Each 429 cuts the rate (at most once per 200 ms, so one burst is one cut) and quiet
seconds restore it additively toward the configured ceiling (AIMD).
"""

import asyncio
import time


class RateLimiter:
    """GCRA pacing with an adaptive rate; `await acquire()` before each call."""

    def __init__(self, rate: float, burst: float = 1.0, floor: float = 1.0) -> None:
        self.ceiling = rate
        self.rate = rate
        self.floor = min(floor, rate)
        self.burst = max(1.0, burst)
        self._tat = 0.0  # theoretical arrival time of the next call
        self._last_cut = 0.0
        self._last_adjust = time.monotonic()

    def reserve(self, now: float | None = None) -> float:
        """Reserve the next slot; returns how long to wait for it (seconds)."""
        now = time.monotonic() if now is None else now
        self._recover(now)
        slot = max(self._tat, now - (self.burst - 1) / self.rate)
        self._tat = slot + 1 / self.rate
        return max(0.0, slot - now)

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    def _recover(self, now: float) -> None:
        elapsed, self._last_adjust = now - self._last_adjust, now
        if self.rate < self.ceiling and now - self._last_cut > 1.0:
            self.rate = min(self.ceiling, self.rate + self.ceiling * 0.05 * elapsed)

    def set_ceiling(self, ceiling: float) -> None:
        """A new share of the account's limit (relays joined or left). A lower ceiling applies
        at once; a higher one at once too unless a 429 is still being backed off from."""
        if ceiling == self.ceiling:
            return
        backing_off = self.rate < self.ceiling
        self.ceiling = ceiling
        self.floor = min(self.floor, ceiling)
        self.burst = max(1.0, ceiling / 100)
        self.rate = min(self.rate, ceiling) if backing_off else ceiling

    def on_rate_limited(self) -> None:
        """A 429 arrived: slow down by a quarter and leave a short quiet gap."""
        now = time.monotonic()
        if now - self._last_cut < 0.2:
            return
        self._last_cut = now
        self.rate = max(self.floor, self.rate * 0.75)
        self._tat = max(self._tat, now) + 0.05
