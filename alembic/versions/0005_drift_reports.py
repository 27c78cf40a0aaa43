"""Drift reports (our accepted totals against Stripe's meter summaries) and a BRIN index on
created_at, so time-bounded operator reads stay cheap on a long history.

Revision ID: outbox_0005
Revises: outbox_0004
"""

from pathlib import Path

from relay.sqlmigration import execute_file

revision = "outbox_0005"
down_revision = "outbox_0004"
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
