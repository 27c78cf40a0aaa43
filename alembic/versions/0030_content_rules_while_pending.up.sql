-- The rules on what the application writes (identifier, event name, customer, value,
-- dimensions, metadata, account, trace context) are checked while a row is pending: when it is
-- inserted, and whenever it is or becomes pending again (a retry). PostgreSQL evaluates every
-- CHECK of a table on every update of a row, whichever columns the update sets, so each outcome
-- the relay wrote re-checked content that no statement of the relay ever changes: two JSON path
-- walks and the metadata printed as text, four regular expressions. That cost grows with the
-- row's metadata: 0.6 us of an outcome's ~21 us per row with empty metadata and dimensions,
-- 3.4 us of ~31 with 1 KB of metadata and three dimensions (docs/benchmarks.md). A row that has
-- left pending is history: its content was checked before it could be sent, and the relay's
-- own rules (state, action, attempts, lease) are still checked on every update. So is the time
-- window (occurred_at_window, two comparisons): the queries bounded by time rely on it for
-- every row (drift bounds created_at by occurred_at).
--
-- Each constraint keeps its name (the library and the CLI say which rule a value broke by it).
-- A constraint added to a table is checked against every row already there, under the lock
-- that ALTER TABLE holds until the migration commits, which would stop the application's
-- inserts for the length of a scan of the whole table. The new rules are implied by the old
-- ones, which every row met, so the scan can find nothing: the constraints are added NOT VALID
-- (enforced from now on, for every insert and update) and validated here only while the table
-- is small (up to 64 MB of heap and TOAST, a scan of well under a second). On a larger table
-- `outbox-relay doctor` says how to validate them later, online:
-- `ALTER TABLE meter_event_outbox VALIDATE CONSTRAINT ...` takes a lock that lets inserts, the
-- relay and updates go on.
ALTER TABLE meter_event_outbox
    DROP CONSTRAINT meter_event_outbox_identifier_valid,
    ADD CONSTRAINT meter_event_outbox_identifier_valid
        CHECK (state <> 'pending'
               OR (identifier !~ '[^\x20-\x7e]'
                   AND length(identifier) BETWEEN 1 AND 100)) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_event_name_valid,
    ADD CONSTRAINT meter_event_outbox_event_name_valid
        CHECK (state <> 'pending'
               OR (event_name !~ '[^\x20-\x7e]'
                   AND length(event_name) BETWEEN 1 AND 100)) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_customer_valid,
    ADD CONSTRAINT meter_event_outbox_customer_valid
        CHECK (state <> 'pending'
               OR (customer !~ '[^\x21-\x7e]'
                   AND length(customer) BETWEEN 1 AND 255)) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_value_valid,
    ADD CONSTRAINT meter_event_outbox_value_valid
        CHECK (state <> 'pending'
               OR (value >= 0 AND value < 1000000000000000::bigint AND value = trunc(value)))
        NOT VALID,
    DROP CONSTRAINT meter_event_outbox_dimensions_valid,
    ADD CONSTRAINT meter_event_outbox_dimensions_valid
        CHECK (state <> 'pending'
               OR (jsonb_typeof(dimensions) = 'object'
                   AND NOT jsonb_path_exists(dimensions, '$.* ? (@.type() != "string")')
                   AND NOT dimensions ?| ARRAY['stripe_customer_id', 'value', ''])) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_metadata_valid,
    ADD CONSTRAINT meter_event_outbox_metadata_valid
        CHECK (state <> 'pending'
               OR (jsonb_typeof(metadata) = 'object'
                   AND octet_length(metadata::text) <= 16384
                   AND NOT jsonb_path_exists(
                       metadata,
                       'strict $.**{32} ? (@.type() == "object" || @.type() == "array")')))
        NOT VALID,
    DROP CONSTRAINT meter_event_outbox_stripe_account_valid,
    ADD CONSTRAINT meter_event_outbox_stripe_account_valid
        CHECK (state <> 'pending'
               OR stripe_account IS NULL OR stripe_account ~ '^acct_[A-Za-z0-9]{1,250}$')
        NOT VALID,
    DROP CONSTRAINT meter_event_outbox_trace_context_size,
    ADD CONSTRAINT meter_event_outbox_trace_context_size
        CHECK (state <> 'pending' OR octet_length(trace_context) <= 256) NOT VALID;

DO $validate$
DECLARE
    rule text;
BEGIN
    -- pg_table_size: the heap and its TOAST table, where the metadata of rows with large
    -- documents lives (the metadata rule reads it all back).
    IF pg_catalog.pg_table_size('meter_event_outbox'::regclass) > 64 * 1024 * 1024 THEN
        RETURN;
    END IF;
    -- These eight only: a NOT VALID constraint of the application's own on this table is left
    -- as its owner left it (its old rows may break it on purpose).
    FOR rule IN
        SELECT c.conname FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = 'meter_event_outbox'::regclass AND c.contype = 'c'
          AND NOT c.convalidated
          AND c.conname = ANY (ARRAY[
              'meter_event_outbox_customer_valid', 'meter_event_outbox_dimensions_valid',
              'meter_event_outbox_event_name_valid', 'meter_event_outbox_identifier_valid',
              'meter_event_outbox_metadata_valid', 'meter_event_outbox_stripe_account_valid',
              'meter_event_outbox_trace_context_size', 'meter_event_outbox_value_valid']::name[])
        ORDER BY c.conname
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE meter_event_outbox VALIDATE CONSTRAINT %I', rule);
    END LOOP;
END $validate$;

-- A fresh table's block range index holds one summary, of the empty first range, made when
-- the index was built: every insert into that range then logged the widening of its summary
-- (about 30 bytes of WAL per fact) until the range filled, where an unsummarized range costs
-- an insert nothing. Forgotten while the table is still within its first range (the index's
-- pages_per_range, 128 unless it was rebuilt with another): autosummarize summarizes it once it
-- is full (the next range's first insert asks for it), as it does every later range. An
-- unsummarized range is read by every query bounded by time: correct, and the range is small.
DO $fresh$
DECLARE
    per_range bigint := coalesce(
        (SELECT o.option_value::bigint
         FROM pg_catalog.pg_class c, pg_catalog.pg_options_to_table(c.reloptions) o
         WHERE c.oid = 'meter_event_outbox_created_brin'::regclass::oid
           AND o.option_name = 'pages_per_range'::text), 128);
BEGIN
    IF pg_catalog.pg_relation_size('meter_event_outbox'::regclass)
       < per_range * pg_catalog.current_setting('block_size')::bigint THEN
        PERFORM pg_catalog.brin_desummarize_range('meter_event_outbox_created_brin'::regclass,
                                                  0::bigint);
    END IF;
END $fresh$;
