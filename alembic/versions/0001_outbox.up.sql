-- The usage outbox: one row per usage fact, written inside the application's own transaction.
-- Every rule that Stripe would enforce synchronously is a CHECK here, so a bad row is refused by
-- the database whatever language inserted it.

CREATE TABLE meter_event_outbox (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Business dedup key, sent to Stripe as `identifier` and (generation 0) as the idempotency key.
    -- ASCII printable only: it travels in the Idempotency-Key HTTP header.
    identifier          text NOT NULL,
    event_name          text NOT NULL,
    customer            text NOT NULL,
    value               numeric NOT NULL,
    dimensions          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- What Stripe receives as `payload`: dimensions plus the meter's customer and value keys.
    payload             jsonb GENERATED ALWAYS AS (
                            dimensions || jsonb_object(ARRAY['stripe_customer_id', customer,
                                                       'value', trunc(value)::text])
                        ) STORED,
    -- Correlation data for operators (request id, trace id...). Never sent to Stripe.
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- When the usage happened: sent as the event timestamp, never the send time.
    occurred_at         timestamptz NOT NULL DEFAULT now(),
    stripe_account      text,
    state               text NOT NULL DEFAULT 'pending',
    -- What the relay must do for this row next: report the event, or cancel it (adjustment).
    action              text NOT NULL DEFAULT 'report',
    attempts            integer NOT NULL DEFAULT 0,
    -- Idempotency-key generation: bumped only after a definitive cached failure (5xx).
    key_generation      integer NOT NULL DEFAULT 0,
    -- pending: when the row is next due. in_flight: the lease deadline (after it, claimable again).
    available_at        timestamptz NOT NULL DEFAULT now(),
    lease_token         uuid,
    leased_by           text,
    last_error_code     text,
    last_error_message  text,
    stripe_request_id   text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    first_attempt_at    timestamptz,
    accepted_at         timestamptz,
    cancel_requested_at timestamptz,
    cancelled_at        timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT meter_event_outbox_identifier_key UNIQUE (identifier),
    -- Character classes plus length, not bounded repetition: same strings, far cheaper per row.
    CONSTRAINT meter_event_outbox_identifier_valid
        CHECK (identifier !~ '[^\x20-\x7e]' AND length(identifier) BETWEEN 1 AND 100),
    CONSTRAINT meter_event_outbox_event_name_valid
        CHECK (event_name !~ '[^\x20-\x7e]' AND length(event_name) BETWEEN 1 AND 100),
    CONSTRAINT meter_event_outbox_customer_valid
        CHECK (customer !~ '[^\x21-\x7e]' AND length(customer) BETWEEN 1 AND 255),
    -- Whole number, not negative, at most 15 digits (Stripe: <= 15 significant digits).
    -- NaN and Infinity fail `value < 1e15`.
    CONSTRAINT meter_event_outbox_value_valid
        CHECK (value >= 0 AND value < 1000000000000000 AND value = trunc(value)),
    CONSTRAINT meter_event_outbox_dimensions_valid
        CHECK (jsonb_typeof(dimensions) = 'object'
               AND NOT jsonb_path_exists(dimensions, '$.* ? (@.type() != "string")')
               AND NOT dimensions ?| ARRAY['stripe_customer_id', 'value']),
    CONSTRAINT meter_event_outbox_metadata_valid
        CHECK (jsonb_typeof(metadata) = 'object'),
    -- Stripe's window relative to when the row was written: at most 35 days old, at most
    -- 5 minutes ahead. Relative to created_at (not now()) so the check stays immutable and a
    -- restore of old rows still passes; the relay re-checks against the clock before sending.
    CONSTRAINT meter_event_outbox_occurred_at_window
        CHECK (occurred_at >= created_at - interval '35 days'
               AND occurred_at <= created_at + interval '5 minutes'),
    CONSTRAINT meter_event_outbox_stripe_account_valid
        CHECK (stripe_account IS NULL OR stripe_account ~ '^acct_[A-Za-z0-9]{1,250}$'),
    CONSTRAINT meter_event_outbox_state_valid
        CHECK (state IN ('pending', 'in_flight', 'accepted', 'failed', 'rejected', 'cancelled')),
    CONSTRAINT meter_event_outbox_action_valid
        CHECK (action IN ('report', 'cancel')),
    CONSTRAINT meter_event_outbox_attempts_valid CHECK (attempts >= 0 AND key_generation >= 0),
    CONSTRAINT meter_event_outbox_lease_valid
        CHECK ((state = 'in_flight') = (lease_token IS NOT NULL))
);

COMMENT ON TABLE meter_event_outbox IS
    'Usage facts to report to Stripe meters; see outbox-relay README. Insert with outbox_record_usage().';
COMMENT ON COLUMN meter_event_outbox.state IS
    'pending | in_flight | accepted (Stripe accepted it for processing, NOT billed) | failed | rejected | cancelled';

-- The hot part: only rows the relay still has to act on. Accepted history never enters these
-- indexes, so claims stay cheap however large the table grows.
CREATE INDEX meter_event_outbox_due
    ON meter_event_outbox (available_at)
    WHERE state IN ('pending', 'in_flight');
-- Lane = (account, customer, event name): fairness and one-call-in-flight per lane.
CREATE INDEX meter_event_outbox_lane
    ON meter_event_outbox (customer, event_name, available_at, id)
    WHERE state IN ('pending', 'in_flight');
-- "Is this lane busy?" (a call in flight): only leased rows, so backlogs cost nothing.
CREATE INDEX meter_event_outbox_busy
    ON meter_event_outbox (customer, event_name, available_at)
    WHERE state = 'in_flight';
-- Operators look at what needs a decision; keep that cheap too.
CREATE INDEX meter_event_outbox_attention
    ON meter_event_outbox (last_error_code)
    WHERE state IN ('failed', 'rejected');
-- Retention pruning walks terminal rows by age in bounded batches.
CREATE INDEX meter_event_outbox_terminal_age
    ON meter_event_outbox (updated_at)
    WHERE state IN ('accepted', 'cancelled');

-- Counts of terminal rows, so status never counts history. Statement-level triggers append one
-- delta row per state changed by a statement (the relay's batched outcome writes, the pruner's
-- batched deletes, an application's cancel_usage); appending never waits on another
-- transaction's row lock, unlike updating a counter row. The relay folds the deltas into
-- meter_event_outbox_counts periodically (outbox_fold_counts()). Inserts are not counted:
-- new rows are pending, and pending rows are counted live through the small partial index.
CREATE TABLE meter_event_outbox_counts (
    state text PRIMARY KEY,
    n     bigint NOT NULL DEFAULT 0
);
INSERT INTO meter_event_outbox_counts (state)
SELECT unnest(ARRAY['accepted', 'cancelled']);

CREATE TABLE meter_event_outbox_count_deltas (
    state text NOT NULL,
    delta bigint NOT NULL
);

CREATE FUNCTION meter_event_outbox_count_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO meter_event_outbox_count_deltas (state, delta)
        SELECT state, sum(delta) FROM (
            SELECT state, 1 AS delta FROM new_rows WHERE state IN ('accepted', 'cancelled')
            UNION ALL
            SELECT state, -1 FROM old_rows WHERE state IN ('accepted', 'cancelled')
        ) t GROUP BY state HAVING sum(delta) <> 0;
    ELSE
        INSERT INTO meter_event_outbox_count_deltas (state, delta)
        SELECT state, -count(*) FROM old_rows WHERE state IN ('accepted', 'cancelled')
        GROUP BY state;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER meter_event_outbox_count_updates
    AFTER UPDATE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_count_changes();
CREATE TRIGGER meter_event_outbox_count_deletes
    AFTER DELETE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_count_changes();

-- Fold committed deltas into the counters (one short transaction; concurrent folds skip).
CREATE FUNCTION outbox_fold_counts() RETURNS bigint
LANGUAGE sql AS $$
    WITH moved AS (
        DELETE FROM meter_event_outbox_count_deltas d
        WHERE d.ctid IN (SELECT ctid FROM meter_event_outbox_count_deltas FOR UPDATE SKIP LOCKED)
        RETURNING d.state, d.delta
    ), summed AS (
        SELECT state, sum(delta) AS delta FROM moved GROUP BY state
    ), applied AS (
        UPDATE meter_event_outbox_counts c SET n = c.n + s.delta
        FROM summed s WHERE c.state = s.state
        RETURNING 1
    )
    SELECT count(*) FROM moved
$$;

-- Cheap status for operators: live counts of the small hot states through the partial indexes,
-- maintained counts for history.
CREATE VIEW meter_event_outbox_status AS
SELECT 'pending'::text AS state, count(*) AS n, min(available_at) AS oldest_available_at
    FROM meter_event_outbox WHERE state = 'pending'
UNION ALL
SELECT 'in_flight', count(*), min(available_at) FROM meter_event_outbox WHERE state = 'in_flight'
UNION ALL
SELECT 'accepted', n + (SELECT coalesce(sum(delta), 0)::bigint FROM meter_event_outbox_count_deltas d
                       WHERE d.state = 'accepted'), NULL
    FROM meter_event_outbox_counts WHERE state = 'accepted'
UNION ALL
SELECT 'failed', count(*), NULL FROM meter_event_outbox WHERE state = 'failed'
UNION ALL
SELECT 'rejected', count(*), NULL FROM meter_event_outbox WHERE state = 'rejected'
UNION ALL
SELECT 'cancelled', n + (SELECT coalesce(sum(delta), 0)::bigint FROM meter_event_outbox_count_deltas d
                        WHERE d.state = 'cancelled'), NULL
    FROM meter_event_outbox_counts WHERE state = 'cancelled';

-- Wake-up hint. PostgreSQL takes a cluster-wide lock at the commit of every transaction that
-- issued NOTIFY, so a NOTIFY per insert serialises commits. This gate lets at most one
-- transaction per interval notify: the others see the gate row locked (SKIP LOCKED, never
-- waiting) or recently touched, and skip. The relay re-checks shortly after every wake-up, so a
-- skipped notification costs at most one gate interval of latency, and polling covers the rest.
CREATE UNLOGGED TABLE meter_event_outbox_wake (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    notified_at   timestamptz NOT NULL DEFAULT '-infinity',
    min_interval  interval NOT NULL DEFAULT '5 milliseconds'
);
INSERT INTO meter_event_outbox_wake DEFAULT VALUES;

CREATE FUNCTION outbox_wake() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    won boolean;
BEGIN
    UPDATE meter_event_outbox_wake w SET notified_at = clock_timestamp()
    WHERE w.id AND w.id = (
        SELECT g.id FROM meter_event_outbox_wake g
        WHERE g.notified_at < clock_timestamp() - g.min_interval
        FOR UPDATE SKIP LOCKED)
    RETURNING true INTO won;
    IF won THEN
        PERFORM pg_notify('meter_event_outbox', '');
    END IF;
    RETURN coalesce(won, false);
END $$;

-- For services in any language: validates through the table's constraints, is replay-safe
-- (same identifier and content: returns the existing row id), and refuses a different fact
-- under an existing identifier (SQLSTATE 23505, message 'identifier conflict').
CREATE FUNCTION outbox_record_usage(
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
LANGUAGE plpgsql AS $$
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
            coalesce(outbox_record_usage.occurred_at, now()),
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
