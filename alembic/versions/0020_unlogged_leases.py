"""Leases out of the row: an UNLOGGED lease table, so a claim writes no new row version.

Revision ID: outbox_0020
Revises: outbox_0019
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0020"
down_revision = "outbox_0019"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
