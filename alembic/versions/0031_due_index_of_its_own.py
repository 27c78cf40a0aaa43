"""The due index gets a predicate of its own (a tautology on available_at that only the readers of
due rows state), so the lane probes can no longer be served by it when the statistics predate
a backlog; the
status view probes each live lease's row with a state test no partial index can serve.

Revision ID: outbox_0031
Revises: outbox_0030
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0031"
down_revision = "outbox_0030"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
