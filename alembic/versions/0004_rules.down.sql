-- Back to the rules of 0001: defaults and window on the transaction's start, no empty-key or
-- metadata-size constraint, outbox_record_usage() defaulting occurred_at to now().

ALTER TABLE meter_event_outbox
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN occurred_at SET DEFAULT now(),
    DROP CONSTRAINT meter_event_outbox_occurred_at_window,
    ADD CONSTRAINT meter_event_outbox_occurred_at_window
        CHECK (occurred_at >= created_at - interval '35 days'
               AND occurred_at <= created_at + interval '5 minutes'),
    DROP CONSTRAINT meter_event_outbox_dimensions_valid,
    ADD CONSTRAINT meter_event_outbox_dimensions_valid
        CHECK (jsonb_typeof(dimensions) = 'object'
               AND NOT jsonb_path_exists(dimensions, '$.* ? (@.type() != "string")')
               AND NOT dimensions ?| ARRAY['stripe_customer_id', 'value']),
    DROP CONSTRAINT meter_event_outbox_metadata_valid,
    ADD CONSTRAINT meter_event_outbox_metadata_valid
        CHECK (jsonb_typeof(metadata) = 'object');

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
            coalesce(outbox_record_usage.occurred_at, now()),
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
