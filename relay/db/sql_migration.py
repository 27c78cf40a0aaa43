"""Run a migration's `.sql` file, online (through the database driver) or offline (`--sql`).

Online, the file goes to the driver without parameters, so `%` in PL/pgSQL stays literal and a
file may hold many statements; this works with psycopg 3 and psycopg2 alike, so an application
that includes the outbox migrations in its own alembic history (docs/migrations.md) can use
either. Offline, alembic has no connection: the file's text is written to the script as is.
"""

from collections.abc import Callable
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


def sql_file_steps(module_file: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """(upgrade, downgrade) of a migration whose SQL lives beside it: `NNNN_name.py` runs
    `NNNN_name.up.sql` and `NNNN_name.down.sql`. Each migration module binds them to the names
    alembic calls: `upgrade, downgrade = sql_file_steps(__file__)`."""
    stem = Path(module_file).with_suffix("")

    def upgrade() -> None:
        execute_file(Path(f"{stem}.up.sql"))

    def downgrade() -> None:
        execute_file(Path(f"{stem}.down.sql"))

    return upgrade, downgrade
