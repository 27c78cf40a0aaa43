"""The outbox table, its indexes, status view, wake-up gate and SQL entry point.

Revision ID: outbox_0001
Revises:

Revision ids are "outbox_" + the file's number, on the branch "outbox", with their own version
table (outbox_alembic_version): an application's alembic history never sees them unless it
includes them on purpose (docs/migrations.md). A new migration NNNN is file NNNN_name.py with
revision "outbox_NNNN" and down_revision the previous "outbox_..." id.
"""

from pathlib import Path

from relay.sqlmigration import execute_file

revision = "outbox_0001"
down_revision = None
branch_labels = ("outbox",)
depends_on = None

_HERE = Path(__file__).with_suffix("")


def _run(suffix: str) -> None:
    """The SQL lives beside this file (0001_outbox.up.sql / .down.sql)."""
    execute_file(Path(f"{_HERE}.{suffix}.sql"))


def upgrade() -> None:
    _run("up")


def downgrade() -> None:
    _run("down")
