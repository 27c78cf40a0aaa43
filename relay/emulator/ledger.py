"""The ledger: what Stripe would bill, per (account, meter event name, customer).

It records every event the emulator accepted, exactly as often as it was counted. A relay
bug that reports one identifier twice (for example after the uniqueness window, or through
the v2 stream) therefore shows up as `counted(identifier) == 2` instead of being hidden.
Events that fail asynchronous validation are kept apart as "rejected": they hold their
identifier (like Stripe, which accepted the request) but are never counted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from relay.emulator.config import Aggregation, EventTimeWindow, Meter

Number = int | float
Source = Literal["v1", "v2_stream"]
_WINDOW_SECONDS = {"hour": 3600, "day": 86400}


@dataclass
class LedgerEvent:
    """One meter event as received; `cancelled` flips when an adjustment cancels it."""

    account: str
    livemode: bool
    event_name: str
    identifier: str
    customer: str | None
    value: Number
    timestamp: int
    received_at: float
    payload: dict[str, str]
    source: Source = "v1"
    meter_id: str | None = None
    status: Literal["accepted", "rejected"] = "accepted"
    error_code: str | None = None
    cancelled: bool = False
    cancelled_at: float | None = None
    seq: int = 0

    @property
    def counts(self) -> bool:
        """True when this event contributes to billing right now."""
        return self.status == "accepted" and not self.cancelled

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LedgerSnapshot:
    """A consistent copy of the ledger, safe to inspect from another thread."""

    totals: dict[tuple[str, str, str], Number]
    events: list[LedgerEvent]
    rejected: list[LedgerEvent]

    def total(self, event_name: str, customer: str, account: str | None = None) -> Number:
        return sum(
            value
            for (acct, name, cust), value in self.totals.items()
            if name == event_name and cust == customer and (account is None or acct == account)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "totals": [
                {"account": a, "event_name": n, "customer": c, "value": v}
                for (a, n, c), v in sorted(self.totals.items())
            ],
            "events": [e.as_dict() for e in self.events],
            "rejected": [e.as_dict() for e in self.rejected],
        }


def aggregate(
    events: Iterable[LedgerEvent],
    aggregation: Aggregation,
    event_time_window: EventTimeWindow | None = None,
) -> Number:
    """Apply a meter's formula to its counted events (cancelled/rejected ones excluded)."""
    live = [e for e in events if e.counts]
    if event_time_window is not None:
        live = _last_per_window(live, _WINDOW_SECONDS[event_time_window])
    if aggregation == "count":
        return len(live)
    if aggregation == "last":
        if not live:
            return 0
        return max(live, key=lambda e: (e.timestamp, e.seq)).value
    return sum(e.value for e in live)


def _last_per_window(events: list[LedgerEvent], width: int) -> list[LedgerEvent]:
    """Pre-aggregated meters keep only the last event of each event-time window."""
    last: dict[int, LedgerEvent] = {}
    for event in events:
        bucket = event.timestamp - event.timestamp % width
        current = last.get(bucket)
        if current is None or (event.timestamp, event.seq) >= (current.timestamp, current.seq):
            last[bucket] = event
    return list(last.values())


@dataclass
class Ledger:
    """Accepted and rejected events, indexed by identifier and by billing series."""

    _events: list[LedgerEvent] = field(default_factory=list)
    _rejected: list[LedgerEvent] = field(default_factory=list)
    _by_identifier: dict[tuple[str, str], list[LedgerEvent]] = field(default_factory=dict)
    _by_series: dict[tuple[str, str, str | None], list[LedgerEvent]] = field(default_factory=dict)
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def latest(self, account: str, identifier: str) -> LedgerEvent | None:
        """The most recent event (accepted or rejected) that used this identifier."""
        found = self._by_identifier.get((account, identifier))
        return found[-1] if found else None

    def record(self, event: LedgerEvent) -> None:
        event.seq = next(self._seq)
        self._by_identifier.setdefault((event.account, event.identifier), []).append(event)
        if event.status == "accepted":
            self._events.append(event)
            key = (event.account, event.event_name, event.customer)
            self._by_series.setdefault(key, []).append(event)
        else:
            self._rejected.append(event)

    def counted(self, identifier: str, account: str | None = None) -> int:
        """How many counted (accepted, not cancelled) events carry this identifier."""
        return sum(
            1
            for (acct, ident), events in self._by_identifier.items()
            if ident == identifier and (account is None or acct == account)
            for event in events
            if event.counts
        )

    def series(self, account: str, event_name: str, customer: str | None) -> list[LedgerEvent]:
        return list(self._by_series.get((account, event_name, customer), ()))

    def total(
        self,
        event_name: str,
        customer: str,
        meter_for: Callable[[str, str], Meter | None],
        account: str | None = None,
    ) -> Number:
        """Billed value for one customer and event name (summed over accounts if None)."""
        result: Number = 0
        for (acct, name, cust), events in self._by_series.items():
            if name == event_name and cust == customer and (account is None or acct == account):
                result += _aggregate_for(events, meter_for(name, acct))
        return result

    def snapshot(self, meter_for: Callable[[str, str], Meter | None]) -> LedgerSnapshot:
        totals = {
            (acct, name, cust or ""): _aggregate_for(events, meter_for(name, acct))
            for (acct, name, cust), events in self._by_series.items()
        }
        return LedgerSnapshot(
            totals=totals,
            events=[_copy(e) for e in self._events],
            rejected=[_copy(e) for e in self._rejected],
        )

    def reset(self) -> None:
        self._events.clear()
        self._rejected.clear()
        self._by_identifier.clear()
        self._by_series.clear()


def _aggregate_for(events: list[LedgerEvent], meter: Meter | None) -> Number:
    if meter is None:
        return aggregate(events, "sum")
    return aggregate(events, meter.aggregation, meter.event_time_window)


def _copy(event: LedgerEvent) -> LedgerEvent:
    return LedgerEvent(**{**event.__dict__, "payload": dict(event.payload)})
