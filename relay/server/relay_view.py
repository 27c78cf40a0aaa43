"""What the HTTP server and the console read of the running relay, and nothing more.

A protocol, not the pipeline's `Relay`: the server is built around a relay (relay/daemon.py),
and tests serve it with any object of this shape.
"""

from typing import Protocol

from relay.core.config import Settings


class RelayHealth(Protocol):
    """/healthz, /readyz and the console's banner (relay.pipeline.executor.RelayState)."""

    @property
    def auth_ok(self) -> bool: ...  # False while Stripe refuses the key (a 401 pause)
    @property
    def started(self) -> bool: ...  # the rate share is joined and the producer runs
    @property
    def last_loop(self) -> float: ...  # monotonic time the producer's loop last turned
    @property
    def read_only_since(self) -> float | None: ...  # monotonic time the database went read-only
    def read_only_past(self, grace: float) -> bool: ...  # read-only for longer than `grace` s


class StripeReach(Protocol):
    """/readyz's view of relay.stripe.reachability.Reachability."""

    @property
    def reached(self) -> bool: ...  # Stripe answered at least once


class RelayView(Protocol):
    """A running relay as its HTTP surface sees it (relay.pipeline.supervisor.Relay)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def state(self) -> RelayHealth: ...
    @property
    def reachability(self) -> StripeReach: ...
