-- The rules of outbox/rules.py in SQL. tests/integration/library/test_rules_schema.py tries each boundary against
-- the Python constants, so the two cannot drift apart silently.

-- One ALTER TABLE: existing rows are checked against all new constraints in one scan.
ALTER TABLE meter_event_outbox
    -- The reference instant of the window: the statement's time, which the library's insert
    -- also judges against (transaction start, now(), would age during a long transaction).
    ALTER COLUMN created_at SET DEFAULT statement_timestamp(),
    ALTER COLUMN occurred_at SET DEFAULT statement_timestamp(),
    DROP CONSTRAINT meter_event_outbox_occurred_at_window,
    -- Stripe's window relative to when the row was written: at most 35 days (840 hours: a day
    -- interval would depend on the session's time zone) old, at most 5 minutes ahead. Relative
    -- to created_at, not the clock, so a restore of old rows still passes; the relay re-checks
    -- against the clock before sending.
    ADD CONSTRAINT meter_event_outbox_occurred_at_window
        CHECK (occurred_at >= created_at - interval '840 hours'
               AND occurred_at <= created_at + interval '5 minutes'),
    DROP CONSTRAINT meter_event_outbox_dimensions_valid,
    -- A JSON object of non-empty string keys to string values, no key the meter reserves.
    ADD CONSTRAINT meter_event_outbox_dimensions_valid
        CHECK (jsonb_typeof(dimensions) = 'object'
               AND NOT jsonb_path_exists(dimensions, '$.* ? (@.type() != "string")')
               AND NOT dimensions ?| ARRAY['stripe_customer_id', 'value', '']),
    DROP CONSTRAINT meter_event_outbox_metadata_valid,
    -- A JSON object of at most 16384 bytes as printed, nested at most 32 levels (no object or
    -- array at path level 32). The size comes first: AND stops there for huge documents.
    ADD CONSTRAINT meter_event_outbox_metadata_valid
        CHECK (jsonb_typeof(metadata) = 'object'
               AND octet_length(metadata::text) <= 16384
               AND NOT jsonb_path_exists(
                   metadata, 'strict $.**{32} ? (@.type() == "object" || @.type() == "array")'));

CREATE OR REPLACE FUNCTION outbox_record_usage(
    event_name      text,
    customer        text,
    value           numeric,
    identifier      text,
    occurred_at     timestamptz DEFAULT NULL,
    dimensions      jsonb DEFAULT '{}'::jsonb,
    metadata        jsonb DEFAULT '{}'::jsonb,
    stripe_account  text DEFAULT NULL,
    notify          boolean DEFAULT true
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
    old    meter_event_outbox%ROWTYPE;
BEGIN
    INSERT INTO meter_event_outbox AS o
        (identifier, event_name, customer, value, dimensions, metadata, occurred_at, stripe_account)
    VALUES (outbox_record_usage.identifier, outbox_record_usage.event_name,
            outbox_record_usage.customer, outbox_record_usage.value,
            coalesce(outbox_record_usage.dimensions, '{}'::jsonb),
            coalesce(outbox_record_usage.metadata, '{}'::jsonb),
            coalesce(outbox_record_usage.occurred_at, statement_timestamp()),
            outbox_record_usage.stripe_account)
    ON CONFLICT ON CONSTRAINT meter_event_outbox_identifier_key DO NOTHING
    RETURNING o.id INTO new_id;

    IF new_id IS NOT NULL THEN
        IF notify THEN
            PERFORM outbox_wake();
        END IF;
        RETURN new_id;
    END IF;

    SELECT * INTO old FROM meter_event_outbox o WHERE o.identifier = outbox_record_usage.identifier;
    IF old.event_name IS DISTINCT FROM outbox_record_usage.event_name
       OR old.customer IS DISTINCT FROM outbox_record_usage.customer
       OR old.value IS DISTINCT FROM outbox_record_usage.value
       OR old.dimensions IS DISTINCT FROM coalesce(outbox_record_usage.dimensions, '{}'::jsonb)
       OR old.stripe_account IS DISTINCT FROM outbox_record_usage.stripe_account
       OR (outbox_record_usage.occurred_at IS NOT NULL
           AND old.occurred_at IS DISTINCT FROM outbox_record_usage.occurred_at)
    THEN
        RAISE EXCEPTION 'identifier conflict: % is already recorded with different content',
            outbox_record_usage.identifier
            USING ERRCODE = 'unique_violation',
                  CONSTRAINT = 'meter_event_outbox_identifier_key';
    END IF;
    RETURN old.id;
END $$;
