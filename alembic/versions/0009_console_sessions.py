"""Console sessions held server-side, so signing out (or a stolen cookie's revocation) ends a
session on every replica before its cookie expires.

Revision ID: outbox_0009
Revises: outbox_0008
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0009"
down_revision = "outbox_0008"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
