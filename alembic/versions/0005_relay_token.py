"""A process token per relay row, so two processes with the same OUTBOX_RELAY_ID are told apart.

Revision ID: outbox_0005
Revises: 0003
"""

from pathlib import Path

from alembic import op

revision = "outbox_0005"
down_revision = "0003"
branch_labels = None
depends_on = None

_HERE = Path(__file__).with_suffix("")


def _run(suffix: str) -> None:
    """Execute the whole .sql file in the migration's transaction."""
    sql = Path(f"{_HERE}.{suffix}.sql").read_text()
    op.get_bind().connection.driver_connection.execute(sql)


def upgrade() -> None:
    _run("up")


def downgrade() -> None:
    _run("down")
