"""Every rule a usage fact must satisfy, defined once.

The library (outbox.validate), the relay's pre-send check (relay.stripe.policy) and the Stripe
emulator import these constants and predicates; the table's CHECK constraints (migrations
0001 and 0004) spell the same numbers in SQL and
tests/integration/library/test_rules_schema.py proves, boundary by boundary, that both sides
agree. Change a rule here and that test tells you which CHECK to move.

Two kinds of rules live here:
- Stripe's (what a meter event must look like): the time window, whole values of at most 15
  digits, identifier and event name length, the payload keys the meter reserves.
- Storage limits of our own: PostgreSQL text cannot hold NUL or lone surrogates, and metadata
  (never sent to Stripe) is capped so one runaway caller cannot bloat the hot table.

Predicates are pure (no clock, no I/O): they take `now` when time matters, so unit tests inject
it. They return a `Problem` (a stable code plus a message) or None; outbox.validate turns a
Problem into InvalidUsage, the relay into an outcome, the emulator into a Stripe error.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

# Stripe's timestamp window, as absolute durations (the CHECK says interval '840 hours', not
# '35 days': a day interval depends on the session's time zone around DST changes).
MAX_PAST = timedelta(hours=35 * 24)
MAX_FUTURE = timedelta(minutes=5)

MAX_VALUE_DIGITS = 15
MAX_VALUE = Decimal(10) ** MAX_VALUE_DIGITS  # exclusive: 999,999,999,999,999 is the largest

IDENTIFIER_MAX_LENGTH = 100
EVENT_NAME_MAX_LENGTH = 100
CUSTOMER_MAX_LENGTH = 255
# Identifiers and event names travel in HTTP headers and form fields: printable ASCII.
TEXT_CHARS = "\x20-\x7e"
# Customer ids: printable ASCII without the space.
CUSTOMER_CHARS = "\x21-\x7e"
ACCOUNT_PATTERN = r"acct_[A-Za-z0-9]{1,250}"

# Keys of the payload Stripe receives that the meter uses for customer and value.
RESERVED_PAYLOAD_KEYS = frozenset({"stripe_customer_id", "value"})

# Metadata: at most 16 KiB as PostgreSQL prints the jsonb (octet_length(metadata::text)), and
# at most 32 nested objects/arrays (the top-level object counts as 1).
METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 32

_TEXT = re.compile(f"[{TEXT_CHARS}]+")
_CUSTOMER = re.compile(f"[{CUSTOMER_CHARS}]+")
_ACCOUNT = re.compile(ACCOUNT_PATTERN)
# A decimal literal in ASCII only: Python's Decimal() would also take "1_000" and Arabic-Indic
# digits, which no other writer (SQL, Stripe) reads the same way. Surrounding ASCII whitespace
# is allowed, as PostgreSQL's numeric input allows it.
_NUMBER = re.compile(
    r"[ \t\n\r\f\v]*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t\n\r\f\v]*"
)
# Characters PostgreSQL text and jsonb cannot store: NUL and UTF-16 surrogates (a lone
# surrogate is not valid UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# jsonb's text form escapes these as a backslash plus one character (one byte more)...
_SHORT_ESCAPE = re.compile('["\\\\\b\f\n\r\t]')
# ...and the other control characters as \u00XX (five bytes more).
_CONTROL = re.compile("[\x00-\x07\x0b\x0e-\x1f]")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a value breaks a rule: `code` is stable for programs, `message` is for people."""

    code: str
    message: str


TOO_FAR_IN_PAST = Problem("timestamp_too_far_in_past", "is older than Stripe's 35-day window")
IN_FUTURE = Problem("timestamp_in_future", "is more than 5 minutes ahead")
WINDOW_PROBLEMS = {problem.code: problem for problem in (TOO_FAR_IN_PAST, IN_FUTURE)}


class Broken(ValueError):
    """Raised by metadata_size, which cannot return a Problem from deep inside its walk."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


_TOO_LARGE = Problem("too_large", f"must be at most {METADATA_MAX_BYTES} bytes as JSON")


def text_problem(text: str, max_length: int) -> Problem | None:
    """Identifier and event name: 1 to `max_length` printable ASCII characters."""
    if len(text) > max_length or not _TEXT.fullmatch(text):
        return Problem("invalid_text", f"must be 1 to {max_length} printable ASCII characters")
    return None


def customer_problem(customer: str) -> Problem | None:
    """Stripe customer id: 1 to 255 printable ASCII characters, no spaces."""
    if len(customer) > CUSTOMER_MAX_LENGTH or not _CUSTOMER.fullmatch(customer):
        return Problem(
            "invalid_customer",
            f"must be 1 to {CUSTOMER_MAX_LENGTH} printable ASCII characters, no spaces",
        )
    return None


def account_problem(account: str) -> Problem | None:
    """A Connect account id (acct_...)."""
    if not _ACCOUNT.fullmatch(account):
        return Problem("invalid_account", "must look like acct_ followed by letters and digits")
    return None


def parse_number(text: str) -> Decimal | None:
    """The Decimal written in `text` as an ASCII decimal literal, or None."""
    match = _NUMBER.fullmatch(text)
    if not match:
        return None
    try:
        return Decimal(match.group(1))
    except ArithmeticError:  # an exponent beyond what Decimal holds
        return None


def value_problem(number: Decimal) -> Problem | None:
    """A meter value: finite, whole, not negative, at most 15 digits."""
    if not number.is_finite():
        return Problem("invalid_number", "must be finite")
    try:
        whole = number == number.to_integral_value()
    except ArithmeticError:  # exponents beyond the decimal context's range
        return Problem("invalid_number", "exponent out of range")
    if not whole:
        return Problem("not_whole", "must be a whole number")
    if number < 0:
        return Problem("negative", "must not be negative")
    if number >= MAX_VALUE:
        return Problem("too_many_digits", f"must have at most {MAX_VALUE_DIGITS} digits")
    return None


def window_problem(
    occurred_at: datetime, now: datetime, margin: timedelta = timedelta(0)
) -> Problem | None:
    """Stripe's window: at most 35 days old, at most 5 minutes ahead of `now`.

    Both ends are inclusive, as in the CHECK. `margin` narrows the window at both ends: the relay
    uses it so a row is not refused by Stripe after clock skew and transit time.
    """
    earliest, latest = window_bounds(now, margin)
    if occurred_at < earliest:
        return TOO_FAR_IN_PAST
    if occurred_at > latest:
        return IN_FUTURE
    return None


def window_bounds(now: datetime, margin: timedelta = timedelta(0)) -> tuple[datetime, datetime]:
    """The earliest and latest valid timestamps at `now` (both inclusive): computed once for
    a whole call of rows by the relay, once per fact by `window_problem`."""
    return now - MAX_PAST + margin, now + MAX_FUTURE - margin


def earliest_send(occurred_at: datetime, margin: timedelta = timedelta(0)) -> datetime:
    """When a future-dated event enters Stripe's window (narrowed by `margin`)."""
    return occurred_at - MAX_FUTURE + margin


def storable_problem(text: str) -> Problem | None:
    """Text PostgreSQL can store: no NUL, no lone surrogate."""
    if _UNSTORABLE.search(text):
        return Problem("invalid_character", "must not contain NUL or lone surrogate characters")
    return None


def dimensions_problem(dimensions: dict[Any, Any]) -> Problem | None:
    """Meter dimensions: non-empty string keys, string values, no key the meter reserves."""
    for key, val in dimensions.items():
        if not isinstance(key, str) or not isinstance(val, str):
            return Problem("invalid_type", "keys and values must be strings")
        if not key:
            return Problem("empty_key", "keys must not be empty")
        problem = storable_problem(key) or storable_problem(val)
        if problem:
            return problem
        if key in RESERVED_PAYLOAD_KEYS:
            return Problem("reserved_key", f"{key!r} is reserved by the meter")
    return None


def metadata_size(metadata: Any) -> int:
    """Bytes of `metadata` as PostgreSQL prints it as jsonb, or raises Broken.

    Walks the document without recursion (so no RecursionError whatever the nesting) and stops
    as soon as the depth or size limit is passed.
    """
    size = 0
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        item, depth = stack.pop()
        size += _scalar_or_container_size(item, depth, stack)
        if size > METADATA_MAX_BYTES:
            raise Broken(_TOO_LARGE)
    return size


def _scalar_or_container_size(item: Any, depth: int, stack: list[tuple[Any, int]]) -> int:
    """Bytes `item` adds by itself; its children are pushed onto `stack`."""
    if isinstance(item, dict | list | tuple):
        if depth > METADATA_MAX_DEPTH:
            raise Broken(
                Problem("too_deep", f"must be nested at most {METADATA_MAX_DEPTH} levels deep")
            )
        if len(item) > METADATA_MAX_BYTES:  # every member takes at least one byte
            raise Broken(_TOO_LARGE)
        if isinstance(item, dict):
            for key, val in item.items():
                if not isinstance(key, str):
                    raise Broken(Problem("not_json", "object keys must be strings"))
                stack.append((val, depth + 1))
            # {"k": v, ...}: braces, `": "` per key plus the key itself, `, ` between members
            keys = sum(_string_size(key) + 2 for key in item)
            return 2 + keys + 2 * max(len(item) - 1, 0)
        stack.extend((val, depth + 1) for val in item)
        return 2 + 2 * max(len(item) - 1, 0)
    return _scalar_size(item)


def _scalar_size(item: Any) -> int:
    if item is None or item is True:
        return 4
    if item is False:
        return 5
    if isinstance(item, str):
        return _string_size(item)
    if isinstance(item, int):
        try:
            return len(str(item))
        except ValueError:  # more than 4300 digits: Python will not print it (nor json.dumps)
            raise Broken(_TOO_LARGE) from None
    if isinstance(item, float):
        return len(_float_text(item))
    raise Broken(Problem("not_json", f"{type(item).__name__} is not JSON serialisable"))


def _string_size(text: str) -> int:
    """Bytes of a JSON string as jsonb prints it: quotes, escapes, UTF-8."""
    if len(text) > METADATA_MAX_BYTES:
        raise Broken(_TOO_LARGE)
    problem = storable_problem(text)
    if problem:
        raise Broken(problem)
    escapes = len(_SHORT_ESCAPE.findall(text)) + 5 * len(_CONTROL.findall(text))
    return len(text.encode()) + 2 + escapes


def _float_text(number: float) -> str:
    """A float as jsonb prints it: numeric, no exponent (1e+16 -> 10000000000000000)."""
    if number != number or number in (float("inf"), float("-inf")):
        raise Broken(Problem("not_json", "NaN and Infinity are not JSON"))
    exact = Decimal(repr(number))
    return format(abs(exact) if exact == 0 else exact, "f")
