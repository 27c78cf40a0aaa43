ALTER TABLE meter_event_outbox SET (fillfactor = 75);
