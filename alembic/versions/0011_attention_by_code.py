"""The rows waiting for an operator, by state and code in id order: the console's failures
list and its first identifiers per code read a few index entries instead of walking the
primary key past every other row.

Revision ID: outbox_0011
Revises: outbox_0010
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0011"
down_revision = "outbox_0010"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
