"""Rate limiting and the one-call-per-(customer, meter) rule.

Both run BEFORE the idempotency layer, as at Stripe: a request they reject leaves no saved
response, so retrying it with the same idempotency key is safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class RateLimiter:
    """A token bucket per (account, livemode) holding one second's allowance.

    Stripe's limits are per second and per account: 1,000/s for meter events in live mode,
    about 25/s in sandboxes. Stripe describes its request limiter as a token bucket; one second
    of capacity refuses the (limit+1)th request of a burst, yet a client pacing exactly at the
    limit is not punished for the jitter of its packets (a fixed one-second window would be).
    None disables the limit for that mode.
    """

    live_per_second: int | None = 1000
    test_per_second: int | None = 25
    # Replaceable so tests can freeze time instead of racing the refill.
    now: Callable[[], float] = time.monotonic
    _buckets: dict[Hashable, tuple[float, float]] = field(default_factory=dict)
    rejected: int = 0

    def allow(self, account: str, livemode: bool) -> bool:
        limit = self.live_per_second if livemode else self.test_per_second
        if limit is None:
            return True
        now = self.now()
        key = (account, livemode)
        tokens, stamp = self._buckets.get(key, (float(limit), now))
        tokens = min(float(limit), tokens + (now - stamp) * limit)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            self.rejected += 1
            return False
        self._buckets[key] = (tokens - 1, now)
        return True

    def reset(self) -> None:
        self._buckets.clear()
        self.rejected = 0


# (account, meter, customer as sent): the pair Stripe runs one call at a time for, per account.
Slot = tuple[str, str, object]


@dataclass
class ConcurrencyGuard:
    """Tracks calls in flight per (account, meter, customer) and refuses overlapping ones.

    `max_observed` records the highest number of calls that were in flight at once for each
    key, counting the refused arrival too: a well-behaved relay keeps it at 1.
    """

    enforce: bool = True
    _holders: dict[Slot, int] = field(default_factory=dict)
    max_observed: dict[Slot, int] = field(default_factory=dict)
    conflicts: int = 0

    def try_acquire(self, key: Slot) -> bool:
        holders = self._holders.get(key, 0)
        observed = holders + 1
        if observed > self.max_observed.get(key, 0):
            self.max_observed[key] = observed
        if holders and self.enforce:
            self.conflicts += 1
            return False
        self._holders[key] = observed
        return True

    def release(self, key: Slot) -> None:
        holders = self._holders.get(key, 0) - 1
        if holders > 0:
            self._holders[key] = holders
        else:
            self._holders.pop(key, None)

    def reset(self) -> None:
        self.max_observed.clear()
        self.conflicts = 0
