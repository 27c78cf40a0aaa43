"""Database URLs: the driver spelling each consumer needs, and a scratch database beside one."""

import pytest

from outbox.dburl import has_password, psycopg_url, sqlalchemy_url, with_database


def test_with_database_keeps_everything_but_the_database() -> None:
    url = "postgresql+psycopg://u:p%40ss@db.example:6432/app?sslmode=require"
    assert with_database(url, "scratch_1") == (
        "postgresql://u:p%40ss@db.example:6432/scratch_1?sslmode=require"
    )
    assert with_database("postgres://h", "a b/c") == "postgresql://h/a%20b%2Fc"


def test_driver_spellings() -> None:
    assert psycopg_url("postgresql+psycopg://h/db") == "postgresql://h/db"
    assert sqlalchemy_url("postgres://h/db") == "postgresql+psycopg://h/db"


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://relay:hunter2@db/app", True),
        ("postgresql://relay@db/app?password=hunter2", True),
        ("postgresql://relay@db/app", False),
        ("postgresql://postgres:@/app?host=/tmp/socket", False),  # an embedded server's URL
    ],
)
def test_only_a_non_empty_password_is_a_secret(url: str, secret: bool) -> None:
    assert has_password(url) is secret
