"""The one door to relay/queries.sql: a typed method per named query.

Every caller (the relay's services, the rate share, webhooks, the operator commands and the
tests) goes through here, so a query's parameters are built in one place and its result has
one type. `Store` runs on the relay's async pool; `SyncStore` runs the same queries on a plain
connection for the CLI and the tests. Each method is one statement in its own transaction
(autocommit): the relay never holds a transaction open while it talks to Stripe.
"""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from outbox.sqlfile import for_psycopg
from relay.db import QUERIES
from relay.rows import Claimed, Outcome

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
    ids: Sequence[int], fill: int, exclusive: bool, relay_id: str, lease_seconds: float
) -> dict[str, Any]:
    return {
        # The array's text form, cast by the query: psycopg's generic list dumper spent about
        # a microsecond per id, per claimed row.
        "ids": "{" + ",".join(map(str, ids)) + "}",
        "fill": fill,
        "exclusive": exclusive,
        "relay_id": relay_id,
        "lease_seconds": lease_seconds,
    }


def _outcome_params(batch: Iterable[Outcome], relay_id: str) -> dict[str, Any]:
    """The batch as one JSON document (UPDATE ... FROM a record set).

    orjson: it writes UUIDs and datetimes itself, several times faster than the json module.
    """
    document = orjson.dumps(
        [
            {
                "id": o.row.id,
                "token": o.row.lease_token,
                "state": o.state,
                "delay": o.delay,
                "counted": o.counted,
                "new_key": o.new_key,
                "code": o.code,
                "message": o.message and o.message.replace("\x00", ""),  # jsonb refuses NUL
                "request_id": o.request_id,
                "first_attempt_at": o.first_attempt_at,
                "may_have_counted": o.may_have_counted,
                "called": o.called,
                "action": o.row.action,
                "key_generation": o.row.key_generation,
                "http_status": o.http_status,
                "latency_ms": o.latency_ms,
            }
            for o in batch
        ]
    ).decode()
    return {"batch": document, "relay_id": relay_id}


def _retry_params(
    identifier: str | None, code: str | None, force: bool, window_hours: float
) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "code": code,
        "force": force,
        "window_seconds": window_hours * 3600,
    }


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
    ) -> list[Claimed]:
        """Lock and lease the walked heads (plus `fill` oldest due rows)."""
        params = _claim_params(ids, fill, exclusive, relay_id, lease_seconds)
        return [Claimed.from_row(r) for r in await self._run("claim", params)]

    async def record_outcomes(self, batch: Sequence[Outcome], relay_id: str) -> set[int]:
        """Write outcomes (compare-and-set on each lease); returns the ids written."""
        written = await self._run("record_outcomes", _outcome_params(batch, relay_id))
        return {row_id for (row_id,) in written}

    async def heartbeat(self, relay_id: str, stale_seconds: float) -> int:
        """Announce this relay; returns how many relays are live, this one included."""
        params = {"relay_id": relay_id, "stale_seconds": stale_seconds}
        ((live,),) = await self._run("heartbeat", params)
        return int(live)

    async def leave(self, relay_id: str) -> None:
        await self._run("leave", {"relay_id": relay_id})

    async def reject(self, identifiers: list[str], code: str, message: str) -> list[str]:
        """Mark rows Stripe reported as not billed; returns the identifiers marked."""
        params = {"identifiers": identifiers, "code": code, "message": message}
        return [identifier for (identifier,) in await self._run("reject", params)]

    async def fold_counts(self) -> None:
        await self._run("fold_counts")

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
    ) -> list[Claimed]:
        params = _claim_params(ids, fill, exclusive, relay_id, lease_seconds)
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
        return oldest  # type: ignore[no-any-return]  # timestamptz column: a datetime or NULL

    def failures_by_code(self) -> list[FailureCount]:
        return [FailureCount(*r) for r in self._run("failures_by_code")]

    def inspect(self, identifier: str) -> dict[str, Any] | None:
        """Every column of one row (the set shown to operators), or None."""
        cur = self.conn.execute(for_psycopg(QUERIES["inspect"]), {"identifier": identifier})
        values = cur.fetchone()
        if values is None:
            return None
        return dict(zip([c.name for c in cur.description or []], values, strict=True))

    def retry(
        self, *, identifier: str | None, code: str | None, force: bool, window_hours: float
    ) -> list[str]:
        """Requeue failed/rejected rows (see the query); returns their identifiers."""
        params = _retry_params(identifier, code, force, window_hours)
        return [i for (i,) in self._run("retry", params)]

    def retry_refused(
        self, *, identifier: str | None, code: str | None, window_hours: float
    ) -> list[RefusedRetry]:
        """The rows an unforced `retry` with these filters leaves alone."""
        params = _retry_params(identifier, code, False, window_hours)
        return [RefusedRetry(*r) for r in self._run("retry_refused", params)]

    def prune(self, *, age_seconds: float, batch_size: int) -> int:
        """Delete one bounded batch of old terminal rows; returns how many."""
        params = {"age_seconds": age_seconds, "batch_size": batch_size}
        return len(self._run("prune", params))
