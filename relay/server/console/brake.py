"""The sign-in brake: a client that keeps presenting wrong console tokens waits longer and
longer before another attempt is even looked at.

Each client (the address the request came from, see `client_address`) has a small budget of
free failures; past it, every failure doubles a wait (1 s, 2 s, 4 s ... up to MAX_WAIT) during
which that client's sign-ins and bearer requests are answered 429 without checking the token.
A right token clears the client's record. Against a 32-character token the budget makes
guessing hopeless; its purpose is to stop a scanner from trying thousands of tokens a second
and to make the attempt visible (a log line and a metric per failure, never the token tried).

Records are kept for clients seen recently only (at most MAX_CLIENTS, oldest forgotten first),
so many source addresses cannot grow memory without bound.
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FREE_FAILURES = 5
FIRST_WAIT = 1.0
MAX_WAIT = 300.0
FORGET_AFTER = 3600.0  # a client quiet this long starts again with a full budget
MAX_CLIENTS = 10_000


@dataclass
class _Record:
    failures: int
    last_failure: float
    blocked_until: float


class SignInBrake:
    """Per-client failure budget with a growing wait; the clock is injected for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds this client must still wait before an attempt is considered (0: go)."""
        record = self._fresh(client)
        return max(0.0, record.blocked_until - self._now()) if record else 0.0

    def failed(self, client: str) -> tuple[int, float]:
        """Record a wrong token; returns (failures so far, seconds the client now waits)."""
        now = self._now()
        record = self._fresh(client) or _Record(0, now, now)
        record.failures += 1
        record.last_failure = now
        over = record.failures - FREE_FAILURES
        wait = 0.0 if over <= 0 else min(MAX_WAIT, FIRST_WAIT * 2 ** (over - 1))
        record.blocked_until = now + wait
        self._clients[client] = record
        self._clients.move_to_end(client)
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        return record.failures, wait

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)

    def _fresh(self, client: str) -> _Record | None:
        record = self._clients.get(client)
        if record is not None and self._now() - record.last_failure > FORGET_AFTER:
            del self._clients[client]
            return None
        return record
