"""Cheaper tallies: the update trigger groups each kind of key on its own; HOT folds.

Revision ID: outbox_0023
Revises: outbox_0022
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0023"
down_revision = "outbox_0022"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
