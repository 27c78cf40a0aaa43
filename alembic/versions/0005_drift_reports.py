"""Drift reports (our accepted totals against Stripe's meter summaries) and a BRIN index on
created_at, so time-bounded operator reads stay cheap on a long history.

Revision ID: outbox_0005
Revises: outbox_0004
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0005"
down_revision = "outbox_0004"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
