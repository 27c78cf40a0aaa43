-- Back to outbox_0032: fillfactor 45, the stored generated column again (the table is rewritten
-- at that fillfactor: every row's payload is computed and stored, under an exclusive lock), and
-- the function gone.
ALTER TABLE meter_event_outbox SET (fillfactor = 45);
DROP FUNCTION IF EXISTS payload(meter_event_outbox);
ALTER TABLE meter_event_outbox ADD COLUMN payload jsonb GENERATED ALWAYS AS (
    dimensions || jsonb_object(ARRAY['stripe_customer_id', customer, 'value', trunc(value)::text])
) STORED;
