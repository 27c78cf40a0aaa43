"""Record billable usage for Stripe meters inside your own database transaction.

    import outbox
    with session.begin():
        session.add(order)
        outbox.record_usage(session, event_name="api_calls", customer="cus_123",
                            value=1, identifier=f"req-{request_id}")

The relay (`outbox-relay run`) reports committed rows to Stripe exactly once. Async
connections return an awaitable: `await outbox.record_usage(async_session, ...)`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, overload

from outbox import batch, validate
from outbox.connections import Query, Steps, run
from outbox.errors import (
    BatchRefused,
    IdentifierConflict,
    InvalidUsage,
    OutboxError,
    Refusal,
    UnknownIdentifier,
    UnsupportedConnection,
)
from outbox.recorded import RecordedUsage, stored_differences
from outbox.sqlfile import load
from outbox.tracecontext import current_traceparent

if TYPE_CHECKING:  # the application brings whichever of these it uses
    import psycopg
    import sqlalchemy.engine
    import sqlalchemy.ext.asyncio
    import sqlalchemy.orm

__all__ = [
    "AsyncConnection",
    "BatchRefused",
    "CancelRequest",
    "DBAPICursor",
    "IdentifierConflict",
    "InvalidUsage",
    "OutboxError",
    "RecordedUsage",
    "Refusal",
    "SyncConnection",
    "UnknownIdentifier",
    "UnsupportedConnection",
    "cancel_usage",
    "record_usage",
    "record_usage_many",
]

_SQL = load("outbox", "queries.sql")


class DBAPICursor(Protocol):
    """A synchronous DB-API cursor with pyformat parameters (e.g. Django's cursor)."""

    def execute(self, sql: str, params: Any = ..., /) -> object: ...

    def fetchall(self) -> Sequence[Any]: ...


# What record_usage/cancel_usage accept. Sync ones return the result, async ones an awaitable,
# so a type checker tells `await` apart without a union the caller has to narrow.
SyncConnection: TypeAlias = (
    "sqlalchemy.orm.Session | sqlalchemy.engine.Connection"
    " | psycopg.Connection[Any] | psycopg.Cursor[Any] | DBAPICursor"
)
AsyncConnection: TypeAlias = (
    "sqlalchemy.ext.asyncio.AsyncSession | sqlalchemy.ext.asyncio.AsyncConnection"
    " | psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any]"
)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Result of cancel_usage: `state`/`action` of the row after the request.

    state 'cancelled': Stripe cannot have counted it, done. action 'cancel' with state 'pending':
    the relay will send a meter event adjustment. state 'in_flight', or action 'report' with
    state 'pending' (the last call's outcome is unknown): the relay first resolves the report
    with the same key, then cancels it if Stripe counted it.
    """

    id: int
    identifier: str
    state: str
    action: str


@overload
def record_usage(
    conn: SyncConnection,
    *,
    event_name: str,
    customer: str,
    value: int | Decimal | str,
    identifier: str,
    timestamp: datetime | None = None,
    dimensions: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    stripe_account: str | None = None,
    notify: bool = True,
) -> RecordedUsage: ...


@overload
def record_usage(
    conn: AsyncConnection,
    *,
    event_name: str,
    customer: str,
    value: int | Decimal | str,
    identifier: str,
    timestamp: datetime | None = None,
    dimensions: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    stripe_account: str | None = None,
    notify: bool = True,
) -> Awaitable[RecordedUsage]: ...


def record_usage(
    conn: SyncConnection | AsyncConnection,
    *,
    event_name: str,
    customer: str,
    value: int | Decimal | str,
    identifier: str,
    timestamp: datetime | None = None,
    dimensions: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
    stripe_account: str | None = None,
    notify: bool = True,
) -> RecordedUsage | Awaitable[RecordedUsage]:
    """Write one usage fact inside the caller's transaction (never commits).

    `identifier` must be deterministic for the business fact (e.g. the request id): recording the
    same fact twice returns the existing row; a different fact under the same identifier raises
    IdentifierConflict and writes nothing. `timestamp` (default: now) is when the usage
    happened. `metadata` is stored for operators and never sent to Stripe. `notify` sends the
    relay a coalesced wake-up hint at commit.
    """
    fact = validate.usage_fact(
        event_name=event_name,
        customer=customer,
        value=value,
        identifier=identifier,
        timestamp=timestamp,
        dimensions=dimensions,
        metadata=metadata,
        stripe_account_id=stripe_account,
    )
    return run(conn, _record_steps(fact, notify))


@overload
def record_usage_many(
    conn: SyncConnection, facts: Iterable[Mapping[str, Any]], *, notify: bool = True
) -> list[RecordedUsage]: ...


@overload
def record_usage_many(
    conn: AsyncConnection, facts: Iterable[Mapping[str, Any]], *, notify: bool = True
) -> Awaitable[list[RecordedUsage]]: ...


def record_usage_many(
    conn: SyncConnection | AsyncConnection,
    facts: Iterable[Mapping[str, Any]],
    *,
    notify: bool = True,
) -> list[RecordedUsage] | Awaitable[list[RecordedUsage]]:
    """Write many usage facts inside the caller's transaction in one round trip (never commits).

    Each fact is a mapping of record_usage's keyword arguments (event_name, customer, value,
    identifier, and optionally timestamp, dimensions, metadata, stripe_account), under the same
    rules. Returns one RecordedUsage per fact, in order (`created` False for a replay, also of
    an earlier fact of the same batch). All or nothing: if any fact is refused, BatchRefused
    lists every refused fact (index, field, code), nothing is written and the caller's
    transaction stays usable.
    """
    checked = batch.validate_batch(facts)
    return run(conn, batch.record_steps(checked, notify))


@overload
def cancel_usage(conn: SyncConnection, *, identifier: str) -> CancelRequest: ...


@overload
def cancel_usage(conn: AsyncConnection, *, identifier: str) -> Awaitable[CancelRequest]: ...


def cancel_usage(
    conn: SyncConnection | AsyncConnection, *, identifier: str
) -> CancelRequest | Awaitable[CancelRequest]:
    """Cancel a recorded usage fact inside the caller's transaction (never commits).

    If Stripe cannot have counted it yet, the row is cancelled at once; otherwise the relay sends
    a meter event adjustment (Stripe accepts cancellations within 24 hours of receipt).
    In a REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates the relay's claim
    of the row it raises a serialization failure (SQLSTATE 40001), as for any concurrent
    update: retry the transaction, and the retry sees the report in flight.
    """
    validate.printable_text("identifier", identifier)
    return run(conn, _cancel_steps(identifier))


def _record_steps(fact: validate.UsageFact, notify: bool) -> Steps[RecordedUsage]:
    params = {
        "identifier": fact.identifier,
        "event_name": fact.event_name,
        "customer": fact.customer,
        "value": fact.value,
        "dimensions": _json(fact.dimensions),
        "metadata": fact.metadata_json,
        "occurred_at": fact.occurred_at,
        "stripe_account": fact.stripe_account,
        "notify": notify,
        "trace_context": current_traceparent(),
        **validate.WINDOW_PARAMS,
    }
    rows = yield Query(_SQL["record_usage"], params)
    new_id, refusal = rows[0]
    if refusal:
        raise validate.window_refusal(refusal)
    if new_id is not None:
        return RecordedUsage(id=new_id, identifier=fact.identifier, created=True)
    rows = yield Query(_SQL["recorded_usage"], {"identifier": fact.identifier})
    if not rows:  # deleted concurrently between the two statements: let the caller retry
        raise IdentifierConflict(fact.identifier, ["state (row vanished concurrently)"])
    differences = stored_differences(fact, rows[0])
    if differences:
        raise IdentifierConflict(fact.identifier, differences)
    return RecordedUsage(id=rows[0][0], identifier=fact.identifier, created=False)


def _cancel_steps(identifier: str) -> Steps[CancelRequest]:
    rows = yield Query(_SQL["cancel_usage"], {"identifier": identifier})
    if not rows:
        raise UnknownIdentifier(identifier)
    row_id, state, action = rows[0]
    return CancelRequest(id=row_id, identifier=identifier, state=state, action=action)


def _json(data: dict[str, str]) -> str:
    return json.dumps(data, separators=(",", ":"))
