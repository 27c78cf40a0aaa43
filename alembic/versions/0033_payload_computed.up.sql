-- The stored generated column `payload` (outbox_0001: the JSON a v1 call sends, the row's
-- dimensions with the customer and the value under Stripe's default keys) is dropped: since
-- this release the relay builds that JSON itself from the same three columns (the claim's lease
-- statement, `inspect`), and nothing of the project reads the column. Storing it cost every
-- recorded fact about 70 bytes of WAL (the row's bytes and its page's share) and every UPDATE of
-- the outbox the expression's rebuild (PostgreSQL 15 computes stored generated columns again on
-- each update, whichever columns it sets: each outcome, per row).
--
-- Relays of an earlier release read it as `o.payload` (their claim): with no column of that
-- name, PostgreSQL reads `o.payload` as `payload(o)`, the function below, which gives the same
-- JSON from the same columns. So they keep working beside this release during a rolling
-- upgrade. An unqualified `payload` (their `inspect`) no longer resolves: use this release's.
ALTER TABLE meter_event_outbox DROP COLUMN payload;

-- Built-in functions named in pg_catalog (outbox_0027); no SET, so PostgreSQL inlines it.
CREATE OR REPLACE FUNCTION payload(meter_event_outbox) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT $1.dimensions OPERATOR(pg_catalog.||) pg_catalog.jsonb_object(
        ARRAY['stripe_customer_id'::text, $1.customer, 'value'::text,
              pg_catalog.trunc($1.value)::text])
$$;
