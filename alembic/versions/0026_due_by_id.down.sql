-- The due index on available_at alone, as outbox_0001 built it (a relay of this release then
-- reads past the rows in the cursor's available_at; stop the new relays before a downgrade).
CREATE INDEX meter_event_outbox_due_by_at
    ON meter_event_outbox (available_at)
    WHERE state IN ('pending', 'in_flight');
DROP INDEX meter_event_outbox_due;
ALTER INDEX meter_event_outbox_due_by_at RENAME TO meter_event_outbox_due;
ALTER TABLE meter_event_outbox_leases RESET (vacuum_truncate);
