"""Client-side pacing of Stripe calls: a token bucket that backs off on 429 (invariant 4).

Stripe's limit is per account per second (live 1,000/s, sandbox 25/s). The bucket starts at the
configured rate; each 429 cuts the rate multiplicatively and quiet seconds restore it
additively, the usual AIMD shape, never above the configured ceiling.
"""

import asyncio
import time


class RateLimiter:
    """Token bucket with adaptive rate; `acquire()` waits for a token."""

    def __init__(self, rate: float, burst: float | None = None, floor: float = 1.0) -> None:
        self.ceiling = rate
        self.rate = rate
        self.floor = min(floor, rate)
        self.burst = burst if burst is not None else max(1.0, rate / 20)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._last_cut = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        self._stamp = now
        if self.rate < self.ceiling and now - self._last_cut > 1.0:
            self.rate = min(self.ceiling, self.rate + self.ceiling * 0.05 * elapsed)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    async def acquire(self) -> None:
        """Take one token, sleeping until one is available (FIFO through the lock)."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self._refill(now)
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)

    def on_rate_limited(self) -> None:
        """A 429 arrived: halve the pace (at most once per 200 ms, one burst = one cut)."""
        now = time.monotonic()
        if now - self._last_cut < 0.2:
            return
        self._last_cut = now
        self.rate = max(self.floor, self.rate * 0.5)
        self._tokens = min(self._tokens, 0.0)
