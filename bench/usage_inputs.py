"""Generated usage facts, recorded the three ways the outbox offers, judged side by side.

The three ways: outbox.record_usage (Python), the SQL function outbox_record_usage() and a plain
INSERT (the table's CHECKs). They must accept and refuse the same facts, and record_usage must
refuse only with InvalidUsage and leave the caller's transaction usable. Shared by the bounded
property test (tests/integration/library/test_input_agreement.py) and the long run
(bench/fuzz_inputs.py).

The strategies aim at the edges of outbox.rules: lengths around each limit, odd characters (NUL,
lone surrogates, non-ASCII digits, control characters), values around 15 digits, timestamps
around both ends of the window, metadata around its size and depth caps.
"""

import json
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from hypothesis import strategies as st

import outbox
from outbox import rules

ACCEPTED = "accepted"
REFUSED = "refused"

# One second on each side of a window edge is left out: the three statements of one example
# read the database's clock at slightly different instants.
EDGE_GAP_MS = 1000
_ODD = ["\x00", "\ud800", "\udfff", "\x7f", "\n", "\t", " ", "é", "€", "😀", "١", "_", '"', "\\"]
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_ANY_CHAR = st.one_of(_PRINTABLE, _PRINTABLE, st.sampled_from(_ODD), st.characters())


def _around(limit: int, char: str = "x") -> st.SearchStrategy[str]:
    return st.integers(max(limit - 2, 0), limit + 1).map(lambda n: char * n)


def _text(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(_PRINTABLE, min_size=1, max_size=12),
        st.text(_ANY_CHAR, max_size=12),
        _around(limit),
    )


_VALUE_STRINGS = st.one_of(
    st.integers(-10, 10**16).map(str),
    st.decimals(min_value=-(10**16), max_value=10**16, allow_nan=False).map(str),
    st.sampled_from(
        [
            "١٢",
            "１２",
            " 7 ",
            "\t8\n",
            "1e3",
            "+5",
            ".5",
            "5.",
            "1e",
            "",
            "NaN",
            "Infinity",
            "-inf",
            "0x10",
            "1 000",
            "٣",
            "1e14",
            "1e15",
            "999999999999999",
            "1000000000000000",
            "-0",
            "0e5",
            "7.000",
            "\u20037",
        ]
    ),
)
VALUES = st.one_of(
    st.integers(-10, 10**16),
    st.sampled_from([0, -1, 10**15 - 1, 10**15, 10**20]),
    st.decimals(min_value=-(10**16), max_value=10**16, allow_nan=False),
    st.sampled_from(
        [
            Decimal("NaN"),
            Decimal("Infinity"),
            Decimal("-0"),
            Decimal("1E+3"),
            Decimal("0E+5"),
            Decimal("999999999999999.000"),
            Decimal("1E+15"),
        ]
    ),
    _VALUE_STRINGS,
)


def _offset_ms(edge: timedelta) -> st.SearchStrategy[timedelta]:
    near = st.integers(-10_000, 10_000).filter(lambda ms: abs(ms) >= EDGE_GAP_MS)
    return near.map(lambda ms: edge + timedelta(milliseconds=ms))


OFFSETS = st.one_of(
    st.none(),
    _offset_ms(-rules.MAX_PAST),
    _offset_ms(rules.MAX_FUTURE),
    st.integers(-40 * 86400, 86400)
    .map(lambda s: timedelta(seconds=s))
    .filter(
        lambda d: all(
            abs(d - e) > timedelta(seconds=1) for e in (-rules.MAX_PAST, rules.MAX_FUTURE)
        )
    ),
)

_KEYS = st.one_of(
    st.text(_ANY_CHAR, max_size=6), st.sampled_from(["", "region", *rules.RESERVED_PAYLOAD_KEYS])
)
DIMENSIONS = st.one_of(
    st.none(),
    st.dictionaries(_KEYS, st.one_of(st.text(_ANY_CHAR, max_size=6), st.integers()), max_size=4),
)


def nested(depth: int, array: bool = False) -> dict[str, Any]:
    """A document of `depth` nested containers (the top-level object counts), no recursion."""
    doc: Any = [] if array else {}
    for _ in range(depth - 2):
        doc = [doc] if array else {"a": doc}
    return {"a": doc} if depth > 1 else {}


_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(),  # NaN and infinities included: JSON has neither
    st.sampled_from([-0.0, 1e16, 1.5e-07, 5e-324, 1e300]),
    st.text(_ANY_CHAR, max_size=10),
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(_ANY_CHAR, max_size=5), inner, max_size=4),
    ),
    max_leaves=12,
)
METADATA = st.one_of(
    st.none(),
    st.dictionaries(st.text(_ANY_CHAR, max_size=5), _JSON, max_size=4),
    # exactly around the size cap: {"pad": "x..."} is 11 bytes plus the padding
    st.integers(-2, 2).map(lambda d: {"pad": "x" * (rules.METADATA_MAX_BYTES - 11 + d)}),
    st.integers(-2, 2).map(lambda d: {"p": "é" * ((rules.METADATA_MAX_BYTES - 9) // 2 + d)}),
    st.tuples(
        st.integers(rules.METADATA_MAX_DEPTH - 2, rules.METADATA_MAX_DEPTH + 2), st.booleans()
    ).map(lambda t: nested(*t)),
)
ACCOUNTS = st.one_of(
    st.none(),
    st.sampled_from(["acct_1", "acct_" + "A" * 250, "acct_" + "A" * 251, "acct_", "cus_1"]),
    st.text(_ANY_CHAR, max_size=8).map(lambda t: "acct_" + t),
)


@dataclass(frozen=True)
class Fact:
    """One generated fact; `offset` is the timestamp relative to the database's clock."""

    event_name: str
    customer: str
    value: Any
    identifier: str
    offset: timedelta | None
    dimensions: dict[str, Any] | None
    metadata: dict[str, Any] | None
    stripe_account: str | None


FACTS = st.builds(
    Fact,
    event_name=st.one_of(st.just("api_calls"), _text(rules.EVENT_NAME_MAX_LENGTH)),
    customer=st.one_of(st.just("cus_1"), _text(rules.CUSTOMER_MAX_LENGTH)),
    value=VALUES,
    identifier=st.one_of(st.just("id-1"), _text(rules.IDENTIFIER_MAX_LENGTH)),
    offset=OFFSETS,
    dimensions=DIMENSIONS,
    metadata=METADATA,
    stripe_account=ACCOUNTS,
)


@dataclass(frozen=True)
class Verdicts:
    """What each way made of one fact: ACCEPTED, REFUSED or a crash description."""

    library: str
    function: str
    insert: str

    @property
    def agree(self) -> bool:
        return self.library == self.function == self.insert

    @property
    def crashes(self) -> list[str]:
        return [
            v for v in (self.library, self.function, self.insert) if v not in (ACCEPTED, REFUSED)
        ]


def judge(conn: psycopg.Connection, fact: Fact) -> Verdicts:
    """Record `fact` the three ways, each in a transaction rolled back afterwards."""
    return Verdicts(
        library=_library(conn, fact),
        function=_sql(conn, FUNCTION_SQL, fact),
        insert=_sql(conn, INSERT_SQL, fact),
    )


FUNCTION_SQL = (
    "SELECT outbox_record_usage(event_name => %(event_name)s, customer => %(customer)s,"
    " value => CAST(%(value)s AS numeric), identifier => %(identifier)s,"
    " occurred_at => %(timestamp)s, dimensions => CAST(%(dimensions)s AS jsonb),"
    " metadata => CAST(%(metadata)s AS jsonb), stripe_account => %(stripe_account)s)"
)
INSERT_SQL = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, dimensions,"
    " metadata, occurred_at, stripe_account) VALUES (%(identifier)s, %(event_name)s,"
    " %(customer)s, CAST(%(value)s AS numeric), CAST(%(dimensions)s AS jsonb),"
    " CAST(%(metadata)s AS jsonb), coalesce(%(timestamp)s, statement_timestamp()),"
    " %(stripe_account)s)"
)


def _timestamp(conn: psycopg.Connection, offset: timedelta | None) -> datetime | None:
    if offset is None:
        return None
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0] + offset


def _crash(exc: BaseException) -> str:
    return f"crash: {type(exc).__name__}: {exc}"[:300]


def _library(conn: psycopg.Connection, fact: Fact) -> str:
    try:
        outbox.record_usage(
            conn,
            event_name=fact.event_name,
            customer=fact.customer,
            value=fact.value,
            identifier=fact.identifier,
            timestamp=_timestamp(conn, fact.offset),
            dimensions=fact.dimensions,
            metadata=fact.metadata,
            stripe_account=fact.stripe_account,
        )
        verdict = ACCEPTED
    except outbox.InvalidUsage:
        verdict = REFUSED
    except Exception as exc:
        verdict = _crash(exc)
    try:  # the caller's transaction must still be usable
        conn.execute("SELECT 1")
    except psycopg.Error as exc:
        verdict = _crash(exc)
    conn.rollback()
    return verdict


def _sql(conn: psycopg.Connection, statement: str, fact: Fact) -> str:
    try:
        params = {
            "event_name": fact.event_name,
            "customer": fact.customer,
            "value": fact.value,
            "identifier": fact.identifier,
            "timestamp": _timestamp(conn, fact.offset),
            "dimensions": to_json(fact.dimensions),
            "metadata": to_json(fact.metadata),
            "stripe_account": fact.stripe_account,
        }
        conn.execute(statement, params)
        verdict = ACCEPTED
    # Data errors (bad literal, NUL, invalid JSON), CHECK violations, and text the driver
    # cannot encode (a lone surrogate): SQL's ways of refusing.
    except (psycopg.DataError, psycopg.IntegrityError, UnicodeEncodeError):
        verdict = REFUSED
    except Exception as exc:
        verdict = _crash(exc)
    conn.rollback()
    return verdict


def to_json(data: Any) -> str:
    """JSON text as another language would send it (deep documents included)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return json.dumps(data or {})
    finally:
        sys.setrecursionlimit(limit)
