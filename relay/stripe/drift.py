"""`outbox-relay drift`: compare what we believe Stripe counted with what Stripe reports.

Per (account, customer, meter, hour of the event timestamp): the sum of our accepted rows
(neither rejected nor cancelled) against Stripe's meter event summaries. A difference means
something changed behind the relay's back: a rejection the webhooks missed, a manual change at
Stripe, an application writing to Stripe directly. Groups with rows sent but not settled (in
flight, retrying after an unknown outcome) are reported as unsettled, not compared.

Stripe is asked once per (account, meter, customer) and page (hourly summaries of the whole
range), paced well within the account's rate limit, so a drift run never starves the relay.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe
from stripe.params.billing import MeterEventSummaryListParams, MeterListParams

from relay.db.store import OurGroup, SyncStore

HOUR = timedelta(hours=1)
COMPARABLE = {"sum", "count"}  # formulas whose hourly totals add up like ours


def hour_floor(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_ceil(t: datetime) -> datetime:
    floor = hour_floor(t)
    return floor if floor == t else floor + HOUR


class Pacer:
    """At most `rate` calls per second (sleeps between calls; a CLI, not the relay's loop)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate
        self.clock = clock
        self.next_at = 0.0

    def wait(self) -> None:
        now = self.clock()
        if now < self.next_at:
            time.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval


@dataclass
class Meter:
    id: str
    event_name: str
    formula: str


@dataclass
class Report:
    since: datetime
    until: datetime
    groups: int = 0
    unsettled: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    skipped_meters: list[str] = field(default_factory=list)

    @property
    def drift_events(self) -> Decimal:
        return sum((abs(Decimal(str(d["difference"]))) for d in self.differences), Decimal(0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "groups": self.groups,
            "differing": len(self.differences),
            "unsettled": self.unsettled,
            "drift_events": self.drift_events,
            "differences": self.differences,
            "skipped_meters": self.skipped_meters,
        }


class StripeTotals:
    """Meters by event name and hourly summaries, one paced call at a time."""

    def __init__(self, client: stripe.StripeClient, pacer: Pacer) -> None:
        self.client = client
        self.pacer = pacer

    def meters(self) -> dict[str, Meter]:
        """Active meters by event name (GET /v1/billing/meters)."""
        found: dict[str, Meter] = {}
        params: MeterListParams = {"limit": 100, "status": "active"}
        while True:
            self.pacer.wait()
            page = self.client.v1.billing.meters.list(params)
            for m in page.data:
                found[m.event_name] = Meter(m.id, m.event_name, m.default_aggregation.formula)
            if not page.has_more or not page.data:
                return found
            params["starting_after"] = page.data[-1].id

    def hourly(
        self, meter: Meter, account: str, customer: str, start: datetime, end: datetime
    ) -> dict[datetime, Decimal]:
        """Stripe's hourly totals for one customer (only hours with counted events)."""
        params: MeterEventSummaryListParams = {
            "customer": customer,
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
            "value_grouping_window": "hour",
            "limit": 100,
        }
        options: stripe.RequestOptions = {"stripe_account": account} if account else {}
        totals: dict[datetime, Decimal] = {}
        while True:
            self.pacer.wait()
            page = self.client.v1.billing.meters.event_summaries.list(
                meter.id,
                params,
                options,
            )
            for s in page.data:
                hour = datetime.fromtimestamp(s.start_time, UTC)
                totals[hour] = Decimal(str(s.aggregated_value))
            if not page.has_more or not page.data:
                return totals
            params["starting_after"] = page.data[-1].id


def compare(
    store: SyncStore, stripe_totals: StripeTotals, since: datetime, until: datetime
) -> Report:
    """The drift report for facts that happened in [since, until), hour-aligned."""
    start, end = hour_floor(since), hour_ceil(until)
    report = Report(start, end)
    meters = stripe_totals.meters()
    ours = store.drift_ours(start, end)
    for (account, customer, event_name), groups in _by_series(ours).items():
        meter = meters.get(event_name)
        if meter is None or meter.formula not in COMPARABLE:
            report.skipped_meters.append(event_name)
            continue
        theirs = stripe_totals.hourly(meter, account, customer, start, end)
        _compare_series(report, meter, (account, customer), groups, theirs)
    report.skipped_meters = sorted(set(report.skipped_meters))
    return report


def _by_series(ours: Iterable[OurGroup]) -> dict[tuple[str, str, str], list[OurGroup]]:
    series: dict[tuple[str, str, str], list[OurGroup]] = {}
    for g in ours:
        series.setdefault((g.account, g.customer, g.event_name), []).append(g)
    return series


def _compare_series(
    report: Report,
    meter: Meter,
    who: tuple[str, str],
    groups: list[OurGroup],
    theirs: dict[datetime, Decimal],
) -> None:
    """Every hour either side has for one (account, customer, meter)."""
    by_hour = {hour_floor(g.hour): g for g in groups}
    for hour in sorted(set(by_hour) | set(theirs)):
        g = by_hour.get(hour)
        report.groups += 1
        if g is not None and g.open:
            report.unsettled += 1
            continue
        ours = Decimal(0) if g is None else Decimal(g.value if meter.formula == "sum" else g.events)
        stripe_total = theirs.get(hour, Decimal(0))
        if ours != stripe_total:
            report.differences.append(
                {
                    "account": who[0] or None,
                    "customer": who[1],
                    "event_name": meter.event_name,
                    "meter": meter.id,
                    "hour": hour,
                    "ours": ours,
                    "stripe": stripe_total,
                    "difference": stripe_total - ours,
                    "events": g.events if g else 0,
                    "identifiers": g.identifiers if g else [],
                }
            )
