-- The v2 claim's top-up starts after the newest row the relay's previous top-up locked
-- (relay.core.top_up): a row comparison (available_at, id) > cursor. Leased rows stay pending
-- in the due index (outbox_0020), and without the cursor each top-up read past all of them.
-- With the index on (available_at) alone the comparison is only `available_at >=` in the index
-- and the rest a filter, which reads (and sorts) every row sharing the cursor's available_at:
-- all the rows of one INSERT statement share it (statement_timestamp(), outbox_0021). Ordered by
-- (available_at, id) the scan starts exactly after the cursor. Every other reader of the due
-- index orders by available_at only and is served as before.
--
-- The build reads the whole table while writers wait (only unsent rows go into it; about 0.7 s
-- on a table of 4.4 million rows, 400,000 of them unsent). On a large outbox build it first
-- without blocking writes, under this name, and the migration then only swaps the names:
--     CREATE INDEX CONCURRENTLY meter_event_outbox_due_by_id ON meter_event_outbox
--         (available_at, id) WHERE state IN ('pending', 'in_flight');
DO $valid$
BEGIN
    -- A CONCURRENTLY build that failed leaves an invalid index, which the planner ignores.
    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE c.relname = 'meter_event_outbox_due_by_id'
                 AND c.relnamespace = current_schema()::regnamespace AND NOT i.indisvalid) THEN
        RAISE EXCEPTION 'meter_event_outbox_due_by_id is invalid (a failed CREATE INDEX '
                        'CONCURRENTLY): drop it, then build it again or let this migration';
    END IF;
END $valid$;
CREATE INDEX IF NOT EXISTS meter_event_outbox_due_by_id
    ON meter_event_outbox (available_at, id)
    WHERE state IN ('pending', 'in_flight');
-- Dropping the old index takes the table's exclusive lock for a moment (a catalog change).
DROP INDEX meter_event_outbox_due;
ALTER INDEX meter_event_outbox_due_by_id RENAME TO meter_event_outbox_due;
-- A vacuum that finds the lease table empty (an idle relay) no longer gives its pages back. With
-- zero pages the planner costs the top-up's lease probe at nothing, and on a table of a few
-- ten thousand rows, all due, the multi-column due index (whose correlation the planner
-- discounts) then lost to a sequential scan and a sort of every due row: 76 ms instead of 2
-- (EXPLAIN ANALYZE, 30,000 due rows). The table stays as large as the most leases held at
-- once, and a vacuum no longer takes its exclusive lock (for a moment) to truncate it.
ALTER TABLE meter_event_outbox_leases SET (vacuum_truncate = false);
