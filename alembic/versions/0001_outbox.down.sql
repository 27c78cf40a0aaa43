DROP FUNCTION IF EXISTS outbox_record_usage(text, text, numeric, text, timestamptz, jsonb, jsonb, text, boolean);
DROP FUNCTION IF EXISTS outbox_wake();
DROP TABLE IF EXISTS meter_event_outbox_wake;
DROP VIEW IF EXISTS meter_event_outbox_status;
DROP TABLE IF EXISTS meter_event_outbox;
DROP FUNCTION IF EXISTS meter_event_outbox_count_changes();
DROP FUNCTION IF EXISTS outbox_fold_counts();
DROP TABLE IF EXISTS meter_event_outbox_count_deltas;
DROP TABLE IF EXISTS meter_event_outbox_counts;
