"""A clean acceptance is carried on its row (no attempt-history row), accepted calls counted
per minute, and two indexes the look indexes already cover go.

Revision ID: outbox_0019
Revises: outbox_0018
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0019"
down_revision = "outbox_0018"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
