"""Status tallies: per state, code and account, and unsent rows per customer, kept by delta rows
that statement triggers append and the relay folds; indexes for the oldest pending fact and
each code's next attempt. `status`, the console and /metrics read these instead of counting.

Revision ID: outbox_0015
Revises: outbox_0014
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0015"
down_revision = "outbox_0014"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
