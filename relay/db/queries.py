"""The registry: each named query of relay/db/queries.sql with its parameters and its row type.

A `Query` names its SQL, the shape of its parameters (a TypedDict, so mypy checks every caller's
keys and types) and the psycopg row factory that turns each result row into its type. Rows are
built by name (`class_row`), never by position, except the claim's: its maker is
`Claimed._make`, the cheapest way to build a named tuple, and the claim is the hot path.
`check()` holds the registry to the file: every query registered, every parameter declared.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, NamedTuple, NotRequired, TypedDict, TypeVar
from uuid import UUID

from psycopg.rows import BaseRowFactory, RowMaker, class_row, dict_row, kwargs_row, scalar_row

from outbox.sqlfile import for_psycopg
from relay.core.meters import MeterInfo, MeterRead
from relay.core.rows import Claimed
from relay.core.top_up import TopUp
from relay.core.vocabulary import Action, State
from relay.db.pool import QUERIES

P = TypeVar("P", bound=Mapping[str, object])
R = TypeVar("R")


@dataclass(frozen=True)
class Query(Generic[P, R]):
    """One named query: its SQL, its parameters' shape and its row type."""

    name: str
    params: type[P]
    rows: BaseRowFactory[R]
    # False for statements whose best plan depends on the parameters (an operator's filters):
    # planned afresh each time, with the values in sight.
    prepare: bool = True

    @property
    def sql(self) -> str:
        return for_psycopg(QUERIES[self.name])

    def __call__(self, params: P) -> "Statement[R]":
        """The query with its parameters, ready for an executor (relay/db/store.py)."""
        return Statement(self.sql, params, self.rows, self.prepare)


@dataclass(frozen=True, slots=True)
class Statement(Generic[R]):
    sql: str
    params: Mapping[str, object]
    rows: BaseRowFactory[R]
    prepare: bool


# -- parameter shapes -------------------------------------------------------------------------


class NoParams(TypedDict):
    pass


class Identifier(TypedDict):
    identifier: str


class Limit(TypedDict):
    limit: int


class StaleSeconds(TypedDict):
    stale_seconds: float


class AgeSeconds(TypedDict):
    age_seconds: float


class WalkParams(TypedDict):
    after_customer: str
    after_event_name: str
    max_lanes: int
    batch_size: int
    exclusive: bool


class ClaimParams(TypedDict):
    ids: str  # a bigint[] in its text form, cast by the query
    one_walk: bool
    fill: int
    exclusive: bool
    after_at: datetime | None  # the top-up cursor (None, None: from `behind` or the start)
    after_id: int | None
    behind: timedelta | None  # from this long before the claim's now() (None: from the start)


class LeaseParams(TypedDict):
    ids: str  # the ids `claim` locked, a bigint[] in its text form
    relay_id: str
    lease_seconds: float


class ClaimHow(TypedDict):
    """How a claim leases (the keywords of `Store.claim`, besides the walked ids)."""

    fill: int  # top up with this many oldest due rows (v2)
    exclusive: bool  # v1: one call in flight per lane
    relay_id: str
    lease_seconds: float
    one_walk: NotRequired[bool]  # the ids come from one walk, one per lane (default False)
    top_up: NotRequired[TopUp]  # the relay's top-up cursor (default: from the start)


class OutcomeParams(TypedDict):
    # Arrays in their text form, one element per row, and the decisions as a JSON document:
    # see relay.db.store.outcome_params.
    ids: str
    tokens: str
    key_generations: str
    decision_of: str
    request_ids: str
    latencies: str
    decisions: str
    relay_id: str


class HeartbeatParams(TypedDict):
    relay_id: str
    token: UUID
    stale_seconds: float


class LeaveParams(TypedDict):
    relay_id: str
    token: UUID


class RejectParams(TypedDict):
    identifiers: list[str]
    account: str | None  # the error report's account (its `context`); None: the platform
    code: str
    message: str


class SessionParams(TypedDict):
    id: str
    seconds: float


class SessionId(TypedDict):
    id: str


class RetryHow(TypedDict):
    """Which failed/rejected rows a retry takes (the keywords of `retry`), and whether it
    takes the ones a resend could double-count (`force`)."""

    identifier: str | None
    code: str | None
    force: bool
    window_hours: float  # the safe dedup window
    rejected: NotRequired[bool]  # False: leave rejected rows out (`retry --all`); default True


class RetryParams(TypedDict):
    identifier: str | None
    code: str | None
    force: bool
    window_seconds: float
    rejected: bool
    dry_run: bool


class MaybeCode(TypedDict):
    code: str | None


class Ids(TypedDict):
    ids: list[int]


class PruneParams(TypedDict):
    age_seconds: float
    batch_size: int


class BlocksParams(TypedDict):
    blocks: str  # heap block numbers, a bigint[] in its text form, cast by the query


class CodeParams(TypedDict):
    code: str


class CodeList(TypedDict):
    codes: list[str]


class ListParams(TypedDict):
    state: State | None
    code: str | None
    customer: str | None
    event_name: str | None
    since: datetime | None
    limit: int


class AttemptsParams(TypedDict):
    outbox_id: int
    limit: int


class Window(TypedDict):
    since: datetime
    until: datetime


class DriftReportParams(TypedDict):
    since: datetime
    until: datetime
    groups: int
    differing: int
    unsettled: int
    drift_events: float
    differences: str  # JSON


class Cap(TypedDict):
    cap: int


class CapLimit(TypedDict):
    cap: int
    limit: int


class PerCode(TypedDict):
    per_code: int


class LookParams(TypedDict):
    """The console's filters (each optional) and where its page starts (keyset)."""

    kind: str | None  # failed, rejected, retrying, held (None: all four)
    code: str | None  # '' for rows without a code
    customer: str | None
    event_name: str | None
    held: list[str]  # the codes of held rows
    after: int  # ids after this one
    upto: int | None  # ids up to this one (the set a bulk action confirmed)
    scan: int  # index entries read per page, at most
    limit: int


class ChartParams(TypedDict):
    exact: int  # a span of at most this many calls is read whole
    samples: int  # a busier one is sampled: this many calls read at most
    seconds: float


class Minute(NamedTuple):
    """One minute of the overview's chart."""

    minute: datetime
    accepted: int
    errors: int
    calls: int
    stride: int  # one call of every `stride` was read; the counts are scaled (1: exact)


# -- row types --------------------------------------------------------------------------------

Lane = tuple[str, str]  # (customer, event name): the walk's cursor


class Walked(NamedTuple):
    """What a walk chose: lane heads to claim, and where the next walk starts."""

    ids: list[int]
    cursor: Lane | None  # None: the walk reached the last lane (start again from the first)


def _walked(ids: list[int], found: int, customer: str, event_name: str, wrap: bool) -> Walked:
    return Walked(ids, None if wrap else (customer, event_name))


class Beat(NamedTuple):
    live: int  # relays seen within the stale time, this one included
    ours: bool  # False: another live process holds this relay_id


class LiveRelay(NamedTuple):
    relay_id: str
    started_at: datetime
    seen_at: datetime


class DatabaseProbe(NamedTuple):
    now: datetime
    read_only: bool


class StateCount(NamedTuple):
    state: State
    n: int


class Tally(NamedTuple):
    """Rows of one state, code and account (`status_tally`; '' = no code, the platform)."""

    state: State
    code: str
    stripe_account: str
    n: int


class Recovered(NamedTuple):
    """What `recover` left: the lease watermark, whether the tallies were recounted, and the
    prepared transactions a recount still owed waits for."""

    possibly_sent_below: int
    recounted: bool
    prepared: int


class SequenceBehind(NamedTuple):
    """A sequence of the outbox below the ids already in its table, and its owner's fix."""

    sequence: str
    fix: str


class NextAttempt(NamedTuple):
    code: str
    next_attempt_at: datetime


class RetryCandidate(NamedTuple):
    """A failed/rejected row a `retry` matched: requeued, or refused and why (`reason`:
    `rejected` or `outside_dedup_window`)."""

    identifier: str
    state: State
    code: str | None
    first_attempt_at: datetime | None
    refused: bool
    reason: str | None


class RowState(NamedTuple):
    state: State
    action: Action


class OurGroup(NamedTuple):
    """Our side of one drift group: accepted totals per (account, customer, meter, hour)."""

    account: str  # '' for the platform account
    customer: str
    event_name: str
    hour: datetime
    value: Decimal  # numeric
    events: int
    open: int  # rows sent but not settled: the group is not compared yet
    identifiers: list[str] | None  # None when the group has no accepted row


class TraceContext(NamedTuple):
    id: int
    trace_context: str  # a W3C traceparent, as recorded with the row


class SavedReport(NamedTuple):
    id: int
    created_at: datetime


@dataclass(frozen=True)
class Lag:
    """The oldest unsent fact, measured from when it was recorded and from when it happened."""

    created_at: datetime | None
    occurred_at: datetime | None
    created_age: timedelta | None
    occurred_age: timedelta | None


class Finished(NamedTuple):
    accepted: int
    cancelled: int
    capped: bool


class Calls(NamedTuple):
    calls: int
    errors: int
    since: datetime | None
    capped: bool


class Locked(NamedTuple):
    """A row the claim's first statement locked."""

    id: int
    available_at: datetime | None  # a top-up's row: where the top-up cursor moves (heads: None)
    in_flight: bool  # left in_flight by an earlier release's relay: reset once leased


def _claimed(cursor: Any) -> RowMaker[Claimed]:  # a psycopg cursor, sync or async
    """The claim's rows, built as the named tuple straight from psycopg's values (no
    intermediate tuple, no name lookup per row). The RETURNING list must name `Claimed`'s
    fields in order: checked once per claim, not once per row."""
    names = tuple(column.name for column in cursor.description or ())
    if names != Claimed._fields:
        raise TypeError(f"claim returns {names}, Claimed expects {Claimed._fields}")
    return Claimed._make


# -- the registry -----------------------------------------------------------------------------

WALK = Query("walk", WalkParams, kwargs_row(_walked))
CLAIM_PLAN = Query("claim_plan", NoParams, scalar_row)
CLAIM = Query("claim", ClaimParams, class_row(Locked))
LEASE = Query("lease", LeaseParams, _claimed)
RESET_IN_FLIGHT = Query("reset_in_flight", Ids, scalar_row)
OUTCOME_PLAN = Query("outcome_plan", NoParams, scalar_row)
RECORD_OUTCOMES = Query("record_outcomes", OutcomeParams, scalar_row)
HEARTBEAT = Query("heartbeat", HeartbeatParams, class_row(Beat))
LEAVE = Query("leave", LeaveParams, scalar_row)
LIVE_RELAYS = Query("live_relays", StaleSeconds, class_row(LiveRelay))
REJECT = Query("reject", RejectParams, scalar_row)
FOLD_PLAN = Query("fold_plan", NoParams, scalar_row)
FOLD_COUNTS = Query("fold_counts", NoParams, scalar_row)
HOLD_FOLD = Query("hold_fold", NoParams, scalar_row)
FORGET_UNLOGGED = Query("forget_unlogged", NoParams, scalar_row)
RECOVERED = Query("recovered", NoParams, class_row(Recovered))
SUBSCRIPTIONS_ENABLED = Query("subscriptions_enabled", NoParams, scalar_row)
SEQUENCES_BEHIND = Query("sequences_behind", NoParams, class_row(SequenceBehind))
DATABASE_PROBE = Query("database_probe", NoParams, class_row(DatabaseProbe))
STATE_COUNTS = Query("state_counts", NoParams, class_row(StateCount))
STATUS_TALLY = Query("status_tally", NoParams, class_row(Tally))
STATUS_TALLY_BEFORE_LEASES = Query("status_tally_before_leases", NoParams, class_row(Tally))
STATUS_TALLY_COUNTED = Query("status_tally_counted", NoParams, class_row(Tally))
NEXT_ATTEMPTS = Query("next_attempts", CodeList, class_row(NextAttempt))
LAST_STATUS_FOR_CODE = Query("last_status_for_code", CodeParams, scalar_row)
ROW_STORY = Query("row_story", Identifier, dict_row)
ROW_STATE = Query("row_state", Identifier, class_row(RowState))
REJECTED_COUNT = Query("rejected_count", MaybeCode, scalar_row)
TRACE_CONTEXTS = Query("trace_contexts", Ids, class_row(TraceContext))
ROW_ATTEMPTS = Query("row_attempts", AttemptsParams, dict_row)
LIST_ROWS = Query("list_rows", ListParams, dict_row)
RETRY = Query("retry", RetryParams, class_row(RetryCandidate))
PRUNE = Query("prune", PruneParams, scalar_row)
MAY_TEND_RANGES = Query("may_tend_ranges", NoParams, scalar_row)
SUMMARIZE_RANGES = Query("summarize_ranges", NoParams, scalar_row)
FORGET_RANGES = Query("forget_ranges", BlocksParams, scalar_row)
PRUNE_PREVIEW = Query("prune_preview", AgeSeconds, dict_row)
UNSENT_COUNT = Query("unsent_count", NoParams, scalar_row)
DRIFT_OURS = Query("drift_ours", Window, class_row(OurGroup))
SAVE_DRIFT_REPORT = Query("save_drift_report", DriftReportParams, class_row(SavedReport))
LATEST_DRIFT_REPORT = Query("latest_drift_report", NoParams, dict_row)
CONSOLE_SESSION_OPEN = Query("console_session_open", SessionParams, scalar_row)
CONSOLE_SESSION_ALIVE = Query("console_session_alive", SessionId, scalar_row)
CONSOLE_SESSION_CLOSE = Query("console_session_close", SessionId, scalar_row)
OLDEST_UNSENT = Query("oldest_unsent", NoParams, class_row(Lag))
FINISHED_LAST_HOUR = Query("finished_last_hour", Cap, class_row(Finished))
ATTEMPTS_LAST_HOUR = Query("attempts_last_hour", Cap, class_row(Calls))
ATTEMPT_ERRORS_LAST_HOUR = Query("attempt_errors_last_hour", CapLimit, dict_row)
FAILURES_WITH_IDENTIFIERS = Query("failures_with_identifiers", PerCode, dict_row)
LOOK_ROWS = Query("look_rows", LookParams, dict_row, prepare=False)  # planned for its filters
CALLS_PER_MINUTE = Query("calls_per_minute", ChartParams, class_row(Minute))
CUSTOMER_BACKLOG = Query("customer_backlog", Limit, dict_row)

# -- the meter catalogue (alembic/versions/0012_meter_catalogue.up.sql) -----------------------


class SaveMetersParams(TypedDict):
    account: str
    meters: str  # a JSON array of meters, see relay.db.store.meters_params


class MeterReadParams(TypedDict):
    account: str
    outcome: str
    detail: str | None


class EventNamesParams(TypedDict):
    names: str  # a JSON array of [account, event name]


class Codes(TypedDict):
    codes: list[str]


class ReleaseParams(TypedDict):
    account: str
    event_name: str
    codes: list[str]


class EventNameInUse(NamedTuple):
    account: str  # '' for the platform account
    event_name: str


class HeldGroup(NamedTuple):
    """Rows held because of their meter, per account ('' platform), event name and code."""

    account: str
    event_name: str
    code: str
    n: int
    oldest_occurred_at: datetime  # Stripe's 35-day window counts from here


SAVE_METERS = Query("save_meters", SaveMetersParams, scalar_row)
NOTE_METER_READ = Query("note_meter_read", MeterReadParams, scalar_row)
LOAD_METERS = Query("load_meters", NoParams, class_row(MeterInfo))
METER_READS = Query("meter_reads", NoParams, class_row(MeterRead))
NOTE_EVENT_NAMES = Query("note_event_names", EventNamesParams, scalar_row)
EVENT_NAMES_IN_USE = Query("event_names_in_use", NoParams, class_row(EventNameInUse))
HELD_BY_METER = Query("held_by_meter", NoParams, class_row(HeldGroup))
HELD_BY_METER_COUNTED = Query("held_by_meter_counted", CodeParams, class_row(HeldGroup))
RELEASE_HELD = Query("release_held", ReleaseParams, scalar_row)
METER_QUERIES = (
    SAVE_METERS, NOTE_METER_READ, LOAD_METERS, METER_READS, NOTE_EVENT_NAMES,
    EVENT_NAMES_IN_USE, HELD_BY_METER, HELD_BY_METER_COUNTED, RELEASE_HELD,
)  # fmt: skip

# -- the outage breaker (alembic/versions/0013_outage_breaker.up.sql) -------------------------


class Scope(TypedDict):
    scope: str


class OutageSyncParams(TypedDict):
    scope: str
    calls: int
    failed: int
    status: int | None  # of the last failed call: 502/503/504, None for no answer


class OutageOpenParams(TypedDict):
    scope: str
    relay_id: str
    failed: int
    status: int | None
    streak_seconds: float
    interval: float


class OutageProbeParams(TypedDict):
    scope: str
    relay_id: str
    lease_seconds: float


class OutageProbeFailedParams(TypedDict):
    scope: str
    relay_id: str
    status: int | None
    cap: float


class OutageCloseParams(TypedDict):
    scope: str
    relay_id: str
    horizon: float
    codes: list[str]


class OutageState(NamedTuple):
    """The outage breaker as every replica sees it (meter_event_outbox_outage).

    `since`: the first failed call of the run that opened it; `calls`/`failed_calls`: the calls
    made since then and how many got no answer or a 502/503/504; `last_status` None: no answer;
    `probe_in_seconds`: until the next probe may go (negative: due); `probe_holder`: the relay
    whose probe is out; `now`: the database's clock, for ages."""

    state: str  # 'closed' | 'open'
    since: datetime | None
    opened_at: datetime | None
    opened_by: str | None
    closed_at: datetime | None
    closed_by: str | None
    last_status: int | None
    calls: int
    failed_calls: int
    probes: int
    probe_interval: float
    probe_in_seconds: float | None
    probe_holder: str | None
    now: datetime


OUTAGE_STATE = Query("outage_state", Scope, class_row(OutageState))
OUTAGE_SYNC = Query("outage_sync", OutageSyncParams, class_row(OutageState))
OUTAGE_OPEN = Query("outage_open", OutageOpenParams, scalar_row)
OUTAGE_PROBE = Query("outage_probe", OutageProbeParams, scalar_row)
OUTAGE_PROBE_FAILED = Query("outage_probe_failed", OutageProbeFailedParams, scalar_row)
OUTAGE_CLOSE = Query("outage_close", OutageCloseParams, scalar_row)
OUTAGE_QUERIES = (
    OUTAGE_STATE, OUTAGE_SYNC, OUTAGE_OPEN, OUTAGE_PROBE, OUTAGE_PROBE_FAILED, OUTAGE_CLOSE,
)  # fmt: skip

# -- confirmation against Stripe's totals (alembic/versions/0016_confirmation.up.sql) --------


class DiscoverParams(TypedDict):
    window_seconds: float
    margin_seconds: float
    batch_size: int
    settle_seconds: float


class LeaseComparisonsParams(TypedDict):
    scan: int
    series: int
    hours: int
    relay_id: str
    lease_seconds: float


class SeriesParams(TypedDict):
    account: str  # '' for the platform account
    customer: str
    event_name: str
    since: datetime
    until: datetime
    settle_seconds: float


class RecordComparisonsParams(TypedDict):
    account: str
    customer: str
    event_name: str
    token: UUID
    verdicts: str  # a JSON array, see relay.pipeline.confirmation
    keep_counts: bool


class InferParams(TypedDict):
    account: str
    customer: str
    event_name: str
    hour: datetime
    counted_through: datetime
    code: str
    message: str
    source: str  # the error report's id, or 'summaries'
    positive_only: bool  # a sum meter: rows of value 0 are never inferred rejected


class ScheduleParams(TypedDict):
    account: str | None  # the report's account (its `context`); None: the platform
    meter_id: str
    samples: list[str]
    since: datetime
    until: datetime
    validation_end: datetime
    settle_seconds: float
    report_id: str
    code: str


class NoMeterParams(TypedDict):
    account: str | None
    samples: list[str]
    since: datetime
    until: datetime
    code: str
    message: str
    report_id: str


class Discovered(NamedTuple):
    groups: int
    more: bool  # the cursor stopped short of the window's end: call again


class DueGroup(NamedTuple):
    """A group leased for comparison (its series is leased under `token`)."""

    account: str  # '' for the platform account
    customer: str
    event_name: str
    token: UUID
    hour: datetime
    state: str
    zero_reads: int
    report_id: str | None
    report_code: str | None


class SeriesHour(NamedTuple):
    """Our side of one hour of a series (see `series_ours`)."""

    hour: datetime
    value: Decimal
    events: int
    open: int
    latest: datetime | None
    identifiers: list[str] | None


class ConfirmationCounts(NamedTuple):
    confirmed: int
    drifting: int
    drifting_groups: int
    not_confirmable: int
    oldest_unconfirmed_hour: datetime | None


DISCOVER_GROUPS = Query("discover_groups", DiscoverParams, class_row(Discovered))
LEASE_COMPARISONS = Query("lease_comparisons", LeaseComparisonsParams, class_row(DueGroup))
SERIES_OURS = Query("series_ours", SeriesParams, class_row(SeriesHour))
RECORD_COMPARISONS = Query("record_comparisons", RecordComparisonsParams, scalar_row)
INFER_REJECTED = Query("infer_rejected", InferParams, scalar_row)
SCHEDULE_COMPARISONS = Query("schedule_comparisons", ScheduleParams, scalar_row)
REJECT_WITHOUT_METER = Query("reject_without_meter", NoMeterParams, scalar_row)
CONFIRMATION_COUNTS = Query("confirmation_counts", NoParams, class_row(ConfirmationCounts))
ROW_CONFIRMATION = Query("row_confirmation", Identifier, dict_row)
CONFIRMATION_QUERIES = (
    DISCOVER_GROUPS, LEASE_COMPARISONS, SERIES_OURS, RECORD_COMPARISONS, INFER_REJECTED,
    SCHEDULE_COMPARISONS, REJECT_WITHOUT_METER, CONFIRMATION_COUNTS, ROW_CONFIRMATION,
)  # fmt: skip

REGISTRY: dict[str, Query[Any, Any]] = {
    q.name: q
    for q in (
        WALK, CLAIM_PLAN, CLAIM, LEASE, RESET_IN_FLIGHT, OUTCOME_PLAN, RECORD_OUTCOMES,
        HEARTBEAT, LEAVE, LIVE_RELAYS, REJECT, FOLD_PLAN, FOLD_COUNTS,
        HOLD_FOLD, FORGET_UNLOGGED, RECOVERED, SUBSCRIPTIONS_ENABLED, SEQUENCES_BEHIND,
        STATE_COUNTS, STATUS_TALLY, STATUS_TALLY_BEFORE_LEASES, STATUS_TALLY_COUNTED,
        NEXT_ATTEMPTS, LAST_STATUS_FOR_CODE,
        ROW_STORY, ROW_STATE, ROW_ATTEMPTS, LIST_ROWS, RETRY, PRUNE, MAY_TEND_RANGES,
        SUMMARIZE_RANGES, FORGET_RANGES, PRUNE_PREVIEW, UNSENT_COUNT, DRIFT_OURS,
        SAVE_DRIFT_REPORT, LATEST_DRIFT_REPORT, OLDEST_UNSENT,
        FINISHED_LAST_HOUR, ATTEMPTS_LAST_HOUR, ATTEMPT_ERRORS_LAST_HOUR,
        FAILURES_WITH_IDENTIFIERS, LOOK_ROWS, CALLS_PER_MINUTE, CUSTOMER_BACKLOG, REJECTED_COUNT,
        TRACE_CONTEXTS, DATABASE_PROBE,
        CONSOLE_SESSION_OPEN, CONSOLE_SESSION_ALIVE, CONSOLE_SESSION_CLOSE,
        *CONFIRMATION_QUERIES,
        *METER_QUERIES, *OUTAGE_QUERIES,
    )
}  # fmt: skip

_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")  # as outbox.sqlfile rewrites them
_COMMENT = re.compile(r"--[^\n]*")


def parameters(name: str) -> frozenset[str]:
    """The `:name` parameters the SQL of one named query uses (comments left out)."""
    return frozenset(_PARAMETER.findall(_COMMENT.sub("", QUERIES[name])))


def check() -> list[str]:
    """What disagrees between the registry and queries.sql (nothing, when they agree)."""
    problems = [f"{name}: in queries.sql, not registered" for name in QUERIES.keys() - REGISTRY]
    problems += [f"{name}: registered, not in queries.sql" for name in REGISTRY.keys() - QUERIES]
    for name, query in REGISTRY.items():
        declared = frozenset(query.params.__annotations__)
        if name in QUERIES and declared != parameters(name):
            problems.append(f"{name}: declares {sorted(declared)}, uses {sorted(parameters(name))}")
    return problems
