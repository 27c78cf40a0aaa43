"""The outbox table, its indexes, status view, wake-up gate and SQL entry point.

Revision ID: 0001
Revises:
"""

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_HERE = Path(__file__).with_suffix("")


def _run(suffix: str) -> None:
    """Execute the whole .sql file in the migration's transaction.

    Sent through psycopg without parameters, so `%` in PL/pgSQL stays literal.
    """
    sql = Path(f"{_HERE}.{suffix}.sql").read_text()
    op.get_bind().connection.driver_connection.execute(sql)


def upgrade() -> None:
    _run("up")


def downgrade() -> None:
    _run("down")
