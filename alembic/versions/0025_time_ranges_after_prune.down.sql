DROP FUNCTION IF EXISTS meter_event_outbox_forget_ranges(bigint[]);
DROP FUNCTION IF EXISTS meter_event_outbox_summarize_ranges();
