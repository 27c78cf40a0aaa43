"""Meter event validation rules shared by the v1 endpoint and the v2 stream.

The same rule is a synchronous 400 on v1 and an asynchronous error report on the stream,
so the checks return `EventProblem`s and the callers decide how to surface them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.emulator import errors
from relay.emulator.config import EmulatorConfig, Meter
from relay.emulator.ledger import Number

_NUMBER = re.compile(r"^([+-]?)(\d+)(?:\.(\d+))?$")


@dataclass
class EventProblem(Exception):
    """Why one event is invalid: an error-report `code`, a message and the v1 `param`."""

    code: str
    message: str
    param: str | None = None


def parse_value(raw: object, config: EmulatorConfig, param: str = "payload[value]") -> Number:
    """Parse a meter value: a whole number with at most 15 significant digits.

    Negative and decimal values are UNCERTAIN in Stripe's docs; they are rejected unless
    `allow_negative_values` / `allow_decimal_values` is set (the safe assumption for a relay:
    never rely on Stripe accepting them).
    """
    match = _NUMBER.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise EventProblem(errors.INVALID_VALUE, f"Invalid value: {raw!r} is not a number.", param)
    sign, whole, fraction = match.groups()
    digits = (whole + (fraction or "")).lstrip("0")
    if len(digits) > config.max_value_digits:
        raise EventProblem(
            errors.VALUE_TOO_MANY_DIGITS,
            f"Value {raw} has more than {config.max_value_digits} significant digits.",
            param,
        )
    if fraction is not None and not config.allow_decimal_values:
        raise EventProblem(errors.INVALID_VALUE, f"Value {raw} must be a whole number.", param)
    negative = sign == "-" and bool(digits)
    if negative and not config.allow_negative_values:
        raise EventProblem(errors.INVALID_VALUE, f"Value {raw} must not be negative.", param)
    if fraction is None:
        return int(match.string)
    return float(match.string)


def check_timestamp(timestamp: float, now: float, config: EmulatorConfig) -> None:
    """Events must be within the past 35 days and at most 5 minutes in the future.

    The window's defaults come from outbox.rules (the config can widen or narrow it for tests);
    both ends are inclusive, as in outbox.rules.window_problem.
    """
    if timestamp < now - config.timestamp_past_seconds:
        raise EventProblem(
            errors.TIMESTAMP_TOO_FAR_IN_PAST,
            "Timestamp must be within the past 35 calendar days.",
            "timestamp",
        )
    if timestamp > now + config.timestamp_future_seconds:
        raise EventProblem(
            errors.TIMESTAMP_IN_FUTURE,
            "Timestamp must not be more than 5 minutes in the future.",
            "timestamp",
        )


@dataclass
class CustomerDirectory:
    """Known customers: an explicit set, optionally plus "anything starting with cus_"."""

    known: set[str] = field(default_factory=set)
    any_cus_prefix: bool = True

    @classmethod
    def from_config(cls, customers: Iterable[str] | None) -> CustomerDirectory:
        if customers is None:
            return cls(set(), any_cus_prefix=True)
        return cls(set(customers), any_cus_prefix=False)

    def exists(self, customer: str) -> bool:
        return customer in self.known or (
            self.any_cus_prefix and customer.startswith("cus_") and len(customer) > 4
        )


def deferred_problem(
    meter: Meter | None,
    event_name: str,
    payload: dict[str, str],
    customers: CustomerDirectory,
) -> EventProblem | None:
    """The checks Stripe runs AFTER accepting an event (they become error reports).

    A missing value key is reported as `meter_event_invalid_value` (emulator choice: Stripe
    documents no dedicated code for it). Count meters need no value.
    """
    if meter is None:
        return EventProblem(errors.NO_METER, f"No active meter was found for event {event_name}.")
    if not meter.active:
        return EventProblem(errors.ARCHIVED_METER, f"Meter {meter.id} is inactive.")
    customer = payload.get(meter.customer_key)
    if not customer:
        return EventProblem(
            errors.NO_CUSTOMER_DEFINED,
            f"Payload is missing the customer mapping key {meter.customer_key}.",
        )
    if not customers.exists(customer):
        return EventProblem(errors.CUSTOMER_NOT_FOUND, f"Customer {customer} was not found.")
    if meter.aggregation != "count" and meter.value_key not in payload:
        return EventProblem(
            errors.INVALID_VALUE, f"Payload is missing the value key {meter.value_key}."
        )
    return None
