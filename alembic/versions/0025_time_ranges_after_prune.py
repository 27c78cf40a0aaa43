"""Prune keeps the created_at block range index tight: it forgets the summaries of the ranges
it deleted from, and summarizes the refilled ones on its next run.

Revision ID: outbox_0025
Revises: outbox_0024
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0025"
down_revision = "outbox_0024"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
