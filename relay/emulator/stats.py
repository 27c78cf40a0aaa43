"""Request counters, so tests can assert on traffic shape rather than only on outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestStats:
    """Counts per route and outcome.

    Outcomes are HTTP statuses as strings ("200", "429", ...) plus "reset" (connection cut
    before processing) and "dropped" (processed, then cut without an answer).
    """

    by_route: dict[str, dict[str, int]] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def begin(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def end(self, route: str, outcome: str) -> None:
        self.in_flight -= 1
        counts = self.by_route.get(route)
        if counts is None:
            counts = self.by_route[route] = {}
        counts[outcome] = counts.get(outcome, 0) + 1

    def count(self, route: str | None = None, outcome: str | int | None = None) -> int:
        """Requests matching a route label (`"POST /v1/..."` or a bare path) and outcome."""
        wanted = None if outcome is None else str(outcome)
        total = 0
        for label, counts in self.by_route.items():
            if route is not None and route not in (label, label.partition(" ")[2]):
                continue
            for got, n in counts.items():
                if wanted is None or got == wanted:
                    total += n
        return total

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": {route: dict(counts) for route, counts in self.by_route.items()},
            "total_requests": self.count(),
            "status_429": self.count(outcome=429),
            "resets": self.count(outcome="reset"),
            "dropped": self.count(outcome="dropped"),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }

    def reset(self) -> None:
        self.by_route.clear()
        self.max_in_flight = self.in_flight
