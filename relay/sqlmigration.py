"""Run a migration's `.sql` file, online (through the database driver) or offline (`--sql`).

Online, the file goes to the driver without parameters, so `%` in PL/pgSQL stays literal and a
file may hold many statements; this works with psycopg 3 and psycopg2 alike, so an application
that includes the outbox migrations in its own alembic history (docs/migrations.md) can use
either. Offline, alembic has no connection: the file's text is written to the script as is.
"""

from pathlib import Path

from alembic import op


def execute_file(path: Path) -> None:
    """Execute (or, in `--sql` mode, emit) every statement of one .sql file."""
    sql = path.read_text()
    context = op.get_context()
    if context.as_sql:
        context.impl.static_output(sql.rstrip())
        return
    op.get_bind().execution_options(no_parameters=True).exec_driver_sql(sql)
