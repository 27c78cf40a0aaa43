"""Whether Stripe answers this relay: every call and meter read reports here.

Before the first answer the relay is not ready (`/readyz`): a relay that cannot reach Stripe
(a proxy it does not use, a CA it does not trust, an egress rule) would otherwise take traffic
and loop its rows on `connection_error` for the whole dedup window. After the first answer an
outage changes nothing of readiness (Stripe's webhooks must keep arriving, and rows wait for
it in the database); it is the gauge `outbox_relay_stripe_reachable` and one log line per change,
the first of which says what to fix when the way out is the cause (relay/stripe/egress.py).

The gauge means what the outage breaker (relay/stripe/outage.py) means by an answer, so the two
never contradict: a gateway's 502/503/504 reached the way out (ready) but is no answer from
Stripe's API (0), and a replica that follows an open breaker, making no calls of its own, reads
0 until the breaker closes.
"""

import structlog

from relay.core import metrics
from relay.stripe.classify import GATEWAY_STATUSES

log = structlog.get_logger("relay")


class Reachability:
    """The last answer-or-not, and whether any answer ever came."""

    def __init__(self, reached: bool = False) -> None:
        self.reached = reached  # an HTTP answer came at least once (any status)
        self.up: bool | None = True if reached else None  # the last call's: None before any
        metrics.STRIPE_REACHABLE.set(1 if reached else 0)

    def answered(self) -> None:
        if self.up is not True:
            log.info("stripe_reachable", first=not self.reached)
            metrics.STRIPE_REACHABLE.set(1)
        self.reached = True
        self.up = True

    def unanswered(self, why: str | None) -> None:
        if self.up is not False:
            log.warning(
                "stripe_unreachable",
                error=why,
                # Before the first answer the relay stays unready; after it, it stays ready.
                ready=self.reached,
            )
            metrics.STRIPE_REACHABLE.set(0)
        self.up = False

    def saw(self, http_status: int | None, why: str | None) -> None:
        """One call's result: None is no answer; a gateway's status proves the way out works
        (ready) but is no answer from the API; any other status is an answer."""
        if http_status is None:
            self.unanswered(why)
        elif http_status in GATEWAY_STATUSES:
            self.reached = True
            self.unanswered(f"http_{http_status}")
        else:
            self.answered()

    def follow_outage(self, open_: bool) -> None:
        """The shared outage breaker changed: open is no answer for every replica."""
        if open_:
            self.unanswered("the outage breaker is open")
        else:
            self.answered()
