"""The tally deltas move to an UNLOGGED table (no WAL for the row each recorded fact's statement
adds there); a marker emptied by the same crash tells the fold to recount the tallies from the
outbox in one snapshot.

Revision ID: outbox_0032
Revises: outbox_0031
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0032"
down_revision = "outbox_0031"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
