-- The relay's outcome writes the tally deltas of its own rows, in the same statement, and the
-- update trigger skips that statement. The trigger (0023) reads both transition tables, every
-- column of every old and new row version, groups them on all five keys and writes one delta
-- row: 3-4 us per updated row with empty documents, about 6 with 1 KB of metadata (the whole
-- row versions are read back). The outcome knows what the trigger works out: every row it
-- updates was pending, only its state and last error code change (account, customer and event
-- name are returned as they are), and the new ones are returned. So it writes the same deltas
-- from its RETURNING rows, grouped on the keys that moved (docs/design.md, "The tallies").
--
-- The row's code before the outcome comes with its lease: the claim reads the row under its
-- lock and the lease keeps that code (last_error_code below). Only an outcome changes the code
-- of a pending row, and an outcome needs the lease: a webhook's rejection, the fold and a
-- cancel leave it alone or take the row out of pending (and the outcome then writes nothing for
-- it). A lease taken by a relay of the previous release has no code (NULL), and that relay's
-- outcome is counted by the trigger as before: it never sets the flag.
--
-- The flag is transaction-local (set_config(..., true)) and consumed by the trigger of the
-- statement that set it: an AFTER STATEMENT trigger fires once for every UPDATE, even of no
-- row, so it never outlives that statement. Only a role that may update the outbox can set it
-- to any effect (the relay and the owner, who may write the deltas anyway); an application's
-- role only inserts.
ALTER TABLE meter_event_outbox_leases ADD COLUMN IF NOT EXISTS last_error_code text;

CREATE OR REPLACE FUNCTION meter_event_outbox_tally_update_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    ks text[]; cs text[]; acs text[]; us text[]; es text[]; ds bigint[];
BEGIN
    -- The relay's outcome statement (record_outcomes) wrote this statement's deltas itself and
    -- said so: the flag is consumed here, so the next update of the transaction is counted.
    IF pg_catalog.current_setting('outbox.tallied', true) = 'statement' THEN
        PERFORM pg_catalog.set_config('outbox.tallied', '', true);
        RETURN NULL;
    END IF;
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

-- CREATE OR REPLACE resets the function's settings: pinned again, as 0027 did.
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_tally_update_changes() SECURITY DEFINER'
                   ' SET search_path = pg_catalog, %I, pg_temp', current_schema());
END $pin$;
