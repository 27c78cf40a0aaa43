"""Cheaper row transitions: a claim rewrites no index entry (a HOT update), and the indexes
select rows by `settled_state`, a generated column that does not change when a row is claimed.

Revision ID: outbox_0013
Revises: outbox_0012
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0013"
down_revision = "outbox_0012"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
