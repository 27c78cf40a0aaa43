"""The query registry (relay/db/queries.py) agrees with relay/db/queries.sql: every named query
is registered with the parameters its SQL uses, so a caller's parameters are checked by mypy
against what the statement really takes."""

from relay.db import queries


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
