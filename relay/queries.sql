-- Every statement the relay runs, in one place. Parameters use :name (see outbox/sqlfile.py).

-- name: walk
-- Choose what the next claim should take, without locking anything (read only, so the relay can
-- choose the next batch while the previous one is being leased): walk the lanes (customer,
-- event name) that have live rows, starting after the lane where the previous walk stopped
-- (round robin: a lane with a 100k backlog gets one row per pass, like every other lane), and
-- take each lane's head, its oldest row, if it is due. With :exclusive (v1: Stripe allows one
-- concurrent call per customer and meter) lanes that already have a call in flight are skipped.
-- The walk is a loose index scan over the lane index (customer, event name, available_at, id):
-- one probe per lane finds the next lane and, being the first entry of that lane, its head (if
-- the head is not due, nothing in the lane is). A second probe, on the small busy index, tells
-- whether the lane has a call in flight. The walk stops as soon as the batch is full, so it costs
-- two probes per row taken (plus one per lane passed over), however deep the backlog.
-- Returns one row: the head ids (a bigint[], handed to `claim`) and how many, the last lane walked (where the next walk starts) and `wrap`
-- when the walk ran out of lanes before the batch filled (start again from the first lane); no
-- row when no lane lies after the cursor.
WITH RECURSIVE walk (customer, event_name, id, taken, found, depth) AS (
    -- Seeded with the cursor (depth 0, not a lane): every lane comes from the one probe below.
    SELECT CAST(:after_customer AS text), CAST(:after_event_name AS text), NULL::bigint, false,
           0, 0
    UNION ALL
    SELECT n.customer, n.event_name, n.id, n.taken, w.found + n.taken::int, w.depth + 1
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT o.customer, o.event_name, o.id,
               o.available_at <= now() AND (NOT CAST(:exclusive AS boolean) OR (
                   -- A correlated scalar probe, not NOT EXISTS: the planner would hash that
                   -- over every in-flight row. The deadline test is written so only the
                   -- lane-keyed busy index can serve it.
                   SELECT b.id FROM meter_event_outbox b
                   WHERE b.customer = o.customer AND b.event_name = o.event_name
                     AND b.state = 'in_flight' AND b.available_at - now() > interval '0'
                   LIMIT 1) IS NULL) AS taken
        FROM meter_event_outbox o
        WHERE o.state IN ('pending', 'in_flight')
          AND (o.customer, o.event_name) > (w.customer, w.event_name)
        ORDER BY o.customer, o.event_name, o.available_at, o.id
        LIMIT 1) n
    WHERE w.depth < :max_lanes AND w.found < :batch_size
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM walk WHERE taken) AS ids, w.found,
       w.customer, w.event_name, w.depth < :max_lanes AND w.found < :batch_size AS wrap
FROM walk w WHERE w.depth > 0 ORDER BY w.depth DESC LIMIT 1

-- name: claim
-- The claim: one short transaction. For each lane the walk chose, take the lane's head again in
-- this statement's fresh snapshot (a row committed since the walk may have become the head; two
-- walks may have chosen the same lane), check it is due and, with :exclusive, that the lane has
-- no call in flight, and lock it (SKIP LOCKED: another relay may be claiming the same head).
-- With :fill, top the batch up with the oldest other due rows (v2 stream, where lanes need no
-- exclusivity: the walk gives every lane a row per pass, the fill keeps a single-tenant backlog
-- flowing). Then lease them: in_flight, a fresh lease token, a deadline, RETURNING what the
-- sender needs.
-- Every relay picks the same head row of a lane, so racing relays contend for that one row and
-- the re-checks let one win. Rarely, a row committed with an earlier available_at between two
-- racing claims becomes a second head; Stripe then answers 409 and that row retries (same key,
-- attempt not counted): a conflict costs a retry, never a double count.
WITH lanes AS MATERIALIZED (
    SELECT DISTINCT l.customer, l.event_name
    FROM unnest(CAST(:ids AS bigint[])) AS c(id)
    CROSS JOIN LATERAL (  -- LIMIT: one primary-key probe per id, never a hash of the table
        SELECT o.customer, o.event_name FROM meter_event_outbox o WHERE o.id = c.id LIMIT 1) l
),
chosen AS MATERIALIZED (
    SELECT o.id, o.first_attempt_at
    FROM lanes l
    CROSS JOIN LATERAL (
        SELECT h.id FROM meter_event_outbox h
        WHERE h.customer = l.customer AND h.event_name = l.event_name
          AND h.state IN ('pending', 'in_flight')
        ORDER BY h.available_at, h.id
        LIMIT 1) head
    JOIN meter_event_outbox o ON o.id = head.id
    WHERE o.state IN ('pending', 'in_flight') AND o.available_at <= now()
      AND (NOT CAST(:exclusive AS boolean) OR (
          SELECT b.id FROM meter_event_outbox b
          WHERE b.customer = o.customer AND b.event_name = o.event_name
            AND b.state = 'in_flight' AND b.available_at - now() > interval '0'
          LIMIT 1) IS NULL)
    FOR UPDATE OF o SKIP LOCKED
),
filled AS MATERIALIZED (
    SELECT o.id, o.first_attempt_at
    FROM meter_event_outbox o
    -- Written so only an ordered scan of the due index can serve it, stopping after :fill
    -- rows (with `available_at <= now()` a stale estimate can pick a bitmap scan and a sort
    -- of every due row).
    WHERE o.state IN ('pending', 'in_flight') AND o.available_at - now() <= interval '0'
      AND o.id NOT IN (SELECT id FROM chosen)
    ORDER BY o.available_at
    LIMIT :fill
    FOR UPDATE SKIP LOCKED
),
locked AS (
    SELECT * FROM chosen UNION ALL SELECT * FROM filled
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
          o.accepted_at, o.created_at

-- name: record_outcomes
-- Write a batch of outcomes in one statement (River's shape, `UPDATE ... FROM` a set of rows;
-- the set travels as one JSON document, which is cheaper to encode than ten parallel arrays).
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
    SET state = CASE
            WHEN NOT (o.action = 'report' AND o.cancel_requested_at IS NOT NULL) THEN u.state
            WHEN u.state = 'accepted' THEN 'pending'                      -- now cancel it
            WHEN u.state = 'failed' AND u.may_have_counted THEN 'pending' -- cancel it to be sure
            WHEN u.state = 'failed' THEN 'cancelled'                      -- Stripe refused it
            ELSE u.state END,                                             -- resolve the report
        action = CASE
            WHEN NOT (o.action = 'report' AND o.cancel_requested_at IS NOT NULL) THEN o.action
            WHEN u.state = 'accepted' THEN 'cancel'
            WHEN u.state = 'failed' AND u.may_have_counted THEN 'cancel'
            ELSE o.action END,
        available_at = CASE
            WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                 AND u.state IN ('accepted', 'failed') THEN now()
            ELSE now() + make_interval(secs => u.delay) END,
        lease_token = NULL,
        attempts = CASE  -- a cancel starts with a fresh budget
            WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                 AND (u.state = 'accepted' OR (u.state = 'failed' AND u.may_have_counted)) THEN 0
            ELSE o.attempts + u.counted END,
        key_generation = o.key_generation + u.new_key,
        first_attempt_at = u.first_attempt_at,  -- restored when no call may have counted
        last_error_code = u.code,
        last_error_message = u.message,
        stripe_request_id = coalesce(u.request_id, o.stripe_request_id),
        accepted_at = CASE WHEN u.state = 'accepted' AND o.action = 'report'
                           THEN coalesce(o.accepted_at, now()) ELSE o.accepted_at END,
        cancelled_at = CASE
            WHEN u.state = 'cancelled' THEN now()
            WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                 AND u.state = 'failed' AND NOT u.may_have_counted THEN now()
            ELSE o.cancelled_at END,
        updated_at = now()
    FROM jsonb_to_recordset(CAST(:batch AS jsonb))
         AS u(id bigint, token uuid, state text, delay float8, counted int, new_key int,
              code text, message text, request_id text, first_attempt_at timestamptz,
              may_have_counted boolean, called boolean, action text, key_generation int,
              http_status int, latency_ms real)
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

-- name: heartbeat
-- Announce this relay and count the live ones (seen within :stale_seconds, this one included),
-- so that each takes an equal share of the account's rate limit. Rows of relays gone for a day
-- are removed on the way. The row belongs to one process (:token): a live row of another
-- process with the same relay_id is left alone and `ours` comes back false (two processes
-- with one OUTBOX_RELAY_ID); a stale one is taken over (a new process, same name).
WITH me AS (
    INSERT INTO meter_event_outbox_relays AS r (relay_id, process_token)
    VALUES (:relay_id, :token)
    ON CONFLICT (relay_id) DO UPDATE SET
        seen_at = CASE WHEN r.process_token IS DISTINCT FROM :token
                            AND r.seen_at > now() - make_interval(secs => :stale_seconds)
                       THEN r.seen_at ELSE now() END,
        started_at = CASE WHEN r.seen_at > now() - make_interval(secs => :stale_seconds)
                          THEN r.started_at ELSE now() END,
        process_token = CASE WHEN r.seen_at > now() - make_interval(secs => :stale_seconds)
                             THEN r.process_token ELSE :token END
    RETURNING r.relay_id, r.process_token IS NOT DISTINCT FROM :token AS ours
),
gone AS (
    DELETE FROM meter_event_outbox_relays WHERE seen_at < now() - interval '1 day'
)
SELECT 1 + count(*), (SELECT ours FROM me) FROM meter_event_outbox_relays r
WHERE r.seen_at > now() - make_interval(secs => :stale_seconds)
  AND r.relay_id <> (SELECT relay_id FROM me)

-- name: live_relays
-- For `status`: the relays seen in the last few seconds (they share the rate limit).
SELECT relay_id, started_at, seen_at FROM meter_event_outbox_relays
WHERE seen_at > now() - make_interval(secs => :stale_seconds)
ORDER BY relay_id

-- name: leave
-- Only this process's row: a relay refused for a duplicate id must not remove the other's.
DELETE FROM meter_event_outbox_relays WHERE relay_id = :relay_id AND process_token = :token

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

-- name: waiting_by_code
-- Why pending rows wait (e.g. account_access_refused after a 403), by code and account.
SELECT last_error_code, stripe_account, count(*) AS n
FROM meter_event_outbox
WHERE state = 'pending' AND last_error_code IS NOT NULL
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 50

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
