ALTER TABLE meter_event_outbox_relays DROP COLUMN process_token;
