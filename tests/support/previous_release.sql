-- The previous release's (outbox_0017) statements, verbatim but for the parameter style: what an
-- older relay or library runs beside a newer one during a rolling upgrade
-- (tests/integration/relay/test_carried_acceptance.py, test_hostile_cancel_probe.py).

-- name: record_outcomes
-- Write a batch of outcomes in one statement (River's shape, `UPDATE ... FROM` a set of rows).
-- The set travels as two JSON documents (cheaper to encode than parallel arrays): the distinct
-- decisions, and per row its id, lease token, pre-claim first attempt, key generation and the
-- index of its decision (a stream call's rows share one).
-- The compare-and-set on lease_token means a relay whose lease expired (and whose row another
-- relay re-claimed) changes nothing.
-- A cancel requested while the report was in flight: after a success the row becomes a
-- pending cancellation; after a failure that may still have been counted (`may_have_counted`:
-- the last call's outcome is unknown) too; after a definitive refusal nothing was counted and
-- the row is cancelled; after an unknown outcome the report is resolved first (same key), so an
-- adjustment never races the event it cancels.
-- Outcomes of calls to Stripe (`called`) also append one row each to the attempt history, in
-- the same statement and only for rows whose compare-and-set matched.
WITH written AS (
    UPDATE meter_event_outbox o
    -- The route of a report whose cancel was requested meanwhile is decided once per decision
    -- (store.cancel_route): u.cancel_now = cancel it now (fresh budget); u.cancel_state = the
    -- state it takes ('cancelled' when Stripe refused it: nothing to cancel). Each column below
    -- only switches on the row's cancel request and that route.
    SET state = CASE WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                     THEN u.cancel_state ELSE u.state END,
        action = CASE WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                           AND u.cancel_now THEN 'cancel' ELSE o.action END,
        available_at = CASE WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                                 AND u.state IN ('accepted', 'failed') THEN now()
                            ELSE now() + make_interval(secs => u.delay) END,
        lease_token = NULL,
        attempts = CASE  -- a cancel starts with a fresh budget
            WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                 AND u.cancel_now THEN 0
            ELSE o.attempts + u.counted END,
        key_generation = o.key_generation + u.new_key,
        -- Restored when no call may have counted (o.first_attempt_at is what the claim set).
        first_attempt_at = CASE WHEN u.reached THEN o.first_attempt_at
                                ELSE u.previous_first_attempt_at END,
        last_error_code = u.code,
        last_error_message = u.message,
        stripe_request_id = coalesce(u.request_id, o.stripe_request_id),
        accepted_at = CASE WHEN u.state = 'accepted' AND o.action = 'report'
                           THEN coalesce(o.accepted_at, now()) ELSE o.accepted_at END,
        cancelled_at = CASE
            WHEN u.state = 'cancelled' THEN now()
            WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                 AND u.cancel_state = 'cancelled' THEN now()
            ELSE o.cancelled_at END,
        updated_at = now()
    FROM (
        SELECT r.id, r.token, r.previous_first_attempt_at, r.key_generation, d.*
        FROM jsonb_to_recordset(CAST(:rows AS jsonb))
             AS r(id bigint, token uuid, previous_first_attempt_at timestamptz,
                  key_generation int, decision int)
        JOIN jsonb_to_recordset(CAST(:decisions AS jsonb))
             AS d(n int, state text, delay float8, counted int, new_key int, code text, message text,
                  request_id text, reached boolean, may_have_counted boolean, cancel_state text,
                  cancel_now boolean, called boolean,
                  action text, http_status int, latency_ms real)
          ON d.n = r.decision
    ) u
    WHERE o.id = u.id AND o.lease_token = u.token
    -- o.* here are the values just written; the sent action and key come from the claim.
    RETURNING o.id, o.attempts, o.state, u.called, u.action, u.key_generation, u.http_status,
              u.code, u.message, u.request_id, u.latency_ms
),
history AS (
    INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation, action, state,
        http_status, code, message, stripe_request_id, latency_ms, relay_id)
    SELECT w.id, w.attempts, w.key_generation, w.action, w.state, w.http_status, w.code,
           w.message, w.request_id, w.latency_ms, :relay_id
    FROM written w WHERE w.called
)
SELECT id FROM written

-- name: cancel_usage
-- The previous release's cancel_usage (bf51269, outbox_0017), verbatim but for the parameter
-- style: applications still on it during a rolling upgrade cancel a pending row never sent
-- whatever its lease, and only the trigger keeps its report in flight. This release's statement
-- reads the lease itself (meter_event_outbox_possibly_sent) and, when it sees one, leaves the
-- row pending: the trigger does not fire then (outbox_0028).
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
