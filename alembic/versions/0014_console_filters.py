"""The console's filtered lists: rows that need a look (failed, rejected, and pending after an
error) in id order per state, per customer and, for pending rows, per code, so every page of
every filter reads a bounded stretch of an index (keyset pagination by id).

Revision ID: outbox_0014
Revises: outbox_0013
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0014"
down_revision = "outbox_0013"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
