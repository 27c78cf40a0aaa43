"""The stored generated column `payload` is dropped (the relay builds the JSON itself); a
function `payload(meter_event_outbox)` gives earlier releases' `o.payload` the same JSON.

Revision ID: outbox_0033
Revises: outbox_0032
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0033"
down_revision = "outbox_0032"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
