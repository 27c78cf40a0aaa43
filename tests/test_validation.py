"""Each validation rule, enforced three ways: by record_usage in Python, by the table's CHECK
constraints on a raw INSERT, and by the SQL function outbox_record_usage()."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import outbox
from tests.helpers import outbox_count

NOW = datetime.now(UTC)

# (case id, field overrides, python error code, constraint that refuses it in SQL or None when
# the rule only exists at the Python API level because SQL has no such type)
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
        "stripe_account": None,
    }
    base.update(overrides)
    return base


def sql_args(values: dict[str, Any]) -> dict[str, Any]:
    """The fact as SQL parameters: dimensions as JSON text, value as text so SQL parses it."""
    return {
        **values,
        "value": str(values["value"]),
        "dimensions": json.dumps(values["dimensions"] or {}),
    }


@pytest.mark.parametrize(("case", "overrides", "code", "constraint"), CASES, ids=IDS)
def test_python_refuses(case: str, overrides: dict, code: str, constraint: str | None, db) -> None:
    with pytest.raises(outbox.InvalidUsage) as err:
        outbox.record_usage(db, **fact(**overrides))
    assert err.value.code == code
    assert outbox_count(db) == 0


SQL_CASES = [case for case in CASES if case[3] is not None]
SQL_IDS = [case[0] for case in SQL_CASES]


@pytest.mark.parametrize(("case", "overrides", "code", "constraint"), SQL_CASES, ids=SQL_IDS)
def test_raw_insert_refused_by_constraint(
    case: str, overrides: dict, code: str, constraint: str, db
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, dimensions,"
            " occurred_at, stripe_account) VALUES (%(identifier)s, %(event_name)s, %(customer)s,"
            " %(value)s::numeric, %(dimensions)s::jsonb, coalesce(%(timestamp)s, now()),"
            " %(stripe_account)s)",
            sql_args(fact(**overrides)),
        )
    assert err.value.diag.constraint_name == f"meter_event_outbox_{constraint}"
    assert outbox_count(db) == 0


@pytest.mark.parametrize(("case", "overrides", "code", "constraint"), SQL_CASES, ids=SQL_IDS)
def test_sql_function_refuses(case: str, overrides: dict, code: str, constraint: str, db) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(
            "SELECT outbox_record_usage(event_name => %(event_name)s, customer => %(customer)s,"
            " value => %(value)s::numeric, identifier => %(identifier)s,"
            " occurred_at => %(timestamp)s, dimensions => %(dimensions)s::jsonb,"
            " stripe_account => %(stripe_account)s)",
            sql_args(fact(**overrides)),
        )
    assert err.value.diag.constraint_name == f"meter_event_outbox_{constraint}"
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
    payloads = db.execute("SELECT payload FROM meter_event_outbox ORDER BY id").fetchall()
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
    got = db.execute("SELECT value, payload->>'value' FROM meter_event_outbox ORDER BY id")
    assert got.fetchall() == [(Decimal(1000), "1000"), (Decimal(7), "7")]
