"""A database migrated by a release that kept the outbox's revision ('0002', '0003') in the
default `alembic_version` is adopted by `outbox-relay migrate`: the row moves to
outbox_alembic_version, the application's rows stay, the data stays."""

import psycopg
import pytest

from relay import daemon
from relay.db import migrate
from tests.support.adoption import CLI, HEAD, run, versions


def make_legacy(url: str, revision: str, app_revisions: tuple[str, ...] = ()) -> None:
    """What the older release left: the schema at `revision`, recorded as a bare number in
    `alembic_version` (beside the app's revisions, if any), and no outbox_alembic_version."""
    migrate.upgrade(url, f"outbox_{revision}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE outbox_alembic_version")
        conn.execute(
            "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL,"
            " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
        for rev in (revision, *app_revisions):
            conn.execute("INSERT INTO alembic_version VALUES (%s)", (rev,))
        conn.execute("SELECT outbox_record_usage('api_calls', 'cus_1', 1, 'kept-1')")


def test_migrate_adopts_an_old_scheme_database_holding_only_our_revision(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    make_legacy(url, "0003")
    with pytest.raises(daemon.SchemaBehind, match="outbox-relay migrate"):
        daemon.check_schema(url)  # `run` before the adoption: told to migrate
    assert f"schema at {HEAD}" in run([*CLI, "migrate"], url).stdout
    assert versions(url, "outbox_alembic_version") == [HEAD]
    assert versions(url, "alembic_version") is None  # it held nothing else: dropped
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT identifier FROM meter_event_outbox").fetchall() == [("kept-1",)]
    daemon.check_schema(url)


def test_migrate_adopts_and_upgrades_leaving_the_app_revision(empty_database_url: str) -> None:
    url = empty_database_url
    make_legacy(url, "0002", app_revisions=("a1b2c3",))
    run([*CLI, "migrate"], url)
    assert versions(url, "alembic_version") == ["a1b2c3"]
    assert versions(url, "outbox_alembic_version") == [HEAD]
    with psycopg.connect(url) as conn:  # 0003 ran after the adoption
        assert conn.execute("SELECT to_regclass('meter_event_outbox_attempts')").fetchone() != (
            None,
        )


def test_an_app_revision_named_like_ours_is_not_adopted(empty_database_url: str) -> None:
    """An app whose own revision is '0002' but has no outbox table keeps it."""
    url = empty_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0002')")
    run([*CLI, "migrate"], url)
    assert versions(url, "alembic_version") == ["0002"]
    assert versions(url, "outbox_alembic_version") == [HEAD]
