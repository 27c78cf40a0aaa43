"""The query registry (relay/db/queries.py) agrees with relay/db/queries.sql: every named query
is registered with the parameters its SQL uses, so a caller's parameters are checked by mypy
against what the statement really takes."""

import pytest

from relay.core.vocabulary import State
from relay.db import queries
from relay.db.store import cancel_route


def test_every_query_is_registered_with_the_parameters_its_sql_uses() -> None:
    assert queries.check() == []


def test_a_parameter_the_registry_does_not_declare_is_reported(monkeypatch) -> None:
    sql = queries.QUERIES["row_state"] + " AND action = :action"
    monkeypatch.setitem(queries.QUERIES, "row_state", sql)
    assert queries.check() == ["row_state: declares ['identifier'], uses ['action', 'identifier']"]


def test_parameters_in_comments_and_casts_are_not_parameters() -> None:
    assert queries.parameters("walk") == {
        "after_customer",
        "after_event_name",
        "max_lanes",
        "batch_size",
        "exclusive",
    }


@pytest.mark.parametrize(
    ("state", "may_have_counted", "route"),
    [
        ("accepted", False, {"cancel_state": "pending", "cancel_now": True}),
        ("failed", True, {"cancel_state": "pending", "cancel_now": True}),
        ("failed", False, {"cancel_state": "cancelled", "cancel_now": False}),
        ("pending", True, {"cancel_state": "pending", "cancel_now": False}),
        ("pending", False, {"cancel_state": "pending", "cancel_now": False}),
    ],
)
def test_the_route_of_a_report_cancelled_in_flight_is_decided_once(
    state: State, may_have_counted: bool, route: dict[str, object]
) -> None:
    """Invariant 10: counted or maybe counted -> cancel it now; refused -> cancelled without a
    call; not known yet (a retry) -> the report is resolved first, never a cancel beside it."""
    assert cancel_route(state, may_have_counted) == route


def test_the_operator_queries_bench_passes_every_parameter_its_queries_use() -> None:
    """bench/operator_queries.py builds its parameters by hand (no mypy there): a parameter a
    query gained since failed the bench at run time ("query parameter missing")."""
    from datetime import UTC, datetime

    from bench.operator_queries import cases

    for label, name, params in cases(datetime.now(UTC)):
        assert set(params) == queries.parameters(name), label
