-- Status reads maintained tallies instead of counting rows. Before this, the pending, in-flight,
-- failed and rejected counts, the unsent rows by code and the customers with most unsent rows
-- were counted live through the partial indexes: fine for a small backlog, but 0.7-0.9 s of SQL
-- per `status` or /metrics with 1,000,000 pending rows.
--
-- Each statement that changes the outbox appends ONE delta row (never an update of a counter
-- row, which would make every writer wait on one row lock and write a new version of it per
-- fact): parallel arrays of (state, code, account, customer, delta), grouped within the
-- statement. The relay folds committed deltas into meter_event_outbox_tallies periodically
-- (outbox_fold_counts()); readers add the unfolded deltas (meter_event_outbox_tally). The
-- tally keys:
--   (state, code, account, '')  per state; code for pending, failed and rejected rows ('' = no
--                               code); the account only for pending rows with a code (holds and
--                               retries are per account: a refused account, a meter)
--   ('', '', '', customer)      unsent rows (pending or in flight) per customer: a claim moves a
--                               row between two unsent states, so it adds nothing here
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
    states    text[] NOT NULL,
    codes     text[] NOT NULL,
    accounts  text[] NOT NULL,
    customers text[] NOT NULL,
    deltas    bigint[] NOT NULL
);

-- Seed: history from the old folded counters (never counted again), the hot states counted.
INSERT INTO meter_event_outbox_tallies (state, code, stripe_account, customer, n)
SELECT c.state, '', '', '', c.n + coalesce((SELECT sum(d.delta) FROM meter_event_outbox_count_deltas d
                                           WHERE d.state = c.state), 0)
FROM meter_event_outbox_counts c WHERE c.state IN ('accepted', 'cancelled');

INSERT INTO meter_event_outbox_tallies (state, code, stripe_account, customer, n)
SELECT state,
       CASE WHEN state IN ('pending', 'failed', 'rejected') THEN coalesce(last_error_code, '')
            ELSE '' END,
       CASE WHEN state = 'pending' AND last_error_code IS NOT NULL
            THEN coalesce(stripe_account, '') ELSE '' END,
       '', count(*)
FROM meter_event_outbox WHERE state IN ('pending', 'in_flight', 'failed', 'rejected')
GROUP BY 1, 2, 3;

INSERT INTO meter_event_outbox_tallies (state, code, stripe_account, customer, n)
SELECT '', '', '', customer, count(*)
FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')
GROUP BY customer;

DROP VIEW meter_event_outbox_status;
DROP TRIGGER meter_event_outbox_count_updates ON meter_event_outbox;
DROP TRIGGER meter_event_outbox_count_deletes ON meter_event_outbox;
DROP FUNCTION meter_event_outbox_count_changes();
DROP FUNCTION outbox_fold_counts();
DROP TABLE meter_event_outbox_count_deltas;
DROP TABLE meter_event_outbox_counts;

-- The tally keys of one changed row version (see above); inlined into the trigger's query.
CREATE FUNCTION outbox_tally_keys(text, text, text, text)
RETURNS TABLE (state text, code text, stripe_account text, customer text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT k.state, k.code, k.stripe_account, k.customer
    FROM (VALUES
        ($1,
         CASE WHEN $1 IN ('pending', 'failed', 'rejected') THEN coalesce($2, '') ELSE '' END,
         CASE WHEN $1 = 'pending' AND $2 IS NOT NULL THEN coalesce($3, '') ELSE '' END,
         ''),
        (CASE WHEN $1 IN ('pending', 'in_flight') THEN '' END, '', '', $4)
    ) k(state, code, stripe_account, customer)
    WHERE k.state IS NOT NULL
$$;

-- The deltas of one statement, from its transition tables (+1 per new row version, -1 per old
-- one), summed per key; keys whose changes cancel out are left out, and a statement that
-- changed nothing counted appends nothing. SECURITY DEFINER with a pinned search_path: an
-- application inserting through column grants (outbox_writer) has no right on the delta table,
-- and must not be able to substitute its own.
CREATE FUNCTION meter_event_outbox_tally_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO meter_event_outbox_tally_deltas
        SELECT array_agg(state), array_agg(code), array_agg(stripe_account),
               array_agg(customer), array_agg(delta)
        FROM (SELECT k.*, count(*) AS delta
              FROM new_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer) k
              GROUP BY 1, 2, 3, 4) g
        HAVING count(*) > 0;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO meter_event_outbox_tally_deltas
        SELECT array_agg(state), array_agg(code), array_agg(stripe_account),
               array_agg(customer), array_agg(delta)
        FROM (SELECT k.*, sum(r.delta)::bigint AS delta
              FROM (SELECT state, last_error_code, stripe_account, customer, 1 AS delta
                    FROM new_rows
                    UNION ALL
                    SELECT state, last_error_code, stripe_account, customer, -1
                    FROM old_rows) r,
                   outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                     r.customer) k
              GROUP BY 1, 2, 3, 4 HAVING sum(r.delta) <> 0) g
        HAVING count(*) > 0;
    ELSE
        INSERT INTO meter_event_outbox_tally_deltas
        SELECT array_agg(state), array_agg(code), array_agg(stripe_account),
               array_agg(customer), array_agg(delta)
        FROM (SELECT k.*, -count(*) AS delta
              FROM old_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer) k
              GROUP BY 1, 2, 3, 4) g
        HAVING count(*) > 0;
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

-- Fold committed deltas into the tallies (one short transaction; concurrent folds skip each
-- other's rows), and drop the keys that reached zero so the tallies hold only live keys.
CREATE FUNCTION outbox_fold_counts() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    WITH moved AS (
        DELETE FROM meter_event_outbox_tally_deltas d
        WHERE d.ctid IN (SELECT ctid FROM meter_event_outbox_tally_deltas FOR UPDATE SKIP LOCKED)
        RETURNING d.*
    ), summed AS (
        SELECT u.state, u.code, u.account, u.customer, sum(u.delta) AS delta
        FROM moved m, unnest(m.states, m.codes, m.accounts, m.customers, m.deltas)
                          AS u(state, code, account, customer, delta)
        GROUP BY 1, 2, 3, 4 HAVING sum(u.delta) <> 0
    ), applied AS (
        INSERT INTO meter_event_outbox_tallies AS t (state, code, stripe_account, customer, n)
        SELECT state, code, account, customer, delta FROM summed
        ON CONFLICT (state, code, stripe_account, customer) DO UPDATE SET n = t.n + excluded.n
        RETURNING 1
    )
    SELECT count(*) INTO folded FROM moved;
    DELETE FROM meter_event_outbox_tallies
    WHERE n = 0 AND state NOT IN ('accepted', 'cancelled');
    RETURN folded;
END $$;

-- Every tally, folded or not: what status, the console and /metrics read.
CREATE VIEW meter_event_outbox_tally AS
SELECT state, code, stripe_account, customer, sum(n)::bigint AS n
FROM (
    SELECT state, code, stripe_account, customer, n FROM meter_event_outbox_tallies
    UNION ALL
    SELECT u.state, u.code, u.account, u.customer, u.delta
    FROM meter_event_outbox_tally_deltas d,
         unnest(d.states, d.codes, d.accounts, d.customers, d.deltas)
             AS u(state, code, account, customer, delta)
) t
GROUP BY 1, 2, 3, 4
HAVING sum(n) <> 0;

-- Rows per state (the view older relays and scripts read; oldest_available_at is no longer
-- computed: `status` reports the oldest unsent fact instead).
CREATE VIEW meter_event_outbox_status AS
SELECT s.state, coalesce(sum(t.n), 0)::bigint AS n, NULL::timestamptz AS oldest_available_at
FROM unnest(ARRAY['pending', 'in_flight', 'accepted', 'failed', 'rejected', 'cancelled'])
         WITH ORDINALITY AS s(state, ord)
LEFT JOIN meter_event_outbox_tally t ON t.state = s.state
GROUP BY s.state, s.ord
ORDER BY s.ord;

-- The oldest pending fact (the lag), one index probe. In-flight rows are few (the relays'
-- capacity) and read through the busy index.
CREATE INDEX meter_event_outbox_pending_age
    ON meter_event_outbox (created_at)
    WHERE state = 'pending';
-- Pending rows that wait for a reason (a code): per code, the next attempt is the first entry.
-- Fresh rows have no code and never enter it.
CREATE INDEX meter_event_outbox_waiting
    ON meter_event_outbox (last_error_code, available_at)
    WHERE state = 'pending' AND last_error_code IS NOT NULL;
