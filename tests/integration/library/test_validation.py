"""Each validation rule, enforced three ways: by record_usage in Python, by the table's CHECK
constraints on a raw INSERT, and by the SQL function outbox_record_usage(). Every refusal by
record_usage is InvalidUsage(field, code), writes nothing and leaves the transaction usable."""

import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import outbox
from outbox import rules
from tests.helpers import outbox_count

NOW = datetime.now(UTC)


def nested(depth: int) -> dict[str, Any]:
    """{"a": {"a": ... {}}} with `depth` objects, built without recursion."""
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


UNSTORABLE = "data"  # SQL cannot even hold the input: the driver or the parser refuses it
# (case id, field overrides, python error code, how SQL refuses it: the constraint's name,
# UNSTORABLE, or None when the rule only exists at the Python API level: SQL has no such type or
# reads the literal its own way)
CASES: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("empty identifier", {"identifier": ""}, "invalid_text", "identifier_valid"),
    ("long identifier", {"identifier": "x" * 101}, "invalid_text", "identifier_valid"),
    ("control char identifier", {"identifier": "a\nb"}, "invalid_text", "identifier_valid"),
    ("non-ascii identifier", {"identifier": "caf\u00e9"}, "invalid_text", "identifier_valid"),
    ("empty event name", {"event_name": ""}, "invalid_text", "event_name_valid"),
    ("long event name", {"event_name": "e" * 101}, "invalid_text", "event_name_valid"),
    ("customer with space", {"customer": "cus 1"}, "invalid_customer", "customer_valid"),
    ("empty customer", {"customer": ""}, "invalid_customer", "customer_valid"),
    ("decimal value", {"value": Decimal("1.5")}, "not_whole", "value_valid"),
    ("decimal string", {"value": "2.25"}, "not_whole", "value_valid"),
    ("negative value", {"value": -1}, "negative", "value_valid"),
    ("16 digits", {"value": 10**15}, "too_many_digits", "value_valid"),
    ("NaN", {"value": Decimal("NaN")}, "invalid_number", "value_valid"),
    ("Infinity", {"value": "Infinity"}, "invalid_number", "value_valid"),
    ("float", {"value": 1.0}, "invalid_type", None),
    ("bool", {"value": True}, "invalid_type", None),
    ("garbage string", {"value": "12abc"}, "invalid_number", None),
    (
        "timestamp too old",
        {"timestamp": NOW - timedelta(days=36)},  # margins: NOW is import time
        "timestamp_too_far_in_past",
        "occurred_at_window",
    ),
    (
        "timestamp in future",
        {"timestamp": NOW + timedelta(hours=1)},
        "timestamp_in_future",
        "occurred_at_window",
    ),
    ("naive timestamp", {"timestamp": datetime(2026, 1, 1)}, "naive_timestamp", None),
    ("dimension not str", {"dimensions": {"region": 1}}, "invalid_type", "dimensions_valid"),
    (
        "dimension shadows key",
        {"dimensions": {"stripe_customer_id": "cus_x"}},
        "reserved_key",
        "dimensions_valid",
    ),
    ("bad account", {"stripe_account": "cus_1"}, "invalid_account", "stripe_account_valid"),
    # Keys and values PostgreSQL's jsonb cannot store are refused before the insert (invariant 11).
    ("empty dimension key", {"dimensions": {"": "x"}}, "empty_key", "dimensions_valid"),
    ("NUL in dimension key", {"dimensions": {"a\x00": "x"}}, "invalid_character", UNSTORABLE),
    ("NUL in dimension value", {"dimensions": {"a": "\x00"}}, "invalid_character", UNSTORABLE),
    ("surrogate dimension key", {"dimensions": {"\ud800": "x"}}, "invalid_character", UNSTORABLE),
    ("surrogate dimension value", {"dimensions": {"a": "\udc00"}}, "invalid_character", UNSTORABLE),
    ("NUL in metadata key", {"metadata": {"k\x00": 1}}, "invalid_character", UNSTORABLE),
    ("NUL in metadata value", {"metadata": {"k": ["\x00"]}}, "invalid_character", UNSTORABLE),
    ("surrogate metadata key", {"metadata": {"\udfff": 1}}, "invalid_character", UNSTORABLE),
    ("surrogate metadata value", {"metadata": {"k": "\ud83d"}}, "invalid_character", UNSTORABLE),
    (
        "metadata 33 deep",
        {"metadata": nested(rules.METADATA_MAX_DEPTH + 1)},
        "too_deep",
        "metadata_valid",
    ),
    ("metadata 5000 deep", {"metadata": nested(5000)}, "too_deep", "metadata_valid"),
    (
        "metadata over 16 KiB",
        {"metadata": {"pad": "x" * (rules.METADATA_MAX_BYTES - 10)}},
        "too_large",
        "metadata_valid",
    ),
    ("metadata 20 MB", {"metadata": {"pad": "x" * 20_000_000}}, "too_large", "metadata_valid"),
    ("Arabic-Indic digits", {"value": "١٢"}, "invalid_number", UNSTORABLE),
    ("underscore digits", {"value": "1_000"}, "invalid_number", None),  # PostgreSQL 16 reads it
]
IDS = [case[0] for case in CASES]


def fact(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_name": "api_calls",
        "customer": "cus_1",
        "value": 1,
        "identifier": "id-1",
        "timestamp": None,
        "dimensions": None,
        "metadata": None,
        "stripe_account": None,
    }
    base.update(overrides)
    return base


def to_json(data: Any) -> str:
    """JSON text as another language would send it, even 5,000 levels deep."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return json.dumps(data or {})
    finally:
        sys.setrecursionlimit(limit)


def sql_args(values: dict[str, Any]) -> dict[str, Any]:
    """The fact as SQL parameters: JSON as text, value as text so SQL parses it."""
    return {
        **values,
        "value": str(values["value"]),
        "dimensions": to_json(values["dimensions"]),
        "metadata": to_json(values["metadata"]),
    }


@pytest.mark.parametrize(("case", "overrides", "code", "constraint"), CASES, ids=IDS)
def test_python_refuses(case: str, overrides: dict, code: str, constraint: str | None, db) -> None:
    with pytest.raises(outbox.InvalidUsage) as err:
        outbox.record_usage(db, **fact(**overrides))
    assert err.value.code == code
    assert outbox_count(db) == 0


def test_every_refusal_leaves_the_transaction_usable(database_url: str, db) -> None:
    """All refusals in one transaction of the caller's: each raises, the transaction goes on."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT 1")  # the caller's transaction is open
        for case, overrides, code, _ in CASES:
            with pytest.raises(outbox.InvalidUsage) as err:
                outbox.record_usage(conn, **fact(**overrides))
            assert err.value.code == code, case
            assert conn.execute("SELECT 1").fetchone() == (1,), case
        outbox.record_usage(conn, **fact(identifier="after"))
        conn.commit()
    assert outbox_count(db) == outbox_count(db, "after") == 1


SQL_CASES = [case for case in CASES if case[3] not in (None, UNSTORABLE)]
SQL_IDS = [case[0] for case in SQL_CASES]
UNSTORABLE_CASES = [case for case in CASES if case[3] == UNSTORABLE]
RAW_INSERT = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, dimensions,"
    " metadata, occurred_at, stripe_account) VALUES (%(identifier)s, %(event_name)s,"
    " %(customer)s, %(value)s::numeric, %(dimensions)s::jsonb, %(metadata)s::jsonb,"
    " coalesce(%(timestamp)s, now()), %(stripe_account)s)"
)
SQL_FUNCTION = (
    "SELECT outbox_record_usage(event_name => %(event_name)s, customer => %(customer)s,"
    " value => %(value)s::numeric, identifier => %(identifier)s,"
    " occurred_at => %(timestamp)s, dimensions => %(dimensions)s::jsonb,"
    " metadata => %(metadata)s::jsonb, stripe_account => %(stripe_account)s)"
)


@pytest.mark.parametrize(("case", "overrides", "code", "constraint"), SQL_CASES, ids=SQL_IDS)
def test_raw_insert_refused_by_constraint(
    case: str, overrides: dict, code: str, constraint: str, db
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(RAW_INSERT, sql_args(fact(**overrides)))
    assert err.value.diag.constraint_name == f"meter_event_outbox_{constraint}"
    assert outbox_count(db) == 0


@pytest.mark.parametrize(("case", "overrides", "code", "constraint"), SQL_CASES, ids=SQL_IDS)
def test_sql_function_refuses(case: str, overrides: dict, code: str, constraint: str, db) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(SQL_FUNCTION, sql_args(fact(**overrides)))
    assert err.value.diag.constraint_name == f"meter_event_outbox_{constraint}"
    assert outbox_count(db) == 0


@pytest.mark.parametrize("statement", [RAW_INSERT, SQL_FUNCTION], ids=["insert", "function"])
@pytest.mark.parametrize(
    ("case", "overrides", "code", "constraint"),
    UNSTORABLE_CASES,
    ids=[case[0] for case in UNSTORABLE_CASES],
)
def test_sql_cannot_store_what_python_refuses_as_unstorable(
    statement: str, case: str, overrides: dict, code: str, constraint: str, db
) -> None:
    """NUL and lone surrogates have no PostgreSQL text form; "١٢" is no numeric literal."""
    with pytest.raises(psycopg.DataError):
        db.execute(statement, sql_args(fact(**overrides)))
    assert outbox_count(db) == 0


def test_good_fact_accepted_by_all_three(db) -> None:
    when = NOW - timedelta(days=34)
    outbox.record_usage(db, **fact(identifier="py", value="42", timestamp=when))
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, occurred_at)"
        " VALUES ('raw', 'api_calls', 'cus_1', 42, %s)",
        (when,),
    )
    db.execute(
        "SELECT outbox_record_usage('api_calls', 'cus_1', 42, 'fn', %s, '{\"tier\": \"a\"}')",
        (when,),
    )
    payloads = db.execute("SELECT o.payload FROM meter_event_outbox o ORDER BY id").fetchall()
    assert [p[0]["value"] for p in payloads] == ["42", "42", "42"]
    assert payloads[2][0] == {"stripe_customer_id": "cus_1", "value": "42", "tier": "a"}


def test_sql_function_replay_and_conflict(db) -> None:
    first = db.execute("SELECT outbox_record_usage('api_calls', 'cus_1', 5, 'k')").fetchone()
    again = db.execute("SELECT outbox_record_usage('api_calls', 'cus_1', 5, 'k')").fetchone()
    assert first == again
    with pytest.raises(psycopg.errors.UniqueViolation, match="identifier conflict"):
        db.execute("SELECT outbox_record_usage('api_calls', 'cus_1', 6, 'k')")
    assert db.execute("SELECT value FROM meter_event_outbox").fetchall() == [(Decimal(5),)]


def test_value_string_forms_are_normalised(db) -> None:
    outbox.record_usage(db, **fact(identifier="a", value=" 1e3 "))
    outbox.record_usage(db, **fact(identifier="b", value=Decimal("7.000")))
    got = db.execute("SELECT value, o.payload->>'value' FROM meter_event_outbox o ORDER BY id")
    assert got.fetchall() == [(Decimal(1000), "1000"), (Decimal(7), "7")]
