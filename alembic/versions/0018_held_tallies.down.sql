-- Back to 0017: the tally key of pending rows with a code without the event name, and no
-- index per meter (held rows are grouped from the waiting index again).
LOCK TABLE meter_event_outbox IN SHARE ROW EXCLUSIVE MODE;
LOCK TABLE meter_event_outbox_tally_deltas, meter_event_outbox_tallies IN EXCLUSIVE MODE;

DROP INDEX IF EXISTS meter_event_outbox_held_by_meter;

-- Fold every delta, then drop the keys with an event name (the pending rows with a code,
-- recounted below without it).
WITH moved AS (
    DELETE FROM meter_event_outbox_tally_deltas d RETURNING d.*
), summed AS (
    SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name, sum(k.delta) AS delta
    FROM (SELECT state, code, stripe_account, customer, event_name, delta FROM moved
          UNION ALL
          SELECT u.state, u.code, u.stripe_account, u.customer, coalesce(u.event_name, ''),
                 u.delta
          FROM moved m, unnest(m.states, m.codes, m.accounts, m.customers, m.events, m.deltas)
              AS u(state, code, stripe_account, customer, event_name, delta)
          WHERE m.states IS NOT NULL) k
    GROUP BY 1, 2, 3, 4, 5 HAVING sum(k.delta) <> 0
)
INSERT INTO meter_event_outbox_tallies AS t (state, code, stripe_account, customer, event_name, n)
SELECT state, code, stripe_account, customer, event_name, delta FROM summed
ON CONFLICT (state, code, stripe_account, customer, event_name) DO UPDATE SET n = t.n + excluded.n;

DELETE FROM meter_event_outbox_tallies
WHERE state = 'pending' OR (n = 0 AND state NOT IN ('accepted', 'cancelled'));

DROP VIEW meter_event_outbox_status;
DROP VIEW meter_event_outbox_tally;
DROP VIEW meter_event_outbox_tally_delta_keys;
DROP FUNCTION outbox_fold_counts();

ALTER TABLE meter_event_outbox_tallies
    DROP CONSTRAINT meter_event_outbox_tallies_pkey,
    DROP COLUMN event_name,
    ADD PRIMARY KEY (state, code, stripe_account, customer);
ALTER TABLE meter_event_outbox_tally_deltas DROP COLUMN event_name, DROP COLUMN events;

-- As in 0015_status_tallies.up.sql.
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

INSERT INTO meter_event_outbox_tallies (state, code, stripe_account, customer, n)
SELECT 'pending', last_error_code, coalesce(stripe_account, ''), '', count(*)
FROM meter_event_outbox
WHERE state = 'pending' AND last_error_code IS NOT NULL
GROUP BY 2, 3;

CREATE OR REPLACE FUNCTION meter_event_outbox_tally_changes() RETURNS trigger
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

DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_tally_changes() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
END $pin$;

DROP FUNCTION outbox_tally_keys(text, text, text, text, text);

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
