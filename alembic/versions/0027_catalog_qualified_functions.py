"""The owner's-rights functions name every built-in they call in pg_catalog, so a lookalike
another role creates in the outbox's schema is never run with the owner's rights.

Revision ID: outbox_0027
Revises: outbox_0026
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0027"
down_revision = "outbox_0026"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
