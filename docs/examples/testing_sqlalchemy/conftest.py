"""An application's conftest.py (SQLAlchemy): each test gets a session in a transaction that
is rolled back at the end; the outbox lives in the same database."""

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session


@pytest.fixture
def outbox_database_url() -> str:
    return os.environ["APP_TEST_DATABASE_URL"]  # your test database, migrated with the outbox


@pytest.fixture
def engine(outbox_database_url: str) -> Iterator[Engine]:
    engine = create_engine(outbox_database_url.replace("postgresql://", "postgresql+psycopg://"))
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        session.begin()
        yield session
        session.rollback()
