-- The tally deltas of an UPDATE (every outcome the relay writes), at less CPU per row.
-- meter_event_outbox_tally_changes() (0018) expands each old and new row version into its keys
-- through outbox_tally_keys() (a lateral VALUES list: a rescan per row) and groups every key on
-- all five columns. Here the two kinds of key are grouped apart, each on the columns it has:
-- the state keys (any row version but a pending one without a code) on state, code, account
-- and event name, the unsent rows per customer (pending or in flight) on the customer alone.
-- The keys are the ones outbox_tally_keys() gives (0018; test_status_tallies.py compares the
-- tallies with a live count under concurrent writers, outcomes, deletes and folds). About
-- 3.5 us of CPU per updated row before, 1.5 after. INSERT and DELETE keep the 0018 function,
-- and so does a downgrade.
CREATE OR REPLACE FUNCTION meter_event_outbox_tally_update_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ks text[]; cs text[]; acs text[]; us text[]; es text[]; ds bigint[];
BEGIN
    WITH r AS MATERIALIZED (
        SELECT state, last_error_code AS code, stripe_account, customer, event_name, 1 AS delta
        FROM new_rows
        UNION ALL
        SELECT state, last_error_code, stripe_account, customer, event_name, -1 FROM old_rows
    )
    SELECT array_agg(k.state), array_agg(k.code), array_agg(k.stripe_account),
           array_agg(k.customer), array_agg(k.event_name), array_agg(k.delta)
    INTO ks, cs, acs, us, es, ds
    FROM (SELECT r.state,
                 CASE WHEN r.state IN ('pending', 'failed', 'rejected')
                      THEN coalesce(r.code, '') ELSE '' END,
                 CASE WHEN r.state = 'pending' THEN coalesce(r.stripe_account, '') ELSE '' END,
                 '',
                 CASE WHEN r.state = 'pending' THEN r.event_name ELSE '' END,
                 sum(r.delta)::bigint
          FROM r WHERE r.state <> 'pending' OR r.code IS NOT NULL
          GROUP BY 1, 2, 3, 5 HAVING sum(r.delta) <> 0
          UNION ALL
          SELECT '', '', '', r.customer, '', sum(r.delta)::bigint
          FROM r WHERE r.state IN ('pending', 'in_flight')
          GROUP BY r.customer HAVING sum(r.delta) <> 0)
         AS k(state, code, stripe_account, customer, event_name, delta);
    IF ks IS NOT NULL THEN
        INSERT INTO meter_event_outbox_tally_deltas
            (state, code, stripe_account, customer, event_name, delta,
             states, codes, accounts, customers, events, deltas)
        VALUES (ks[1], cs[1], acs[1], us[1], es[1], ds[1],
                CASE WHEN cardinality(ks) > 1 THEN ks[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN cs[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN acs[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN us[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN es[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN ds[2:] END);
    END IF;
    RETURN NULL;
END $$;

-- As the 0018 function: whoever updates the row writes the deltas (an application cancelling
-- through a role without rights on the delta table).
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_tally_update_changes() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
END $pin$;

DROP TRIGGER IF EXISTS meter_event_outbox_tally_updates ON meter_event_outbox;
CREATE TRIGGER meter_event_outbox_tally_updates
    AFTER UPDATE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_tally_update_changes();

-- A fold updates one tally row per customer whose unsent count changed (10,000 customers:
-- 10,000 updates). With room on each page the new version stays on it (a HOT update): no new
-- entry in the five-column primary key. bench.relay_throughput (e): 570 ms of its fold of
-- 100,000 outcomes before; the fold's CPU in isolation 217 ms -> 141 ms.
ALTER TABLE meter_event_outbox_tallies SET (fillfactor = 50);
