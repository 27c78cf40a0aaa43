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

-- A row is now about 62 bytes narrower when recorded, and its outcome's new version is still a
-- few dozen bytes wider than the recorded one (state, carried acceptance, relay, timestamps).
-- outbox_0022's fillfactor 45 kept room on a page for one new version of each row it was
-- filled with for rows of about 230 bytes and more: a row of bench.db_cost's shape (a dimension
-- and a metadata key, short identifier) is now about 190 bytes, and one outcome in eight moved
-- to another page (tests/integration/relay/test_wal_cost.py), logging its whole tuple and a
-- lock record for the old one. At 40 the room fits rows of about 100 bytes and more, and a
-- page still holds more rows than it held at 45 with the payload. New pages only: no rewrite,
-- and the lock (SHARE UPDATE EXCLUSIVE) is taken under the drop's.
ALTER TABLE meter_event_outbox SET (fillfactor = 40);
