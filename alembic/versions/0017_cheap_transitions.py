"""Cheaper row transitions: room on each page for the updated row (fillfactor), and the busy
index goes (the lane index answers "has this lane a call in flight").

Revision ID: outbox_0017
Revises: outbox_0016
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0017"
down_revision = "outbox_0016"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
