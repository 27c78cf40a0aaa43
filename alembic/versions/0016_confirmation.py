"""Confirmation against Stripe's totals: one row per (account, customer, meter, hour) group the
relay compares with Stripe's hourly event summaries, a lease per series so replicas compare a
group once, a discovery cursor, and the rows' mark of an inferred rejection.

Revision ID: outbox_0016
Revises: outbox_0015
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0016"
down_revision = "outbox_0015"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
