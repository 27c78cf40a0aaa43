"""Shared fixtures: a real PostgreSQL for every test, isolated by database; markers by folder.

The layer a test belongs to is its folder (tests/unit, tests/integration, tests/acceptance), and
the marker of the same name is applied here, so `pytest -m unit` runs the fast layer and a test
never carries a marker that disagrees with where it lives.
"""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outbox.dburl import with_database
from relay.db import migrate
from tests.pg import admin_execute, server, unique_name

pytest_plugins = ["tests.support.relay"]

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(parts[0])


@pytest.fixture(autouse=True)
def _log_format_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that sets up the relay's JSON logs in-process (as `run` does) leaves the format
    flag as it found it: otherwise a later in-process CLI call writes its one-line error as a
    log line on stdout instead of on stderr, and passes or fails by test order."""
    from relay.core import logs

    monkeypatch.setattr(logs, "_json", logs.is_json())


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a maintenance database on the session's PostgreSQL server."""
    with server() as (url, source):
        print(f"\nPostgreSQL for tests: {source}")
        yield url


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A migrated database used only as the template for per-test clones."""
    name = unique_name("outbox_tpl")
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    migrate.upgrade(with_database(pg_admin_url, name))
    yield name
    admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = unique_name("outbox_test")
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_database(pg_admin_url, name)
    admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database without the schema (migration tests)."""
    name = unique_name("outbox_empty")
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    yield with_database(pg_admin_url, name)
    admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection to the test database, for setup and assertions."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
