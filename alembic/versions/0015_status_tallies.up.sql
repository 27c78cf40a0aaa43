-- Status reads maintained tallies instead of counting rows. Before this, the pending, in-flight,
-- failed and rejected counts, the unsent rows by code and the customers with most unsent rows
-- were counted live through the partial indexes: fine for a small backlog, but 0.7-0.9 s of SQL
-- per `status` or /metrics with 1,000,000 pending rows.
--
-- Each statement that changes the outbox appends at most ONE delta row (never an update of a
-- counter row, which would make every writer wait on one row lock and write a new version of it
-- per fact): its first tally key in plain columns, any others in parallel arrays, summed within
-- the statement. The relay folds committed deltas into meter_event_outbox_tallies periodically
-- (outbox_fold_counts()); readers add the unfolded deltas (meter_event_outbox_tally). The keys,
-- chosen so that recording a fact changes one key and a claim (pending to in flight) none per
-- customer:
--   ('', '', '', customer)          unsent rows (pending or in flight) of this customer
--   ('in_flight', '', '', '')       rows in flight
--   ('pending', code, account, '')  pending rows with a code (holds and retries are per account:
--                                   a refused account, a meter); pending rows without a code are
--                                   the rest of the unsent rows (the view derives them)
--   (state, code, '', '')           failed and rejected rows per code
--   (state, '', '', '')             accepted, cancelled
-- Writers are kept out while the tallies are seeded, so the seed and the triggers see the same
-- rows (one count of the hot states through their partial indexes).
LOCK TABLE meter_event_outbox IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE meter_event_outbox_tallies (
    state          text NOT NULL,
    code           text NOT NULL,
    stripe_account text NOT NULL,
    customer       text NOT NULL,
    n              bigint NOT NULL,
    PRIMARY KEY (state, code, stripe_account, customer)
);

CREATE TABLE meter_event_outbox_tally_deltas (
    state          text NOT NULL,
    code           text NOT NULL,
    stripe_account text NOT NULL,
    customer       text NOT NULL,
    delta          bigint NOT NULL,
    -- the statement's other keys (NULL when it changed one)
    states         text[],
    codes          text[],
    accounts       text[],
    customers      text[],
    deltas         bigint[]
);

-- The tally keys of one row version (see above); inlined into the queries that use it.
CREATE FUNCTION outbox_tally_keys(text, text, text, text)
RETURNS TABLE (state text, code text, stripe_account text, customer text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT k.state, k.code, k.stripe_account, k.customer
    FROM (VALUES
        (CASE WHEN $1 <> 'pending' OR $2 IS NOT NULL THEN $1 END,
         CASE WHEN $1 IN ('pending', 'failed', 'rejected') THEN coalesce($2, '') ELSE '' END,
         CASE WHEN $1 = 'pending' THEN coalesce($3, '') ELSE '' END,
         ''),
        (CASE WHEN $1 IN ('pending', 'in_flight') THEN '' END, '', '', $4)
    ) k(state, code, stripe_account, customer)
    WHERE k.state IS NOT NULL
$$;

-- Seed: history from the old folded counters (never counted again), the hot states counted.
INSERT INTO meter_event_outbox_tallies (state, code, stripe_account, customer, n)
SELECT c.state, '', '', '', c.n + coalesce((SELECT sum(d.delta) FROM meter_event_outbox_count_deltas d
                                           WHERE d.state = c.state), 0)
FROM meter_event_outbox_counts c WHERE c.state IN ('accepted', 'cancelled');

INSERT INTO meter_event_outbox_tallies (state, code, stripe_account, customer, n)
SELECT k.state, k.code, k.stripe_account, k.customer, count(*)
FROM meter_event_outbox o,
     outbox_tally_keys(o.state, o.last_error_code, o.stripe_account, o.customer) k
WHERE o.state IN ('pending', 'in_flight', 'failed', 'rejected')
GROUP BY 1, 2, 3, 4;

DROP VIEW meter_event_outbox_status;
DROP TRIGGER meter_event_outbox_count_updates ON meter_event_outbox;
DROP TRIGGER meter_event_outbox_count_deletes ON meter_event_outbox;
DROP FUNCTION meter_event_outbox_count_changes();
DROP FUNCTION outbox_fold_counts();
DROP TABLE meter_event_outbox_count_deltas;
DROP TABLE meter_event_outbox_counts;

-- The deltas of one statement, from its transition tables (+1 per new row version, -1 per old
-- one), summed per key; keys whose changes cancel out are left out, and a statement that
-- changed nothing counted appends nothing. SECURITY DEFINER with a pinned search_path: an
-- application inserting through column grants (outbox_writer) has no right on the delta table,
-- and must not be able to substitute its own.
CREATE FUNCTION meter_event_outbox_tally_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ks text[]; cs text[]; acs text[]; us text[]; ds bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(k.state), array_agg(k.code), array_agg(k.stripe_account),
               array_agg(k.customer), array_agg(k.delta)
        INTO ks, cs, acs, us, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, count(*) AS delta
              FROM new_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer) k
              GROUP BY 1, 2, 3, 4) k;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(k.state), array_agg(k.code), array_agg(k.stripe_account),
               array_agg(k.customer), array_agg(k.delta)
        INTO ks, cs, acs, us, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, sum(r.delta)::bigint AS delta
              FROM (SELECT state, last_error_code, stripe_account, customer, 1 AS delta
                    FROM new_rows
                    UNION ALL
                    SELECT state, last_error_code, stripe_account, customer, -1
                    FROM old_rows) r,
                   outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                     r.customer) k
              GROUP BY 1, 2, 3, 4 HAVING sum(r.delta) <> 0) k;
    ELSE
        SELECT array_agg(k.state), array_agg(k.code), array_agg(k.stripe_account),
               array_agg(k.customer), array_agg(k.delta)
        INTO ks, cs, acs, us, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, -count(*) AS delta
              FROM old_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer) k
              GROUP BY 1, 2, 3, 4) k;
    END IF;
    IF ks IS NOT NULL THEN
        INSERT INTO meter_event_outbox_tally_deltas
        VALUES (ks[1], cs[1], acs[1], us[1], ds[1],
                CASE WHEN cardinality(ks) > 1 THEN ks[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN cs[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN acs[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN us[2:] END,
                CASE WHEN cardinality(ks) > 1 THEN ds[2:] END);
    END IF;
    RETURN NULL;
END $$;

DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_tally_changes() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
END $pin$;

-- Transition tables need one trigger per event.
CREATE TRIGGER meter_event_outbox_tally_inserts
    AFTER INSERT ON meter_event_outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_tally_changes();
CREATE TRIGGER meter_event_outbox_tally_updates
    AFTER UPDATE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_tally_changes();
CREATE TRIGGER meter_event_outbox_tally_deletes
    AFTER DELETE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_tally_changes();

-- Every delta key, one row each (the first in columns, the others in arrays).
CREATE VIEW meter_event_outbox_tally_delta_keys AS
SELECT state, code, stripe_account, customer, delta FROM meter_event_outbox_tally_deltas
UNION ALL
SELECT u.state, u.code, u.stripe_account, u.customer, u.delta
FROM meter_event_outbox_tally_deltas d,
     unnest(d.states, d.codes, d.accounts, d.customers, d.deltas)
         AS u(state, code, stripe_account, customer, delta)
WHERE d.states IS NOT NULL;

-- Fold committed deltas into the tallies, and drop the keys that reached zero so the tallies
-- hold only live keys. One fold at a time (a transaction-scoped advisory lock: another fold
-- returns at once): the delta rows are deleted without locking them first, which would write a
-- WAL record per row more.
CREATE FUNCTION outbox_fold_counts() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    -- keyed by this schema's delta table: outboxes in other schemas fold on their own
    IF NOT pg_try_advisory_xact_lock(hashtext('outbox_fold_counts'),
                                     'meter_event_outbox_tally_deltas'::regclass::oid::int) THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM meter_event_outbox_tally_deltas d RETURNING d.*
    ), summed AS (
        SELECT k.state, k.code, k.stripe_account, k.customer, sum(k.delta) AS delta
        FROM (SELECT state, code, stripe_account, customer, delta FROM moved
              UNION ALL
              SELECT u.state, u.code, u.stripe_account, u.customer, u.delta
              FROM moved m, unnest(m.states, m.codes, m.accounts, m.customers, m.deltas)
                  AS u(state, code, stripe_account, customer, delta)
              WHERE m.states IS NOT NULL) k
        GROUP BY 1, 2, 3, 4 HAVING sum(k.delta) <> 0
    ), applied AS (
        INSERT INTO meter_event_outbox_tallies AS t (state, code, stripe_account, customer, n)
        SELECT state, code, stripe_account, customer, delta FROM summed
        ON CONFLICT (state, code, stripe_account, customer) DO UPDATE SET n = t.n + excluded.n
        RETURNING 1
    )
    SELECT count(*) INTO folded FROM moved;
    DELETE FROM meter_event_outbox_tallies
    WHERE n = 0 AND state NOT IN ('accepted', 'cancelled');
    RETURN folded;
END $$;

-- Every tally, folded or not: what status, the console and /metrics read. Pending rows without
-- a code are derived: the unsent rows (the customers' keys) less those in flight and those
-- pending with a code, summed without grouping the customers. A filter on the state (`state
-- <> ''`, `state = ''`) reaches the scans below the grouping, so reading the states never
-- groups the customers' keys and reading the customers never groups the rest.
CREATE VIEW meter_event_outbox_tally AS
SELECT state, code, stripe_account, customer, sum(n)::bigint AS n
FROM (SELECT state, code, stripe_account, customer, n FROM meter_event_outbox_tallies
      UNION ALL
      SELECT state, code, stripe_account, customer, delta
      FROM meter_event_outbox_tally_delta_keys) t
GROUP BY 1, 2, 3, 4
HAVING sum(n) <> 0
UNION ALL
SELECT 'pending', '', '', '', p.n
FROM (SELECT coalesce(sum(CASE WHEN t.state = '' THEN t.n ELSE -t.n END), 0)::bigint AS n
      FROM (SELECT state, n FROM meter_event_outbox_tallies
            WHERE state IN ('', 'in_flight', 'pending')
            UNION ALL
            SELECT state, delta FROM meter_event_outbox_tally_delta_keys
            WHERE state IN ('', 'in_flight', 'pending')) t) p
WHERE p.n <> 0;

-- Rows per state (the view older relays and scripts read; oldest_available_at is no longer
-- computed: `status` reports the oldest unsent fact instead).
CREATE VIEW meter_event_outbox_status AS
SELECT s.state, coalesce(t.n, 0)::bigint AS n, NULL::timestamptz AS oldest_available_at
FROM unnest(ARRAY['pending', 'in_flight', 'accepted', 'failed', 'rejected', 'cancelled'])
         WITH ORDINALITY AS s(state, ord)
LEFT JOIN (SELECT state, sum(n) AS n FROM meter_event_outbox_tally WHERE state <> ''
           GROUP BY state) t ON t.state = s.state
ORDER BY s.ord;

-- The oldest unsent fact (the lag), one index probe. In-flight rows are in it too: there is no
-- other index of in-flight rows (the claim's lease lives in available_at), and a claim writes
-- a new row version whose entries go into every index its state matches anyway.
CREATE INDEX meter_event_outbox_unsent_age
    ON meter_event_outbox (created_at)
    WHERE state IN ('pending', 'in_flight');
-- Pending rows that wait for a reason (a code): per code, the next attempt is the first entry.
-- Fresh rows have no code and never enter it.
CREATE INDEX meter_event_outbox_waiting
    ON meter_event_outbox (last_error_code, available_at)
    WHERE state = 'pending' AND last_error_code IS NOT NULL;
