"""A process token per relay row, so two processes with the same OUTBOX_RELAY_ID are told apart.

Revision ID: outbox_0006
Revises: outbox_0005
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0006"
down_revision = "outbox_0005"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
