"""Confirm accepted rows against Stripe's own totals: one job, its own loop.

A 200 from Stripe means "accepted for processing"; what Stripe counted shows in its hourly
meter event summaries, which are eventually consistent. Each pass:

1. notes the (account, customer, meter, hour) groups of rows accepted since the last whole
   discovery window (OUTBOX_CONFIRM_WINDOW_SECONDS), each due once its hour has closed and
   the summaries had OUTBOX_SUMMARY_SETTLE_SECONDS to settle; error reports that counted more
   failures than they named make groups due too (relay/stripe/webhooks.py);
2. leases a few series (account, customer, meter) with groups due, oldest first: replicas on
   one database compare a group once (the lease is in the database, as for rows);
3. per series, one paced summary call (every page) for the due hours, judged by the one
   comparison engine (relay/stripe/drift.py): a match stamps the group confirmed (when, by
   which summary); Stripe at 0 twice in a row while our accepted rows sum to more rejects the
   group's rows as inferred (the report's code, or dropped_by_stripe); a partial difference is
   drift, reported as `drift` reports it and compared again later, never pinned on rows.

Reads take a share of the read budget (OUTBOX_CONFIRM_READ_SHARE), never the send limiter, so
confirmation never delays a meter event. Summaries answered 429/5xx leave the groups due a
little later; nothing is judged on a failed read.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import stripe
import structlog

from relay.core import metrics
from relay.core.config import Settings
from relay.core.retryable import RETRYABLE
from relay.db.queries import DueGroup, SeriesHour
from relay.db.store import Store
from relay.stripe.catalogue import MeterCatalogue
from relay.stripe.drift import COMPARABLE, HourVerdict, Summary, compare_hours, hourly_async
from relay.stripe.read_budget import ReadBudget

log = structlog.get_logger("relay")

HOUR = timedelta(hours=1)
# (meter id, account, customer, start, end) -> Stripe's hourly summaries
Fetch = Callable[[str, str, str, datetime, datetime], Awaitable[dict[datetime, Summary]]]
DROPPED_BY_STRIPE = "dropped_by_stripe"
ZERO_READS_TO_INFER = 2  # Stripe at 0 on two reads, a settle delay apart, before any row moves
DRIFT_RECHECK = 3600.0  # a drifting group is compared again after this many seconds
RETRY_AFTER = 300.0  # at most, after a failed summary read or meters not read yet
DISCOVERY_BATCH = 50_000  # rows per discovery statement (a long history catches up in steps)
MAX_HOURS = 840  # hours per series per comparison: Stripe's 35 days
DISCOVERY_MARGIN = 60.0  # seconds a window must have ended (commit lag, clock skew)


class Confirmation:
    """Discovers groups, leases due series and compares them with Stripe's summaries."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalogue: MeterCatalogue,
        fetch: Fetch,
        rate: float,
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self._fetch = fetch
        self.relay_id = settings.relay_id
        self.settle = settings.summary_settle_seconds
        self.window = settings.confirm_window_seconds
        # Enough series per lease for ten seconds of the share; the lease outlasts them.
        self.series = max(1, min(100, int(rate * 10)))
        self.lease_seconds = 60.0 + 2 * self.series / rate
        self.interval = min(30.0, max(0.2, min(self.settle, self.window) / 4))
        # A failed read is tried again after the settle delay, at most RETRY_AFTER: a summary
        # endpoint answering 5xx or 429 for an hour costs a read per series every 5 minutes.
        self.retry_after = min(RETRY_AFTER, max(1.0, self.settle))
        self.compared = 0  # series compared (one summary read each, every page)
        self.passes = 0  # completed passes (tests await them)
        self.passed = asyncio.Condition()

    async def run(self) -> None:
        while True:
            busy = await self.run_once()
            if not busy:
                await asyncio.sleep(self.interval)

    async def run_once(self) -> bool:
        """One pass; True when it leased a full batch (more may be due at once)."""
        leased: list[DueGroup] = []
        try:
            await self._discover()
            leased = await self.store.lease_comparisons(
                {
                    "scan": self.series * 20,
                    "series": self.series,
                    "hours": MAX_HOURS,
                    "relay_id": self.relay_id,
                    "lease_seconds": self.lease_seconds,
                }
            )
            series = _by_series(leased)
            for groups in series.values():
                await self._compare(groups)
        except RETRYABLE as err:
            log.warning("confirmation_failed", error=str(err)[:300])
            series = {}
        async with self.passed:
            self.passes += 1
            self.passed.notify_all()
        return len(series) >= self.series

    async def _discover(self) -> None:
        more = True
        while more:
            found = await self.store.discover_groups(
                {
                    "window_seconds": self.window,
                    "margin_seconds": min(DISCOVERY_MARGIN, self.window),
                    "batch_size": DISCOVERY_BATCH,
                    "settle_seconds": self.settle,
                }
            )
            more = found.more

    async def _compare(self, groups: list[DueGroup]) -> None:
        first = groups[0]
        account, customer, event_name = first.account, first.customer, first.event_name
        meters = self.catalogue.active_meters(account, event_name)
        if meters is None:
            await self._keep(groups, "the account's meters are not read yet", self.retry_after)
            return
        if len(meters) != 1 or meters[0].formula not in COMPARABLE:
            await self._not_confirmable(groups, _why_not(meters))
            return
        meter = meters[0]
        start, end = groups[0].hour, groups[-1].hour + HOUR
        ours = {
            h.hour: h
            for h in await self.store.series_ours(
                {
                    "account": account,
                    "customer": customer,
                    "event_name": event_name,
                    "since": start,
                    "until": end,
                    "settle_seconds": self.settle,
                }
            )
        }
        if all(ours[g.hour].open for g in groups if g.hour in ours) and ours.keys() >= {
            g.hour for g in groups
        }:
            # Every hour still settling: no read until Stripe can show them.
            await self._keep(groups, "rows still being sent or settling", max(self.settle, 1.0))
            return
        try:
            theirs = await self._fetch(meter.meter_id, account, customer, start, end)
        except stripe.StripeError as err:
            metrics.SUMMARY_READS.labels("failed").inc()
            log.warning(
                "summary_read_failed",
                stripe_account=account or None,
                event_name=event_name,
                error=type(err).__name__,
            )
            detail = f"summaries unavailable ({type(err).__name__})"
            await self._keep(groups, detail, self.retry_after)
            return
        metrics.SUMMARY_READS.labels("ok").inc()
        self.compared += 1
        verdicts = compare_hours(meter.formula, ours, theirs, [g.hour for g in groups])
        rows, differences = [], []
        for group, verdict in zip(groups, verdicts, strict=True):
            mine = ours.get(verdict.hour)
            rows.append(await self._verdict(group, verdict, mine, meter.formula))
            if verdict.judgement == "differs":
                differences.append(_difference(group, meter.meter_id, verdict, mine))
        await self._record(first, rows)
        if differences:
            await self._report_drift(start, end, len(groups), differences)

    async def _verdict(
        self, group: DueGroup, verdict: HourVerdict, mine: SeriesHour | None, formula: str
    ) -> dict[str, Any]:
        """The group's next state from one judgement (rows rejected here when inferred)."""
        events = mine.events if mine else 0
        value = mine.value if mine else Decimal(0)
        latest = mine.latest if mine else None
        row = _row(verdict, events, value, latest)
        if verdict.judgement == "open":
            return {
                **row,
                "state": group.state,
                "due_in": self.settle,
                "zero_reads": group.zero_reads,
                "detail": "rows still being sent",
            }
        if verdict.judgement == "match":
            return {**row, "state": "confirmed", "due_in": None, "detail": None}
        if verdict.judgement == "differs":
            detail = f"Stripe counted {verdict.stripe}, our accepted rows sum to {verdict.ours}"
            return {**row, "state": "drift", "due_in": DRIFT_RECHECK, "detail": detail}
        zero_reads = group.zero_reads + 1
        if zero_reads < ZERO_READS_TO_INFER or latest is None:
            detail = "Stripe's total is 0: read again before any row is judged"
            return {
                **row,
                "state": "awaiting",
                "due_in": max(self.settle, 1.0),
                "zero_reads": zero_reads,
                "detail": detail,
            }
        rejected = await self._infer(group, verdict, latest, formula)
        detail = f"Stripe counted none of it: {len(rejected)} rows rejected (inferred)"
        # A sum meter's facts of value 0 stay accepted: Stripe's 0 matches them either way.
        return {
            **row,
            "state": "confirmed",
            "due_in": None,
            "events": events - len(rejected),
            "value": 0,
            "detail": detail,
        }

    async def _infer(
        self, group: DueGroup, verdict: HourVerdict, latest: datetime, formula: str
    ) -> list[str]:
        code = group.report_code or DROPPED_BY_STRIPE
        source = group.report_id or "summaries"
        because = f"error report {group.report_id}" if group.report_id else "no error report"
        message = (
            f"inferred: Stripe's total for this customer, meter and hour "
            f"({group.hour.isoformat()}) is 0 while our accepted rows sum to {verdict.ours} "
            f"({because})"
        )
        rejected = await self.store.infer_rejected(
            {
                "account": group.account,
                "customer": group.customer,
                "event_name": group.event_name,
                "hour": group.hour,
                "counted_through": latest,
                "code": code,
                "message": message[:500],
                "source": source,
                # Under a sum, a total of 0 says nothing of facts of value 0: Stripe may have
                # counted them, so only facts that would have raised the total are rejected.
                "positive_only": formula == "sum",
            }
        )
        metrics.INFERRED_REJECTIONS.inc(len(rejected))
        log.warning(
            "rejection_inferred",
            stripe_account=group.account or None,
            customer=group.customer,
            event_name=group.event_name,
            hour=group.hour.isoformat(),
            code=code,
            report=group.report_id,
            rows=len(rejected),
            identifiers=rejected[:10],
        )
        return rejected

    async def _keep(self, groups: list[DueGroup], detail: str, due_in: float) -> None:
        """Compare these groups again later, unchanged."""
        rows = [
            {
                "hour": g.hour.isoformat(),
                "state": g.state,
                "due_in": due_in,
                "zero_reads": g.zero_reads,
                "detail": detail,
            }
            for g in groups
        ]
        await self._record(groups[0], rows, keep_counts=True)

    async def _not_confirmable(self, groups: list[DueGroup], detail: str) -> None:
        rows = [
            {
                "hour": g.hour.isoformat(),
                "state": "not_confirmable",
                "due_in": None,
                "zero_reads": 0,
                "detail": detail,
            }
            for g in groups
        ]
        await self._record(groups[0], rows, keep_counts=True)

    async def _record(
        self, first: DueGroup, rows: list[dict[str, Any]], keep_counts: bool = False
    ) -> None:
        await self.store.record_comparisons(
            {
                "account": first.account,
                "customer": first.customer,
                "event_name": first.event_name,
                "token": first.token,
                "verdicts": orjson.dumps(rows, default=str).decode(),
                "keep_counts": keep_counts,
            }
        )

    async def _report_drift(
        self, start: datetime, end: datetime, groups: int, differences: list[dict[str, Any]]
    ) -> None:
        drift = sum((abs(Decimal(str(d["difference"]))) for d in differences), Decimal(0))
        await self.store.save_drift_report(
            {
                "since": start,
                "until": end,
                "groups": groups,
                "differing": len(differences),
                "unsettled": 0,
                "drift_events": drift,
                "differences": differences,
            }
        )


def _row(
    verdict: HourVerdict, events: int, value: Decimal, latest: datetime | None
) -> dict[str, Any]:
    return {
        "hour": verdict.hour.isoformat(),
        "events": events,
        "value": str(value),
        "stripe_value": str(verdict.stripe),
        "summary_id": verdict.summary_id,
        "counted_through": latest.isoformat() if latest else None,
        "zero_reads": 0,
    }


def _difference(
    group: DueGroup, meter_id: str, verdict: HourVerdict, mine: SeriesHour | None
) -> dict[str, Any]:
    return {
        "account": group.account or None,
        "customer": group.customer,
        "event_name": group.event_name,
        "meter": meter_id,
        "hour": verdict.hour,
        "ours": verdict.ours,
        "stripe": verdict.stripe,
        "difference": verdict.stripe - verdict.ours,
        "events": mine.events if mine else 0,
        "identifiers": (mine.identifiers or []) if mine else [],
    }


def _why_not(meters: list[Any]) -> str:
    if not meters:
        return "no active meter has this event name"
    if len(meters) > 1:
        return "several active meters share this event name"
    return f"formula {meters[0].formula!r} cannot be compared by sum"


def _by_series(leased: list[DueGroup]) -> dict[tuple[str, str, str], list[DueGroup]]:
    series: dict[tuple[str, str, str], list[DueGroup]] = {}
    for g in leased:
        series.setdefault((g.account, g.customer, g.event_name), []).append(g)
    return series


def sdk_fetch(client: stripe.StripeClient, budget: ReadBudget) -> Fetch:
    async def fetch(
        meter_id: str, account: str, customer: str, start: datetime, end: datetime
    ) -> dict[datetime, Summary]:
        return await hourly_async(client, budget, meter_id, account, customer, start, end)

    return fetch
