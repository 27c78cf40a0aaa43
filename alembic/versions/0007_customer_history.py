"""An index of each customer's settled rows, for `outbox-relay list --customer` over history.

Revision ID: outbox_0007
Revises: outbox_0006
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0007"
down_revision = "outbox_0006"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
