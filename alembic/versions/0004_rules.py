"""One clock for the timestamp window, and the storage rules of issue-free input.

- created_at and occurred_at default to statement_timestamp(), the instant the library's insert
  judges the timestamp window against: a long application transaction no longer shifts the
  reference (now() is the transaction's start).
- The window CHECK uses absolute durations ('840 hours', not '35 days', which depends on the
  session's time zone around DST changes).
- Dimensions refuse an empty key; metadata is capped at 16 KiB (as printed jsonb text) and
  32 nested levels, as outbox/rules.py defines.
- outbox_record_usage() defaults occurred_at to statement_timestamp() too.

Adding the constraints checks existing rows. Should a row break the new rules (an empty
dimension key, more than 16 KiB of metadata) the upgrade fails naming the constraint; find the
rows with the constraint's expression, fix or delete them, and run the upgrade again.

Revision ID: outbox_0004
Revises: outbox_0003
"""

from relay.db.sql_migration import sql_file_steps

revision = "outbox_0004"
down_revision = "outbox_0003"
branch_labels = None
depends_on = None

upgrade, downgrade = sql_file_steps(__file__)
