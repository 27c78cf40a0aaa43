ALTER TABLE meter_event_outbox DROP COLUMN IF EXISTS inferred_from;
DROP TABLE IF EXISTS meter_event_outbox_confirmation_cursor;
DROP TABLE IF EXISTS meter_event_outbox_comparison_leases;
DROP TABLE IF EXISTS meter_event_outbox_groups;
