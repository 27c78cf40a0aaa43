"""Validation of record_usage's arguments: the rules of outbox.rules, raised as InvalidUsage.

Everything that depends only on the arguments is checked here, before anything is sent to the
database, so a bad fact never reaches SQL and the caller's transaction stays usable. The one
rule that depends on a clock, the timestamp window, is judged by the database inside the insert
itself (see outbox/queries.sql, record_usage): the database's clock is the only clock.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from outbox import rules
from outbox.errors import InvalidUsage
from outbox.rules import Problem

# The window as the record_usage statement takes it: absolute seconds, like the CHECK's hours.
WINDOW_PARAMS = {
    "max_past": f"{rules.MAX_PAST.total_seconds():.0f} seconds",
    "max_future": f"{rules.MAX_FUTURE.total_seconds():.0f} seconds",
}


@dataclass(frozen=True, slots=True)
class UsageFact:
    """A validated usage fact, in the types the database expects."""

    event_name: str
    customer: str
    value: Decimal
    identifier: str
    occurred_at: datetime | None
    dimensions: dict[str, str]
    metadata_json: str
    stripe_account: str | None


def _check(field: str, problem: Problem | None) -> None:
    if problem is not None:
        raise InvalidUsage(field, problem.code, problem.message)


def _string(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidUsage(field, "invalid_type", f"must be a string, got {type(value).__name__}")
    return value


def printable_text(field: str, text: Any, max_length: int = rules.IDENTIFIER_MAX_LENGTH) -> str:
    """Identifier or event name: printable ASCII, as they travel in HTTP headers."""
    checked = _string(field, text)
    _check(field, rules.text_problem(checked, max_length))
    return checked


def customer_id(customer: Any) -> str:
    """The Stripe customer id."""
    text = customer if isinstance(customer, str) else ""  # same code as a malformed id
    _check("customer", rules.customer_problem(text))
    return text


def whole_value(value: Any) -> Decimal:
    """A whole, non-negative number of at most 15 digits, given as int, Decimal or string.

    Floats are refused: 0.1 + 0.2 style surprises have no place in billing. Strings must be
    ASCII decimal literals ("1_000" and "١٢" are refused: SQL and Stripe would not read them
    as Python does).
    """
    if isinstance(value, bool | float):
        raise InvalidUsage(
            "value",
            "invalid_type",
            f"must be int, Decimal or a numeric string, not {type(value).__name__}",
        )
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        parsed = rules.parse_number(value)
        if parsed is None:
            raise InvalidUsage("value", "invalid_number", "is not an ASCII decimal number")
        number = parsed
    else:
        raise InvalidUsage("value", "invalid_type", f"unsupported type {type(value).__name__}")
    _check("value", rules.value_problem(number))
    return number.quantize(Decimal(1))


def aware_timestamp(value: Any) -> datetime | None:
    """A timezone-aware datetime (its window is judged by the database, on its clock)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidUsage("timestamp", "invalid_type", "must be a timezone-aware datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidUsage("timestamp", "naive_timestamp", "must be timezone-aware")
    return value


def window_refusal(code: str) -> InvalidUsage:
    """The error for a timestamp the database judged outside the window (code from SQL)."""
    problem = rules.WINDOW_PROBLEMS[code]
    return InvalidUsage("timestamp", problem.code, problem.message)


def dimensions_map(dimensions: Any) -> dict[str, str]:
    """String-to-string meter dimensions that do not shadow the customer or value keys."""
    if dimensions is None:
        return {}
    if not isinstance(dimensions, dict):
        raise InvalidUsage("dimensions", "invalid_type", "must be a dict of str to str")
    _check("dimensions", rules.dimensions_problem(dimensions))
    return dict(dimensions)


def metadata_json(metadata: Any) -> str:
    """Correlation metadata as JSON text (stored for operators, never sent to Stripe)."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise InvalidUsage("metadata", "invalid_type", "must be a dict")
    try:
        rules.metadata_size(metadata)
    except rules.Broken as exc:
        _check("metadata", exc.problem)
    # Depth and types are checked above, so this cannot recurse too deep or meet a stranger.
    return json.dumps(metadata, allow_nan=False)


def stripe_account(account: Any) -> str | None:
    """A Connect account id (acct_...), or None for the platform account."""
    if account is None:
        return None
    text = account if isinstance(account, str) else ""
    _check("stripe_account", rules.account_problem(text))
    return text


def usage_fact(
    *,
    event_name: Any,
    customer: Any,
    value: Any,
    identifier: Any,
    timestamp: Any = None,
    dimensions: Any = None,
    metadata: Any = None,
    stripe_account_id: Any = None,
) -> UsageFact:
    """Validate every argument of record_usage, raising InvalidUsage on the first bad one."""
    return UsageFact(
        event_name=printable_text("event_name", event_name, rules.EVENT_NAME_MAX_LENGTH),
        customer=customer_id(customer),
        value=whole_value(value),
        identifier=printable_text("identifier", identifier),
        occurred_at=aware_timestamp(timestamp),
        dimensions=dimensions_map(dimensions),
        metadata_json=metadata_json(metadata),
        stripe_account=stripe_account(stripe_account_id),
    )
