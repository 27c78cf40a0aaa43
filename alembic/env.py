"""Alembic environment: migrations are plain SQL, the URL comes from OUTBOX_DATABASE_URL.

The same directory is installed as the package `relay.migrations`, so `outbox-relay migrate`
works from a wheel without a checkout; `alembic upgrade head` works from the repo root.

The outbox keeps its version in its own table (outbox_alembic_version), so an application's own
alembic history in the same database never sees the outbox's revisions, nor the outbox its.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from outbox.dburl import database_url_from_env, sqlalchemy_url
from relay.db.migrate import VERSION_TABLE, adopt_legacy

config = context.config


def run_migrations_online() -> None:
    """Run every pending migration in one transaction (PostgreSQL has transactional DDL)."""
    url = config.attributes.get("database_url") or database_url_from_env()
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection, transaction_per_migration=False, version_table=VERSION_TABLE
        )
        with context.begin_transaction():
            # Replicas or jobs migrating at once take turns instead of colliding.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7428031195)")
            adopt_legacy(connection)
            context.run_migrations()
    engine.dispose()


def run_migrations_offline() -> None:
    """Write the SQL instead of running it (`--sql`): no database needed.

    `bare` (set by `outbox-relay schema --sql`) leaves out BEGIN/COMMIT, for tools that wrap
    each migration in a transaction of their own (Flyway, Liquibase, sqitch, Rails).
    """
    bare = bool(config.attributes.get("bare"))
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        version_table=VERSION_TABLE,
        transactional_ddl=not bare,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
