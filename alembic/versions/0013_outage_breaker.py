"""The outage breaker's state: one row per scope ('stripe'), shared by every replica, so a
Stripe outage seen by one relay holds back all of them, one probe at a time, and the console
and `status` of any replica show the same state.

Revision ID: outbox_0013
Revises: outbox_0012
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0013"
down_revision = "outbox_0012"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
