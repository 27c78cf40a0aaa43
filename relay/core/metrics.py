"""Prometheus metrics of the relay (served on /metrics)."""

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from functools import cache
from typing import Any, Protocol

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import __version__
from relay.core.meters import HELD_CODES
from relay.core.vocabulary import State, metric_code

log = structlog.get_logger("relay.metrics")

CLAIMED = Counter("outbox_relay_claimed_rows_total", "Rows claimed for sending")
OUTCOMES = Counter(
    "outbox_relay_outcomes_total",
    "Outcomes written, by resulting state and error code",
    ["state", "code"],
)
STRIPE_CALLS = Counter("outbox_relay_stripe_calls_total", "Stripe calls by verdict", ["verdict"])
INFLIGHT = Gauge(
    "outbox_relay_inflight_calls", "Rows held now: claimed, their outcome not written yet"
)


class BatchHistogram(Collector):
    """A Prometheus histogram observed a batch at a time (`observe_many`).

    prometheus_client's Histogram takes one value per call, walks its buckets in Python and
    takes a lock per bucket increment, once per accepted row. Here a value costs a `bisect`
    and a list increment (a few times cheaper, docs/benchmarks.md). The exposition is the same
    (`_bucket` with `le`, `_count`, `_sum`). Observed from the event loop only; `observe`
    takes a single value.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [*sorted(buckets), math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, where = self._counts, self._bounds, bisect.bisect_left
        total = self._sum
        for value in values:
            counts[where(bounds, value)] += 1  # le: a value on a bound counts in that bucket
            total += value
        self._sum = total

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip(self._bounds, self._counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )


def _le(bound: float) -> str:
    """The `le` label as Prometheus' own histograms print it: 0.5, 1.0, +Inf."""
    return "+Inf" if bound == math.inf else repr(float(bound))


LATENCY = BatchHistogram(  # once per call
    "outbox_relay_stripe_latency_seconds",
    "Stripe call latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 10),
)
COMMIT_TO_ACCEPTED = BatchHistogram(
    "outbox_relay_commit_to_accepted_seconds",
    "From the row's commit (created_at) to Stripe's acceptance being written",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
RATE = Gauge("outbox_relay_rate_limit_per_second", "Current adaptive client-side rate limit")
AUTH_PAUSED = Gauge("outbox_relay_auth_paused", "1 while sending is paused on a 401/403")
CLOCK_OFFSET = Gauge(
    "outbox_relay_clock_offset_seconds",
    "The database's or Stripe's clock minus this host's (the relay judges timestamps by them)",
    ["clock"],
)
DATABASE_READ_ONLY = Gauge(
    "outbox_relay_database_read_only",
    "1 while the database refuses writes (a replica, default_transaction_read_only=on)",
)
STRIPE_REACHABLE = Gauge(
    "outbox_relay_stripe_reachable", "1 while Stripe answers this relay's calls, 0 while not"
)
STRIPE_OUTAGE = Gauge(
    "outbox_relay_stripe_outage",
    "1 while the outage breaker is open (Stripe gave no answer or 502/503/504): only probes go",
)
STRIPE_OUTAGE_TRANSITIONS = Counter(
    "outbox_relay_stripe_outage_transitions_total",
    "Changes of the outage breaker seen by this relay, by the state entered",
    ["to"],
)
STRIPE_OUTAGE_PROBES = Counter(
    "outbox_relay_stripe_outage_probes_total",
    "Probe calls this relay made while the outage breaker was open, by result",
    ["result"],
)
DB_ERRORS = Counter("outbox_relay_database_errors_total", "Failed database statements")
WEBHOOKS = Counter("outbox_relay_webhooks_total", "Webhook deliveries by result", ["result"])
HTTP_DISCONNECTED = Counter(
    "outbox_relay_http_disconnected_total", "HTTP clients gone before their request was read"
)
CONSOLE_SIGNIN_FAILURES = Counter(
    "outbox_relay_console_signin_failures_total",
    "Wrong console tokens presented (sign-in form or bearer header)",
)
CONSOLE_SIGNIN_BRAKED = Counter(
    "outbox_relay_console_signin_braked_total",
    "Console sign-ins refused unseen (429) because the client failed too often",
)
CONSOLE_PAGES = Counter(
    "outbox_relay_console_pages_total",
    "Console pages answered, by page and how: built (read and rendered) or shared (a copy "
    "built for another viewer less than 3 s ago, or being built when it was asked for)",
    ["page", "source"],
)
CONSOLE_BUSY = Counter(
    "outbox_relay_console_busy_total",
    "Console requests answered 503: paced (all clients together ask more than 20 a second "
    "and this one's turn was over 5 s away) or building (no page could start within 5 s)",
    ["reason"],
)
HTTP_EVICTED = Counter(
    "outbox_relay_http_evicted_total", "HTTP connections closed to admit a new one at the cap"
)

# Read from the database when /metrics is scraped (ScrapeRefresh below), so every replica
# reports the table's state as of the scrape, whatever it was doing.
BACKLOG = Gauge(
    "outbox_relay_backlog_rows",
    "Rows per state (pending, in_flight, failed, rejected live; accepted, cancelled maintained)",
    ["state"],
)
OLDEST_UNSENT = Gauge(
    "outbox_relay_oldest_unsent_age_seconds",
    "Seconds since the oldest pending or in-flight row was recorded (created_at); 0 if none",
)
LIVE_RELAYS = Gauge(
    "outbox_relay_live_relays", "Relays seen in the last seconds (they share the rate limit)"
)
ACCOUNT_AUTH_PAUSED = Gauge(
    "outbox_relay_account_auth_paused",
    "1 while sending for this Stripe account is paused on a 401/403 (platform: the key's own)",
    ["account"],
)
BUILD_INFO = Gauge(
    "outbox_relay_build_info", "Always 1; labels say what is running", ["version", "mode"]
)
# From the latest report `outbox-relay drift` stored (read at scrape time, so every relay
# serves it): the absolute difference between our accepted totals and Stripe's meter event
# summaries, summed over the differing (customer, meter, hour) groups.
DRIFT = Gauge(
    "outbox_relay_drift_events",
    "Events of difference between our accepted totals and Stripe's, in the last drift report",
)

# Rows held because Stripe would drop their events (relay/core/meters.py), per reason.
HELD = Gauge(
    "outbox_relay_held_rows",
    "Rows held, not sent, because of their meter (missing, inactive, pre-aggregated, ...)",
    ["reason"],
)
HELD_OLDEST = Gauge(
    "outbox_relay_held_oldest_age_seconds",
    "Age of the oldest held fact (occurred_at): Stripe refuses facts older than 35 days",
)


# Confirmation against Stripe's hourly summaries (relay/pipeline/confirmation.py).
CONFIRMATION_ROWS = Gauge(
    "outbox_relay_confirmation_rows",
    "Accepted rows by confirmation against Stripe's summaries: confirmed, awaiting "
    "(confirmation), drifting (in a group whose totals differ), not_confirmable",
    ["state"],
)
UNCONFIRMED_OLDEST = Gauge(
    "outbox_relay_unconfirmed_oldest_age_seconds",
    "Seconds since the end of the oldest hour with accepted rows not yet confirmed; 0 if none",
)
SUMMARY_READS = Counter(
    "outbox_relay_summary_reads",
    "Stripe event-summary reads of the confirmation (one per series compared), by outcome",
    ["outcome"],
)
INFERRED_REJECTIONS = Counter(
    "outbox_relay_inferred_rejections",
    "Rows rejected because Stripe's total for their group was 0 (inferred, not named)",
)


def outcome(state: State, code: str | None) -> Counter:
    """The labelled child for an outcome; the code bounded first (metric_code), so the
    cache is bounded too."""
    return _outcome(state, metric_code(code))


@cache
def _outcome(state: State, label: str) -> Counter:
    """Cached: `labels()` is costly on a per-row hot path."""
    return OUTCOMES.labels(state, label)


@cache
def stripe_call(verdict: str) -> Counter:
    return STRIPE_CALLS.labels(verdict)


class TableReader(Protocol):
    """What the scrape-time refresh reads (relay/db/store.py ConsoleStore implements it)."""

    async def state_counts(self) -> dict[str, int]: ...
    async def oldest_unsent_age(self) -> timedelta | None: ...
    async def live_relay_count(self) -> int: ...
    async def drift_events(self) -> float: ...
    async def held_by_reason(self) -> dict[str, tuple[int, float]]: ...
    async def confirmation(self) -> dict[str, Any]: ...


class ScrapeRefresh:
    """Sets the table gauges when /metrics is scraped. Several Prometheus servers (or a fast
    scrape interval) reuse one reading for MIN_INTERVAL seconds; a slow or unreachable database
    keeps the last values rather than failing the scrape, which still reports the relay's own
    counters (and outbox_relay_database_errors_total rises)."""

    MIN_INTERVAL = 5.0
    TIMEOUT = 3.0

    def __init__(
        self,
        reader: TableReader,
        mode: str,
        version: str = __version__,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self._clock = clock
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        BUILD_INFO.labels(version, mode).set(1)

    async def __call__(self, auth_ok: bool) -> None:
        ACCOUNT_AUTH_PAUSED.labels("platform").set(0 if auth_ok else 1)
        async with self._lock:
            now = self._clock()
            if self._read_at is not None and now - self._read_at < self.MIN_INTERVAL:
                return
            try:
                await asyncio.wait_for(self._read(), self.TIMEOUT)
            except Exception as err:  # the scrape still answers with the relay's counters
                DB_ERRORS.inc()
                log.warning("metrics_refresh_failed", error=str(err) or type(err).__name__)
                return
            self._read_at = now

    async def _read(self) -> None:
        for state, n in (await self.reader.state_counts()).items():
            BACKLOG.labels(state).set(n)
        age = await self.reader.oldest_unsent_age()
        OLDEST_UNSENT.set(age.total_seconds() if age else 0.0)
        LIVE_RELAYS.set(await self.reader.live_relay_count())
        DRIFT.set(await self.reader.drift_events())
        held = await self.reader.held_by_reason()
        for reason in HELD_CODES:
            HELD.labels(reason).set(held.get(reason, (0, 0.0))[0])
        HELD_OLDEST.set(max((age for _, age in held.values()), default=0.0))
        confirmation = await self.reader.confirmation()
        for state in ("confirmed", "awaiting", "drifting", "not_confirmable"):
            CONFIRMATION_ROWS.labels(state).set(confirmation[state])
        UNCONFIRMED_OLDEST.set(confirmation["oldest_unconfirmed_age_seconds"])
