"""Alembic environment: migrations are plain SQL, the URL comes from OUTBOX_DATABASE_URL.

The same directory is installed as the package `relay.migrations`, so `outbox-relay migrate`
works from a wheel without a checkout; `alembic upgrade head` works from the repo root.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from outbox.dburl import database_url_from_env, sqlalchemy_url

config = context.config
url = config.attributes.get("database_url") or database_url_from_env()


def run_migrations_online() -> None:
    """Run every pending migration in one transaction (PostgreSQL has transactional DDL)."""
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            # Replicas or jobs migrating at once take turns instead of colliding.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7428031195)")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=sqlalchemy_url(url), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
