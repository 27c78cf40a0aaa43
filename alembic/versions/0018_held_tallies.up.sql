-- Rows held for their meter, per account, event name and code, without reading them. Before
-- this, `status`, /metrics and the console grouped every held row (the waiting index, one code
-- per statement): 60-75 ms of SQL each with 13,333 held rows, and the cost grew with them.
--
-- The tally key of pending rows with a code, ('pending', code, account, ''), gains the event
-- name (a column of its own: every other key has '' there), so the held rows per meter are a
-- few tally rows; the oldest fact of each group is the first entry of its range in a new index
-- of the held rows (one probe per group). A recorded fact (pending, no code) changes no key
-- with an event name and enters no new index: its WAL stays as it was; so does a retry's.
--
-- The view meter_event_outbox_tally keeps its shape (summed over the event names): relays of
-- 0015-0017 read it during a rolling upgrade.
LOCK TABLE meter_event_outbox IN SHARE ROW EXCLUSIVE MODE;
-- A fold deletes delta rows: none runs while the tallies are rewritten.
LOCK TABLE meter_event_outbox_tally_deltas, meter_event_outbox_tallies IN EXCLUSIVE MODE;

ALTER TABLE meter_event_outbox_tallies ADD COLUMN event_name text NOT NULL DEFAULT '';
ALTER TABLE meter_event_outbox_tally_deltas
    ADD COLUMN event_name text NOT NULL DEFAULT '',
    ADD COLUMN events     text[];

-- Every delta key with its event name ('' in delta rows written before this migration).
CREATE OR REPLACE VIEW meter_event_outbox_tally_delta_keys AS
SELECT state, code, stripe_account, customer, delta, event_name
FROM meter_event_outbox_tally_deltas
UNION ALL
SELECT u.state, u.code, u.stripe_account, u.customer, u.delta, coalesce(u.event_name, '')
FROM meter_event_outbox_tally_deltas d,
     unnest(d.states, d.codes, d.accounts, d.customers, d.deltas, d.events)
         AS u(state, code, stripe_account, customer, delta, event_name)
WHERE d.states IS NOT NULL;

-- Fold every delta (written by the old trigger: no event names yet), then recount the pending
-- rows with a code per event name (the waiting index's rows; writers are kept out above).
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
)
INSERT INTO meter_event_outbox_tallies AS t (state, code, stripe_account, customer, n)
SELECT state, code, stripe_account, customer, delta FROM summed
ON CONFLICT (state, code, stripe_account, customer) DO UPDATE SET n = t.n + excluded.n;

DELETE FROM meter_event_outbox_tallies
WHERE state = 'pending' OR (n = 0 AND state NOT IN ('accepted', 'cancelled'));

ALTER TABLE meter_event_outbox_tallies
    DROP CONSTRAINT meter_event_outbox_tallies_pkey,
    ADD PRIMARY KEY (state, code, stripe_account, customer, event_name);

INSERT INTO meter_event_outbox_tallies (state, code, stripe_account, customer, event_name, n)
SELECT 'pending', last_error_code, coalesce(stripe_account, ''), '', event_name, count(*)
FROM meter_event_outbox
WHERE state = 'pending' AND last_error_code IS NOT NULL
GROUP BY 2, 3, 5;

-- The tally keys of one row version (alembic/versions/0015_status_tallies.up.sql), the pending
-- rows with a code now per event name.
CREATE FUNCTION outbox_tally_keys(text, text, text, text, text)
RETURNS TABLE (state text, code text, stripe_account text, customer text, event_name text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name
    FROM (VALUES
        (CASE WHEN $1 <> 'pending' OR $2 IS NOT NULL THEN $1 END,
         CASE WHEN $1 IN ('pending', 'failed', 'rejected') THEN coalesce($2, '') ELSE '' END,
         CASE WHEN $1 = 'pending' THEN coalesce($3, '') ELSE '' END,
         '',
         CASE WHEN $1 = 'pending' THEN $5 ELSE '' END),
        (CASE WHEN $1 IN ('pending', 'in_flight') THEN '' END, '', '', $4, '')
    ) k(state, code, stripe_account, customer, event_name)
    WHERE k.state IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION meter_event_outbox_tally_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ks text[]; cs text[]; acs text[]; us text[]; es text[]; ds bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(k.state), array_agg(k.code), array_agg(k.stripe_account),
               array_agg(k.customer), array_agg(k.event_name), array_agg(k.delta)
        INTO ks, cs, acs, us, es, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
                     count(*) AS delta
              FROM new_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer, r.event_name) k
              GROUP BY 1, 2, 3, 4, 5) k;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(k.state), array_agg(k.code), array_agg(k.stripe_account),
               array_agg(k.customer), array_agg(k.event_name), array_agg(k.delta)
        INTO ks, cs, acs, us, es, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
                     sum(r.delta)::bigint AS delta
              FROM (SELECT state, last_error_code, stripe_account, customer, event_name,
                           1 AS delta
                    FROM new_rows
                    UNION ALL
                    SELECT state, last_error_code, stripe_account, customer, event_name, -1
                    FROM old_rows) r,
                   outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                     r.customer, r.event_name) k
              GROUP BY 1, 2, 3, 4, 5 HAVING sum(r.delta) <> 0) k;
    ELSE
        SELECT array_agg(k.state), array_agg(k.code), array_agg(k.stripe_account),
               array_agg(k.customer), array_agg(k.event_name), array_agg(k.delta)
        INTO ks, cs, acs, us, es, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
                     -count(*) AS delta
              FROM old_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer, r.event_name) k
              GROUP BY 1, 2, 3, 4, 5) k;
    END IF;
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

-- CREATE OR REPLACE resets the function's properties: pinned again as in 0015.
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_tally_changes() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
END $pin$;

DROP FUNCTION outbox_tally_keys(text, text, text, text);

-- As in 0015: one fold at a time, delta rows deleted without locking them first; the keys
-- now with their event name.
CREATE OR REPLACE FUNCTION outbox_fold_counts() RETURNS bigint
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
        SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
               sum(k.delta) AS delta
        FROM (SELECT state, code, stripe_account, customer, event_name, delta FROM moved
              UNION ALL
              SELECT u.state, u.code, u.stripe_account, u.customer,
                     coalesce(u.event_name, ''), u.delta
              FROM moved m,
                   unnest(m.states, m.codes, m.accounts, m.customers, m.events, m.deltas)
                  AS u(state, code, stripe_account, customer, event_name, delta)
              WHERE m.states IS NOT NULL) k
        GROUP BY 1, 2, 3, 4, 5 HAVING sum(k.delta) <> 0
    ), applied AS (
        INSERT INTO meter_event_outbox_tallies AS t
            (state, code, stripe_account, customer, event_name, n)
        SELECT state, code, stripe_account, customer, event_name, delta FROM summed
        ON CONFLICT (state, code, stripe_account, customer, event_name)
        DO UPDATE SET n = t.n + excluded.n
        RETURNING 1
    )
    SELECT count(*) INTO folded FROM moved;
    DELETE FROM meter_event_outbox_tallies
    WHERE n = 0 AND state NOT IN ('accepted', 'cancelled');
    RETURN folded;
END $$;

-- The oldest fact of each held group (account, event name, code): the first entry of its
-- range. Held rows only (the codes of HELD_CODES, relay/core/meters.py; held_by_meter in
-- relay/db/queries.sql names the same list, and a test compares the three): a recorded fact
-- never enters it, nor does a retry (pending with another code); a row held for its meter adds
-- one entry.
CREATE INDEX IF NOT EXISTS meter_event_outbox_held_by_meter
    ON meter_event_outbox (last_error_code, (coalesce(stripe_account, '')), event_name, occurred_at)
    WHERE state = 'pending'
      AND last_error_code IN ('meter_missing', 'meter_inactive', 'meter_pre_aggregated',
                              'meter_key_collision', 'meter_conflict', 'meter_checking');
