"""Schema migrations, run from the installed package (`outbox-relay migrate`).

The top-level `alembic/` directory of the repository is installed as `relay.migrations`, so the
same migration files serve `alembic upgrade head` in a checkout and the CLI in production.
"""

from pathlib import Path

import click
from alembic import command
from alembic.config import Config

_CHECKOUT = Path(__file__).resolve().parent.parent / "alembic"


def script_location() -> str:
    """The checkout's `alembic/` (source and editable installs), else the wheel's copy."""
    if (_CHECKOUT / "env.py").is_file():
        return str(_CHECKOUT)
    # Installed from a wheel: relay/migrations/ is a plain directory beside this module (a
    # namespace package, whose files() is a MultiplexedPath that alembic cannot use).
    return str(Path(__file__).resolve().parent / "migrations")


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the migrations and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema up to `revision` (idempotent: nothing happens when already there)."""
    command.upgrade(alembic_config(database_url), revision)


class DowngradeRefused(click.ClickException):
    """A downgrade that would drop usage not yet reported to Stripe."""


def downgrade(database_url: str, revision: str, *, drop_unsent: bool = False) -> None:
    """Take the schema down to `revision` ('base' removes every outbox object, so it is
    refused while rows are pending, in flight or failed: that usage was never reported)."""
    if revision == "base" and not drop_unsent:
        unsent = unsent_rows(database_url)
        if unsent:
            raise DowngradeRefused(
                f"refusing to downgrade to base: {unsent} row(s) not yet reported to Stripe "
                "would be dropped; let the relay drain them (or cancel them) first"
            )
    command.downgrade(alembic_config(database_url), revision)


def unsent_rows(database_url: str) -> int:
    """Rows pending, in flight or failed (0 when the outbox table does not exist)."""
    import psycopg

    from relay import ops

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
    """The schema revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, pool

    from outbox.dburl import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
