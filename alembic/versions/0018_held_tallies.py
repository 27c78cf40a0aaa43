"""Held rows per meter from the tallies: the tally key of pending rows with a code gains the
event name, and an index gives the oldest held fact per meter in one probe.

Revision ID: outbox_0018
Revises: outbox_0017
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0018"
down_revision = "outbox_0017"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
