DROP TABLE IF EXISTS meter_event_outbox_event_names;
DROP TABLE IF EXISTS meter_event_outbox_meter_reads;
DROP TABLE IF EXISTS meter_event_outbox_meters;
