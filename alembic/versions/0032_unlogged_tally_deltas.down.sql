-- Back to outbox_0031: the tally deltas logged again (the table is written to the WAL once, as
-- it stands), the marker gone, and the fold of outbox_0027, which never recounts.
-- A recount owed (a crash emptied the deltas, no fold has recounted yet) is done first: that
-- fold never would, and the tallies would stay short of the lost deltas for good. It can wait
-- (a prepared transaction older than the loss, another session folding): the downgrade then
-- stops, to be run again.
SELECT outbox_fold_counts();
DO $owed$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM meter_event_outbox_tally_epoch
                   WHERE lost_noticed_at IS NULL) THEN
        RAISE EXCEPTION 'outbox_0032 downgrade: the tallies owe a recount that could not run now'
            USING HINT = 'Stop the relays, COMMIT or ROLLBACK the prepared transactions of this '
                         'database (pg_prepared_xacts), then downgrade again.';
    END IF;
END $owed$;
ALTER TABLE meter_event_outbox_tally_deltas SET LOGGED;
DROP TABLE IF EXISTS meter_event_outbox_tally_epoch;

-- Not SECURITY DEFINER: the relay folds with its own rights, which a lookalike would borrow.
CREATE OR REPLACE FUNCTION outbox_fold_counts() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    -- keyed by this schema's delta table: outboxes in other schemas fold on their own
    IF NOT pg_catalog.pg_try_advisory_xact_lock(
            pg_catalog.hashtext('outbox_fold_counts'::text),
            'meter_event_outbox_tally_deltas'::regclass::oid::int) THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM meter_event_outbox_tally_deltas d RETURNING d.*
    ), summed AS (
        SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
               pg_catalog.sum(k.delta) AS delta
        FROM (SELECT state, code, stripe_account, customer, event_name, delta FROM moved
              UNION ALL
              SELECT u.state, u.code, u.stripe_account, u.customer,
                     coalesce(u.event_name, ''), u.delta
              FROM moved m,
                   ROWS FROM (pg_catalog.unnest(m.states), pg_catalog.unnest(m.codes),
                              pg_catalog.unnest(m.accounts), pg_catalog.unnest(m.customers),
                              pg_catalog.unnest(m.events), pg_catalog.unnest(m.deltas))
                  AS u(state, code, stripe_account, customer, event_name, delta)
              WHERE m.states IS NOT NULL) k
        GROUP BY 1, 2, 3, 4, 5 HAVING pg_catalog.sum(k.delta) OPERATOR(pg_catalog.<>) 0
    ), applied AS (
        INSERT INTO meter_event_outbox_tallies AS t
            (state, code, stripe_account, customer, event_name, n)
        SELECT state, code, stripe_account, customer, event_name, delta FROM summed
        ON CONFLICT (state, code, stripe_account, customer, event_name)
        DO UPDATE SET n = t.n + excluded.n
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO folded FROM moved;
    DELETE FROM meter_event_outbox_tallies
    WHERE n = 0 AND state NOT IN ('accepted', 'cancelled');
    RETURN folded;
END $$;
