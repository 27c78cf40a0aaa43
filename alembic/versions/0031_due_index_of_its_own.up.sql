-- The due index gets a predicate of its own, so that only the statements that read due rows in
-- time order can use it. It had the lane index's predicate (state IN ('pending', 'in_flight')),
-- so any statement that could use one could use the other. In an outbox in service the last
-- VACUUM saw almost nothing pending, and the planner then takes both partial indexes for empty
-- until the next one, however many rows a backlog (an outage) has put in them since: it chose
-- the smaller, the due index, for v1's "a call in flight in this lane" probe and the walk's
-- lane step, and read every pending row once per lane (0.6 s for a v1 claim of 10 heads with
-- 200,000 rows pending, where the lane index answers in a few buffers).
-- `isfinite(available_at) OR NOT isfinite(available_at)` is true of every row (the column is
-- NOT NULL): it only sets the index apart. PostgreSQL can use the index only for a statement
-- that says the same words, which every reader of due rows does (relay/db/queries.sql: the
-- claim's top-up, oldest_unsent, event_names_in_use) and no lane probe does. Not
-- `available_at IS NOT NULL`, which the lane probes cannot prove either but which PostgreSQL
-- 19 drops from an index predicate on a NOT NULL column (leaving the lane index's predicate).
-- Nor a comparison such as `available_at >= '-infinity'`, which a statement's own copy could
-- turn into a second start for the ordered scan, before the top-up's cursor.
-- A relay of the previous release reads due rows without those words: while it runs beside
-- this one (a rolling upgrade) its top-up reads the lane index and sorts (see
-- docs/migrations.md).
--
-- The build reads the table while writers wait (only unsent rows go into it; see outbox_0026
-- for its time). On a large outbox build it first without blocking writes, under this name,
-- and the migration then only swaps the names:
--     CREATE INDEX CONCURRENTLY meter_event_outbox_due_timed ON meter_event_outbox
--         (available_at, id) WHERE state IN ('pending', 'in_flight')
--                              AND (isfinite(available_at) OR NOT isfinite(available_at));
DO $valid$
DECLARE
    found regclass := to_regclass(format('%I.meter_event_outbox_due_timed', current_schema()));
BEGIN
    IF found IS NULL THEN
        RETURN;
    END IF;
    -- A CONCURRENTLY build that failed leaves an invalid index, which the planner ignores.
    IF NOT (SELECT indisvalid FROM pg_index WHERE indexrelid = found) THEN
        RAISE EXCEPTION 'meter_event_outbox_due_timed is invalid (a failed CREATE INDEX '
                        'CONCURRENTLY): drop it, then build it again or let this migration';
    END IF;
    -- One built by hand must be the index asked for, or it would silently become the due index.
    IF pg_get_indexdef(found) NOT LIKE '% (available_at, id) WHERE ((state = ANY (%'
       OR pg_get_indexdef(found) NOT LIKE '%(isfinite(available_at) OR (NOT isfinite(available_at)))%'
    THEN
        RAISE EXCEPTION 'meter_event_outbox_due_timed is not the index outbox_0031 builds (%): '
                        'drop it, then build it again as docs/migrations.md shows or let this '
                        'migration', pg_get_indexdef(found);
    END IF;
END $valid$;
CREATE INDEX IF NOT EXISTS meter_event_outbox_due_timed
    ON meter_event_outbox (available_at, id)
    WHERE state IN ('pending', 'in_flight')
      AND (isfinite(available_at) OR NOT isfinite(available_at));
-- Dropping the old index takes the table's exclusive lock for a moment (a catalog change).
DROP INDEX meter_event_outbox_due;
ALTER INDEX meter_event_outbox_due_timed RENAME TO meter_event_outbox_due;

-- Rows per state: as in outbox_0020, but the probe of each live lease's row tests its state
-- with `IS TRUE`, which no partial index's predicate can be proved from, in a LATERAL with
-- LIMIT 1: with a plain `o.state = 'pending'` the planner, taking the queue indexes for empty
-- (above), joined the leases to every pending row read through one of them.
CREATE OR REPLACE VIEW meter_event_outbox_status AS
WITH leased AS (
    SELECT count(*) AS n FROM meter_event_outbox_leases l
    CROSS JOIN LATERAL (SELECT 1 FROM meter_event_outbox o
                        WHERE o.id = l.outbox_id AND (o.state = 'pending') IS TRUE
                        LIMIT 1) o
    WHERE l.leased_until > now()
)
SELECT s.state,
       (coalesce(t.n, 0) + CASE s.state WHEN 'pending' THEN -leased.n
                                        WHEN 'in_flight' THEN leased.n ELSE 0 END)::bigint AS n,
       NULL::timestamptz AS oldest_available_at
FROM unnest(ARRAY['pending', 'in_flight', 'accepted', 'failed', 'rejected', 'cancelled'])
         WITH ORDINALITY AS s(state, ord)
CROSS JOIN leased
LEFT JOIN (SELECT state, sum(n) AS n FROM meter_event_outbox_tally WHERE state <> ''
           GROUP BY state) t ON t.state = s.state
ORDER BY s.ord;
