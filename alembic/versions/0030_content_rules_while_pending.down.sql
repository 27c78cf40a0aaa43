-- The rules of outbox_0004 and outbox_0008 again, checked on every update. Added NOT VALID
-- and validated while the table is small, as the upgrade does: a row that left pending since
-- the upgrade was not checked again, and a scan under ALTER TABLE's lock would stop inserts.
ALTER TABLE meter_event_outbox
    DROP CONSTRAINT meter_event_outbox_identifier_valid,
    ADD CONSTRAINT meter_event_outbox_identifier_valid
        CHECK (identifier !~ '[^\x20-\x7e]' AND length(identifier) BETWEEN 1 AND 100) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_event_name_valid,
    ADD CONSTRAINT meter_event_outbox_event_name_valid
        CHECK (event_name !~ '[^\x20-\x7e]' AND length(event_name) BETWEEN 1 AND 100) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_customer_valid,
    ADD CONSTRAINT meter_event_outbox_customer_valid
        CHECK (customer !~ '[^\x21-\x7e]' AND length(customer) BETWEEN 1 AND 255) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_value_valid,
    ADD CONSTRAINT meter_event_outbox_value_valid
        CHECK (value >= 0 AND value < 1000000000000000::bigint AND value = trunc(value)) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_dimensions_valid,
    ADD CONSTRAINT meter_event_outbox_dimensions_valid
        CHECK (jsonb_typeof(dimensions) = 'object'
               AND NOT jsonb_path_exists(dimensions, '$.* ? (@.type() != "string")')
               AND NOT dimensions ?| ARRAY['stripe_customer_id', 'value', '']) NOT VALID,
    DROP CONSTRAINT meter_event_outbox_metadata_valid,
    ADD CONSTRAINT meter_event_outbox_metadata_valid
        CHECK (jsonb_typeof(metadata) = 'object'
               AND octet_length(metadata::text) <= 16384
               AND NOT jsonb_path_exists(
                   metadata, 'strict $.**{32} ? (@.type() == "object" || @.type() == "array")'))
        NOT VALID,
    DROP CONSTRAINT meter_event_outbox_stripe_account_valid,
    ADD CONSTRAINT meter_event_outbox_stripe_account_valid
        CHECK (stripe_account IS NULL OR stripe_account ~ '^acct_[A-Za-z0-9]{1,250}$') NOT VALID,
    DROP CONSTRAINT meter_event_outbox_trace_context_size,
    ADD CONSTRAINT meter_event_outbox_trace_context_size
        CHECK (octet_length(trace_context) <= 256) NOT VALID;

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
