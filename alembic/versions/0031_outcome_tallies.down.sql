-- The trigger counts every update again (the 0027 body), and leases forget the code. A relay
-- of this release is stopped before a downgrade (it sets the flag the old body ignores: its
-- outcomes would be counted twice).
CREATE OR REPLACE FUNCTION meter_event_outbox_tally_update_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    ks text[]; cs text[]; acs text[]; us text[]; es text[]; ds bigint[];
BEGIN
    WITH r AS MATERIALIZED (
        SELECT state, last_error_code AS code, stripe_account, customer, event_name, 1 AS delta
        FROM new_rows
        UNION ALL
        SELECT state, last_error_code, stripe_account, customer, event_name, -1 FROM old_rows
    )
    SELECT pg_catalog.array_agg(k.state), pg_catalog.array_agg(k.code),
           pg_catalog.array_agg(k.stripe_account), pg_catalog.array_agg(k.customer),
           pg_catalog.array_agg(k.event_name), pg_catalog.array_agg(k.delta)
    INTO ks, cs, acs, us, es, ds
    FROM (SELECT r.state,
                 CASE WHEN r.state IN ('pending', 'failed', 'rejected')
                      THEN coalesce(r.code, '') ELSE '' END,
                 CASE WHEN r.state = 'pending' THEN coalesce(r.stripe_account, '') ELSE '' END,
                 '',
                 CASE WHEN r.state = 'pending' THEN r.event_name ELSE '' END,
                 pg_catalog.sum(r.delta)::bigint
          FROM r WHERE r.state <> 'pending' OR r.code IS NOT NULL
          GROUP BY 1, 2, 3, 5 HAVING pg_catalog.sum(r.delta) <> 0
          UNION ALL
          SELECT '', '', '', r.customer, '', pg_catalog.sum(r.delta)::bigint
          FROM r WHERE r.state IN ('pending', 'in_flight')
          GROUP BY r.customer HAVING pg_catalog.sum(r.delta) <> 0)
         AS k(state, code, stripe_account, customer, event_name, delta);
    IF ks IS NOT NULL THEN
        INSERT INTO meter_event_outbox_tally_deltas
            (state, code, stripe_account, customer, event_name, delta,
             states, codes, accounts, customers, events, deltas)
        VALUES (ks[1], cs[1], acs[1], us[1], es[1], ds[1],
                CASE WHEN pg_catalog.cardinality(ks) > 1 THEN ks[2:] END,
                CASE WHEN pg_catalog.cardinality(ks) > 1 THEN cs[2:] END,
                CASE WHEN pg_catalog.cardinality(ks) > 1 THEN acs[2:] END,
                CASE WHEN pg_catalog.cardinality(ks) > 1 THEN us[2:] END,
                CASE WHEN pg_catalog.cardinality(ks) > 1 THEN es[2:] END,
                CASE WHEN pg_catalog.cardinality(ks) > 1 THEN ds[2:] END);
    END IF;
    RETURN NULL;
END $$;

DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_tally_update_changes() SECURITY DEFINER'
                   ' SET search_path = pg_catalog, %I, pg_temp', current_schema());
END $pin$;

ALTER TABLE meter_event_outbox_leases DROP COLUMN IF EXISTS last_error_code;
