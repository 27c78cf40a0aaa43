"""Record billable usage for Stripe meters inside your own database transaction.

    import outbox
    with session.begin():
        session.add(order)
        outbox.record_usage(session, event_name="api_calls", customer="cus_123",
                            value=1, identifier=f"req-{request_id}")

The relay (`outbox-relay run`) reports committed rows to Stripe exactly once. Async
connections return an awaitable: `await outbox.record_usage(async_session, ...)`.
"""

import json
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from outbox import validate
from outbox.connections import Query, Steps, run
from outbox.errors import (
    IdentifierConflict,
    InvalidUsage,
    OutboxError,
    UnknownIdentifier,
    UnsupportedConnection,
)
from outbox.sqlfile import load

__all__ = [
    "CancelRequest",
    "IdentifierConflict",
    "InvalidUsage",
    "OutboxError",
    "RecordedUsage",
    "UnknownIdentifier",
    "UnsupportedConnection",
    "cancel_usage",
    "record_usage",
]

_SQL = load("outbox", "queries.sql")


@dataclass(frozen=True, slots=True)
class RecordedUsage:
    """The outbox row holding a usage fact; `created` is False for a replay."""

    id: int
    identifier: str
    created: bool


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


def record_usage(
    conn: Any,
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


def cancel_usage(conn: Any, *, identifier: str) -> CancelRequest | Awaitable[CancelRequest]:
    """Cancel a recorded usage fact inside the caller's transaction (never commits).

    If Stripe cannot have counted it yet, the row is cancelled at once; otherwise the relay sends
    a meter event adjustment (Stripe accepts cancellations within 24 hours of receipt).
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
    }
    rows = yield Query(_SQL["record_usage"], params)
    if rows:
        return RecordedUsage(id=rows[0][0], identifier=fact.identifier, created=True)
    rows = yield Query(_SQL["recorded_usage"], {"identifier": fact.identifier})
    if not rows:  # deleted concurrently between the two statements: let the caller retry
        raise IdentifierConflict(fact.identifier, ["state (row vanished concurrently)"])
    differences = _differences(fact, rows[0])
    if differences:
        raise IdentifierConflict(fact.identifier, differences)
    return RecordedUsage(id=rows[0][0], identifier=fact.identifier, created=False)


def _differences(fact: validate.UsageFact, row: tuple[Any, ...]) -> list[str]:
    """Fields of `fact` that differ from the stored row; an omitted timestamp matches any."""
    _, event_name, customer, value, dimensions, occurred_at, account = row
    if isinstance(dimensions, str):  # drivers that do not decode jsonb (asyncpg)
        dimensions = json.loads(dimensions)
    checks = {
        "event_name": event_name == fact.event_name,
        "customer": customer == fact.customer,
        "value": Decimal(value) == fact.value,
        "dimensions": dimensions == fact.dimensions,
        "timestamp": fact.occurred_at is None or occurred_at == fact.occurred_at,
        "stripe_account": account == fact.stripe_account,
    }
    return [name for name, same in checks.items() if not same]


def _cancel_steps(identifier: str) -> Steps[CancelRequest]:
    rows = yield Query(_SQL["cancel_usage"], {"identifier": identifier})
    if not rows:
        raise UnknownIdentifier(identifier)
    row_id, state, action = rows[0]
    return CancelRequest(id=row_id, identifier=identifier, state=state, action=action)


def _json(data: dict[str, str]) -> str:
    return json.dumps(data, separators=(",", ":"))
