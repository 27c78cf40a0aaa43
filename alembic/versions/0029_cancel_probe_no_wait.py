"""The cancel trigger reads the lease table before it probes the lease key: a cancel no longer
waits for an outcome or a webhook's rejection that is deleting a lease it can see (a deadlock).

Revision ID: outbox_0029
Revises: outbox_0028
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0029"
down_revision = "outbox_0028"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
