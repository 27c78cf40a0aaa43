"""A cancel in a REPEATABLE READ or SERIALIZABLE transaction meets a lease committed after its
snapshot: the cancel trigger probes the lease key instead of reading the lease table.

Revision ID: outbox_0024
Revises: outbox_0023
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0024"
down_revision = "outbox_0023"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
