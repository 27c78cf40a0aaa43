"""outbox_0031 on a database at outbox_0030: the due index's own predicate, built by the
migration or beforehand (CREATE INDEX CONCURRENTLY, as docs/migrations.md shows), and refused
when what was built beforehand is not that index."""

import psycopg
import pytest

from relay.db import migrate

PREDICATE = (
    "WHERE (state IN ('pending', 'in_flight')) IS TRUE"
    " AND (isfinite(available_at) OR NOT isfinite(available_at))"
)


def _due_index(url: str) -> str:
    with psycopg.connect(url) as db:
        found = db.execute(
            "SELECT pg_get_indexdef(c.oid) FROM pg_class c"
            " WHERE c.relname = 'meter_event_outbox_due'"
            " AND c.relnamespace = current_schema()::regnamespace"
        ).fetchone()
    assert found is not None
    return str(found[0])


def test_up_down_up_gives_the_index_its_own_predicate_and_takes_it_back(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    migrate.upgrade(url, "outbox_0030")
    before = _due_index(url)
    migrate.upgrade(url, "outbox_0031")
    assert "isfinite(available_at) OR (NOT isfinite(available_at))" in _due_index(url)
    migrate.downgrade(url, "outbox_0030")
    assert _due_index(url) == before
    migrate.upgrade(url, "outbox_0031")
    assert "isfinite" in _due_index(url)


def test_an_index_built_beforehand_concurrently_is_swapped_in(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url, "outbox_0030")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "CREATE INDEX CONCURRENTLY meter_event_outbox_due_timed ON meter_event_outbox"
            f" (available_at, id) {PREDICATE}"
        )
        (oid,) = db.execute("SELECT 'meter_event_outbox_due_timed'::regclass::oid").fetchone()
    migrate.upgrade(url, "outbox_0031")
    with psycopg.connect(url) as db:
        (now,) = db.execute("SELECT 'meter_event_outbox_due'::regclass::oid").fetchone()
    assert now == oid  # renamed, not built again


@pytest.mark.parametrize(
    "built",
    [
        "(available_at, id) WHERE state IN ('pending', 'in_flight')",  # the old predicate
        f"(available_at) {PREDICATE}",  # a column missing
        f"USING brin (available_at, id) {PREDICATE}",  # no order to scan
        f"(available_at, id) {PREDICATE} AND id > 0",  # fewer rows
    ],
    ids=["old-predicate", "wrong-columns", "brin", "narrower"],
)
def test_an_index_of_another_shape_built_beforehand_is_refused(
    empty_database_url: str, built: str
) -> None:
    """Taken as it is, it would become the due index and outbox_0031 would be recorded without
    what it is for."""
    url = empty_database_url
    migrate.upgrade(url, "outbox_0030")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE INDEX meter_event_outbox_due_timed ON meter_event_outbox {built}")
    with pytest.raises(Exception, match="is not the index outbox_0031 builds"):
        migrate.upgrade(url, "outbox_0031")
    assert migrate.current(url) == "outbox_0030"


def test_an_index_of_that_name_on_another_table_is_refused(empty_database_url: str) -> None:
    """Renamed, it would leave the outbox with no due index at all (the outbox's own is dropped
    first)."""
    url = empty_database_url
    migrate.upgrade(url, "outbox_0030")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE meter_event_outbox_copy (LIKE meter_event_outbox)")
        db.execute(
            "CREATE INDEX meter_event_outbox_due_timed ON meter_event_outbox_copy"
            f" (available_at, id) {PREDICATE}"
        )
    with pytest.raises(Exception, match="is not the index outbox_0031 builds"):
        migrate.upgrade(url, "outbox_0031")
    assert migrate.current(url) == "outbox_0030"
