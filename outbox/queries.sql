-- Queries of the application-side library. The SQL entry point for other languages is the
-- function outbox_record_usage() created by the migrations; these statements follow the same
-- rules (the table's constraints) but report conflicts without aborting the caller's transaction.

-- name: record_usage
-- One clock: the timestamp window is judged here against statement_timestamp(), the instant
-- also stored as created_at, which the table's CHECK compares occurred_at with. A fact outside
-- the window is not inserted and the statement returns its refusal code instead of violating
-- the CHECK, so the caller's transaction stays usable. A NULL id without refusal is a replay or
-- a conflict (the library tells them apart with recorded_usage). RETURNING runs only for a row
-- actually inserted, so only new facts call the wake-up gate.
WITH judged AS (
    SELECT coalesce(f.occurred_at, f.recorded_at) AS occurred_at, f.recorded_at,
           CASE WHEN f.occurred_at < f.recorded_at - CAST(:max_past AS interval)
                THEN 'timestamp_too_far_in_past'
                WHEN f.occurred_at > f.recorded_at + CAST(:max_future AS interval)
                THEN 'timestamp_in_future' END AS refusal
    FROM (SELECT CAST(:occurred_at AS timestamptz) AS occurred_at,
                 statement_timestamp() AS recorded_at) f
), inserted AS (
    INSERT INTO meter_event_outbox
        (identifier, event_name, customer, value, dimensions, metadata, occurred_at,
         stripe_account, created_at, trace_context)
    SELECT CAST(:identifier AS text), CAST(:event_name AS text), CAST(:customer AS text),
           CAST(:value AS numeric), CAST(:dimensions AS jsonb), CAST(:metadata AS jsonb),
           j.occurred_at, CAST(:stripe_account AS text), j.recorded_at,
           CAST(:trace_context AS text)
    FROM judged j
    WHERE j.refusal IS NULL
    ON CONFLICT ON CONSTRAINT meter_event_outbox_identifier_key DO NOTHING
    RETURNING id, CASE WHEN CAST(:notify AS boolean) THEN outbox_wake() END AS woke
)
SELECT (SELECT id FROM inserted), refusal FROM judged

-- name: recorded_usage
SELECT id, event_name, customer, value, dimensions, occurred_at, stripe_account
FROM meter_event_outbox
WHERE identifier = :identifier

-- name: cancel_usage
-- A row Stripe can not have counted (no call of it can have counted: first_attempt_at is NULL,
-- also after definitive 400/500 answers; or rejected by Stripe) is cancelled on the spot. A row
-- whose report is still in flight or pending after an unknown outcome only gets the request
-- stamped: the report is resolved first (same key), and the relay's outcome write turns it into
-- a cancel once Stripe answered, so an adjustment never overtakes the event it cancels. An
-- accepted (or failed but possibly counted) row becomes a pending 'cancel' action for the relay
-- (a meter event adjustment), with a fresh attempt budget.
UPDATE meter_event_outbox AS o
SET cancel_requested_at = coalesce(o.cancel_requested_at, now()),
    state = CASE
        WHEN o.state IN ('in_flight', 'cancelled') THEN o.state
        -- A pending row whose first report may be at Stripe though its lease was lost with a
        -- crash of PostgreSQL (migration outbox_0020's watermark) waits for the outcome too.
        WHEN (o.first_attempt_at IS NULL
              AND NOT (o.state = 'pending' AND meter_event_outbox_possibly_sent(o.id)))
             OR o.state = 'rejected' THEN 'cancelled'
        ELSE 'pending' END,
    action = CASE
        WHEN o.state IN ('in_flight', 'cancelled', 'pending') THEN o.action
        WHEN o.first_attempt_at IS NULL OR o.state = 'rejected' THEN o.action
        ELSE 'cancel' END,
    attempts = CASE
        WHEN o.state IN ('accepted', 'failed') AND o.first_attempt_at IS NOT NULL THEN 0
        ELSE o.attempts END,
    cancelled_at = CASE
        WHEN o.state NOT IN ('in_flight', 'cancelled', 'pending')
             AND (o.first_attempt_at IS NULL OR o.state = 'rejected') THEN now()
        WHEN o.state = 'pending' AND o.first_attempt_at IS NULL
             AND NOT meter_event_outbox_possibly_sent(o.id) THEN now()
        ELSE o.cancelled_at END,
    available_at = CASE WHEN o.state IN ('in_flight', 'cancelled', 'pending') THEN o.available_at
                        ELSE now() END,
    updated_at = now()
WHERE o.identifier = :identifier
-- A pending row with a lease, live or expired, has its report in flight (migration
-- outbox_0020; a trigger then only stamps the request), and says so.
RETURNING o.id,
          CASE WHEN o.state = 'pending' AND EXISTS (
                   SELECT 1 FROM meter_event_outbox_leases l WHERE l.outbox_id = o.id)
               THEN 'in_flight' ELSE o.state END AS state,
          o.action

-- name: record_usage_many
-- record_usage for a whole batch in one statement, all or nothing (invariant 11). The facts come
-- as parallel text arrays (one element per fact, cast here, so every driver binds them alike).
-- Each fact's window is judged against statement_timestamp() as in record_usage, and each is
-- compared with a row already stored under its identifier. Only if no fact is refused (window)
-- or conflicting (same identifier, different content) is anything inserted; the statement never
-- raises, so the caller's transaction stays usable. A fact whose identifier was committed by
-- another transaction after this statement's snapshot comes back with neither id (the library
-- then compares it, see outbox/batch.py). The wake-up gate runs once per batch.
WITH facts AS (
    SELECT f.ord, f.identifier, f.event_name, f.customer, CAST(f.value AS numeric) AS value,
           CAST(f.dimensions AS jsonb) AS dimensions, CAST(f.metadata AS jsonb) AS metadata,
           CAST(f.occurred_at AS timestamptz) AS given_at, f.stripe_account,
           statement_timestamp() AS recorded_at
    FROM unnest(CAST(:identifiers AS text[]), CAST(:event_names AS text[]),
                CAST(:customers AS text[]), CAST(:values AS text[]),
                CAST(:dimensions AS text[]), CAST(:metadata AS text[]),
                CAST(:occurred_at AS text[]), CAST(:stripe_accounts AS text[]))
         WITH ORDINALITY AS f(identifier, event_name, customer, value, dimensions, metadata,
                              occurred_at, stripe_account, ord)
), judged AS (
    SELECT f.*, coalesce(f.given_at, f.recorded_at) AS occurred_at,
           CASE WHEN f.given_at < f.recorded_at - CAST(:max_past AS interval)
                THEN 'timestamp_too_far_in_past'
                WHEN f.given_at > f.recorded_at + CAST(:max_future AS interval)
                THEN 'timestamp_in_future' END AS refusal
    FROM facts f
), stored AS (
    SELECT j.ord, o.id, o.event_name, o.customer, o.value, o.dimensions, o.occurred_at,
           o.stripe_account,
           (o.event_name = j.event_name AND o.customer = j.customer AND o.value = j.value
            AND o.dimensions = j.dimensions
            AND (j.given_at IS NULL OR o.occurred_at = j.given_at)
            AND o.stripe_account IS NOT DISTINCT FROM j.stripe_account) AS same
    FROM judged j
    JOIN meter_event_outbox o ON o.identifier = j.identifier
), accepted AS (
    SELECT NOT EXISTS (SELECT 1 FROM judged WHERE refusal IS NOT NULL)
           AND NOT EXISTS (SELECT 1 FROM stored WHERE NOT same) AS ok
), inserted AS (
    INSERT INTO meter_event_outbox
        (identifier, event_name, customer, value, dimensions, metadata, occurred_at,
         stripe_account, created_at, trace_context)
    SELECT j.identifier, j.event_name, j.customer, j.value, j.dimensions, j.metadata,
           j.occurred_at, j.stripe_account, j.recorded_at, CAST(:trace_context AS text)
    FROM judged j
    WHERE (SELECT ok FROM accepted) AND j.ord NOT IN (SELECT ord FROM stored)
    ORDER BY j.ord
    ON CONFLICT ON CONSTRAINT meter_event_outbox_identifier_key DO NOTHING
    RETURNING id, identifier
)
SELECT i.id AS new_id, s.id AS stored_id, j.refusal, s.event_name, s.customer, s.value,
       s.dimensions, s.occurred_at, s.stripe_account,
       (SELECT outbox_wake() WHERE CAST(:notify AS boolean) AND EXISTS (SELECT 1 FROM inserted))
FROM judged j
LEFT JOIN inserted i ON i.identifier = j.identifier
LEFT JOIN stored s ON s.ord = j.ord
ORDER BY j.ord

-- name: recorded_usage_many
SELECT identifier, id, event_name, customer, value, dimensions, occurred_at, stripe_account
FROM meter_event_outbox
WHERE identifier = ANY(CAST(:identifiers AS text[]))

-- name: forget_batch
-- Undo a batch's own inserts (uncommitted rows of this very transaction) when a concurrent
-- writer turned one of its facts into a conflict after the insert: the batch is all or nothing.
DELETE FROM meter_event_outbox WHERE id = ANY(CAST(:ids AS bigint[]))
