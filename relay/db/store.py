"""The one door to relay/db/queries.sql: two executors of the registry (relay/db/queries.py)
and, on top, a typed method per task.

Every caller (the relay's services, the rate share, webhooks, the operator commands, the web
console and /metrics, and the tests) goes through here, so a query's parameters are built in one
place and its rows have one type (the registry's row factory). `AsyncExecutor` runs a query on
an async pool and `SyncExecutor` on one plain connection; `Store` (the relay), `ConsoleStore`
(the console's and /metrics' reads, on whichever pool it is given) and `SyncStore` (the CLI and
the tests) only name their tasks. Each statement is its own transaction (autocommit): the relay
never holds a transaction open while it talks to Stripe.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar, Unpack
from uuid import UUID

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from relay.core.meters import HELD_CODES, WHAT_TO_DO, MeterInfo, MeterRead
from relay.core.rows import Claimed, Outcome
from relay.core.top_up import Begun, Start
from relay.core.unsent import needs_status, split, state_counts
from relay.core.vocabulary import AUTH_WAIT_CODES, STATES, State
from relay.db import queries as q
from relay.db.queries import (
    Beat,
    Lag,
    Lane,
    LiveRelay,
    OurGroup,
    OutageState,
    RetryCandidate,
    RowState,
    Tally,
    Walked,
)

__all__ = [
    "FIRST_LANE",
    "Beat",
    "ConsoleStore",
    "HourActivity",
    "Lag",
    "Lane",
    "OurGroup",
    "OutageState",
    "RetryCandidate",
    "Store",
    "SyncStore",
    "Tally",
    "Walked",
]

R = TypeVar("R")

FIRST_LANE: Lane = ("", "")
OUTAGE_SCOPE = "stripe"  # the breaker's one row: an outage is of Stripe, not of an account
NOT_WALKED = Walked([], None)  # no lane after the cursor: start again from the first
HOUR = timedelta(hours=1)


async def fetch(conn: psycopg.AsyncConnection[Any], statement: q.Statement[R]) -> list[R]:
    """One statement on a connection the caller holds (a transaction of several)."""
    cur = conn.cursor(row_factory=statement.rows)
    await cur.execute(statement.sql, statement.params, prepare=statement.prepare)
    return await cur.fetchall() if cur.description else []


class AsyncExecutor:
    """Registered queries on an async pool of autocommit connections."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def all(self, statement: q.Statement[R]) -> list[R]:
        async with self.pool.connection() as conn:
            return await fetch(conn, statement)

    async def first(self, statement: q.Statement[R]) -> R | None:
        rows = await self.all(statement)
        return rows[0] if rows else None

    async def one(self, statement: q.Statement[R]) -> R:
        (row,) = await self.all(statement)
        return row


class SyncExecutor:
    """Registered queries on one plain autocommit connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def all(self, statement: q.Statement[R]) -> list[R]:
        cur = self.conn.cursor(row_factory=statement.rows)
        # None: psycopg prepares a statement once it has run a few times.
        cur.execute(statement.sql, statement.params, prepare=None if statement.prepare else False)
        return cur.fetchall() if cur.description else []

    def first(self, statement: q.Statement[R]) -> R | None:
        rows = self.all(statement)
        return rows[0] if rows else None

    def one(self, statement: q.Statement[R]) -> R:
        (row,) = self.all(statement)
        return row


# -- parameters, built once for both executors ------------------------------------------------


def walk_params(after: Lane, wanted: int, exclusive: bool) -> q.WalkParams:
    return {
        "after_customer": after[0],
        "after_event_name": after[1],
        # Lanes right after the cursor are rarely busy (round robin): the walk stops when the
        # batch is full, the bound only caps a walk past busy lanes.
        "max_lanes": 4 * wanted + 64,
        "batch_size": wanted,
        "exclusive": exclusive,
    }


def id_array(ids: Iterable[int]) -> str:
    """The array's text form, cast by the query: psycopg's generic list dumper inspects every
    element, a cost paid per claimed row."""
    return "{" + ",".join(map(str, ids)) + "}"


def claim_params(ids: Sequence[int], how: q.ClaimHow, after: Start = None) -> q.ClaimParams:
    """`after`: where the top-up starts (`top_up_start`): after a row, a span before the
    claim's now(), or None: from the start."""
    point = after if isinstance(after, tuple) else None
    return {
        "ids": id_array(ids),
        "one_walk": how.get("one_walk", False),
        "fill": how["fill"],
        "exclusive": how["exclusive"],
        "after_at": point[0] if point else None,
        "after_id": point[1] if point else None,
        "behind": after if isinstance(after, timedelta) else None,
    }


def top_up_start(how: q.ClaimHow) -> Begun | None:
    """Where this claim's top-up starts, if the relay passes its cursor (None: no cursor)."""
    top_up = how.get("top_up")
    return top_up.start() if top_up is not None and how["fill"] else None


def top_up_passed(
    how: q.ClaimHow, begun: Begun | None, ids: Sequence[int], locked: Sequence[q.Locked]
) -> list[int]:
    """Move the relay's top-up cursor past what the claim's top-up locked (the rows locked
    that are not walked heads `ids`); returns the ids locked."""
    top_up = how.get("top_up")
    if top_up is not None and begun is not None:
        walked = set(ids)
        filled = [r for r in locked if r.id not in walked]
        taken = [(r.available_at, r.id) for r in filled if r.available_at is not None]
        top_up.passed(begun, taken, len(filled), how["fill"])
    return [r.id for r in locked]


def to_reset(locked: Sequence[q.Locked], leased: Sequence[Claimed]) -> list[int]:
    """The rows an earlier release's relay left `in_flight` that this claim leased: put back
    to pending by `reset_in_flight` (almost never any: then that statement is not run)."""
    stale = {r.id for r in locked if r.in_flight}
    return [c.id for c in leased if c.id in stale] if stale else []


def lease_params(locked: Iterable[int], how: q.ClaimHow) -> q.LeaseParams:
    return {
        "ids": id_array(locked),
        "relay_id": how["relay_id"],
        "lease_seconds": how["lease_seconds"],
    }


def outcome_params(batch: Iterable[Outcome], relay_id: str) -> q.OutcomeParams:
    """The batch as parallel arrays, one element per row (id, lease token, sent key generation,
    its decision's index, the call's request id and latency), and the distinct decisions as
    one JSON document.

    PostgreSQL reads a bigint, uuid or text array several times faster than it takes the same
    fields out of a JSON object per row. A stream call's 100 rows share one decision (the
    executor copies it) and so do v1 calls answered alike: the request id and latency, which
    differ per call, are per row, so a batch carries a handful of decisions whichever the mode.
    The arrays are written by orjson (see `json_array`), much faster than formatting each
    element in Python.
    """
    index: dict[tuple[Any, ...], int] = {}
    decisions: list[dict[str, Any]] = []
    chosen: list[int] = []
    outcomes = list(batch)
    for o in outcomes:
        key = (o.shared(), o.row.action)  # what the rows share, and what the row's call did
        d = index.get(key)
        if d is None:
            d = index[key] = len(decisions)
            decisions.append({"n": d, **_decision(o)})
        chosen.append(d)
    rows = [o.row for o in outcomes]
    return {
        "ids": json_array([r.id for r in rows]),
        "tokens": json_array([r.lease_token for r in rows]),
        "key_generations": json_array([r.key_generation for r in rows]),
        "decision_of": json_array(chosen),
        "request_ids": text_array([o.request_id for o in outcomes]),
        "latencies": json_array([o.latency_ms for o in outcomes]),
        "decisions": orjson.dumps(decisions).decode(),
        "relay_id": relay_id,
    }


def json_array(values: list[int] | list[UUID] | list[float | None]) -> str:
    """Numbers, UUIDs or None as a PostgreSQL array's text form, written by orjson: a JSON
    array's elements are what the array input reads (numbers, double-quoted UUIDs, and
    `null`, which it takes for NULL whatever the case); only the brackets differ."""
    return "{" + orjson.dumps(values).decode()[1:-1] + "}"


def text_array(values: list[str | None]) -> str:
    """Strings or None as a text[]'s text form. orjson's JSON escapes a double quote and a
    backslash with a backslash, as the array input reads them; any other escape (a control
    character: `\\n`, `\\u0001`) would be read as the letter after the backslash, so such
    strings are quoted here instead (request ids never hold any)."""
    written = orjson.dumps(values).decode()
    if ESCAPE.search(written) is None:
        return "{" + written[1:-1] + "}"
    return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"


ESCAPE = re.compile(r'\\[^"\\]')  # a JSON escape the array input would misread


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cancel_route(state: State, may_have_counted: bool) -> dict[str, State | bool]:
    """Where a report goes when a cancel was requested while it was in flight: the one place
    this route is decided, once per decision (record_outcomes only switches on it).

    Accepted, or failed but maybe counted: cancel it now (a pending cancellation, fresh
    budget). Failed for sure: nothing was counted, so it is cancelled without a call. Any
    other outcome (unknown, retry): resolve the report first with the same key, so an
    adjustment never races the event it cancels (invariant 10).
    """
    if state == "accepted" or (state == "failed" and may_have_counted):
        return {"cancel_state": "pending", "cancel_now": True}
    if state == "failed":
        return {"cancel_state": "cancelled", "cancel_now": False}
    return {"cancel_state": state, "cancel_now": False}


def _decision(o: Outcome) -> dict[str, Any]:
    return {
        "state": o.state,
        "delay": o.delay,
        "counted": o.counted,
        "new_key": o.new_key,
        "code": o.code,
        "message": o.message and o.message.replace("\x00", ""),  # jsonb refuses NUL
        "reached": o.reached_stripe,
        "may_have_counted": o.may_have_counted,
        **cancel_route(o.state, o.may_have_counted),
        "called": o.called,
        "action": o.row.action,
        "http_status": o.http_status,
    }


def retry_params(how: q.RetryHow, dry_run: bool) -> q.RetryParams:
    return {
        "identifier": how["identifier"],
        "code": how["code"],
        "force": how["force"],
        "window_seconds": how["window_hours"] * 3600,
        "rejected": how.get("rejected", True),
        "dry_run": dry_run,
    }


def _json_number(value: object) -> int | float:
    """orjson's fallback for numeric values (Decimal): whole numbers stay exact."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(type(value).__name__)


# -- the relay --------------------------------------------------------------------------------


class Store(AsyncExecutor):
    """The relay's tasks on its async pool."""

    async def walk(self, after: Lane, wanted: int, *, exclusive: bool) -> Walked:
        """Choose up to `wanted` lane heads after `after` (read only, locks nothing)."""
        return await self.first(q.WALK(walk_params(after, wanted, exclusive))) or NOT_WALKED

    async def claim(self, ids: Sequence[int], **how: Unpack[q.ClaimHow]) -> list[Claimed]:
        """Lock and lease the walked heads (plus `fill` oldest due rows, after the relay's
        `top_up` cursor if it passes one). `one_walk`: the ids
        come from a single walk, one per lane (a wrapped walk's may name a lane twice).
        Two statements in one transaction: the leases are read with a snapshot taken after
        the row locks, so a claim never waits on a lease (see `lease` in queries.sql)."""
        begun = top_up_start(how)
        async with self.pool.connection() as conn, conn.transaction():
            await fetch(conn, q.CLAIM_PLAN({}))
            locked = await fetch(conn, q.CLAIM(claim_params(ids, how, begun.at if begun else None)))
            ids_locked = top_up_passed(how, begun, ids, locked)
            if not locked:
                return []
            leased = await fetch(conn, q.LEASE(lease_params(ids_locked, how)))
            if reset := to_reset(locked, leased):
                await fetch(conn, q.RESET_IN_FLIGHT({"ids": reset}))
            return leased

    async def record_outcomes(self, batch: Sequence[Outcome], relay_id: str) -> set[int]:
        """Write outcomes (compare-and-set on each lease); returns the ids written. In a
        transaction of its own for `outcome_plan`'s settings."""
        async with self.pool.connection() as conn, conn.transaction():
            await fetch(conn, q.OUTCOME_PLAN({}))
            return set(await fetch(conn, q.RECORD_OUTCOMES(outcome_params(batch, relay_id))))

    async def heartbeat(self, relay_id: str, token: UUID, stale_seconds: float) -> Beat:
        """Announce this relay (process `token`); how many relays are live, this one included,
        and whether the relay_id's row is this process's."""
        params: q.HeartbeatParams = {
            "relay_id": relay_id,
            "token": token,
            "stale_seconds": stale_seconds,
        }
        return await self.one(q.HEARTBEAT(params))

    async def leave(self, relay_id: str, token: UUID) -> None:
        await self.all(q.LEAVE({"relay_id": relay_id, "token": token}))

    async def reject(
        self, identifiers: list[str], account: str | None, code: str, message: str
    ) -> list[str]:
        """Mark rows of `account` (None: the platform) that Stripe reported as not billed;
        returns the identifiers marked."""
        params: q.RejectParams = {
            "identifiers": identifiers,
            "account": account,
            "code": code,
            "message": message,
        }
        return await self.all(q.REJECT(params))

    async def fold_counts(self) -> None:
        """Fold the tallies' deltas (or recount them after a crash emptied the deltas), in a
        transaction of its own for `fold_plan`'s settings."""
        async with self.pool.connection() as conn, conn.transaction():
            await fetch(conn, q.FOLD_PLAN({}))
            await fetch(conn, q.FOLD_COUNTS({}))

    async def probe(self) -> q.DatabaseProbe:
        """The database's clock and whether it takes writes (the database watch)."""
        return await self.one(q.DATABASE_PROBE({}))

    async def trace_contexts(self, ids: list[int]) -> dict[int, str]:
        """The traceparent stored with each of these rows (rows without one are left out);
        read only while tracing is on."""
        found = await self.all(q.TRACE_CONTEXTS({"ids": ids}))
        return {t.id: t.trace_context for t in found}

    async def ping(self) -> bool:
        """Readiness: can we run a statement right now?"""
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    # the outage breaker (relay/stripe/outage.py)

    async def outage_sync(self, calls: int, failed: int, status: int | None) -> OutageState:
        """Add this relay's calls since its last look (while open); the breaker's state."""
        params: q.OutageSyncParams = {
            "scope": OUTAGE_SCOPE,
            "calls": calls,
            "failed": failed,
            "status": status,
        }
        return await self.one(q.OUTAGE_SYNC(params))

    async def outage_open(
        self, relay_id: str, failed: int, status: int | None, streak: float, interval: float
    ) -> bool:
        """Open the breaker; False when another replica opened it first."""
        params: q.OutageOpenParams = {
            "scope": OUTAGE_SCOPE,
            "relay_id": relay_id,
            "failed": failed,
            "status": status,
            "streak_seconds": streak,
            "interval": interval,
        }
        return bool(await self.first(q.OUTAGE_OPEN(params)))

    async def outage_probe(self, relay_id: str, lease_seconds: float) -> float | None:
        """Take the probe if it is due and free; the current probe interval when taken."""
        params: q.OutageProbeParams = {
            "scope": OUTAGE_SCOPE,
            "relay_id": relay_id,
            "lease_seconds": lease_seconds,
        }
        return await self.first(q.OUTAGE_PROBE(params))

    async def outage_probe_failed(
        self, relay_id: str, status: int | None, cap: float
    ) -> float | None:
        """This relay's probe failed: the next interval (None: the probe was not ours)."""
        params: q.OutageProbeFailedParams = {
            "scope": OUTAGE_SCOPE,
            "relay_id": relay_id,
            "status": status,
            "cap": cap,
        }
        return await self.first(q.OUTAGE_PROBE_FAILED(params))

    async def outage_close(self, relay_id: str, horizon: float, codes: Sequence[str]) -> int | None:
        """Close the breaker and make the rows that waited with these codes, due within
        `horizon` seconds, due now; how many, None when it was closed already."""
        params: q.OutageCloseParams = {
            "scope": OUTAGE_SCOPE,
            "relay_id": relay_id,
            "horizon": horizon,
            "codes": list(codes),
        }
        return await self.first(q.OUTAGE_CLOSE(params))

    # the meter catalogue

    async def save_meters(self, account: str, meters: Sequence[MeterInfo]) -> None:
        """Replace `account`'s catalogue with a fresh read and note the read as ok."""
        await self.all(q.SAVE_METERS(meters_params(account, meters)))

    async def note_meter_read(self, account: str, outcome: str, detail: str | None) -> None:
        """A failed read (`forbidden`, `failed`): the catalogue stays as it was."""
        await self.all(
            q.NOTE_METER_READ({"account": account, "outcome": outcome, "detail": detail})
        )

    async def load_meters(self) -> list[MeterInfo]:
        return await self.all(q.LOAD_METERS({}))

    async def note_event_names(self, names: Iterable[tuple[str, str]]) -> None:
        await self.all(q.NOTE_EVENT_NAMES({"names": orjson.dumps(list(names)).decode()}))

    async def event_names_in_use(self) -> list[q.EventNameInUse]:
        return await self.all(q.EVENT_NAMES_IN_USE({}))

    async def held_by_meter(self) -> list[q.HeldGroup]:
        return await self.all(q.HELD_BY_METER({}))

    async def release_held(self, account: str, event_name: str) -> int:
        """Make rows held for this meter due now; returns how many."""
        params: q.ReleaseParams = {
            "account": account,
            "event_name": event_name,
            "codes": list(HELD_CODES),
        }
        return len(await self.all(q.RELEASE_HELD(params)))

    # confirmation against Stripe's totals (relay/pipeline/confirmation.py)

    async def discover_groups(self, params: q.DiscoverParams) -> q.Discovered:
        return await self.one(q.DISCOVER_GROUPS(params))

    async def lease_comparisons(self, params: q.LeaseComparisonsParams) -> list[q.DueGroup]:
        return await self.all(q.LEASE_COMPARISONS(params))

    async def series_ours(self, params: q.SeriesParams) -> list[q.SeriesHour]:
        return await self.all(q.SERIES_OURS(params))

    async def record_comparisons(self, params: q.RecordComparisonsParams) -> int:
        n: int = await self.one(q.RECORD_COMPARISONS(params))
        return n

    async def infer_rejected(self, params: q.InferParams) -> list[str]:
        return await self.all(q.INFER_REJECTED(params))

    async def schedule_comparisons(self, params: q.ScheduleParams) -> int:
        return len(await self.all(q.SCHEDULE_COMPARISONS(params)))

    async def reject_without_meter(self, params: q.NoMeterParams) -> list[str]:
        return await self.all(q.REJECT_WITHOUT_METER(params))

    async def save_drift_report(self, report: dict[str, Any]) -> None:
        """Store a drift report found by the confirmation (the console shows the newest)."""
        await self.all(q.SAVE_DRIFT_REPORT(drift_report_params(report)))


def drift_report_params(report: dict[str, Any]) -> q.DriftReportParams:
    return {
        "since": report["since"],
        "until": report["until"],
        "groups": report["groups"],
        "differing": report["differing"],
        "unsettled": report["unsettled"],
        "drift_events": report["drift_events"],
        "differences": orjson.dumps(report["differences"], default=_json_number).decode(),
    }


def meters_params(account: str, meters: Sequence[MeterInfo]) -> q.SaveMetersParams:
    fields = ("meter_id", "event_name", "status", "customer_key", "value_key")
    rows = [
        {
            **{f: getattr(m, f) for f in fields},
            "event_time_window": m.event_time_window,
            "formula": m.formula,
        }
        for m in meters
    ]
    return {"account": account, "meters": orjson.dumps(rows).decode()}


def pending_codes(tallies: list[Tally]) -> list[str]:
    """The codes pending rows carry ('' = none left out)."""
    return sorted({t.code for t in tallies if t.state == "pending" and t.code})


def confirmation_summary(c: q.ConfirmationCounts, accepted: int, now: datetime) -> dict[str, Any]:
    """Accepted rows as confirmed / awaiting confirmation / drifting / not confirmable, and
    the oldest unconfirmed hour (its end's age in seconds). Confirmed is a maintained counter;
    awaiting is what is left of the accepted count (maintained too) once the confirmed, the
    drifting and the not confirmable are taken out: history is never counted."""
    drifting, nc = int(c.drifting), int(c.not_confirmable)
    confirmed = min(int(c.confirmed), accepted)
    oldest = c.oldest_unconfirmed_hour
    return {
        "confirmed": confirmed,
        "awaiting": max(0, accepted - confirmed - drifting - nc),
        "drifting": drifting,
        "drifting_groups": int(c.drifting_groups),
        "not_confirmable": nc,
        "oldest_unconfirmed_hour": oldest,
        "oldest_unconfirmed_age_seconds": max(0.0, (now - oldest - HOUR).total_seconds())
        if oldest
        else 0.0,
    }


# -- the web console and /metrics: reads, on the pool they are given ---------------------------

ATTEMPT_WINDOW_CAP = 100_000  # newest attempts read for "the last hour" (bounded on busy hours)
FINISHED_CAP = 10_000  # newest finished rows counted for "the last hour" (bounded on busy hours)


@dataclass(frozen=True)
class HourActivity:
    """Rows finished and Stripe calls made in the last hour."""

    accepted: int
    cancelled: int
    calls: int
    errors: int
    capped: bool  # more calls than ATTEMPT_WINDOW_CAP: calls/errors cover the newest only
    finished_capped: bool = False  # more rows than FINISHED_CAP: accepted/cancelled are a floor

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


Row = dict[str, Any]

# Codes of pending rows the relay holds without calling Stripe: a refused key or account (the
# auth gate) or a meter Stripe would drop them for. They wait; they are not retrying.
HOLD_CODES: tuple[str, ...] = (*sorted(AUTH_WAIT_CODES), *HELD_CODES)
LOOK_KINDS = ("failed", "rejected", "retrying", "held")
LOOK_SCAN = 2000  # index entries a console page reads at most per state
CHART_SECONDS = 3 * 3600  # the overview chart's span
CHART_EXACT = 20_000  # a chart span of up to this many calls is read whole (exact counts)
CHART_SAMPLES = 2500  # a busier span: calls sampled (counts scaled), whatever the traffic


@dataclass(frozen=True)
class Look:
    """The console's filters over rows that need a look (each None when not filtered)."""

    kind: str | None = None  # one of LOOK_KINDS
    code: str | None = None  # '' for rows without a code
    customer: str | None = None
    event_name: str | None = None


@dataclass(frozen=True)
class LookPage:
    """One page of a filtered list, and where the next one starts (None: nothing after)."""

    rows: list[Row]
    next_after: int | None


class ConsoleStore(AsyncExecutor):
    """The console's and /metrics' reads (and what the console's row page shows)."""

    def __init__(self, pool: AsyncConnectionPool, stale_after: float = 5.0) -> None:
        super().__init__(pool)
        self.stale_after = stale_after  # a relay unseen this long is no longer live

    async def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {c.state: c.n for c in await self.all(q.STATE_COUNTS({}))}
        return {state: counts.get(state, 0) for state in STATES}

    async def confirmation(self) -> dict[str, Any]:
        """How accepted rows stand against Stripe's totals (see confirmation_summary)."""
        counts = await self.one(q.CONFIRMATION_COUNTS({}))
        accepted = (await self.state_counts())["accepted"]
        return confirmation_summary(counts, accepted, datetime.now(UTC))

    async def lag(self) -> Lag:
        return await self.one(q.OLDEST_UNSENT({}))

    async def oldest_unsent_age(self) -> timedelta | None:
        return (await self.lag()).created_age

    async def live_relay_count(self) -> int:
        return len(await self.live_relays())

    async def counts_and_unsent(self) -> tuple[dict[str, int], dict[str, Any]]:
        """Rows per state and the unsent rows by bucket, as `status` shows them
        (SyncStore.unsent), from one read of the tallies."""
        tallies = await self.all(q.STATUS_TALLY({}))
        codes = pending_codes(tallies)
        attempts = await self.all(q.NEXT_ATTEMPTS({"codes": codes}))
        statuses = {
            c: await self.first(q.LAST_STATUS_FOR_CODE({"code": c}))
            for c in codes
            if needs_status(c)
        }
        nexts = {a.code: a.next_attempt_at for a in attempts}
        return state_counts(tallies), split(tallies, nexts, statuses, datetime.now(UTC))

    async def last_hour(self) -> HourActivity:
        done = await self.one(q.FINISHED_LAST_HOUR({"cap": FINISHED_CAP}))
        calls = await self.one(q.ATTEMPTS_LAST_HOUR({"cap": ATTEMPT_WINDOW_CAP}))
        return HourActivity(
            done.accepted, done.cancelled, calls.calls, calls.errors, calls.capped, done.capped
        )

    async def attempt_errors(self, limit: int = 10) -> list[Row]:
        params: q.CapLimit = {"cap": ATTEMPT_WINDOW_CAP, "limit": limit}
        return await self.all(q.ATTEMPT_ERRORS_LAST_HOUR(params))

    async def failures_by_code(self, per_code: int = 5) -> list[Row]:
        return await self.all(q.FAILURES_WITH_IDENTIFIERS({"per_code": per_code}))

    async def look(
        self,
        look: Look,
        *,
        after: int = 0,
        upto: int | None = None,
        limit: int = 50,
        scan: int = LOOK_SCAN,
    ) -> LookPage:
        """A page of rows that need a look, keyset by id (see look_rows in queries.sql). Only
        the filters no index serves (meter; retrying or held) read more rows than they show,
        `scan` at most."""
        narrowed = look.event_name is not None or look.kind in ("retrying", "held")
        scan = scan if narrowed else limit
        params: q.LookParams = {
            "kind": look.kind,
            "code": look.code,
            "customer": look.customer,
            "event_name": look.event_name,
            "held": list(HOLD_CODES),
            "after": after,
            "upto": upto,
            "scan": scan,
            "limit": limit,
        }
        found = await self.all(q.LOOK_ROWS(params))
        rows = [r for r in found if r["id"] is not None]
        if len(rows) == limit:
            return LookPage(rows, rows[-1]["id"])
        scanned, last = (found[0]["scanned"], found[0]["last_scanned"]) if found else (0, None)
        return LookPage(rows, last if scanned == scan else None)

    async def calls_per_minute(
        self, seconds: float = CHART_SECONDS, exact: int = CHART_EXACT, samples: int = CHART_SAMPLES
    ) -> list[q.Minute]:
        """The chart's minutes: every call of a quiet span, a bounded sample of a busy one."""
        params: q.ChartParams = {"exact": exact, "samples": samples, "seconds": seconds}
        return await self.all(q.CALLS_PER_MINUTE(params))

    async def customer_backlog(self, limit: int = 10) -> list[Row]:
        return await self.all(q.CUSTOMER_BACKLOG({"limit": limit}))

    async def live_relays(self) -> list[LiveRelay]:
        return await self.all(q.LIVE_RELAYS({"stale_seconds": self.stale_after}))

    async def row(self, identifier: str) -> Row | None:
        return await self.first(q.ROW_STORY({"identifier": identifier}))

    async def attempts(self, outbox_id: int, limit: int = 500) -> list[Row]:
        return await self.all(q.ROW_ATTEMPTS({"outbox_id": outbox_id, "limit": limit}))

    async def latest_drift_report(self) -> Row | None:
        """The newest drift report (meter_event_outbox_drift_reports), or None."""
        return await self.first(q.LATEST_DRIFT_REPORT({}))

    async def row_confirmation(self, identifier: str) -> Row | None:
        """How one row stands against Stripe's totals (its group), or None before a look."""
        return await self.first(q.ROW_CONFIRMATION({"identifier": identifier}))

    async def open_session(self, session_id: str, seconds: float) -> None:
        """Record a signed-in console session (ids are hashes; see the migration)."""
        await self.all(q.CONSOLE_SESSION_OPEN({"id": session_id, "seconds": seconds}))

    async def session_alive(self, session_id: str) -> bool:
        return bool(await self.all(q.CONSOLE_SESSION_ALIVE({"id": session_id})))

    async def close_session(self, session_id: str) -> None:
        await self.all(q.CONSOLE_SESSION_CLOSE({"id": session_id}))

    async def drift_events(self) -> float:
        """The difference found by the newest drift report (0 before the first)."""
        report = await self.latest_drift_report()
        return float(report["drift_events"]) if report else 0.0

    async def held_for_meter(self) -> list[Row]:
        """Rows held because of their meter, by account, event name and code, with the fix."""
        held = await self.all(q.HELD_BY_METER({}))
        return [{**g._asdict(), "what_to_do": WHAT_TO_DO.get(g.code, "")} for g in held]

    async def held_by_reason(self) -> dict[str, tuple[int, float]]:
        """Rows held for their meter per code: (rows, age of the oldest fact in seconds)."""
        found: dict[str, tuple[int, float]] = {}
        now = datetime.now(UTC)
        for g in await self.all(q.HELD_BY_METER({})):
            n, age = found.get(g.code, (0, 0.0))
            oldest = (now - g.oldest_occurred_at).total_seconds()
            found[g.code] = (n + g.n, max(age, oldest))
        return found

    async def outage_state(self) -> OutageState | None:
        """The outage breaker as every replica sees it (None: a schema before outbox_0013)."""
        try:
            return await self.first(q.OUTAGE_STATE({"scope": OUTAGE_SCOPE}))
        except psycopg.errors.UndefinedTable:
            return None


# -- the CLI and the tests: the same queries on one connection -------------------------------


class SyncStore(SyncExecutor):
    """The operator commands' tasks (and the tests' walk, claim and outcome writes)."""

    def walk(self, after: Lane, wanted: int, *, exclusive: bool) -> Walked:
        return self.first(q.WALK(walk_params(after, wanted, exclusive))) or NOT_WALKED

    def claim(self, ids: Sequence[int], **how: Unpack[q.ClaimHow]) -> list[Claimed]:
        """Store.claim's two statements, in one transaction."""
        begun = top_up_start(how)
        with self.conn.transaction():
            self.all(q.CLAIM_PLAN({}))
            locked = self.all(q.CLAIM(claim_params(ids, how, begun.at if begun else None)))
            ids_locked = top_up_passed(how, begun, ids, locked)
            if not locked:
                return []
            leased = self.all(q.LEASE(lease_params(ids_locked, how)))
            if reset := to_reset(locked, leased):
                self.all(q.RESET_IN_FLIGHT({"ids": reset}))
            return leased

    def record_outcomes(self, batch: Sequence[Outcome], relay_id: str) -> set[int]:
        """Store.record_outcomes, with its transaction's settings."""
        with self.conn.transaction():
            self.all(q.OUTCOME_PLAN({}))
            return set(self.all(q.RECORD_OUTCOMES(outcome_params(batch, relay_id))))

    def recover(self) -> q.Recovered:
        """`outbox-relay recover`, in one transaction: wait for a fold running now, forget what
        the UNLOGGED tables' markers say, and fold (which then does what it does after a crash).
        READ COMMITTED whatever the database's default, as the relay's pool: the recount runs
        in no other level (outbox_0032), and max(id) must be read after the lock wait."""
        level = self.conn.isolation_level
        self.conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        try:
            with self.conn.transaction():
                self.all(q.FOLD_PLAN({}))
                self.all(q.HOLD_FOLD({}))
                self.all(q.FORGET_UNLOGGED({}))
                self.all(q.FOLD_COUNTS({}))
        finally:
            self.conn.isolation_level = level
        return self.one(q.RECOVERED({}))

    def subscriptions_enabled(self) -> list[str]:
        return self.all(q.SUBSCRIPTIONS_ENABLED({}))

    def sequences_behind(self) -> list[q.SequenceBehind]:
        return self.all(q.SEQUENCES_BEHIND({}))

    def outage_state(self) -> OutageState | None:
        """The outage breaker as every replica sees it (None: a schema before outbox_0013)."""
        try:
            return self.first(q.OUTAGE_STATE({"scope": OUTAGE_SCOPE}))
        except psycopg.errors.UndefinedTable:
            return None

    def live_relays(self, stale_seconds: float) -> list[LiveRelay]:
        return self.all(q.LIVE_RELAYS({"stale_seconds": stale_seconds}))

    def oldest_unsent(self) -> Lag:
        return self.one(q.OLDEST_UNSENT({}))

    def status_tally(self) -> list[Tally]:
        """The tallies, by the newest query the schema supports (a newer CLI during an
        upgrade: `outbox-relay migrate` brings the cheap, lease-aware read)."""
        for query in (q.STATUS_TALLY, q.STATUS_TALLY_BEFORE_LEASES):
            try:
                return self.all(query({}))
            except psycopg.errors.UndefinedTable:  # before 0018 (leases), before 0015 (tallies)
                if not self.conn.autocommit:
                    self.conn.rollback()
        return self.all(q.STATUS_TALLY_COUNTED({}))  # before 0015: counted, as it was then

    def unsent(self, tallies: list[Tally], now: datetime) -> dict[str, Any]:
        """The unsent rows by bucket (relay.core.unsent), from the tallies and one index probe
        per code: its next attempt, and for a code of Stripe's the last answer's status."""
        codes = pending_codes(tallies)
        nexts = {a.code: a.next_attempt_at for a in self.all(q.NEXT_ATTEMPTS({"codes": codes}))}
        statuses = {c: self.last_status_for_code(c) for c in codes if needs_status(c)}
        return split(tallies, nexts, statuses, now)

    def row_story(self, identifier: str) -> Row | None:
        """Every column of one row (the set shown to operators), or None."""
        return self.first(q.ROW_STORY({"identifier": identifier}))

    def retry(self, dry_run: bool = False, **how: Unpack[q.RetryHow]) -> list[RetryCandidate]:
        """Requeue failed/rejected rows (see the query): the rows requeued and those refused,
        with the reason. `dry_run`: what it would do, changing nothing."""
        return self.all(q.RETRY(retry_params(how, dry_run)))

    def last_status_for_code(self, code: str) -> int | None:
        """HTTP status of the latest attempt of a pending row with `code` (None: no attempt)."""
        status: int | None = self.first(q.LAST_STATUS_FOR_CODE({"code": code}))
        return status

    def list_rows(
        self,
        *,
        state: State | None = None,
        code: str | None = None,
        customer: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Row]:
        params: q.ListParams = {
            "state": state,
            "code": code,
            "customer": customer,
            "event_name": event_name,
            "since": since,
            "limit": limit,
        }
        return self.all(q.LIST_ROWS(params))

    def row_attempts(self, outbox_id: int, limit: int = 500) -> list[Row]:
        return self.all(q.ROW_ATTEMPTS({"outbox_id": outbox_id, "limit": limit}))

    def row_state(self, identifier: str) -> RowState | None:
        """(state, action) of one row, or None when no row has this identifier."""
        return self.first(q.ROW_STATE({"identifier": identifier}))

    def rejected_count(self, code: str | None) -> int:
        n: int = self.one(q.REJECTED_COUNT({"code": code}))
        return n

    def prune_preview(self, *, age_seconds: float) -> Row:
        return self.one(q.PRUNE_PREVIEW({"age_seconds": age_seconds}))

    def unsent_count(self) -> int:
        n: int = self.one(q.UNSENT_COUNT({}))
        return n

    def drift_ours(self, since: datetime, until: datetime) -> list[OurGroup]:
        return self.all(q.DRIFT_OURS({"since": since, "until": until}))

    def save_drift_report(self, report: dict[str, Any]) -> tuple[int, datetime]:
        """Store a drift report (the console shows the newest); returns its id and time."""
        saved = self.one(q.SAVE_DRIFT_REPORT(drift_report_params(report)))
        return saved.id, saved.created_at

    def latest_drift_report(self) -> Row | None:
        return self.first(q.LATEST_DRIFT_REPORT({}))

    def prune(self, *, age_seconds: float, batch_size: int) -> list[int]:
        """Delete one bounded batch of old terminal rows; returns the heap block of each."""
        return self.all(q.PRUNE({"age_seconds": age_seconds, "batch_size": batch_size}))

    def may_tend_ranges(self) -> bool:
        """Whether this role may summarize and forget created_at ranges (outbox_0025)."""
        may: bool = self.one(q.MAY_TEND_RANGES({}))
        return may

    def summarize_ranges(self) -> int:
        """Summarize the created_at ranges the last prune left unsummarized: how many, -1 when
        a VACUUM held the table (outbox_0025)."""
        ranges: int = self.one(q.SUMMARIZE_RANGES({}))
        return ranges

    def forget_ranges(self, blocks: Iterable[int]) -> int:
        """Forget the created_at ranges holding these heap blocks: how many, -1 when a VACUUM
        held the table (outbox_0025)."""
        ranges: int = self.one(q.FORGET_RANGES({"blocks": id_array(set(blocks))}))
        return ranges

    def confirmation_counts(self) -> q.ConfirmationCounts:
        return self.one(q.CONFIRMATION_COUNTS({}))

    def row_confirmation(self, identifier: str) -> Row | None:
        return self.first(q.ROW_CONFIRMATION({"identifier": identifier}))

    # the meter catalogue (operator commands and tests)

    def load_meters(self) -> list[MeterInfo]:
        return self.all(q.LOAD_METERS({}))

    def meter_reads(self) -> list[MeterRead]:
        return self.all(q.METER_READS({}))

    def event_names_in_use(self) -> list[q.EventNameInUse]:
        return self.all(q.EVENT_NAMES_IN_USE({}))

    def held_by_meter(self) -> list[q.HeldGroup]:
        try:
            return self.all(q.HELD_BY_METER({}))
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            # schema before 0018 (`status` of a newer CLI during an upgrade): counted
            counted = [
                g for c in HELD_CODES for g in self.all(q.HELD_BY_METER_COUNTED({"code": c}))
            ]
            return sorted(counted, key=lambda g: (g.account, g.event_name, g.code))
