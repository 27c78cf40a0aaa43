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
         stripe_account, created_at)
    SELECT CAST(:identifier AS text), CAST(:event_name AS text), CAST(:customer AS text),
           CAST(:value AS numeric), CAST(:dimensions AS jsonb), CAST(:metadata AS jsonb),
           j.occurred_at, CAST(:stripe_account AS text), j.recorded_at
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
        WHEN o.first_attempt_at IS NULL OR o.state = 'rejected' THEN 'cancelled'
        ELSE 'pending' END,
    action = CASE
        WHEN o.state IN ('in_flight', 'cancelled', 'pending') THEN o.action
        WHEN o.first_attempt_at IS NULL OR o.state = 'rejected' THEN o.action
        ELSE 'cancel' END,
    attempts = CASE
        WHEN o.state IN ('accepted', 'failed') AND o.first_attempt_at IS NOT NULL THEN 0
        ELSE o.attempts END,
    cancelled_at = CASE
        WHEN o.state NOT IN ('in_flight', 'cancelled')
             AND (o.first_attempt_at IS NULL OR o.state = 'rejected') THEN now()
        ELSE o.cancelled_at END,
    available_at = CASE WHEN o.state IN ('in_flight', 'cancelled', 'pending') THEN o.available_at
                        ELSE now() END,
    updated_at = now()
WHERE o.identifier = :identifier
RETURNING o.id, o.state, o.action
