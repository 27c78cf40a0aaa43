-- The functions that run with the owner's rights (SECURITY DEFINER: outbox_record_usage,
-- outbox_wake, the tally, lease and cancel triggers, meter_event_outbox_possibly_sent) called
-- built-in functions by bare name under `search_path = <schema>, pg_temp`. PostgreSQL resolves
-- a bare call among the functions of every schema on the path, pg_catalog (searched first)
-- included, and takes the closest match of the argument types: a function in the outbox's
-- schema with a concrete signature beats a polymorphic built-in (array_agg(text) over
-- array_agg(anynonarray), cardinality(text[]) over cardinality(anyarray), unnest(text[]) over
-- unnest(anyarray)) or one the call reaches through an implicit cast. Any role that may create
-- in that schema (every role may in `public` before PostgreSQL 15) could add such a function,
-- and the next insert through outbox_record_usage() would run it as the owner: e.g. a writer
-- marking its own rows accepted. The same holds for operators: outbox_fold_counts() (the relay
-- folds the tallies with it) compared sum(bigint), a numeric, with the integer 0, which no
-- operator of pg_catalog takes as such, so a `<>`(numeric, integer) there would have won.
--
-- Now every built-in function in these bodies is named in pg_catalog, with arguments of its
-- exact types, and that one operator is OPERATOR(pg_catalog.<>). Every other operator in them
-- has an exact match in pg_catalog for its operand types (a string literal takes the other
-- operand's type), and an exact match in an earlier schema on the path wins: pg_catalog is
-- first, now written out. Trigger conditions, defaults and constraints are stored resolved.
-- Behaviour is unchanged; the multi-argument unnest() of the fold is written as the
-- ROWS FROM (unnest(...), ...) it stands for (the shorthand exists only unqualified).
-- outbox_tally_keys() (no function call; an inlined SQL function, so it stays without a SET)
-- and meter_event_outbox_possibly_sent() (no function call) keep their bodies.

CREATE OR REPLACE FUNCTION outbox_wake() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    won boolean;
BEGIN
    UPDATE meter_event_outbox_wake w SET notified_at = pg_catalog.clock_timestamp()
    WHERE w.id AND w.id = (
        SELECT g.id FROM meter_event_outbox_wake g
        WHERE g.notified_at < pg_catalog.clock_timestamp() - g.min_interval
        FOR UPDATE SKIP LOCKED)
    RETURNING true INTO won;
    IF won THEN
        PERFORM pg_catalog.pg_notify('meter_event_outbox'::text, ''::text);
    END IF;
    RETURN coalesce(won, false);
END $$;

CREATE OR REPLACE FUNCTION outbox_record_usage(
    event_name      text,
    customer        text,
    value           numeric,
    identifier      text,
    occurred_at     timestamptz DEFAULT NULL,
    dimensions      jsonb DEFAULT '{}'::jsonb,
    metadata        jsonb DEFAULT '{}'::jsonb,
    stripe_account  text DEFAULT NULL,
    notify          boolean DEFAULT true
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    new_id bigint;
    old    meter_event_outbox%ROWTYPE;
BEGIN
    INSERT INTO meter_event_outbox AS o
        (identifier, event_name, customer, value, dimensions, metadata, occurred_at, stripe_account)
    VALUES (outbox_record_usage.identifier, outbox_record_usage.event_name,
            outbox_record_usage.customer, outbox_record_usage.value,
            coalesce(outbox_record_usage.dimensions, '{}'::jsonb),
            coalesce(outbox_record_usage.metadata, '{}'::jsonb),
            coalesce(outbox_record_usage.occurred_at, pg_catalog.statement_timestamp()),
            outbox_record_usage.stripe_account)
    ON CONFLICT ON CONSTRAINT meter_event_outbox_identifier_key DO NOTHING
    RETURNING o.id INTO new_id;

    IF new_id IS NOT NULL THEN
        IF notify THEN
            PERFORM outbox_wake();
        END IF;
        RETURN new_id;
    END IF;

    SELECT * INTO old FROM meter_event_outbox o WHERE o.identifier = outbox_record_usage.identifier;
    IF old.event_name IS DISTINCT FROM outbox_record_usage.event_name
       OR old.customer IS DISTINCT FROM outbox_record_usage.customer
       OR old.value IS DISTINCT FROM outbox_record_usage.value
       OR old.dimensions IS DISTINCT FROM coalesce(outbox_record_usage.dimensions, '{}'::jsonb)
       OR old.stripe_account IS DISTINCT FROM outbox_record_usage.stripe_account
       OR (outbox_record_usage.occurred_at IS NOT NULL
           AND old.occurred_at IS DISTINCT FROM outbox_record_usage.occurred_at)
    THEN
        RAISE EXCEPTION 'identifier conflict: % is already recorded with different content',
            outbox_record_usage.identifier
            USING ERRCODE = 'unique_violation',
                  CONSTRAINT = 'meter_event_outbox_identifier_key';
    END IF;
    RETURN old.id;
END $$;

CREATE OR REPLACE FUNCTION meter_event_outbox_tally_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    ks text[]; cs text[]; acs text[]; us text[]; es text[]; ds bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT pg_catalog.array_agg(k.state), pg_catalog.array_agg(k.code),
               pg_catalog.array_agg(k.stripe_account), pg_catalog.array_agg(k.customer),
               pg_catalog.array_agg(k.event_name), pg_catalog.array_agg(k.delta)
        INTO ks, cs, acs, us, es, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
                     pg_catalog.count(*) AS delta
              FROM new_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer, r.event_name) k
              GROUP BY 1, 2, 3, 4, 5) k;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT pg_catalog.array_agg(k.state), pg_catalog.array_agg(k.code),
               pg_catalog.array_agg(k.stripe_account), pg_catalog.array_agg(k.customer),
               pg_catalog.array_agg(k.event_name), pg_catalog.array_agg(k.delta)
        INTO ks, cs, acs, us, es, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
                     pg_catalog.sum(r.delta)::bigint AS delta
              FROM (SELECT state, last_error_code, stripe_account, customer, event_name,
                           1 AS delta
                    FROM new_rows
                    UNION ALL
                    SELECT state, last_error_code, stripe_account, customer, event_name, -1
                    FROM old_rows) r,
                   outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                     r.customer, r.event_name) k
              GROUP BY 1, 2, 3, 4, 5 HAVING pg_catalog.sum(r.delta) <> 0) k;
    ELSE
        SELECT pg_catalog.array_agg(k.state), pg_catalog.array_agg(k.code),
               pg_catalog.array_agg(k.stripe_account), pg_catalog.array_agg(k.customer),
               pg_catalog.array_agg(k.event_name), pg_catalog.array_agg(k.delta)
        INTO ks, cs, acs, us, es, ds
        FROM (SELECT k.state, k.code, k.stripe_account, k.customer, k.event_name,
                     -pg_catalog.count(*) AS delta
              FROM old_rows r, outbox_tally_keys(r.state, r.last_error_code, r.stripe_account,
                                                 r.customer, r.event_name) k
              GROUP BY 1, 2, 3, 4, 5) k;
    END IF;
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

CREATE OR REPLACE FUNCTION meter_event_outbox_leased_skip() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM meter_event_outbox_leases l
               WHERE l.outbox_id = OLD.id AND l.leased_until > pg_catalog.now()) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION meter_event_outbox_leased_cancel() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    probe uuid := pg_catalog.gen_random_uuid();
BEGIN
    INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by, leased_until,
                                           first_claimed_at, customer, event_name,
                                           stripe_account, action)
    VALUES (OLD.id, probe, 'cancel probe', '-infinity', pg_catalog.now(), OLD.customer,
            OLD.event_name, OLD.stripe_account, OLD.action)
    ON CONFLICT (outbox_id) DO NOTHING;
    IF FOUND THEN
        DELETE FROM meter_event_outbox_leases WHERE outbox_id = OLD.id AND lease_token = probe;
        RETURN NEW;
    END IF;
    NEW.state := OLD.state;
    NEW.action := OLD.action;
    NEW.attempts := OLD.attempts;
    NEW.cancelled_at := OLD.cancelled_at;
    NEW.available_at := OLD.available_at;
    RETURN NEW;
END $$;

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

-- CREATE OR REPLACE resets the settings: each owner's-rights function gets its search_path
-- again, pg_catalog named first (where PostgreSQL puts it when it is left out).
DO $pin$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['outbox_wake()', 'meter_event_outbox_tally_changes()',
        'outbox_record_usage(text, text, numeric, text, timestamptz, jsonb, jsonb, text, boolean)',
        'meter_event_outbox_tally_update_changes()', 'meter_event_outbox_leased_skip()',
        'meter_event_outbox_leased_cancel()', 'meter_event_outbox_possibly_sent(bigint)',
        'meter_event_outbox_forget_ranges(bigint[])', 'meter_event_outbox_summarize_ranges()']
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, %I, pg_temp',
                       fn, current_schema());
    END LOOP;
END $pin$;
