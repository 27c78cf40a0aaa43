"""Console sessions held server-side, so signing out (or a stolen cookie's revocation) ends a
session on every replica before its cookie expires.

Revision ID: outbox_0008
Revises: outbox_0007
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0008"
down_revision = "outbox_0007"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
