"""The table's CHECK constraints and outbox.rules define the same rules: each boundary of each
rule, taken from the Python constants, is tried on a plain INSERT (the last and first value on
either side). If a constant moves without the CHECK, one of these fails and names the rule."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from outbox import rules

T0 = datetime(2026, 3, 29, 12, tzinfo=UTC)  # just after DST changes: the window is in hours
TICK = timedelta(microseconds=1)
PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))
INSERT = (
    "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, dimensions,"
    " metadata, occurred_at, created_at, stripe_account) VALUES (%(identifier)s,"
    " %(event_name)s, %(customer)s, %(value)s, %(dimensions)s::jsonb, %(metadata)s::jsonb,"
    " %(occurred_at)s, %(created_at)s, %(stripe_account)s)"
)


def _nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


def _padded(size: int) -> dict[str, str]:
    """{"pad": "xx..."} of exactly `size` bytes as jsonb text (11 bytes around the padding)."""
    return {"pad": "x" * (size - 11)}


# (rule, overrides at the last accepted value, overrides at the first refused value, constraint)
BOUNDARIES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "window past",
        {"occurred_at": T0 - rules.MAX_PAST},
        {"occurred_at": T0 - rules.MAX_PAST - TICK},
        "occurred_at_window",
    ),
    (
        "window future",
        {"occurred_at": T0 + rules.MAX_FUTURE},
        {"occurred_at": T0 + rules.MAX_FUTURE + TICK},
        "occurred_at_window",
    ),
    (
        "value digits",
        {"value": rules.MAX_VALUE - 1},
        {"value": rules.MAX_VALUE},
        "value_valid",
    ),
    ("value sign", {"value": 0}, {"value": -1}, "value_valid"),
    (
        "identifier length",
        {"identifier": "i" * rules.IDENTIFIER_MAX_LENGTH},
        {"identifier": "i" * (rules.IDENTIFIER_MAX_LENGTH + 1)},
        "identifier_valid",
    ),
    (
        "identifier charset",
        {"identifier": PRINTABLE},
        {"identifier": "\x1f"},
        "identifier_valid",
    ),
    ("identifier charset high", {"identifier": "~"}, {"identifier": "\x7f"}, "identifier_valid"),
    (
        "event name length",
        {"event_name": "e" * rules.EVENT_NAME_MAX_LENGTH},
        {"event_name": "e" * (rules.EVENT_NAME_MAX_LENGTH + 1)},
        "event_name_valid",
    ),
    ("event name empty", {"event_name": "e"}, {"event_name": ""}, "event_name_valid"),
    (
        "customer length",
        {"customer": "c" * rules.CUSTOMER_MAX_LENGTH},
        {"customer": "c" * (rules.CUSTOMER_MAX_LENGTH + 1)},
        "customer_valid",
    ),
    ("customer charset", {"customer": PRINTABLE[1:]}, {"customer": "c d"}, "customer_valid"),
    (
        "account length",
        {"stripe_account": "acct_" + "A" * 250},
        {"stripe_account": "acct_" + "A" * 251},
        "stripe_account_valid",
    ),
    (
        "dimension key",
        {"dimensions": {"k": ""}},
        {"dimensions": {"": "v"}},
        "dimensions_valid",
    ),
    *(
        (
            f"reserved dimension {key}",
            {"dimensions": {key + "_": "v"}},
            {"dimensions": {key: "v"}},
            "dimensions_valid",
        )
        for key in sorted(rules.RESERVED_PAYLOAD_KEYS)
    ),
    (
        "metadata size",
        {"metadata": _padded(rules.METADATA_MAX_BYTES)},
        {"metadata": _padded(rules.METADATA_MAX_BYTES + 1)},
        "metadata_valid",
    ),
    (
        "metadata size, multibyte",
        {"metadata": {"pad": "é" * ((rules.METADATA_MAX_BYTES - 11) // 2)}},
        {"metadata": {"pad": "é" * ((rules.METADATA_MAX_BYTES - 11) // 2 + 1)}},
        "metadata_valid",
    ),
    (
        "metadata depth",
        {"metadata": _nested(rules.METADATA_MAX_DEPTH)},
        {"metadata": _nested(rules.METADATA_MAX_DEPTH + 1)},
        "metadata_valid",
    ),
    (
        "metadata depth, arrays",
        {"metadata": {"a": json.loads("[" * (rules.METADATA_MAX_DEPTH - 1) + "]" * 31)}},
        {"metadata": {"a": json.loads("[" * rules.METADATA_MAX_DEPTH + "]" * 32)}},
        "metadata_valid",
    ),
]


def row(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "identifier": "id-1",
        "event_name": "api_calls",
        "customer": "cus_1",
        "value": 1,
        "dimensions": {},
        "metadata": {},
        "occurred_at": T0,
        "created_at": T0,
        "stripe_account": None,
    }
    values.update(overrides)
    return {
        **values,
        "dimensions": json.dumps(values["dimensions"]),
        "metadata": json.dumps(values["metadata"]),
    }


@pytest.mark.parametrize(
    ("rule", "last_ok", "first_bad", "constraint"),
    BOUNDARIES,
    ids=[case[0] for case in BOUNDARIES],
)
def test_check_constraints_match_python_rules(
    rule: str, last_ok: dict, first_bad: dict, constraint: str, db: psycopg.Connection
) -> None:
    db.execute(INSERT, row(**last_ok))
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.execute(INSERT, row(**{"identifier": "id-2", **first_bad}))
    assert err.value.diag.constraint_name == f"meter_event_outbox_{constraint}"


def test_python_rules_agree_on_the_same_boundaries() -> None:
    """The same boundary values through outbox.rules: accepted, then refused."""
    assert rules.window_problem(T0 - rules.MAX_PAST, T0) is None
    assert rules.window_problem(T0 - rules.MAX_PAST - TICK, T0) is not None
    assert rules.metadata_size(_padded(rules.METADATA_MAX_BYTES)) == rules.METADATA_MAX_BYTES
    with pytest.raises(rules.Broken):
        rules.metadata_size(_nested(rules.METADATA_MAX_DEPTH + 1))
    rules.metadata_size(_nested(rules.METADATA_MAX_DEPTH))


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Paris", "America/New_York"])
def test_window_does_not_depend_on_the_session_time_zone(
    timezone: str, db: psycopg.Connection
) -> None:
    """840 hours whatever the session's zone (a '35 days' interval would move across DST)."""
    db.execute(f"SET TIME ZONE '{timezone}'")
    db.execute(INSERT, row(occurred_at=T0 - rules.MAX_PAST))
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(INSERT, row(identifier="id-2", occurred_at=T0 - rules.MAX_PAST - TICK))


def test_defaults_are_the_statement_instant(database_url: str) -> None:
    """created_at and occurred_at default to statement_timestamp(), not the transaction start."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT pg_sleep(0.05)")
        got = conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
            " VALUES ('d', 'e', 'cus_1', 1)"
            " RETURNING created_at = statement_timestamp(), occurred_at = created_at,"
            " created_at > now()"
        ).fetchone()
    assert got == (True, True, True)
