"""Schema migrations, run from the installed package (`outbox-relay migrate`).

The top-level `alembic/` directory of the repository is installed as `relay.migrations`, so the
same migration files serve `alembic upgrade head` in a checkout and the CLI in production.

The outbox's version lives in its own table, VERSION_TABLE, and its revisions ("outbox_0001",
...) form their own alembic branch ("outbox"): the application's alembic history in the same
database and the outbox's never see each other (docs/migrations.md has the recipes).
"""

import io
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click
from alembic import command
from alembic.config import Config

from outbox.sqlfile import load

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

VERSION_TABLE = "outbox_alembic_version"
BRANCH = "outbox"
# Revisions recorded by releases before the outbox had its own version table, in the default
# `alembic_version`, with the table each one created: the proof that the row is ours.
LEGACY = {
    "0001": "meter_event_outbox",
    "0002": "meter_event_outbox_relays",
    "0003": "meter_event_outbox_attempts",
}

_CHECKOUT = Path(__file__).resolve().parents[2] / "alembic"
_SQL = load("relay.db", "migrate.sql")


def script_location() -> str:
    """The checkout's `alembic/` (source and editable installs), else the wheel's copy."""
    if (_CHECKOUT / "env.py").is_file():
        return str(_CHECKOUT)
    # Installed from a wheel: relay/migrations/ is a plain directory beside this module (a
    # namespace package, whose files() is a MultiplexedPath that alembic cannot use).
    return str(Path(__file__).resolve().parents[1] / "migrations")


def alembic_config(database_url: str | None = None, output: TextIO | None = None) -> Config:
    """An Alembic config pointing at the migrations and the given database (or, for `--sql`,
    at `output`)."""
    cfg = Config(output_buffer=output)
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema up to `revision` (idempotent: nothing happens when already there).

    A database migrated by an older release (its revision in `alembic_version`) is adopted
    first, in the same transaction (see adopt_legacy)."""
    command.upgrade(alembic_config(database_url), revision)


class DowngradeRefused(click.ClickException):
    """A downgrade that would drop usage not yet reported to Stripe."""


def downgrade(database_url: str, revision: str, *, drop_unsent: bool = False) -> None:
    """Take the schema down to `revision` (see `check_downgrade`)."""
    if not drop_unsent:
        check_downgrade(database_url, revision)
    command.downgrade(alembic_config(database_url), revision)


def check_downgrade(database_url: str, revision: str) -> None:
    """'base' removes every outbox object, so it is refused while rows are pending, in flight
    or failed: that usage was never reported."""
    if revision == "base":
        unsent = unsent_rows(database_url)
        if unsent:
            raise DowngradeRefused(
                f"refusing to downgrade to base: {unsent} row(s) not yet reported to Stripe "
                "would be dropped; let the relay drain them (or cancel them) first"
            )


def upgrade_sql(
    output: TextIO, revision: str = "head", start: str | None = None, bare: bool = False
) -> None:
    """Write the SQL that upgrades from `start` (default: an empty database) to `revision`.

    `bare` leaves out BEGIN/COMMIT, for migration tools that add their own transaction."""
    cfg = alembic_config(output=output)
    cfg.attributes["bare"] = bare
    command.upgrade(cfg, f"{start}:{revision}" if start else revision, sql=True)


def schema_sql(revision: str = "head", start: str | None = None) -> str:
    """The DDL from `start` (default: nothing) to `revision`, without BEGIN/COMMIT, as text
    (a Django migration's RunSQL, or any other tool's migration file)."""
    buffer = io.StringIO()
    upgrade_sql(buffer, revision, start=start, bare=True)
    return buffer.getvalue()


def unsent_rows(database_url: str) -> int:
    """Rows pending, in flight or failed (0 when the outbox table does not exist)."""
    import psycopg

    from relay.db import operations as ops

    with ops.connect(database_url) as conn:
        try:
            return ops.unsent_rows(conn)
        except psycopg.errors.UndefinedTable:
            return 0


def revisions() -> list[str]:
    """The revisions this package ships, newest (what `migrate` brings a database to) first."""
    from alembic.script import ScriptDirectory

    return [rev.revision for rev in ScriptDirectory(script_location()).walk_revisions()]


def current(database_url: str) -> str | None:
    """The outbox schema's revision, or None before the first migration.

    Read from VERSION_TABLE, else from the outbox branch inside the application's
    `alembic_version` (an app that includes the outbox migrations in its history). The
    application's own revisions never count."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    from outbox.dburl import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            own = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            heads = own.get_current_heads()
            if not heads:
                heads = MigrationContext.configure(conn).get_current_heads()
            ours = [head for head in heads if head.startswith(f"{BRANCH}_")]
            return ours[0] if ours else None
    finally:
        engine.dispose()


def adopt_legacy(conn: "Connection") -> str | None:
    """Move an older release's revision ('0003') from `alembic_version` to VERSION_TABLE as
    'outbox_0003', inside the caller's transaction; returns the adopted revision.

    Only when VERSION_TABLE does not exist yet and the table that revision created does (so an
    application revision that happens to be called '0002' is never taken). The application's
    rows stay; `alembic_version` is dropped only if it held nothing but ours."""
    from sqlalchemy import text

    def exists(table: str) -> bool:
        return bool(conn.execute(text(_SQL["table_exists"]), {"name": table}).scalar())

    if exists(VERSION_TABLE) or not exists("alembic_version"):
        return None
    found = [r[0] for r in conn.execute(text(_SQL["legacy_versions"]))]
    ours = [v for v in found if v in LEGACY and exists(LEGACY[v])]
    if len(ours) != 1:
        return None
    conn.execute(text(_SQL["create_version_table"]))
    conn.execute(text(_SQL["record_version"]), {"version": f"{BRANCH}_{ours[0]}"})
    conn.execute(text(_SQL["forget_legacy_version"]), {"version": ours[0]})
    if conn.execute(text(_SQL["versions_left"])).scalar() == 0:
        conn.execute(text(_SQL["drop_legacy_table"]))
    return f"{BRANCH}_{ours[0]}"
