"""`outbox-relay drift`: compare what we believe Stripe counted with what Stripe reports.

Per (account, customer, meter, hour of the event timestamp): the sum of our accepted rows
(neither rejected nor cancelled) against Stripe's meter event summaries. A difference means
something changed behind the relay's back: a rejection the webhooks missed, a manual change at
Stripe, an application writing to Stripe directly. Groups with rows sent but not settled (in
flight, retrying after an unknown outcome) are reported as unsettled, not compared.

Stripe is asked once per (account, meter, customer) and page (hourly summaries of the whole
range), paced well within the account's rate limit, so a drift run never starves the relay.

This module is the one comparison engine: `judge` says what one hour's two totals mean, and
`compare_hours` applies it to a series. The `drift` command (the manual, on-demand view), the
relay's continuous confirmation and the comparisons error reports ask for
(relay/pipeline/confirmation.py) all judge through it, and `hourly_async` is the relay's
paced read of the summaries.
"""

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple, Protocol

import stripe
from stripe.params.billing import MeterEventSummaryListParams, MeterListParams

from relay.db.store import OurGroup, SyncStore
from relay.stripe.read_budget import ReadBudget

HOUR = timedelta(hours=1)
COMPARABLE = {"sum", "count"}  # formulas whose hourly totals add up like ours

# What one hour's comparison means:
#   open     rows sent but not settled: not compared yet
#   match    Stripe counted what we believe it accepted
#   dropped  Stripe's total is 0 while ours is more: Stripe counted none of the group's rows
#   differs  a partial difference: drift, never pinned on rows
Judgement = Literal["open", "match", "dropped", "differs"]


class OurHour(Protocol):
    """Our side of one hour (OurGroup for `drift`, SeriesHour for the confirmation)."""

    @property
    def value(self) -> Decimal: ...
    @property
    def events(self) -> int: ...
    @property
    def open(self) -> int: ...


def our_total(group: OurHour | None, formula: str) -> Decimal:
    if group is None:
        return Decimal(0)
    return Decimal(group.value if formula == "sum" else group.events)


def judge(group: OurHour | None, formula: str, stripe_total: Decimal) -> Judgement:
    """The meaning of one hour's totals. A formula outside COMPARABLE is never judged."""
    if group is not None and group.open:
        return "open"
    ours = our_total(group, formula)
    if ours == stripe_total:
        return "match"
    if stripe_total == 0 and ours > 0:
        return "dropped"
    return "differs"


class HourVerdict(NamedTuple):
    hour: datetime
    judgement: Judgement
    ours: Decimal
    stripe: Decimal
    summary_id: str | None


class Summary(NamedTuple):
    """One hourly summary of Stripe's: its total and its id."""

    value: Decimal
    id: str


def compare_hours(
    formula: str,
    ours: Mapping[datetime, OurHour],
    theirs: Mapping[datetime, Summary],
    hours: Sequence[datetime] | None = None,
) -> list[HourVerdict]:
    """Judge `hours` (default: every hour either side has), oldest first."""
    wanted = sorted(set(ours) | set(theirs)) if hours is None else sorted(hours)
    verdicts = []
    for hour in wanted:
        group = ours.get(hour)
        summary = theirs.get(hour)
        stripe_total = summary.value if summary else Decimal(0)
        verdicts.append(
            HourVerdict(
                hour,
                judge(group, formula, stripe_total),
                our_total(group, formula),
                stripe_total,
                summary.id if summary else None,
            )
        )
    return verdicts


def summary_query(
    account: str, customer: str, start: datetime, end: datetime
) -> tuple[MeterEventSummaryListParams, stripe.RequestOptions]:
    """The hourly summaries of one customer in [start, end), a full page at a time, on the
    customer's account: one query for the relay's reader and the drift command's."""
    params: MeterEventSummaryListParams = {
        "customer": customer,
        "start_time": int(start.timestamp()),
        "end_time": int(end.timestamp()),
        "value_grouping_window": "hour",
        "limit": 100,
    }
    options: stripe.RequestOptions = {"stripe_account": account} if account else {}
    return params, options


async def hourly_async(
    client: stripe.StripeClient,
    budget: ReadBudget,
    meter_id: str,
    account: str,
    customer: str,
    start: datetime,
    end: datetime,
) -> dict[datetime, Summary]:
    """Stripe's hourly summaries of one customer in [start, end), every page, each page a
    slot of `budget` (a 429 slows the budget and raises for the caller to retry later)."""
    params, options = summary_query(account, customer, start, end)
    found: dict[datetime, Summary] = {}
    while True:
        await budget.acquire()
        try:
            page = await client.v1.billing.meters.event_summaries.list_async(
                meter_id, params, options
            )
        except stripe.RateLimitError:
            budget.on_rate_limited()
            raise
        for s in page.data:
            hour = datetime.fromtimestamp(s.start_time, UTC)
            found[hour] = Summary(Decimal(str(s.aggregated_value)), s.id)
        if not page.has_more or not page.data:
            return found
        params["starting_after"] = page.data[-1].id


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
        params, options = summary_query(account, customer, start, end)
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
    summaries = {hour: Summary(total, "") for hour, total in theirs.items()}
    for v in compare_hours(meter.formula, by_hour, summaries):
        report.groups += 1
        if v.judgement == "open":
            report.unsettled += 1
            continue
        if v.judgement == "match":
            continue
        g = by_hour.get(v.hour)
        report.differences.append(
            {
                "account": who[0] or None,
                "customer": who[1],
                "event_name": meter.event_name,
                "meter": meter.id,
                "hour": v.hour,
                "ours": v.ours,
                "stripe": v.stripe,
                "difference": v.stripe - v.ours,
                "events": g.events if g else 0,
                "identifiers": g.identifiers if g else [],
            }
        )
