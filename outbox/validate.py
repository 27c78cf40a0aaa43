"""Validation of usage facts, mirroring Stripe's synchronous rules and the table's CHECKs.

Checking in Python first gives callers a precise exception instead of an aborted transaction;
the database constraints stay the last word for writers in other languages.
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from outbox.errors import InvalidUsage

MAX_PAST = timedelta(days=35)
MAX_FUTURE = timedelta(minutes=5)
MAX_VALUE = Decimal(10) ** 15  # Stripe rejects more than 15 significant digits
RESERVED_PAYLOAD_KEYS = frozenset({"stripe_customer_id", "value"})

_PRINTABLE = re.compile(r"[\x20-\x7e]{1,100}")
_CUSTOMER = re.compile(r"[\x21-\x7e]{1,255}")
_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]{1,250}")


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


def printable_text(field: str, text: Any) -> str:
    """1 to 100 ASCII printable characters: identifiers travel in HTTP headers."""
    if not isinstance(text, str):
        raise InvalidUsage(field, "invalid_type", f"must be a string, got {type(text).__name__}")
    if not _PRINTABLE.fullmatch(text):
        raise InvalidUsage(field, "invalid_text", "must be 1 to 100 printable ASCII characters")
    return text


def customer_id(customer: Any) -> str:
    """The Stripe customer id: 1 to 255 printable ASCII characters without spaces."""
    if not isinstance(customer, str) or not _CUSTOMER.fullmatch(customer):
        raise InvalidUsage(
            "customer", "invalid_customer", "must be 1 to 255 printable ASCII characters, no spaces"
        )
    return customer


def whole_value(value: Any) -> Decimal:
    """A whole, non-negative number of at most 15 digits, given as int, Decimal or string.

    Floats are refused: 0.1 + 0.2 style surprises have no place in billing.
    """
    if isinstance(value, bool | float):
        raise InvalidUsage(
            "value",
            "invalid_type",
            f"must be int, Decimal or a numeric string, not {type(value).__name__}",
        )
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal | str):
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise InvalidUsage("value", "invalid_number", f"{value!r} is not a number") from None
    else:
        raise InvalidUsage("value", "invalid_type", f"unsupported type {type(value).__name__}")
    if not number.is_finite():
        raise InvalidUsage("value", "invalid_number", "must be finite")
    if number != number.to_integral_value():
        raise InvalidUsage("value", "not_whole", "must be a whole number")
    if number < 0:
        raise InvalidUsage("value", "negative", "must not be negative")
    if number >= MAX_VALUE:
        raise InvalidUsage("value", "too_many_digits", "must have at most 15 digits")
    return number.quantize(Decimal(1))


def occurred_at(timestamp: Any, now: datetime | None = None) -> datetime | None:
    """Usage time within Stripe's window: at most 35 days old, at most 5 minutes ahead."""
    if timestamp is None:
        return None
    if not isinstance(timestamp, datetime):
        raise InvalidUsage("timestamp", "invalid_type", "must be a timezone-aware datetime")
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise InvalidUsage("timestamp", "naive_timestamp", "must be timezone-aware")
    now = now or datetime.now(UTC)
    if timestamp < now - MAX_PAST:
        raise InvalidUsage("timestamp", "timestamp_too_far_in_past", "is older than 35 days")
    if timestamp > now + MAX_FUTURE:
        raise InvalidUsage("timestamp", "timestamp_in_future", "is more than 5 minutes ahead")
    return timestamp


def dimensions_map(dimensions: Any) -> dict[str, str]:
    """String-to-string meter dimensions that do not shadow the customer or value keys."""
    if dimensions is None:
        return {}
    if not isinstance(dimensions, dict):
        raise InvalidUsage("dimensions", "invalid_type", "must be a dict of str to str")
    for key, val in dimensions.items():
        if not isinstance(key, str) or not isinstance(val, str) or not key:
            raise InvalidUsage("dimensions", "invalid_type", "keys and values must be strings")
        if key in RESERVED_PAYLOAD_KEYS:
            raise InvalidUsage("dimensions", "reserved_key", f"{key!r} is reserved by the meter")
    return dict(dimensions)


def metadata_json(metadata: Any) -> str:
    """Correlation metadata as JSON text (stored for operators, never sent to Stripe)."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise InvalidUsage("metadata", "invalid_type", "must be a dict")
    try:
        return json.dumps(metadata, allow_nan=False, default=_no_default)
    except (TypeError, ValueError) as exc:
        raise InvalidUsage("metadata", "not_json", str(exc)) from None


def _no_default(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def stripe_account(account: Any) -> str | None:
    """A Connect account id (acct_...), or None for the platform account."""
    if account is None:
        return None
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        raise InvalidUsage("stripe_account", "invalid_account", "must look like acct_...")
    return account


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
        event_name=printable_text("event_name", event_name),
        customer=customer_id(customer),
        value=whole_value(value),
        identifier=printable_text("identifier", identifier),
        occurred_at=occurred_at(timestamp),
        dimensions=dimensions_map(dimensions),
        metadata_json=metadata_json(metadata),
        stripe_account=stripe_account(stripe_account_id),
    )
