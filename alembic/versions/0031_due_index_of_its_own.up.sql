-- The due index gets a predicate of its own, so that only the statements written for it can
-- use it, and they no other. It had the lane index's predicate (state IN ('pending',
-- 'in_flight')), so any statement that could use one could use the other. In an outbox in
-- service the last VACUUM saw almost nothing pending, and the planner then takes both partial
-- indexes for empty until the next one, however many rows have entered them since (a backlog:
-- an outage): it chose the due index for v1's "a call in flight in this lane" probe and the
-- walk's lane step, and read every pending row once per lane (0.6 s for a v1 claim of 10
-- heads with 200,000 rows pending, where the lane index answers in a few buffers), and the
-- lane index for the claim's top-up, reading and sorting every pending row per claim.
-- PostgreSQL uses a partial index only for a statement whose conditions prove its predicate.
-- The new predicate is proved only by its own words, which the readers of due rows say
-- (relay/db/queries.sql: the claim's top-up, oldest_unsent, event_names_in_use) and which do
-- not prove the lane index's:
-- - `(state IN (...)) IS TRUE`, the same rows (state is NOT NULL): PostgreSQL proves neither
--   form from the other, so the top-up, which says this one, cannot use the lane index;
-- - `isfinite(available_at) OR NOT isfinite(available_at)`, true of every row (available_at is
--   NOT NULL): no lane probe says it, nor does a probe by id, which tests the state with the
--   same `IS TRUE` (the claim's heads). Not `available_at IS NOT NULL`, which PostgreSQL 19
--   drops from the predicate of an index on a NOT NULL column; nor a comparison such as
--   `available_at >= '-infinity'`, which would be a second start for the top-up's ordered
--   scan, before its cursor.
-- A relay of the previous release does not say these words: while it runs beside this one (a
-- rolling upgrade) its top-up reads the lane index and sorts (docs/migrations.md).
--
-- The build reads the table while writers wait (only unsent rows go into it; see outbox_0026
-- for its time). On a large outbox build it first without blocking writes, under this name,
-- and the migration then only swaps the names:
--     CREATE INDEX CONCURRENTLY meter_event_outbox_due_timed ON meter_event_outbox
--         (available_at, id) WHERE (state IN ('pending', 'in_flight')) IS TRUE
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
    -- One built by hand must be the index asked for (on the outbox, a plain btree, these
    -- columns and this predicate), or it would silently become the due index.
    IF (SELECT i.indrelid <> format('%I.meter_event_outbox', current_schema())::regclass
               OR i.indisunique
        FROM pg_index i WHERE i.indexrelid = found)
       OR pg_get_indexdef(found) NOT LIKE
           'CREATE INDEX meter_event_outbox\_due\_timed ON % USING btree (available_at, id) WHERE (((state = ANY (ARRAY[''pending''::text, ''in\_flight''::text])) IS TRUE) AND (isfinite(available\_at) OR (NOT isfinite(available\_at))))'
    THEN
        RAISE EXCEPTION 'meter_event_outbox_due_timed is not the index outbox_0031 builds (%): '
                        'drop it, then build it again as docs/migrations.md shows or let this '
                        'migration', pg_get_indexdef(found);
    END IF;
END $valid$;
CREATE INDEX IF NOT EXISTS meter_event_outbox_due_timed
    ON meter_event_outbox (available_at, id)
    WHERE (state IN ('pending', 'in_flight')) IS TRUE
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
