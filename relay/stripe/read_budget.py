"""One paced budget for the relay's reads of Stripe (meter lists, event summaries).

Stripe limits basic API reads per account separately from meter events: about 100 requests/s
live and 25 in test mode. The relay's reads (the meter catalogue, the reconciliation's summary
calls) all take their slot here, so together they stay under the budget; the budget is its own
limiter, never the send limiter (relay/stripe/rate_limit.py), so a burst of reads never delays
a meter event. A consumer that must not take the whole budget (a background confirmation
pass) takes a `share`: its slots are spaced by its own fraction and also drawn from the whole.
"""

import asyncio
import time
from collections.abc import Callable

from relay.stripe.rate_limit import RateLimiter

# Stripe's basic read limit per account (requests per second), and the part the relay takes by
# default: the rest is left to dashboards, scripts and the operator's own tools.
STRIPE_READ_LIMIT_LIVE = 100.0
STRIPE_READ_LIMIT_TEST = 25.0
DEFAULT_SHARE = 0.5


def default_read_rate(api_key: str) -> float:
    live = api_key.startswith(("sk_live_", "rk_live_"))
    return (STRIPE_READ_LIMIT_LIVE if live else STRIPE_READ_LIMIT_TEST) * DEFAULT_SHARE


class ReadBudget:
    """`await acquire()` before each read; `on_rate_limited()` after a 429 on a read."""

    def __init__(
        self,
        rate: float,
        parent: "ReadBudget | None" = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self._parent = parent
        self._clock = clock
        self._limiter = RateLimiter(rate, burst=1.0, floor=min(1.0, rate))

    def reserve(self) -> float:
        """Reserve the next read slot here and in the parent; seconds to wait for it."""
        wait = self._limiter.reserve(self._clock())
        if self._parent is not None:
            wait = max(wait, self._parent.reserve())
        return wait

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def on_rate_limited(self) -> None:
        """Stripe answered a read with 429: every consumer slows down."""
        self._limiter.on_rate_limited()
        if self._parent is not None:
            self._parent.on_rate_limited()

    def share(self, fraction: float) -> "ReadBudget":
        """A consumer limited to `fraction` of this budget (and within it)."""
        if not 0 < fraction <= 1:
            raise ValueError("a share is a fraction in (0, 1]")
        return ReadBudget(self.rate * fraction, parent=self, clock=self._clock)
