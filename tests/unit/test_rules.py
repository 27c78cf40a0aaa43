"""The usage rules of outbox.rules and outbox.validate, without PostgreSQL: pure functions with
an injected clock. The same constants are tried against the schema in test_rules_schema.py."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import outbox
from outbox import rules, validate
from relay.core.rows import Claimed
from relay.stripe.policy import CLOCK_MARGIN, local_refusal
from tests.unit.rows import claimed

NOW = datetime(2026, 3, 29, 12, tzinfo=UTC)  # just after a DST change: hours, not days
SECOND = timedelta(seconds=1)
TICK = timedelta(microseconds=1)  # PostgreSQL's resolution


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (-rules.MAX_PAST - TICK, "timestamp_too_far_in_past"),
        (-rules.MAX_PAST, None),
        (timedelta(0), None),
        (rules.MAX_FUTURE, None),
        (rules.MAX_FUTURE + TICK, "timestamp_in_future"),
    ],
)
def test_window_is_inclusive_at_both_ends(offset: timedelta, code: str | None) -> None:
    problem = rules.window_problem(NOW + offset, NOW)
    assert (problem.code if problem else None) == code


def test_window_is_absolute_hours() -> None:
    assert timedelta(hours=840) == rules.MAX_PAST
    assert timedelta(minutes=5) == rules.MAX_FUTURE


def test_margin_narrows_both_ends() -> None:
    margin = timedelta(seconds=60)
    assert rules.window_problem(NOW - rules.MAX_PAST + margin - TICK, NOW, margin)
    assert rules.window_problem(NOW - rules.MAX_PAST + margin, NOW, margin) is None
    assert rules.window_problem(NOW + rules.MAX_FUTURE - margin, NOW, margin) is None
    assert rules.window_problem(NOW + rules.MAX_FUTURE - margin + TICK, NOW, margin)
    assert rules.earliest_send(NOW, margin) == NOW - rules.MAX_FUTURE + margin


def test_library_judges_no_window_on_the_app_clock() -> None:
    """One clock (invariant 11): the window is the database's to judge, at insert time.

    A timestamp a year away passes Python validation; the insert refuses it (see
    test_one_clock.py). The library's own clock never decides.
    """
    far = datetime.now(UTC) + timedelta(days=365)
    fact = validate.usage_fact(
        event_name="e", customer="cus_1", value=1, identifier="i", timestamp=far
    )
    assert fact.occurred_at == far


def _claimed(occurred_at: datetime) -> Claimed:
    return claimed(
        identifier="i",
        event_name="e",
        payload_json="{}",
        occurred_at=occurred_at,
        first_attempt_at=NOW,
        created_at=NOW,
    )


@pytest.mark.parametrize(
    ("offset", "state", "code"),
    [
        (-rules.MAX_PAST + CLOCK_MARGIN - TICK, "failed", "timestamp_too_far_in_past"),
        (-rules.MAX_PAST + CLOCK_MARGIN, None, None),
        (rules.MAX_FUTURE - CLOCK_MARGIN, None, None),
        (rules.MAX_FUTURE - CLOCK_MARGIN + SECOND, "pending", "timestamp_in_future"),
    ],
)
def test_relay_pre_send_check_is_the_same_rule_narrowed_by_its_margin(
    offset: timedelta, state: str | None, code: str | None
) -> None:
    outcome = local_refusal(_claimed(NOW + offset), NOW, dedup_window=timedelta(days=30))
    assert (outcome.state if outcome else None, outcome.code if outcome else None) == (state, code)


def test_relay_waits_exactly_until_the_row_enters_the_window() -> None:
    outcome = local_refusal(_claimed(NOW + rules.MAX_FUTURE), NOW, timedelta(days=30))
    assert outcome is not None
    assert outcome.delay == CLOCK_MARGIN.total_seconds() + 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Decimal(0)),
        (10**15 - 1, Decimal(999_999_999_999_999)),
        ("42", Decimal(42)),
        (" \t7\n", Decimal(7)),
        ("+1e3", Decimal(1000)),
        ("5.", Decimal(5)),
        ("7.000", Decimal(7)),
        (Decimal("-0"), Decimal(0)),
    ],
)
def test_values_accepted(value: Any, expected: Decimal) -> None:
    assert validate.whole_value(value) == expected


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("١٢", "invalid_number"),  # Arabic-Indic digits: Decimal() reads 12
        ("1_000", "invalid_number"),  # Decimal() reads 1000
        ("１２", "invalid_number"),  # fullwidth digits
        ("\u20037", "invalid_number"),  # non-ASCII whitespace
        ("NaN", "invalid_number"),
        ("Infinity", "invalid_number"),
        ("", "invalid_number"),
        ("0x10", "invalid_number"),
        ("1e99999999999999999999999", "invalid_number"),  # Decimal() raised InvalidOperation
        (Decimal("NaN"), "invalid_number"),
        (Decimal("sNaN"), "invalid_number"),
        (10**15, "too_many_digits"),
        ("1e15", "too_many_digits"),
        (-1, "negative"),
        ("0.5", "not_whole"),
        (1.0, "invalid_type"),
        (True, "invalid_type"),
        (None, "invalid_type"),
    ],
)
def test_values_refused(value: Any, code: str) -> None:
    with pytest.raises(outbox.InvalidUsage) as err:
        validate.whole_value(value)
    assert (err.value.field, err.value.code) == ("value", code)


@pytest.mark.parametrize(
    ("field", "text", "max_length", "ok"),
    [
        ("identifier", "x" * rules.IDENTIFIER_MAX_LENGTH, rules.IDENTIFIER_MAX_LENGTH, True),
        ("identifier", "x" * (rules.IDENTIFIER_MAX_LENGTH + 1), rules.IDENTIFIER_MAX_LENGTH, False),
        ("event_name", "a b~", rules.EVENT_NAME_MAX_LENGTH, True),
        ("event_name", "a\x00b", rules.EVENT_NAME_MAX_LENGTH, False),
        ("event_name", "", rules.EVENT_NAME_MAX_LENGTH, False),
        ("event_name", "é", rules.EVENT_NAME_MAX_LENGTH, False),
    ],
)
def test_text_rules(field: str, text: str, max_length: int, ok: bool) -> None:
    if ok:
        assert validate.printable_text(field, text, max_length) == text
    else:
        with pytest.raises(outbox.InvalidUsage, match=field):
            validate.printable_text(field, text, max_length)


def test_customer_and_account_lengths() -> None:
    assert rules.customer_problem("c" * rules.CUSTOMER_MAX_LENGTH) is None
    assert rules.customer_problem("c" * (rules.CUSTOMER_MAX_LENGTH + 1))
    assert rules.customer_problem("cus 1")
    assert rules.account_problem("acct_" + "A" * 250) is None
    assert rules.account_problem("acct_" + "A" * 251)
    assert rules.account_problem("acct_1\n")


@pytest.mark.parametrize(
    ("dimensions", "code"),
    [
        ({"": "x"}, "empty_key"),
        ({"a\x00": "x"}, "invalid_character"),
        ({"a": "x\x00"}, "invalid_character"),
        ({"\ud800": "x"}, "invalid_character"),
        ({"a": "\udfff"}, "invalid_character"),
        ({"value": "1"}, "reserved_key"),
        ({"a": 1}, "invalid_type"),
        ({1: "a"}, "invalid_type"),
    ],
)
def test_dimensions_refused(dimensions: dict, code: str) -> None:
    with pytest.raises(outbox.InvalidUsage) as err:
        validate.dimensions_map(dimensions)
    assert (err.value.field, err.value.code) == ("dimensions", code)


def _nested(depth: int) -> dict[str, Any]:
    """{"a": {"a": ... {}}} with `depth` objects, built without recursion."""
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ({"k\x00": 1}, "invalid_character"),
        ({"k": ["\x00"]}, "invalid_character"),
        ({"\udc80": 1}, "invalid_character"),
        ({"k": {"x": "\ud83d"}}, "invalid_character"),
        (_nested(rules.METADATA_MAX_DEPTH + 1), "too_deep"),
        (_nested(5000), "too_deep"),
        ({"pad": "x" * rules.METADATA_MAX_BYTES}, "too_large"),
        ({"pad": "x" * 20_000_000}, "too_large"),
        ({"n": 10**5000}, "too_large"),
        ({"f": float("nan")}, "not_json"),
        ({"d": Decimal(1)}, "not_json"),
        ({1: "a"}, "not_json"),
        (["list"], "invalid_type"),
    ],
)
def test_metadata_refused(metadata: Any, code: str) -> None:
    with pytest.raises(outbox.InvalidUsage) as err:
        validate.metadata_json(metadata)
    assert (err.value.field, err.value.code) == ("metadata", code)


def test_metadata_cycle_is_too_deep_not_a_crash() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(outbox.InvalidUsage, match="nested"):
        validate.metadata_json(loop)


def test_metadata_at_the_limits_is_accepted() -> None:
    deepest = _nested(rules.METADATA_MAX_DEPTH)
    assert json.loads(validate.metadata_json(deepest)) == deepest
    # {"pad": "..."}: 2 braces + 5 for "pad" + 2 for ": " + 2 quotes = 11 bytes around the text
    biggest = {"pad": "x" * (rules.METADATA_MAX_BYTES - 11)}
    assert rules.metadata_size(biggest) == rules.METADATA_MAX_BYTES
    validate.metadata_json(biggest)


@pytest.mark.parametrize(
    ("metadata", "text"),
    [
        ({}, "{}"),
        ({"a": [1, 2.5, None, True, False]}, '{"a": [1, 2.5, null, true, false]}'),
        (
            {"f": 1e16, "g": 1.5e-07, "z": -0.0},
            '{"f": 10000000000000000, "g": 0.00000015, "z": 0.0}',
        ),
        ({"s": 'q"\\\n\x01é'}, '{"s": "q\\"\\\\\\n\\u0001é"}'),
    ],
)
def test_metadata_size_is_postgresql_text_length(metadata: dict, text: str) -> None:
    """The size counts bytes of the jsonb's text form, as the CHECK's octet_length does."""
    assert rules.metadata_size(metadata) == len(text.encode())
