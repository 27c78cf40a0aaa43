-- Every statement that changes the outbox adds one row to meter_event_outbox_tally_deltas (the
-- statement-level tally triggers, outbox_0015), which the relay's fold moves into the tallies
-- every upkeep interval. For an application that records one fact per transaction that row is
-- about 87 of the ~830 bytes of WAL its insert writes, and the fold's delete of it logs more.
-- The deltas live here, UNLOGGED, instead: no WAL for either.
--
-- A crash of PostgreSQL empties an UNLOGGED table (so do a failover to a standby, and a restore
-- of a base backup): the deltas not yet folded are lost, and the tallies would be wrong from
-- then on. The loss is detected, as the lease table's is (outbox_0020): the UNLOGGED one-row
-- marker below is emptied with the deltas. The fold that finds it gone recounts every tally
-- from the outbox and re-creates the marker, all in one statement, so under one snapshot: the
-- rows the count sees were committed by exactly the transactions whose deltas it deletes (a
-- row and its delta are written by one transaction), and the deltas of transactions that
-- commit later stay for the next fold. Until that fold (one upkeep interval with a relay
-- running), `status`, the console and /metrics show the tallies as last folded.
--
-- A prepared transaction (two-phase commit) survives a crash, its delta row does not: counted
-- before its COMMIT PREPARED (invisible then) and never after (no delta), its rows would be
-- missing from the tallies for good. So the first fold that finds the marker gone records when
-- it noticed, and the recount waits (a WARNING in the server log each fold) until no prepared
-- transaction of this database is older than that; later ones wrote their deltas after the
-- loss. The recount needs a snapshot taken after that check: READ COMMITTED only (the relay's
-- transactions are; another caller's fold just folds nothing).
--
-- A database moved by logical replication (which skips UNLOGGED tables) or from a copy of the
-- data only lost its leases too: run `outbox-relay recover` there (docs/operations.md).
--
-- Hot standbys: the statements that read only the tallies and the deltas (customers with the
-- most unsent rows, the rows held for their meter, failures per code) need the primary now, as
-- `status` and the console already did (they probe the UNLOGGED lease table).
ALTER TABLE meter_event_outbox_tally_deltas SET UNLOGGED;

CREATE UNLOGGED TABLE IF NOT EXISTS meter_event_outbox_tally_epoch (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    -- NULL: the deltas are whole. Else when a fold found the marker gone: a recount is owed.
    lost_noticed_at timestamptz
);
INSERT INTO meter_event_outbox_tally_epoch DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Not SECURITY DEFINER: the relay folds with its own rights, which a lookalike would borrow.
-- Built-in functions and the one mixed-type operator are named in pg_catalog (outbox_0027).
CREATE OR REPLACE FUNCTION outbox_fold_counts() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
    noticed timestamptz;
BEGIN
    -- keyed by this schema's delta table: outboxes in other schemas fold on their own
    IF NOT pg_catalog.pg_try_advisory_xact_lock(
            pg_catalog.hashtext('outbox_fold_counts'::text),
            'meter_event_outbox_tally_deltas'::regclass::oid::int) THEN
        RETURN 0;
    END IF;
    SELECT e.lost_noticed_at INTO noticed FROM meter_event_outbox_tally_epoch e;
    IF NOT FOUND THEN  -- the deltas were lost
        noticed := pg_catalog.clock_timestamp();
        INSERT INTO meter_event_outbox_tally_epoch (lost_noticed_at) VALUES (noticed);
    END IF;
    IF noticed IS NOT NULL THEN
        IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>)
               'read committed' THEN
            RETURN 0;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts p
                   WHERE p.database OPERATOR(pg_catalog.=) pg_catalog.current_database()
                     AND p.prepared OPERATOR(pg_catalog.<=) noticed) THEN
            RAISE WARNING 'outbox tallies: the recount owed since % waits for the prepared'
                          ' transactions of this database older than that', noticed;
            RETURN 0;
        END IF;
        -- Count every tally again (one statement, one snapshot, taken now).
        WITH gone AS (
            DELETE FROM meter_event_outbox_tally_deltas RETURNING 1
        ), counted AS (
            -- Grouped first on what the keys read of each state (the history's rows fall into
            -- a handful of groups), then into keys: about 1 us per row of the outbox, where
            -- the keys of every row cost 4.6 (bench.tally_recount). Grouping on the raw
            -- columns costs the same on 10,000 customers, but keeps one group per customer and
            -- event name of the history: a hash that outgrows work_mem with many customers.
            -- The CASEs say which columns outbox_tally_keys() (outbox_0018) reads per state:
            -- change the two together (test_status_tallies.py compares with a live count).
            SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
                   pg_catalog.sum(g.n)::bigint AS n
            FROM (SELECT o.state,
                         CASE WHEN o.state IN ('pending', 'failed', 'rejected')
                              THEN o.last_error_code END AS code,
                         CASE WHEN o.state = 'pending' THEN o.stripe_account END AS account,
                         CASE WHEN o.state IN ('pending', 'in_flight')
                              THEN o.customer END AS customer,
                         CASE WHEN o.state = 'pending' THEN o.event_name END AS event_name,
                         pg_catalog.count(*) AS n
                  FROM meter_event_outbox o
                  GROUP BY 1, 2, 3, 4, 5) g,
                 outbox_tally_keys(g.state, g.code, g.account, g.customer, g.event_name) k
            GROUP BY 1, 2, 3, 4, 5
        ), kept AS (
            INSERT INTO meter_event_outbox_tallies AS t
                (state, code, stripe_account, customer, event_name, n)
            SELECT state, code, stripe_account, customer, event_name, n FROM counted
            ON CONFLICT (state, code, stripe_account, customer, event_name)
            DO UPDATE SET n = excluded.n WHERE t.n IS DISTINCT FROM excluded.n
        ), cleared AS (
            UPDATE meter_event_outbox_tallies t SET n = 0
            WHERE t.n OPERATOR(pg_catalog.<>) 0
              AND NOT EXISTS (SELECT 1 FROM counted c
                              WHERE (c.state, c.code, c.stripe_account, c.customer, c.event_name)
                                  = (t.state, t.code, t.stripe_account, t.customer, t.event_name))
        ), marked AS (
            UPDATE meter_event_outbox_tally_epoch SET lost_noticed_at = NULL
        )
        SELECT pg_catalog.count(*) INTO folded FROM gone;
    ELSE
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
    END IF;
    DELETE FROM meter_event_outbox_tallies
    WHERE n = 0 AND state NOT IN ('accepted', 'cancelled');
    RETURN folded;
END $$;

-- The roles of `outbox-relay roles` (relay/db/roles.sql), where they exist: the new table gets
-- what that script grants on every outbox table, so a relay folds before the script runs again.
DO $grants$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_relay') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON meter_event_outbox_tally_epoch TO outbox_relay;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_reader') THEN
        GRANT SELECT ON meter_event_outbox_tally_epoch TO outbox_reader;
    END IF;
END $grants$;
