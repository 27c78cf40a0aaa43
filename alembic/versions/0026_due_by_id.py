"""The due index is ordered by (available_at, id), so the v2 top-up starts right after the
relay's cursor.

Revision ID: outbox_0026
Revises: outbox_0025
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0026"
down_revision = "outbox_0025"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
