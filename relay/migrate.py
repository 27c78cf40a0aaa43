"""Old path of relay.db.migrate, kept for one release: Django and alembic migrations that
applications already committed import `relay.migrate.schema_sql` (docs/migrations.md)."""

from relay.db.migrate import schema_sql, script_location

__all__ = ["schema_sql", "script_location"]
