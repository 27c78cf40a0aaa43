"""The one door to relay/db/queries.sql: a typed method per named query.

Every caller (the relay's services, the rate share, webhooks, the operator commands, the web
console and /metrics, and the tests) goes through here, so a query's parameters are built in one
place and its result has one type. `Store` runs on the relay's async pool; `ConsoleStore` runs
the console's and /metrics' reads on the same pool; `SyncStore` runs the same queries on a
plain connection for the CLI and the tests. Each method is one statement in its own transaction
(autocommit): the relay never holds a transaction open while it talks to Stripe.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, cast
from uuid import UUID

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from outbox.sqlfile import for_psycopg
from relay.core.rows import Claimed, Outcome
from relay.db.pool import QUERIES

# Statements whose best plan depends on the parameters: a prepared statement's generic plan
# must guess the size of `claim`'s batch and top-up, and a guess of a thousand rows turned its
# final join into a scan of the whole table. Planned afresh each time (about a millisecond).
PLANNED_EACH_TIME = frozenset({"claim"})

Lane = tuple[str, str]  # (customer, event name): the walk's cursor
FIRST_LANE: Lane = ("", "")


class Walked(NamedTuple):
    """What a walk chose: lane heads to claim, and where the next walk starts."""

    ids: list[int]
    cursor: Lane | None  # None: the walk reached the last lane (start again from the first)


class Beat(NamedTuple):
    live: int  # relays seen within the stale time, this one included
    ours: bool  # False: another live process holds this relay_id


class LiveRelay(NamedTuple):
    relay_id: str
    started_at: datetime
    seen_at: datetime


class StateCount(NamedTuple):
    state: str
    n: int
    oldest_available_at: datetime | None


class FailureCount(NamedTuple):
    state: str
    code: str
    n: int


class UnsentGroup(NamedTuple):
    """Unsent rows sharing a state, last code and due-ness (see `unsent_by_group`)."""

    state: str
    code: str | None
    due: bool
    n: int
    oldest_created_at: datetime
    oldest_occurred_at: datetime
    next_attempt_at: datetime


class RetryCandidate(NamedTuple):
    """A failed/rejected row a `retry` with given filters matches, and whether it is refused."""

    identifier: str
    state: str
    code: str | None
    first_attempt_at: datetime | None
    refused: bool


class OurGroup(NamedTuple):
    """Our side of one drift group: accepted totals per (account, customer, meter, hour)."""

    account: str  # '' for the platform account
    customer: str
    event_name: str
    hour: datetime
    value: Any  # Decimal (numeric)
    events: int
    open: int  # rows sent but not settled: the group is not compared yet
    identifiers: list[str]


class WaitingCount(NamedTuple):
    code: str
    stripe_account: str | None
    n: int


class RefusedRetry(NamedTuple):
    """A row `retry` leaves alone unless forced (see the `retry` query)."""

    identifier: str
    state: str
    code: str | None
    first_attempt_at: datetime | None


# Parameters and results, shared by the async and the sync store.


def _walk_params(after: Lane, wanted: int, exclusive: bool) -> dict[str, Any]:
    return {
        "after_customer": after[0],
        "after_event_name": after[1],
        # Lanes right after the cursor are rarely busy (round robin): the walk stops when the
        # batch is full, the bound only caps a walk past busy lanes.
        "max_lanes": 4 * wanted + 64,
        "batch_size": wanted,
        "exclusive": exclusive,
    }


def _walked(rows: list[tuple[Any, ...]]) -> Walked:
    if not rows:  # no lane after the cursor
        return Walked([], None)
    ids, _found, customer, event_name, wrap = rows[0]
    return Walked(ids, None if wrap else (customer, event_name))


def _claim_params(
    ids: Sequence[int],
    fill: int,
    exclusive: bool,
    relay_id: str,
    lease_seconds: float,
    one_walk: bool,
) -> dict[str, Any]:
    return {
        # The array's text form, cast by the query: psycopg's generic list dumper spent about
        # a microsecond per id, per claimed row.
        "ids": "{" + ",".join(map(str, ids)) + "}",
        "one_walk": one_walk,
        "fill": fill,
        "exclusive": exclusive,
        "relay_id": relay_id,
        "lease_seconds": lease_seconds,
    }


def _outcome_params(batch: Iterable[Outcome], relay_id: str) -> dict[str, Any]:
    """The batch as two JSON documents: the distinct decisions, and per row only what differs
    (id, lease token, pre-claim first attempt, key generation, its decision's index).

    A stream call's 100 rows share one decision (the executor copies it), so a batch of a
    thousand rows carries about ten decisions: a fraction of the JSON to write and for
    PostgreSQL to parse, against one 16-field object per row. orjson writes UUIDs and
    datetimes itself, several times faster than the json module.
    """
    index: dict[tuple[Any, ...], int] = {}
    decisions: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for o in batch:
        row = o.row
        key = (o[1:], row.action)  # everything but the row, and what the row's call did
        d = index.get(key)
        if d is None:
            d = index[key] = len(decisions)
            decisions.append({"n": d, **_decision(o)})
        rows.append(
            {
                "id": row.id,
                "token": row.lease_token,
                "previous_first_attempt_at": row.previous_first_attempt_at,
                "key_generation": row.key_generation,
                "decision": d,
            }
        )
    return {
        "rows": orjson.dumps(rows).decode(),
        "decisions": orjson.dumps(decisions).decode(),
        "relay_id": relay_id,
    }


def _decision(o: Outcome) -> dict[str, Any]:
    return {
        "state": o.state,
        "delay": o.delay,
        "counted": o.counted,
        "new_key": o.new_key,
        "code": o.code,
        "message": o.message and o.message.replace("\x00", ""),  # jsonb refuses NUL
        "request_id": o.request_id,
        "reached": o.reached_stripe,
        "may_have_counted": o.may_have_counted,
        "called": o.called,
        "action": o.row.action,
        "http_status": o.http_status,
        "latency_ms": o.latency_ms,
    }


def _retry_params(
    identifier: str | None, code: str | None, force: bool, window_hours: float, rejected: bool
) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "code": code,
        "force": force,
        "window_seconds": window_hours * 3600,
        "rejected": rejected,
    }


def _json_number(value: object) -> int | float:
    """orjson's fallback for numeric values (Decimal): whole numbers stay exact."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(type(value).__name__)


class Store:
    """The relay's queries on its async pool of autocommit connections."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _run(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            prepare = name not in PLANNED_EACH_TIME
            cur = await conn.execute(for_psycopg(QUERIES[name]), params or {}, prepare=prepare)
            return await cur.fetchall() if cur.description else []

    async def walk(self, after: Lane, wanted: int, *, exclusive: bool) -> Walked:
        """Choose up to `wanted` lane heads after `after` (read only, locks nothing)."""
        return _walked(await self._run("walk", _walk_params(after, wanted, exclusive)))

    async def claim(
        self,
        ids: Sequence[int],
        *,
        fill: int,
        exclusive: bool,
        relay_id: str,
        lease_seconds: float,
        one_walk: bool = False,
    ) -> list[Claimed]:
        """Lock and lease the walked heads (plus `fill` oldest due rows). `one_walk`: the ids
        come from a single walk, one per lane (a wrapped walk's may name a lane twice)."""
        params = _claim_params(ids, fill, exclusive, relay_id, lease_seconds, one_walk)
        return [Claimed.from_row(r) for r in await self._run("claim", params)]

    async def record_outcomes(self, batch: Sequence[Outcome], relay_id: str) -> set[int]:
        """Write outcomes (compare-and-set on each lease); returns the ids written."""
        written = await self._run("record_outcomes", _outcome_params(batch, relay_id))
        return {row_id for (row_id,) in written}

    async def heartbeat(self, relay_id: str, token: UUID, stale_seconds: float) -> Beat:
        """Announce this relay (process `token`); how many relays are live, this one included,
        and whether the relay_id's row is this process's."""
        params = {"relay_id": relay_id, "token": token, "stale_seconds": stale_seconds}
        ((live, ours),) = await self._run("heartbeat", params)
        return Beat(int(live), bool(ours))

    async def leave(self, relay_id: str, token: UUID) -> None:
        await self._run("leave", {"relay_id": relay_id, "token": token})

    async def reject(
        self, identifiers: list[str], account: str | None, code: str, message: str
    ) -> list[str]:
        """Mark rows of `account` (None: the platform) that Stripe reported as not billed;
        returns the identifiers marked."""
        params = {"identifiers": identifiers, "account": account, "code": code, "message": message}
        return [identifier for (identifier,) in await self._run("reject", params)]

    async def fold_counts(self) -> None:
        await self._run("fold_counts")

    async def trace_contexts(self, ids: list[int]) -> dict[int, str]:
        """The traceparent stored with each of these rows (rows without one are left out);
        read only while tracing is on."""
        return dict(await self._run("trace_contexts", {"ids": ids}))

    async def ping(self) -> bool:
        """Readiness: can we run a statement right now?"""
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except Exception:
            return False


class SyncStore:
    """The same queries on one plain (autocommit) connection: the CLI's and the tests'."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _run(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(for_psycopg(QUERIES[name]), params or {})
        return cur.fetchall() if cur.description else []

    def walk(self, after: Lane, wanted: int, *, exclusive: bool) -> Walked:
        return _walked(self._run("walk", _walk_params(after, wanted, exclusive)))

    def claim(
        self,
        ids: Sequence[int],
        *,
        fill: int,
        exclusive: bool,
        relay_id: str,
        lease_seconds: float,
        one_walk: bool = False,
    ) -> list[Claimed]:
        params = _claim_params(ids, fill, exclusive, relay_id, lease_seconds, one_walk)
        return [Claimed.from_row(r) for r in self._run("claim", params)]

    def record_outcomes(self, batch: Sequence[Outcome], relay_id: str) -> set[int]:
        written = self._run("record_outcomes", _outcome_params(batch, relay_id))
        return {row_id for (row_id,) in written}

    def status_counts(self) -> list[StateCount]:
        return [StateCount(*r) for r in self._run("status_counts")]

    def live_relays(self, stale_seconds: float) -> list[LiveRelay]:
        return [LiveRelay(*r) for r in self._run("live_relays", {"stale_seconds": stale_seconds})]

    def oldest_due(self) -> datetime | None:
        ((oldest,),) = self._run("oldest_due")
        return cast(datetime | None, oldest)  # min() of a timestamptz column, NULL when none

    def failures_by_code(self) -> list[FailureCount]:
        return [FailureCount(*r) for r in self._run("failures_by_code")]

    def waiting_by_code(self) -> list[WaitingCount]:
        return [WaitingCount(*r) for r in self._run("waiting_by_code")]

    def inspect(self, identifier: str) -> dict[str, Any] | None:
        """Every column of one row (the set shown to operators), or None."""
        cur = self.conn.execute(for_psycopg(QUERIES["inspect"]), {"identifier": identifier})
        values = cur.fetchone()
        if values is None:
            return None
        return dict(zip([c.name for c in cur.description or []], values, strict=True))

    def retry(
        self,
        *,
        identifier: str | None,
        code: str | None,
        force: bool,
        window_hours: float,
        rejected: bool = True,
    ) -> list[str]:
        """Requeue failed (and unless told not to, rejected) rows (see the query); returns
        their identifiers."""
        params = _retry_params(identifier, code, force, window_hours, rejected)
        return [i for (i,) in self._run("retry", params)]

    def retry_refused(
        self,
        *,
        identifier: str | None,
        code: str | None,
        window_hours: float,
        rejected: bool = True,
    ) -> list[RefusedRetry]:
        """The rows an unforced `retry` with these filters leaves alone."""
        params = _retry_params(identifier, code, False, window_hours, rejected)
        return [RefusedRetry(*r) for r in self._run("retry_refused", params)]

    def unsent_by_group(self) -> list[UnsentGroup]:
        return [UnsentGroup(*r) for r in self._run("unsent_by_group")]

    def last_status_for_code(self, code: str) -> int | None:
        """HTTP status of the latest attempt of a pending row with `code` (None: no attempt)."""
        found = self._run("last_status_for_code", {"code": code})
        return cast(int | None, found[0][0]) if found else None

    def list_rows(
        self,
        *,
        state: str | None = None,
        code: str | None = None,
        customer: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        params = {
            "state": state,
            "code": code,
            "customer": customer,
            "event_name": event_name,
            "since": since,
            "limit": limit,
        }
        return self._dicts("list_rows", params)

    def row_attempts(self, outbox_id: int, limit: int = 500) -> list[dict[str, Any]]:
        return self._dicts("row_attempts", {"outbox_id": outbox_id, "limit": limit})

    def row_state(self, identifier: str) -> tuple[str, str] | None:
        """(state, action) of one row, or None when no row has this identifier."""
        found = self._run("row_state", {"identifier": identifier})
        return (found[0][0], found[0][1]) if found else None

    def retry_preview(
        self,
        *,
        identifier: str | None,
        code: str | None,
        force: bool,
        window_hours: float,
        rejected: bool = True,
    ) -> list[RetryCandidate]:
        params = _retry_params(identifier, code, force, window_hours, rejected)
        return [RetryCandidate(*r) for r in self._run("retry_preview", params)]

    def rejected_count(self, code: str | None) -> int:
        ((n,),) = self._run("rejected_count", {"code": code})
        return int(n)

    def prune_preview(self, *, age_seconds: float) -> dict[str, Any]:
        (found,) = self._dicts("prune_preview", {"age_seconds": age_seconds})
        return found

    def unsent_count(self) -> int:
        ((n,),) = self._run("unsent_count")
        return int(n)

    def drift_ours(self, since: datetime, until: datetime) -> list[OurGroup]:
        return [OurGroup(*r) for r in self._run("drift_ours", {"since": since, "until": until})]

    def save_drift_report(self, report: dict[str, Any]) -> tuple[int, datetime]:
        """Store a drift report (the console shows the newest); returns its id and time."""
        document = orjson.dumps(report["differences"], default=_json_number).decode()
        params = {**report, "differences": document}
        ((report_id, created_at),) = self._run("save_drift_report", params)
        return int(report_id), created_at

    def latest_drift_report(self) -> dict[str, Any] | None:
        found = self._dicts("latest_drift_report")
        return found[0] if found else None

    def _dicts(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        cur = self.conn.execute(for_psycopg(QUERIES[name]), params or {})
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]

    def prune(self, *, age_seconds: float, batch_size: int) -> int:
        """Delete one bounded batch of old terminal rows; returns how many."""
        params = {"age_seconds": age_seconds, "batch_size": batch_size}
        return len(self._run("prune", params))


# The web console and /metrics: reads only, rows as dicts for the templates.

ATTEMPT_WINDOW_CAP = 100_000  # newest attempts read for "the last hour" (bounded on busy hours)
STATES = ("pending", "in_flight", "accepted", "failed", "rejected", "cancelled")


@dataclass(frozen=True)
class Lag:
    """The oldest unsent fact, measured from when it was recorded and from when it happened."""

    created_at: datetime | None
    occurred_at: datetime | None
    created_age: timedelta | None
    occurred_age: timedelta | None


@dataclass(frozen=True)
class HourActivity:
    """Rows finished and Stripe calls made in the last hour."""

    accepted: int
    cancelled: int
    calls: int
    errors: int
    capped: bool  # more calls than ATTEMPT_WINDOW_CAP: calls/errors cover the newest only

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


Row = dict[str, Any]


class ConsoleStore:
    """Read (and drift-report) queries; each method one statement in its own transaction."""

    def __init__(self, pool: AsyncConnectionPool, stale_after: float = 5.0) -> None:
        self.pool = pool
        self.stale_after = stale_after  # a relay unseen this long is no longer live

    async def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[Row]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(for_psycopg(QUERIES[name]), params or {})
            return await cur.fetchall()

    async def state_counts(self) -> dict[str, int]:
        counts = {r["state"]: int(r["n"]) for r in await self._rows("state_counts")}
        return {state: counts.get(state, 0) for state in STATES}

    async def lag(self) -> Lag:
        (r,) = await self._rows("oldest_unsent")
        return Lag(r["created_at"], r["occurred_at"], r["created_age"], r["occurred_age"])

    async def oldest_unsent_age(self) -> timedelta | None:
        return (await self.lag()).created_age

    async def live_relay_count(self) -> int:
        return len(await self.live_relays())

    async def backing_off(self, limit: int = 20) -> list[Row]:
        return await self._rows("backing_off", {"limit": limit})

    async def last_hour(self) -> HourActivity:
        (done,) = await self._rows("finished_last_hour")
        (calls,) = await self._rows("attempts_last_hour", {"cap": ATTEMPT_WINDOW_CAP})
        return HourActivity(
            accepted=done["accepted"],
            cancelled=done["cancelled"],
            calls=calls["calls"],
            errors=calls["errors"],
            capped=bool(calls["capped"]),
        )

    async def attempt_errors(self, limit: int = 10) -> list[Row]:
        return await self._rows(
            "attempt_errors_last_hour", {"cap": ATTEMPT_WINDOW_CAP, "limit": limit}
        )

    async def failures_by_code(self, per_code: int = 5) -> list[Row]:
        return await self._rows("failures_with_identifiers", {"per_code": per_code})

    async def failed_rows(self, code: str, limit: int = 200) -> list[Row]:
        return await self._rows("failed_rows", {"code": code, "limit": limit})

    async def customer_backlog(self, limit: int = 10) -> list[Row]:
        return await self._rows("customer_backlog", {"limit": limit})

    async def live_relays(self) -> list[Row]:
        return await self._rows("live_relays", {"stale_seconds": self.stale_after})

    async def row(self, identifier: str) -> Row | None:
        rows = await self._rows("row_story", {"identifier": identifier})
        return rows[0] if rows else None

    async def attempts(self, outbox_id: int, limit: int = 500) -> list[Row]:
        return await self._rows("row_attempts", {"outbox_id": outbox_id, "limit": limit})

    async def latest_drift_report(self) -> dict[str, Any] | None:
        """The newest drift report (meter_event_outbox_drift_reports), or None."""
        rows = await self._rows("latest_drift_report")
        return rows[0] if rows else None

    async def drift_events(self) -> float:
        """The difference found by the newest drift report (0 before the first)."""
        report = await self.latest_drift_report()
        return float(report["drift_events"]) if report else 0.0

    async def open_session(self, session_id: str, seconds: float) -> None:
        """Record a signed-in console session (ids are hashes; see the migration)."""
        await self._rows("console_session_open", {"id": session_id, "seconds": seconds})

    async def session_alive(self, session_id: str) -> bool:
        return bool(await self._rows("console_session_alive", {"id": session_id}))

    async def close_session(self, session_id: str) -> None:
        await self._rows("console_session_close", {"id": session_id})
