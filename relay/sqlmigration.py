"""Old path of relay.db.sql_migration, kept for one release: migrations that applications
already committed call `relay.sqlmigration.execute_file` (docs/migrations.md)."""

from relay.db.sql_migration import execute_file, sql_file_steps

__all__ = ["execute_file", "sql_file_steps"]
