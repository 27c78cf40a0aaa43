ALTER TABLE meter_event_outbox DROP COLUMN IF EXISTS trace_context;
