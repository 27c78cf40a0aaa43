CREATE INDEX IF NOT EXISTS meter_event_outbox_unsent_age
    ON meter_event_outbox (created_at)
    WHERE state IN ('pending', 'in_flight');
DROP INDEX IF EXISTS meter_event_outbox_moved_age;
ALTER TABLE meter_event_outbox ALTER COLUMN available_at SET DEFAULT now();
