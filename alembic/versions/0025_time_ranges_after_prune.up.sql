-- The block range index on created_at (outbox_0005) stays tight while rows are appended in time
-- order. Pruning breaks that: VACUUM hands the pages of deleted rows to new inserts, and a
-- range's summary only ever widens, so a range that held rows from 40 days ago and takes
-- today's rows covers [40 days ago, now] for good. After a retention's worth of daily prunes
-- every range covers most of the history, and every read bounded by time (list --since, drift)
-- reads the whole table; each insert into such a range also logs the widening of its summary.
--
-- So prune tends the index: each batch forgets the summaries of the ranges it deleted from
-- (an unsummarized range is read by every bounded query, correctly, and costs an insert no
-- WAL), and each prune run first summarizes the ranges left unsummarized, which by then hold
-- the rows that refilled them: tight again. Between two prunes the ranges freed by the last
-- one are read by every bounded query, about one day of history out of the retention.
--
-- Summarizing and forgetting a range are reserved to the index's owner: these functions run as
-- the owner (SECURITY DEFINER) and are granted to the relay's role only (relay/db/roles.sql).
-- Their bodies name the built-ins they call in pg_catalog and give every argument its exact
-- type: a role that may create in the outbox's schema (every role may in `public` before
-- PostgreSQL 15) could add a closer match there, e.g. brin_summarize_new_values(text) for a
-- string literal, and it would run with the owner's rights.
-- They wait at most 50 ms: both take the table's SHARE UPDATE EXCLUSIVE lock, which a VACUUM
-- (or another prune's tending) holds, so they give up (and say so) rather than stall a prune
-- behind it. Claims, outcomes and inserts take weaker locks and never wait on them.

-- Forget the summaries of the ranges holding these heap blocks. Returns how many ranges, or
-- -1 when the table was busy (a VACUUM): the ranges stay as they are, correct, only wider.
CREATE OR REPLACE FUNCTION meter_event_outbox_forget_ranges(blocks bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    per_range bigint := coalesce(
        (SELECT o.option_value::bigint
         FROM pg_catalog.pg_class c, pg_catalog.pg_options_to_table(c.reloptions) o
         WHERE c.oid = 'meter_event_outbox_created_brin'::regclass::oid
           AND o.option_name = 'pages_per_range'::text), 128);
    first_block bigint;
    forgotten integer := 0;
BEGIN
    FOR first_block IN
        SELECT DISTINCT b / per_range * per_range FROM pg_catalog.unnest(blocks) AS b ORDER BY 1
    LOOP
        PERFORM pg_catalog.brin_desummarize_range('meter_event_outbox_created_brin'::regclass,
                                                  first_block);
        forgotten := forgotten + 1;
    END LOOP;
    RETURN forgotten;
EXCEPTION WHEN lock_not_available THEN
    RETURN -1;
END $$;

-- Summarize every range without a summary. Returns how many, or -1 when the table was busy.
CREATE OR REPLACE FUNCTION meter_event_outbox_summarize_ranges() RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RETURN pg_catalog.brin_summarize_new_values('meter_event_outbox_created_brin'::regclass);
EXCEPTION WHEN lock_not_available THEN
    RETURN -1;
END $$;

-- The lock timeout is the functions' own setting, restored when they return (a SET LOCAL
-- would stay for the rest of the caller's transaction).
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_forget_ranges(bigint[]) SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp SET lock_timeout = ''50ms''', current_schema());
    EXECUTE format('ALTER FUNCTION meter_event_outbox_summarize_ranges() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp SET lock_timeout = ''50ms''', current_schema());
END $pin$;
REVOKE ALL ON FUNCTION meter_event_outbox_forget_ranges(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION meter_event_outbox_summarize_ranges() FROM PUBLIC;
