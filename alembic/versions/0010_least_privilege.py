"""outbox_record_usage() runs with its owner's rights, a pinned search_path and no PUBLIC
EXECUTE, so an application role can be given that function and nothing else on the table
(`outbox-relay roles`: writer, relay, reader). outbox_wake() likewise runs as its owner, so
inserting roles need no right on the wake-up table.

Revision ID: outbox_0010
Revises: outbox_0009
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0010"
down_revision = "outbox_0009"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
