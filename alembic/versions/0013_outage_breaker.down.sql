DROP TABLE IF EXISTS meter_event_outbox_outage;
