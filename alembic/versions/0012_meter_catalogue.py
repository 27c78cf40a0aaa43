"""The meter catalogue: each Stripe account's meters as last read from Stripe, the outcome of
the last read per account, and the event names the relay has seen per account.

Revision ID: outbox_0012
Revises: outbox_0011
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0012"
down_revision = "outbox_0011"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
