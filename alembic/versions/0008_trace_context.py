"""The trace context (W3C traceparent) of the code that recorded a fact, for the relay's spans.

Revision ID: outbox_0008
Revises: outbox_0007
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0008"
down_revision = "outbox_0007"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
