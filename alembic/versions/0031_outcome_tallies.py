"""The relay's outcome writes the tally deltas of its own rows in the same statement, and the
update trigger skips that statement; leases keep the row's last error code for it.

Revision ID: outbox_0031
Revises: outbox_0030
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0031"
down_revision = "outbox_0030"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
