CREATE INDEX IF NOT EXISTS meter_event_outbox_busy
    ON meter_event_outbox (customer, event_name, available_at)
    WHERE state = 'in_flight';
ALTER TABLE meter_event_outbox RESET (fillfactor);
