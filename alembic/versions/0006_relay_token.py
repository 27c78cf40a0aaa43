"""A process token per relay row, so two processes with the same OUTBOX_RELAY_ID are told apart.

Revision ID: outbox_0006
Revises: outbox_0005
"""

from pathlib import Path

from relay.sqlmigration import execute_file

revision = "outbox_0006"
down_revision = "outbox_0005"
branch_labels = None
depends_on = None

_HERE = Path(__file__).with_suffix("")


def _run(suffix: str) -> None:
    """The SQL lives beside this file (.up.sql / .down.sql); works in --sql mode."""
    execute_file(Path(f"{_HERE}.{suffix}.sql"))


def upgrade() -> None:
    _run("up")


def downgrade() -> None:
    _run("down")
