"""Room on each page for one more version of every row: the outcome's update stays on its page.

Revision ID: outbox_0022
Revises: outbox_0021
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0022"
down_revision = "outbox_0021"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
