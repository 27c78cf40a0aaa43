"""A fresh fact enters one index of unsent rows, not two: the oldest unsent fact comes from the
due index for rows still due since they were recorded, and from an index of the other unsent
rows by age.

Revision ID: outbox_0021
Revises: outbox_0020
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0021"
down_revision = "outbox_0020"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
