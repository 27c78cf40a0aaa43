-- Every recorded fact used to take an entry in two indexes of unsent rows: the due index
-- (available_at: the claim's order) and the unsent-age index (created_at: the oldest unsent
-- fact, `status`, the console, /metrics). About 64 bytes of WAL per fact for the second.
--
-- A fresh row is due from the instant it is recorded: with available_at defaulting to the same
-- clock as created_at (statement_timestamp(), one value per statement), the two are equal until
-- the row is held back (a retry's backoff, a held meter, an outage, a lease of an earlier
-- release). For such rows the due index is already ordered by recording time, so only the rows
-- whose available_at moved need an index by age; fresh rows never enter it, and a row that moves
-- takes its entry with the update that moves it (a non-HOT update that writes its due and lane
-- entries anyway). The oldest unsent fact is then the older of the first entry of this index
-- and the first due entry recorded when it became due (queries.sql, oldest_unsent).
ALTER TABLE meter_event_outbox ALTER COLUMN available_at SET DEFAULT statement_timestamp();

CREATE INDEX IF NOT EXISTS meter_event_outbox_moved_age
    ON meter_event_outbox (created_at)
    WHERE state IN ('pending', 'in_flight') AND available_at <> created_at;

DROP INDEX IF EXISTS meter_event_outbox_unsent_age;
