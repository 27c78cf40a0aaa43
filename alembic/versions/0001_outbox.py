"""The outbox table, its indexes, status view, wake-up gate and SQL entry point.

Revision ID: outbox_0001
Revises:

Revision ids are "outbox_" + the file's number, on the branch "outbox", with their own version
table (outbox_alembic_version): an application's alembic history never sees them unless it
includes them on purpose (docs/migrations.md). A new migration NNNN is file NNNN_name.py with
revision "outbox_NNNN" and down_revision the previous "outbox_..." id.
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0001"
down_revision = None
branch_labels = ("outbox",)
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
