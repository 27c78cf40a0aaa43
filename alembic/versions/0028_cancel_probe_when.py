"""The cancel trigger fires only for an update that takes a pending row out of pending: the
relay's own outcome of a report whose cancel was requested no longer probes the lease key.

Revision ID: outbox_0028
Revises: outbox_0027
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0028"
down_revision = "outbox_0027"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
