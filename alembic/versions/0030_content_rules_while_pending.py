"""The rules on what the application writes are checked while a row is pending: an outcome no
longer re-checks content that no statement of the relay changes (PostgreSQL evaluates every
CHECK on every update).

Revision ID: outbox_0030
Revises: outbox_0029
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0030"
down_revision = "outbox_0029"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
