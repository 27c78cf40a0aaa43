-- Every statement the relay runs, in one place. Parameters use :name (see outbox/sqlfile.py).

-- name: claim
-- One short transaction: walk the lanes (customer, event name) that have live rows, starting
-- after the lane where the previous claim stopped (round robin: a lane with a 100k backlog gets
-- one row per pass, like every other lane), skip lanes that already have a call in flight
-- (Stripe allows one concurrent call per customer and meter), take each lane's oldest due row,
-- lock it with SKIP LOCKED and lease it. Lanes are found with a loose index scan (one index
-- probe per lane), so a deep backlog costs nothing. Every relay picks the same head row of a
-- lane, so two relays racing for a lane contend for that one row: SKIP LOCKED and the re-check
-- of the locked row's state let one win. The head is chosen in each claim's snapshot, so a row
-- committed between two racing claims with an earlier available_at can, rarely, become a second
-- head; Stripe then answers 409 and that row retries (same key, attempt not counted): a
-- conflict costs a retry, never a double count.
WITH RECURSIVE lanes (customer, event_name, depth) AS (
    (SELECT o.customer, o.event_name, 1
     FROM meter_event_outbox o
     WHERE o.state IN ('pending', 'in_flight')
       AND (o.customer, o.event_name) > (:after_customer, :after_event_name)
     ORDER BY o.customer, o.event_name
     LIMIT 1)
    UNION ALL
    SELECT n.customer, n.event_name, l.depth + 1
    FROM lanes l
    CROSS JOIN LATERAL (
        SELECT o.customer, o.event_name
        FROM meter_event_outbox o
        WHERE o.state IN ('pending', 'in_flight')
          AND (o.customer, o.event_name) > (l.customer, l.event_name)
        ORDER BY o.customer, o.event_name
        LIMIT 1) n
    WHERE l.depth < :max_lanes
),
heads AS MATERIALIZED (
    SELECT h.id, l.depth
    FROM lanes l
    CROSS JOIN LATERAL (
        SELECT o.id
        FROM meter_event_outbox o
        WHERE o.customer = l.customer AND o.event_name = l.event_name
          AND o.state IN ('pending', 'in_flight') AND o.available_at <= now()
        ORDER BY o.available_at, o.id
        LIMIT 1) h
    -- Lane busy? A correlated scalar subquery, not NOT EXISTS: the planner would turn that
    -- into an anti-join that rescans every in-flight row once per lane. The deadline test is
    -- written so only the lane-keyed busy index can serve it (one probe per lane).
    WHERE (SELECT b.id FROM meter_event_outbox b
           WHERE b.customer = l.customer AND b.event_name = l.event_name
             AND b.state = 'in_flight' AND b.available_at - now() > interval '0'
           LIMIT 1) IS NULL
    ORDER BY l.depth
    LIMIT :batch_size
),
-- Where the next claim starts: after the last head taken when the batch filled up, else after
-- the last lane walked; `wrap` when the walk ran out of lanes (start again from the first).
scan AS (
    SELECT l.customer, l.event_name,
           l.depth < :max_lanes AND (SELECT count(*) FROM heads) < :batch_size AS wrap
    FROM lanes l
    WHERE l.depth = CASE WHEN (SELECT count(*) FROM heads) >= :batch_size
                         THEN (SELECT max(depth) FROM heads)
                         ELSE (SELECT max(depth) FROM lanes) END
),
locked AS MATERIALIZED (
    SELECT o.id, o.first_attempt_at
    FROM meter_event_outbox o
    WHERE o.id IN (SELECT id FROM heads)
      AND o.state IN ('pending', 'in_flight') AND o.available_at <= now()
    FOR UPDATE SKIP LOCKED
),
claimed AS (
UPDATE meter_event_outbox o
SET state = 'in_flight',
    lease_token = gen_random_uuid(),
    leased_by = :relay_id,
    available_at = now() + make_interval(secs => :lease_seconds),
    first_attempt_at = coalesce(o.first_attempt_at, now()),
    updated_at = now()
FROM locked
WHERE o.id = locked.id
RETURNING o.id, o.lease_token, o.identifier, o.event_name, o.customer, o.payload,
          o.occurred_at, o.stripe_account, o.action, o.attempts, o.key_generation,
          locked.first_attempt_at AS previous_first_attempt_at, o.first_attempt_at,
          o.accepted_at
)
SELECT claimed.*, scan.customer AS cursor_customer, scan.event_name AS cursor_event_name,
       scan.wrap
FROM scan LEFT JOIN claimed ON true

-- name: claim_any
-- Claim without lanes, for the v2 stream (no per-customer concurrency limit there): oldest due
-- rows first.
WITH locked AS MATERIALIZED (
    SELECT o.id, o.first_attempt_at
    FROM meter_event_outbox o
    WHERE o.state IN ('pending', 'in_flight') AND o.available_at <= now()
    ORDER BY o.available_at
    LIMIT :batch_size
    FOR UPDATE SKIP LOCKED
)
UPDATE meter_event_outbox o
SET state = 'in_flight',
    lease_token = gen_random_uuid(),
    leased_by = :relay_id,
    available_at = now() + make_interval(secs => :lease_seconds),
    first_attempt_at = coalesce(o.first_attempt_at, now()),
    updated_at = now()
FROM locked
WHERE o.id = locked.id
RETURNING o.id, o.lease_token, o.identifier, o.event_name, o.customer, o.payload,
          o.occurred_at, o.stripe_account, o.action, o.attempts, o.key_generation,
          locked.first_attempt_at AS previous_first_attempt_at, o.first_attempt_at,
          o.accepted_at, NULL::text AS cursor_customer, NULL::text AS cursor_event_name,
          true AS wrap

-- name: record_outcomes
-- Write a batch of outcomes in one statement (River's shape, `UPDATE ... FROM` a set of rows;
-- the set travels as one JSON document, which is cheaper to encode than ten parallel arrays). The compare-and-set on lease_token means a relay
-- whose lease expired (and whose row another relay re-claimed) changes nothing.
-- A cancel requested while the report was in flight: after a success the row becomes a
-- pending cancellation; after an unknown outcome the report is resolved first (same key), so an
-- adjustment never races the event it cancels; after a refusal nothing was counted.
UPDATE meter_event_outbox o
SET state = CASE
        WHEN NOT (o.action = 'report' AND o.cancel_requested_at IS NOT NULL) THEN u.state
        WHEN u.state = 'accepted' THEN 'pending'                       -- now cancel it
        WHEN u.state = 'failed' AND u.code IN (
             'retry_budget_exhausted', 'dedup_window_expired', 'relay_error') THEN 'pending'
        WHEN u.state = 'failed' THEN 'cancelled'                       -- Stripe refused it
        ELSE u.state END,                                              -- resolve the report first
    action = CASE
        WHEN NOT (o.action = 'report' AND o.cancel_requested_at IS NOT NULL) THEN o.action
        WHEN u.state = 'accepted' THEN 'cancel'
        WHEN u.state = 'failed' AND u.code IN (
             'retry_budget_exhausted', 'dedup_window_expired', 'relay_error') THEN 'cancel'
        ELSE o.action END,
    available_at = CASE
        WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
             AND u.state IN ('accepted', 'failed') THEN now()
        ELSE now() + make_interval(secs => u.delay) END,
    lease_token = NULL,
    attempts = o.attempts + u.counted,
    key_generation = o.key_generation + u.new_key,
    first_attempt_at = CASE WHEN u.counted = 0 THEN u.first_attempt_at
                            ELSE o.first_attempt_at END,
    last_error_code = u.code,
    last_error_message = u.message,
    stripe_request_id = coalesce(u.request_id, o.stripe_request_id),
    accepted_at = CASE WHEN u.state = 'accepted' AND o.action = 'report'
                       THEN coalesce(o.accepted_at, now()) ELSE o.accepted_at END,
    cancelled_at = CASE
        WHEN u.state = 'cancelled' THEN now()
        WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL AND u.state = 'failed'
             AND u.code NOT IN ('retry_budget_exhausted', 'dedup_window_expired', 'relay_error')
        THEN now()
        ELSE o.cancelled_at END,
    updated_at = now()
FROM jsonb_to_recordset(CAST(:batch AS jsonb))
     AS u(id bigint, token uuid, state text, delay float8, counted int, new_key int, code text,
          message text, request_id text, first_attempt_at timestamptz)
WHERE o.id = u.id AND o.lease_token = u.token
RETURNING o.id

-- name: status_counts
SELECT state, n, oldest_available_at FROM meter_event_outbox_status

-- name: oldest_due
SELECT min(available_at) FROM meter_event_outbox
WHERE state IN ('pending', 'in_flight') AND available_at <= now()

-- name: failures_by_code
SELECT state, coalesce(last_error_code, '(none)') AS code, count(*) AS n
FROM meter_event_outbox
WHERE state IN ('failed', 'rejected')
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2

-- name: inspect
SELECT id, identifier, state, action, event_name, customer, value, payload, dimensions, metadata,
       occurred_at, stripe_account, attempts, key_generation, available_at, leased_by,
       last_error_code, last_error_message, stripe_request_id, created_at, first_attempt_at,
       accepted_at, cancel_requested_at, cancelled_at, updated_at
FROM meter_event_outbox WHERE identifier = :identifier

-- name: retry
-- Operator retry of failed rows: a fresh idempotency-key generation (the old key may hold a
-- cached error) and a fresh attempt budget. Refused unless forced: rows whose first attempt is
-- older than the safe dedup window (Stripe may no longer recognise the identifier, so a resend
-- could double-count) and rejected rows (Stripe may answer "duplicate identifier" and the row
-- would look accepted while unbilled: record a corrected fact under a new identifier instead).
-- Forcing asserts "not counted": the dedup clock starts again.
UPDATE meter_event_outbox o
SET state = 'pending', available_at = now(), attempts = 0,
    key_generation = o.key_generation + 1, updated_at = now(),
    first_attempt_at = CASE WHEN CAST(:force AS boolean) THEN NULL ELSE o.first_attempt_at END
WHERE o.state IN ('failed', 'rejected')
  AND (CAST(:identifier AS text) IS NULL OR o.identifier = :identifier)
  AND (CAST(:code AS text) IS NULL OR o.last_error_code = :code)
  AND (CAST(:force AS boolean)
       OR (o.state = 'failed'
           AND (o.first_attempt_at IS NULL
                OR o.first_attempt_at > now() - make_interval(secs => :window_seconds))))
RETURNING o.identifier

-- name: retry_refused
SELECT identifier, state, last_error_code, first_attempt_at FROM meter_event_outbox o
WHERE o.state IN ('failed', 'rejected')
  AND (CAST(:identifier AS text) IS NULL OR o.identifier = :identifier)
  AND (CAST(:code AS text) IS NULL OR o.last_error_code = :code)
  AND (o.state = 'rejected' OR o.first_attempt_at <= now() - make_interval(secs => :window_seconds))
ORDER BY o.id LIMIT 1000

-- name: reject
-- An asynchronous error report from Stripe names these identifiers: they were accepted for
-- processing but will not be billed.
UPDATE meter_event_outbox o
SET state = 'rejected', last_error_code = :code, last_error_message = :message,
    lease_token = NULL, updated_at = now()
WHERE o.identifier = ANY(CAST(:identifiers AS text[]))
  AND o.state IN ('accepted', 'pending', 'in_flight', 'failed')
RETURNING o.identifier

-- name: fold_counts
SELECT outbox_fold_counts()

-- name: prune
-- Retention: delete old terminal rows in a bounded batch (the caller loops), oldest first.
DELETE FROM meter_event_outbox o
WHERE o.id IN (
    SELECT id FROM meter_event_outbox
    WHERE state IN ('accepted', 'cancelled') AND updated_at < now() - make_interval(secs => :age_seconds)
    ORDER BY updated_at
    LIMIT :batch_size
    FOR UPDATE SKIP LOCKED)
RETURNING o.id
