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
-- the head is not due, nothing in the lane is). A second probe, on the lane index after now(), tells
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
                   -- over every in-flight row. It reads the lane index's range of the lane
                   -- after now(): an in-flight row's available_at is its lease deadline, so
                   -- only the lane's leased rows and rows in backoff lie there. The bound is a
                   -- row comparison on the lane index's columns so that no other index can
                   -- serve it (the due index's range after now() holds every leased row).
                   SELECT b.id FROM meter_event_outbox b
                   WHERE b.customer = o.customer AND b.event_name = o.event_name
                     AND b.state IN ('pending', 'in_flight')
                     AND (b.customer, b.event_name, b.available_at)
                         > (o.customer, o.event_name, now())
                     AND b.state = 'in_flight'
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
-- The claim: one short transaction. Lock the heads the walk chose (one per lane) if they are
-- still due in this statement's fresh snapshot (SKIP LOCKED: another relay may be claiming the
-- same head; one primary-key probe each) and, with :exclusive (v1: one call in flight per
-- lane), only while their lane still has no call in flight: the walk checked that, but a head
-- can since have been claimed by another relay, failed and come back due while its lane's next
-- row is in flight. A head another relay (or another of our claims) took since the walk is in
-- flight now, not due, and is left out; two relays contend for that one row. A head that
-- changed since the walk is taken on the next pass. Rarely, a row committed with an earlier available_at between a walk and its claim
-- becomes a second head; in v1 Stripe then answers 409 and that row retries (same key, attempt
-- not counted): a conflict costs a retry, never a double count.
-- With :fill, top the batch up with the oldest other due rows (v2 stream, where lanes need no
-- exclusivity: the walk gives every lane a row per pass, the fill keeps a single-tenant backlog
-- flowing). Then lease them: in_flight, a fresh lease token, a deadline, RETURNING what the
-- sender needs.
WITH heads AS MATERIALIZED (
    -- The ids of one walk (:one_walk) name each lane once: taken as they are.
    SELECT u.id FROM unnest(CAST(:ids AS bigint[])) AS u(id) WHERE CAST(:one_walk AS boolean)
    UNION ALL
    -- Otherwise one walked row per lane, the oldest: a walk that wrapped around within one
    -- pass may name a lane twice, with a row committed in between as its new head. (The
    -- statement is planned with its parameters, so only one of the two branches runs.)
    (SELECT DISTINCT ON (r.customer, r.event_name) r.id
     FROM unnest(CAST(:ids AS bigint[])) AS u(id)
     CROSS JOIN LATERAL (  -- one primary-key probe per id, never a hash of the table
         SELECT o.id, o.customer, o.event_name, o.available_at
         FROM meter_event_outbox o
         WHERE o.id = u.id AND o.state IN ('pending', 'in_flight') LIMIT 1) r
     WHERE NOT CAST(:one_walk AS boolean)
     ORDER BY r.customer, r.event_name, r.available_at, r.id)
),
chosen AS MATERIALIZED (
    SELECT w.id, w.first_attempt_at
    FROM heads h
    CROSS JOIN LATERAL (
        SELECT o.id, o.first_attempt_at FROM meter_event_outbox o
        WHERE o.id = h.id AND o.state IN ('pending', 'in_flight') AND o.available_at <= now()
          -- v1: the lane is still free (a correlated scalar probe of the lane index's range
          -- after now(), as in the walk).
          AND (NOT CAST(:exclusive AS boolean) OR (
              SELECT b.id FROM meter_event_outbox b
              WHERE b.customer = o.customer AND b.event_name = o.event_name
                AND b.state IN ('pending', 'in_flight')
                AND (b.customer, b.event_name, b.available_at) > (o.customer, o.event_name, now())
                AND b.state = 'in_flight'
              LIMIT 1) IS NULL)
        LIMIT 1
        FOR UPDATE SKIP LOCKED) w
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
RETURNING o.id, o.lease_token, o.identifier, o.event_name, o.customer,
          o.payload::text AS payload_json, o.occurred_at, o.stripe_account, o.action, o.attempts,
          o.key_generation, locked.first_attempt_at AS previous_first_attempt_at,
          o.first_attempt_at, o.accepted_at, o.created_at

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
SELECT 1 + count(*) AS live, (SELECT ours FROM me) AS ours FROM meter_event_outbox_relays r
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

-- name: state_counts
-- Rows per state, from the status view's maintained counters (never a count over history).
SELECT state, n FROM meter_event_outbox_status

-- name: failures_by_code
SELECT state, coalesce(last_error_code, '(none)') AS code, count(*) AS n
FROM meter_event_outbox
WHERE state IN ('failed', 'rejected')
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2

-- name: waiting_by_code
-- Why pending rows wait (e.g. account_access_refused after a 403), by code and account.
SELECT last_error_code AS code, stripe_account, count(*) AS n
FROM meter_event_outbox
WHERE state = 'pending' AND last_error_code IS NOT NULL
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 50

-- name: row_story
-- Every column of one row an operator may need (`inspect`, the console's row page), and how
-- long until it is due by the database's clock (the one clock).
SELECT id, identifier, state, action, event_name, customer, value, payload, dimensions, metadata,
       occurred_at, stripe_account, attempts, key_generation, available_at, leased_by,
       last_error_code, last_error_message, stripe_request_id, created_at, first_attempt_at,
       accepted_at, cancel_requested_at, cancelled_at, updated_at,
       available_at - now() AS due_in
FROM meter_event_outbox WHERE identifier = :identifier

-- name: retry
-- Operator retry of failed rows: a fresh idempotency-key generation (the old key may hold a
-- cached error) and a fresh attempt budget. Refused unless forced, each with its reason:
-- `rejected` rows (Stripe may answer "duplicate identifier" and the row would look accepted
-- while unbilled: record a corrected fact under a new identifier instead) and rows whose first
-- attempt is older than the safe dedup window, `outside_dedup_window` (Stripe may no longer
-- recognise the identifier, so a resend could double-count). Forcing asserts "not counted":
-- the dedup clock starts again. `retry --all` leaves rejected rows out altogether (:rejected
-- false) unless the operator includes them. With :dry_run nothing changes (`retry --dry-run`).
-- One statement: what is requeued and what is refused come from one snapshot. Returns every
-- row requeued (or, with :dry_run, that would be) and at most 1000 refused, with the reason.
WITH matched AS MATERIALIZED (
    SELECT o.id, o.identifier, o.state, o.last_error_code AS code, o.first_attempt_at,
           CASE WHEN CAST(:force AS boolean) THEN NULL
                WHEN o.state = 'rejected' THEN 'rejected'
                WHEN o.first_attempt_at <= now() - make_interval(secs => :window_seconds)
                    THEN 'outside_dedup_window'
           END AS reason
    FROM meter_event_outbox o
    WHERE o.state IN ('failed', 'rejected')
      AND (CAST(:identifier AS text) IS NULL OR o.identifier = :identifier)
      AND (CAST(:code AS text) IS NULL OR o.last_error_code = :code)
      AND (CAST(:rejected AS boolean) OR o.state = 'failed')
),
requeued AS (
    UPDATE meter_event_outbox o
    SET state = 'pending', available_at = now(), attempts = 0,
        key_generation = o.key_generation + 1, updated_at = now(),
        first_attempt_at = CASE WHEN CAST(:force AS boolean) THEN NULL ELSE o.first_attempt_at END
    FROM matched m
    WHERE o.id = m.id AND m.reason IS NULL AND NOT CAST(:dry_run AS boolean)
      AND o.state IN ('failed', 'rejected')
    RETURNING o.id
)
(SELECT m.identifier, m.state, m.code, m.first_attempt_at, false AS refused, m.reason
 FROM matched m
 WHERE m.reason IS NULL
   AND (CAST(:dry_run AS boolean) OR m.id IN (SELECT id FROM requeued))
 ORDER BY m.id)
UNION ALL
(SELECT m.identifier, m.state, m.code, m.first_attempt_at, true, m.reason
 FROM matched m WHERE m.reason IS NOT NULL ORDER BY m.id LIMIT 1000)

-- name: reject
-- An asynchronous error report from Stripe names these identifiers: they were accepted for
-- processing but will not be billed. Identifiers are chosen by applications and unique only
-- per account, so a report acts on rows of its own account alone (:account NULL is the platform,
-- rows with stripe_account NULL); and only on rows Stripe can have counted: accepted, or a
-- report in flight whose call may already have landed (its late outcome then loses the
-- compare-and-set on the lease). A pending, failed, rejected or cancelled row is never touched:
-- a report naming it is a guess or a replay, and marking it would invite recording it again.
UPDATE meter_event_outbox o
SET state = 'rejected', last_error_code = :code, last_error_message = :message,
    lease_token = NULL, updated_at = now()
WHERE o.identifier = ANY(CAST(:identifiers AS text[]))
  AND o.stripe_account IS NOT DISTINCT FROM CAST(:account AS text)
  AND (o.state = 'accepted' OR (o.state = 'in_flight' AND o.action = 'report'))
RETURNING o.identifier

-- name: database_probe
-- The database watch (relay/pipeline/database_watch.py): the database's clock, the instant of
-- the statement as the outbox's INSERT sees it, and whether this session may write (off on a
-- primary; on for a hot standby, or under default_transaction_read_only).
SELECT statement_timestamp() AS now,
       current_setting('transaction_read_only') = 'on' AS read_only

-- name: fold_counts
SELECT outbox_fold_counts()

-- name: prune
-- Retention: delete old terminal rows in a bounded batch (the caller loops), oldest first, and
-- their attempt history in the same statement (the history has no foreign key: see 0003).
WITH gone AS (
    DELETE FROM meter_event_outbox o
    WHERE o.id IN (
        SELECT id FROM meter_event_outbox
        WHERE state IN ('accepted', 'cancelled')
          AND updated_at < now() - make_interval(secs => :age_seconds)
        ORDER BY updated_at
        LIMIT :batch_size
        FOR UPDATE SKIP LOCKED)
    RETURNING o.id
),
history AS (
    DELETE FROM meter_event_outbox_attempts a WHERE a.outbox_id IN (SELECT id FROM gone)
)
SELECT id FROM gone

-- name: unsent_by_group
-- For `status`: every unsent row (pending, in flight) grouped by what it is waiting for, with
-- the oldest fact of each group from when it was recorded and from when it happened. Reads the
-- small partial indexes of the hot states: the cost follows the backlog, never the history.
-- `due` rows are waiting for a relay; not-due pending rows with a code are backing off (or
-- waiting for the auth probe, told apart by `http_status` below); not-due rows without a code
-- are scheduled (a cancel right after its report).
SELECT o.state, o.last_error_code AS code, o.available_at <= now() AS due, count(*) AS n,
       min(o.created_at) AS oldest_created_at, min(o.occurred_at) AS oldest_occurred_at,
       min(o.available_at) AS next_attempt_at
FROM meter_event_outbox o
WHERE o.state IN ('pending', 'in_flight')
GROUP BY 1, 2, 3 ORDER BY 4 DESC

-- name: last_status_for_code
-- The HTTP status of the latest attempt of one pending row with this code: 401/403 mean the row
-- waits for the auth probe rather than backing off.
SELECT a.http_status
FROM meter_event_outbox o
JOIN LATERAL (SELECT http_status FROM meter_event_outbox_attempts
              WHERE outbox_id = o.id ORDER BY id DESC LIMIT 1) a ON true
WHERE o.state = 'pending' AND o.last_error_code = :code
LIMIT 1

-- name: list_rows
-- `outbox-relay list`: newest first, every filter optional. Planned for the values given; the
-- branches that do not apply get LIMIT 0 and are never run (a false WHERE would still start
-- the parallel workers of a branch planned as a parallel scan). Without --customer: a filter on a hot
-- state reads its partial index, --since the created_at block range index, and otherwise the
-- primary key is walked backwards until :limit rows match. With --customer, its live rows and
-- its settled rows are read apart, each newest first up to :limit, and merged: the live ones
-- from the lane index, the settled ones from the customer history index read backwards, so one
-- customer stays fast over millions of rows of history. NOT MATERIALIZED: each branch is
-- planned with the filters and its own states, so the partial indexes match.
WITH matching AS NOT MATERIALIZED (
    SELECT id, identifier, state, action, customer, event_name, value, stripe_account, attempts,
           last_error_code, created_at, occurred_at, available_at, accepted_at, updated_at
    FROM meter_event_outbox
    WHERE (CAST(:state AS text) IS NULL OR state = :state)
      AND (CAST(:code AS text) IS NULL OR last_error_code = :code)
      AND (CAST(:customer AS text) IS NULL OR customer = :customer)
      AND (CAST(:event_name AS text) IS NULL OR event_name = :event_name)
      AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since)
)
SELECT identifier, state, action, customer, event_name, value, stripe_account, attempts,
       last_error_code, created_at, occurred_at, available_at, accepted_at, updated_at
FROM (
    (SELECT * FROM matching
     ORDER BY id DESC LIMIT CASE WHEN CAST(:customer AS text) IS NULL THEN :limit ELSE 0 END)
    UNION ALL
    (SELECT * FROM matching WHERE state IN ('pending', 'in_flight')
     ORDER BY id DESC LIMIT CASE WHEN CAST(:customer AS text) IS NULL THEN 0 ELSE :limit END)
    UNION ALL
    (SELECT * FROM matching WHERE state IN ('accepted', 'cancelled', 'failed', 'rejected')
     ORDER BY id DESC LIMIT CASE WHEN CAST(:customer AS text) IS NULL THEN 0 ELSE :limit END)
) newest
ORDER BY id DESC
LIMIT :limit

-- name: row_attempts
-- One row's attempt history, oldest first (the attempt table's (outbox_id, id) index).
SELECT attempted_at, attempt, key_generation, action, state, http_status, code, message,
       stripe_request_id, latency_ms, relay_id
FROM meter_event_outbox_attempts WHERE outbox_id = :outbox_id
ORDER BY id LIMIT :limit

-- name: rejected_count
-- How many rejected rows (with this code) `retry --all` left out, said in one line.
SELECT count(*) FROM meter_event_outbox o
WHERE o.state = 'rejected' AND (CAST(:code AS text) IS NULL OR o.last_error_code = :code)

-- name: row_state
SELECT state, action FROM meter_event_outbox WHERE identifier = :identifier

-- name: prune_preview
-- What `prune` would delete (--dry-run): counted on the terminal-age index.
SELECT count(*) AS n, min(updated_at) AS oldest, max(updated_at) AS newest
FROM meter_event_outbox
WHERE state IN ('accepted', 'cancelled') AND updated_at < now() - make_interval(secs => :age_seconds)

-- name: unsent_count
-- Rows not (yet) reported: what a downgrade to base would destroy.
SELECT count(*) FROM meter_event_outbox WHERE state IN ('pending', 'in_flight', 'failed')

-- name: drift_ours
-- Our side of the drift report: per (account, customer, event name, hour of occurred_at) the
-- sum and count of facts Stripe accepted that were neither rejected nor cancelled, plus the
-- rows whose outcome is still open (sent at least once, not yet settled: the group is
-- compared only once they settle), and a few identifiers to show when the group differs.
-- The created_at bound lets the block range index skip history: the occurred_at_window CHECK
-- puts occurred_at at most 5 minutes after created_at. Hours are UTC hours, as Stripe's
-- summaries, whatever the session's TimeZone (an hour in Asia/Kolkata starts half past a UTC
-- hour).
SELECT coalesce(stripe_account, '') AS account, customer, event_name,
       date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       coalesce(sum(value) FILTER (WHERE state = 'accepted'), 0) AS value,
       count(*) FILTER (WHERE state = 'accepted') AS events,
       count(*) FILTER (WHERE state IN ('pending', 'in_flight')) AS open,
       (array_agg(identifier ORDER BY id) FILTER (WHERE state = 'accepted'))[1:10]
           AS identifiers
FROM meter_event_outbox
WHERE created_at >= CAST(:since AS timestamptz) - interval '5 minutes'
  AND occurred_at >= :since AND occurred_at < :until
  AND (state = 'accepted' OR (state IN ('pending', 'in_flight') AND first_attempt_at IS NOT NULL))
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4

-- name: save_drift_report
INSERT INTO meter_event_outbox_drift_reports (since, until, groups, differing, unsettled,
    drift_events, differences)
VALUES (:since, :until, :groups, :differing, :unsettled, :drift_events, CAST(:differences AS jsonb))
RETURNING id, created_at

-- name: latest_drift_report
-- The newest drift report (console, /metrics), or no row.
SELECT id, created_at, since, until, groups, differing, unsettled, drift_events, differences
FROM meter_event_outbox_drift_reports ORDER BY created_at DESC LIMIT 1

-- Reads of the web console and of /metrics. Each stays cheap on a table holding years of
-- history: history is read only through the status view's maintained counters, the partial
-- indexes of the hot states (pending, in_flight, failed, rejected), the terminal-age index
-- bounded to the last hour, or a bounded backward walk of the attempt table's primary key.

-- name: state_counts
SELECT state, n FROM meter_event_outbox_status

-- name: oldest_unsent
-- The oldest fact not yet reported, from when it was recorded and from when it happened (a
-- row in backoff or waiting on auth is still unsent: available_at would hide it).
SELECT min(created_at) AS created_at, min(occurred_at) AS occurred_at,
       now() - min(created_at) AS created_age, now() - min(occurred_at) AS occurred_age
FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')

-- name: backing_off
-- Pending rows that carry an error code, by that code: retrying (not yet given up), or held
-- (`held`: a code of :held, a refused key or account, or a meter Stripe would drop them for;
-- no call is made for them, so they are not retrying).
SELECT last_error_code AS code, last_error_code = ANY(CAST(:held AS text[])) AS held,
       count(*) AS n, min(created_at) AS oldest_created_at, min(available_at) AS next_attempt_at
FROM meter_event_outbox
WHERE state = 'pending' AND last_error_code IS NOT NULL
GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT :limit

-- name: finished_last_hour
-- Rows that reached accepted or cancelled in the last hour (terminal-age index, one hour of it).
SELECT count(*) FILTER (WHERE state = 'accepted') AS accepted,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled
FROM meter_event_outbox
WHERE state IN ('accepted', 'cancelled') AND updated_at > now() - interval '1 hour'

-- name: attempts_last_hour
-- Stripe calls of the last hour from the attempt history: the newest :cap attempts at most
-- (a backward walk of the primary key), so a busy hour costs a bounded read.
SELECT count(*) AS calls,
       count(*) FILTER (WHERE a.code IS NOT NULL) AS errors,
       min(a.attempted_at) AS since,
       count(*) = :cap AS capped
FROM (SELECT attempted_at, code FROM meter_event_outbox_attempts
      ORDER BY id DESC LIMIT :cap) a
WHERE a.attempted_at > now() - interval '1 hour'

-- name: attempt_errors_last_hour
SELECT a.code, count(*) AS n
FROM (SELECT attempted_at, code FROM meter_event_outbox_attempts
      ORDER BY id DESC LIMIT :cap) a
WHERE a.attempted_at > now() - interval '1 hour' AND a.code IS NOT NULL
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :limit

-- name: failures_with_identifiers
-- Rows waiting for an operator's decision, by code, each with its first few identifiers.
SELECT f.state, f.code, f.n, ids.identifiers
FROM (SELECT state, coalesce(last_error_code, '') AS code, count(*) AS n
      FROM meter_event_outbox WHERE state IN ('failed', 'rejected')
      GROUP BY 1, 2) f,
     LATERAL (SELECT array_agg(identifier ORDER BY id) AS identifiers
              FROM (SELECT o.identifier, o.id FROM meter_event_outbox o
                    -- the IN list lets the planner use the partial index attention_by_code
                    WHERE o.state IN ('failed', 'rejected') AND o.state = f.state
                      AND coalesce(o.last_error_code, '') = f.code
                    ORDER BY o.id LIMIT :per_code) s) ids
ORDER BY f.n DESC, f.state, f.code

-- name: look_rows
-- The console's list of rows that need a look, filtered and paged forward by id (keyset: rows
-- after :after; :upto, when set, caps the set a bulk action confirmed). The kinds: failed,
-- rejected, retrying (pending after an error) and held (pending with a code of :held: waiting
-- for a refused key or account, or for its meter). One branch per state, each the first :scan
-- entries past :after of one index (look_by_state, look_by_customer, look_by_code: the planner
-- picks by the filters given; a branch that does not apply gets LIMIT 0 and is never run).
-- The meter filter and the split of pending rows into retrying and held are no index's: they
-- narrow the first :scan rows of the merged branches, so a page reads at most 3 x :scan index
-- entries and rows whatever the filters (the store passes :scan = :limit when neither
-- applies). `scanned` and `last_scanned` say how far the page looked (the next page starts
-- there even when no row of that stretch matched); a page that found nothing is one row of
-- NULLs and those two.
-- `state = ANY('{x}')` and ORDER BY state, id (not `state = 'x'` and ORDER BY id): with an
-- equality the planner may walk the primary key from :after, filtering, when it believes the
-- state dense there; 500,000 rows between a page and the next rejected row took 630 ms. The
-- primary key cannot give this order, the partial indexes can.
WITH scanned AS MATERIALIZED (
    SELECT * FROM (
        (SELECT id, identifier, state, customer, event_name, value, attempts, last_error_code,
                last_error_message, stripe_account, created_at, updated_at, available_at,
                first_attempt_at
         FROM meter_event_outbox
         WHERE state = ANY('{failed}') AND id > :after
           AND id <= coalesce(CAST(:upto AS bigint), 9223372036854775807)
           AND (CAST(:code AS text) IS NULL OR coalesce(last_error_code, '') = :code)
           AND (CAST(:customer AS text) IS NULL OR customer = :customer)
         ORDER BY state, id
         LIMIT CASE WHEN coalesce(CAST(:kind AS text), 'failed') = 'failed' THEN :scan ELSE 0 END)
        UNION ALL
        (SELECT id, identifier, state, customer, event_name, value, attempts, last_error_code,
                last_error_message, stripe_account, created_at, updated_at, available_at,
                first_attempt_at
         FROM meter_event_outbox
         WHERE state = ANY('{rejected}') AND id > :after
           AND id <= coalesce(CAST(:upto AS bigint), 9223372036854775807)
           AND (CAST(:code AS text) IS NULL OR coalesce(last_error_code, '') = :code)
           AND (CAST(:customer AS text) IS NULL OR customer = :customer)
         ORDER BY state, id
         LIMIT CASE WHEN coalesce(CAST(:kind AS text), 'rejected') = 'rejected' THEN :scan ELSE 0 END)
        UNION ALL
        (SELECT id, identifier, state, customer, event_name, value, attempts, last_error_code,
                last_error_message, stripe_account, created_at, updated_at, available_at,
                first_attempt_at
         FROM meter_event_outbox
         WHERE state = ANY('{pending}') AND last_error_code IS NOT NULL
           AND id > :after
           AND id <= coalesce(CAST(:upto AS bigint), 9223372036854775807)
           AND (CAST(:code AS text) IS NULL OR coalesce(last_error_code, '') = :code)
           AND (CAST(:customer AS text) IS NULL OR customer = :customer)
         ORDER BY state, id
         LIMIT CASE WHEN coalesce(CAST(:kind AS text), 'retrying') IN ('retrying', 'held') THEN :scan ELSE 0 END)
    ) branches
    ORDER BY id LIMIT :scan
),
stretch AS (SELECT count(*) AS scanned, max(id) AS last_scanned FROM scanned)
SELECT o.*, o.state = 'pending' AND o.last_error_code = ANY(CAST(:held AS text[])) AS held,
       s.scanned, s.last_scanned
FROM stretch s
LEFT JOIN LATERAL (
    SELECT * FROM scanned
    WHERE (CAST(:event_name AS text) IS NULL OR event_name = :event_name)
      AND (coalesce(CAST(:kind AS text), '') NOT IN ('retrying', 'held')
           OR (CAST(:kind AS text) = 'held') = (last_error_code = ANY(CAST(:held AS text[]))))
    ORDER BY id LIMIT :limit
) o ON true
ORDER BY o.id

-- name: calls_per_minute
-- The overview's chart: Stripe calls per minute of the last :seconds, a bounded read whatever
-- the traffic. Attempt ids grow with time, so a binary search over the primary key (at most 64
-- probes) finds the first attempt of the span. A span of at most :exact ids is read whole (one
-- range of the primary key; stride 1, exact counts); a busier one is sampled: one id of every
-- `stride` ids (one probe each, :samples at most), each minute's counts scaled by the stride.
-- Ids missing from the span (rows pruned with their history) are missed samples.
WITH RECURSIVE span AS (
    SELECT (SELECT id FROM meter_event_outbox_attempts ORDER BY id LIMIT 1) AS lo,
           (SELECT id FROM meter_event_outbox_attempts ORDER BY id DESC LIMIT 1) AS hi
),
search (lo, hi, steps) AS (
    SELECT lo, hi, 0 FROM span WHERE hi IS NOT NULL
    UNION ALL
    SELECT CASE WHEN b.before THEN m.mid + 1 ELSE s.lo END,
           CASE WHEN b.before THEN s.hi ELSE m.mid END,
           s.steps + 1
    FROM search s
    CROSS JOIN LATERAL (SELECT s.lo + (s.hi - s.lo) / 2 AS mid) m
    CROSS JOIN LATERAL (
        SELECT coalesce((SELECT a.attempted_at <= now() - make_interval(secs => :seconds)
                         FROM meter_event_outbox_attempts a
                         WHERE a.id >= m.mid ORDER BY a.id LIMIT 1), false) AS before
    ) b
    WHERE s.lo < s.hi AND s.steps < 64
),
stride AS (
    SELECT f.lo AS first, sp.hi AS last,
           CASE WHEN sp.hi - f.lo < :exact THEN 1
                ELSE ceil((sp.hi - f.lo + 1) / CAST(:samples AS numeric))::bigint END AS k
    FROM (SELECT lo FROM search ORDER BY steps DESC LIMIT 1) f, span sp
),
sampled AS (
    SELECT a.attempted_at, a.action, a.state, a.code, st.k
    FROM stride st
    CROSS JOIN LATERAL (
        SELECT attempted_at, action, state, code FROM meter_event_outbox_attempts
        WHERE id >= st.first AND id <= st.last AND st.k = 1 ORDER BY id LIMIT :exact
    ) a
    WHERE a.attempted_at > now() - make_interval(secs => :seconds)
    UNION ALL
    SELECT a.attempted_at, a.action, a.state, a.code, st.k
    FROM stride st
    CROSS JOIN LATERAL generate_series(0, (st.last - st.first) / st.k) i(n)
    -- one probe of the primary key per sample (LIMIT keeps the planner from turning the probes
    -- into a hash join over the whole table): the n-th stretch of k ids, at an offset that
    -- varies (a fixed one would alias with any pattern of period dividing k)
    CROSS JOIN LATERAL (
        SELECT attempted_at, action, state, code FROM meter_event_outbox_attempts
        WHERE id = st.first + i.n * st.k + (i.n * 7919) % st.k LIMIT 1
    ) a
    WHERE st.k > 1 AND a.attempted_at > now() - make_interval(secs => :seconds)
)
SELECT date_trunc('minute', attempted_at) AS minute,
       count(*) FILTER (WHERE action = 'report' AND state = 'accepted') * k AS accepted,
       count(*) FILTER (WHERE code IS NOT NULL) * k AS errors,
       count(*) * k AS calls,
       k AS stride
FROM sampled
GROUP BY 1, k ORDER BY 1

-- name: customer_backlog
-- Customers with the most unsent rows (the lane index leads with customer).
SELECT customer, count(*) AS n, min(created_at) AS oldest_created_at
FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')
GROUP BY customer ORDER BY 2 DESC, 1 LIMIT :limit

-- name: trace_contexts
-- The recorded trace context of claimed rows, for the relay's spans (only while tracing is on:
-- the claim itself does not carry the column, so tracing off costs nothing).
SELECT id, trace_context FROM meter_event_outbox
WHERE id = ANY(CAST(:ids AS bigint[])) AND trace_context IS NOT NULL

-- Console sessions (outbox_console_sessions): a signed cookie counts only while its row exists.
-- name: console_session_open
-- A new session; expired ones go in the same statement, so the table never grows.
WITH gone AS (DELETE FROM outbox_console_sessions WHERE expires_at < now())
INSERT INTO outbox_console_sessions (id, expires_at)
VALUES (:id, now() + make_interval(secs => :seconds))
RETURNING id

-- name: console_session_alive
SELECT id FROM outbox_console_sessions WHERE id = :id AND expires_at > now()

-- name: console_session_close
DELETE FROM outbox_console_sessions WHERE id = :id RETURNING id

-- The meter catalogue (alembic/versions/0012_meter_catalogue.up.sql).

-- name: save_meters
-- Replace one account's catalogue with a fresh read of Stripe (:meters, a JSON array), and
-- note the read as 'ok', in one statement.
WITH fresh AS (
    SELECT * FROM jsonb_to_recordset(CAST(:meters AS jsonb))
        AS m(meter_id text, event_name text, status text, customer_key text, value_key text,
             event_time_window text, formula text)
),
gone AS (
    DELETE FROM meter_event_outbox_meters o
    WHERE o.stripe_account = :account
      AND o.meter_id NOT IN (SELECT meter_id FROM fresh)
),
saved AS (
    INSERT INTO meter_event_outbox_meters AS o (stripe_account, meter_id, event_name, status,
        customer_key, value_key, event_time_window, formula, fetched_at)
    SELECT :account, meter_id, event_name, status, customer_key, value_key, event_time_window,
           formula, now()
    FROM fresh
    ON CONFLICT (stripe_account, meter_id) DO UPDATE
    SET event_name = excluded.event_name, status = excluded.status,
        customer_key = excluded.customer_key, value_key = excluded.value_key,
        event_time_window = excluded.event_time_window, formula = excluded.formula,
        fetched_at = excluded.fetched_at
)
INSERT INTO meter_event_outbox_meter_reads (stripe_account, outcome, detail, read_at, ok_at)
VALUES (:account, 'ok', NULL, now(), now())
ON CONFLICT (stripe_account) DO UPDATE
SET outcome = 'ok', detail = NULL, read_at = now(), ok_at = now()

-- name: note_meter_read
-- A read of an account's meters that failed: the catalogue stays as it was.
INSERT INTO meter_event_outbox_meter_reads (stripe_account, outcome, detail, read_at)
VALUES (:account, :outcome, :detail, now())
ON CONFLICT (stripe_account) DO UPDATE
SET outcome = excluded.outcome, detail = excluded.detail, read_at = now()

-- name: load_meters
-- The whole catalogue (a few rows per account). Bad hand edits that pass the CHECKs are
-- judged when loaded (relay/stripe/catalogue.py).
SELECT stripe_account AS account, meter_id, event_name, status, customer_key, value_key,
       event_time_window, formula, fetched_at
FROM meter_event_outbox_meters ORDER BY stripe_account, event_name, meter_id

-- name: meter_reads
SELECT stripe_account AS account, outcome, detail, read_at, ok_at
FROM meter_event_outbox_meter_reads ORDER BY stripe_account

-- name: note_event_names
-- Event names claimed since the last refresh (:names, a JSON array of [account, name]).
INSERT INTO meter_event_outbox_event_names AS n (stripe_account, event_name, last_seen_at)
SELECT e->>0, e->>1, now() FROM jsonb_array_elements(CAST(:names AS jsonb)) e
ON CONFLICT (stripe_account, event_name) DO UPDATE SET last_seen_at = now()

-- name: event_names_in_use
-- Event names per account in unsent rows (the hot part, through the due index) and in
-- recent history (the few rows of meter_event_outbox_event_names): never a scan of history.
SELECT coalesce(stripe_account, '') AS account, event_name
FROM meter_event_outbox WHERE state IN ('pending', 'in_flight') AND available_at > '-infinity'
UNION
SELECT stripe_account, event_name FROM meter_event_outbox_event_names
WHERE last_seen_at > now() - make_interval(days => 35)
ORDER BY 1, 2

-- name: held_by_meter
-- Rows held because of their meter, per account, event name and code (pending rows only:
-- the hot part).
SELECT coalesce(stripe_account, '') AS account, event_name, last_error_code AS code,
       count(*) AS n, min(created_at) AS oldest_created_at, min(occurred_at) AS oldest_occurred_at
FROM meter_event_outbox
WHERE state = 'pending' AND available_at > '-infinity'
  AND last_error_code = ANY(CAST(:codes AS text[]))
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3

-- name: release_held
-- Rows held for a meter that is now usable: due at once (one write per held row).
UPDATE meter_event_outbox
SET available_at = now(), updated_at = now()
WHERE state = 'pending' AND available_at > now()
  AND coalesce(stripe_account, '') = :account AND event_name = :event_name
  AND last_error_code = ANY(CAST(:codes AS text[]))
RETURNING id

-- The outage breaker (alembic/versions/0013_outage_breaker.up.sql, relay/stripe/outage.py).
-- One small row per scope; every statement touches that row only (and `outage_close` the
-- rows the breaker held back).

-- name: outage_state
-- The breaker as every replica, `status` and the console see it, with the database's clock
-- (`now`): `probe_in_seconds` is how long until the next probe may go (negative: due).
SELECT state, since, opened_at, opened_by, closed_at, closed_by, last_status, calls,
       failed_calls, probes, probe_interval,
       extract(epoch FROM probe_at - now())::float8 AS probe_in_seconds,
       CASE WHEN probe_until > now() THEN probe_holder END AS probe_holder, now() AS now
FROM meter_event_outbox_outage WHERE scope = :scope

-- name: outage_sync
-- A relay's periodic look at the breaker, adding the calls it made (and how many failed) since
-- its last look while the breaker is open; then the state as `outage_state` reads it.
WITH noted AS (
    UPDATE meter_event_outbox_outage
    SET calls = calls + :calls, failed_calls = failed_calls + :failed,
        last_status = CASE WHEN :failed > 0 THEN :status ELSE last_status END
    WHERE scope = :scope AND state = 'open' AND :calls > 0
    RETURNING 1
)  -- a data-modifying CTE runs whether read or not; the SELECT sees the row before it
SELECT state, since, opened_at, opened_by, closed_at, closed_by, last_status, calls,
       failed_calls, probes, probe_interval,
       extract(epoch FROM probe_at - now())::float8 AS probe_in_seconds,
       CASE WHEN probe_until > now() THEN probe_holder END AS probe_holder, now() AS now
FROM meter_event_outbox_outage WHERE scope = :scope

-- name: outage_open
-- Open the breaker after a run of :failed failed calls that began :streak_seconds ago; the
-- first probe may go after :interval seconds. Returns true when this relay opened it, nothing
-- when it was open already (another replica was first).
INSERT INTO meter_event_outbox_outage AS o (
    scope, state, since, opened_at, opened_by, last_status, calls, failed_calls,
    probe_interval, probe_at
) VALUES (
    :scope, 'open', now() - make_interval(secs => :streak_seconds), now(), :relay_id, :status,
    :failed, :failed, :interval, now() + make_interval(secs => :interval)
)
ON CONFLICT (scope) DO UPDATE SET
    state = 'open', since = EXCLUDED.since, opened_at = EXCLUDED.opened_at,
    opened_by = EXCLUDED.opened_by, closed_at = NULL, closed_by = NULL,
    last_status = EXCLUDED.last_status, calls = EXCLUDED.calls,
    failed_calls = EXCLUDED.failed_calls, probes = 0, probe_interval = EXCLUDED.probe_interval,
    probe_at = EXCLUDED.probe_at, probe_holder = NULL, probe_until = NULL, changed_at = now()
WHERE o.state = 'closed'
RETURNING true

-- name: outage_probe
-- Take the probe: one call for all replicas while the breaker is open, once the probe is
-- due, leased for :lease_seconds (a relay that dies with it does not block the next one).
-- Returns the current interval when this relay got it, nothing otherwise.
UPDATE meter_event_outbox_outage
SET probe_holder = :relay_id, probe_until = now() + make_interval(secs => :lease_seconds)
WHERE scope = :scope AND state = 'open' AND probe_at <= now()
  AND (probe_holder IS NULL OR probe_until < now() OR probe_holder = :relay_id)
RETURNING probe_interval

-- name: outage_probe_failed
-- The probe got no answer either: the next one waits twice as long, up to :cap seconds.
UPDATE meter_event_outbox_outage
SET probes = probes + 1, calls = calls + 1, failed_calls = failed_calls + 1,
    last_status = :status, probe_interval = least(:cap, probe_interval * 2),
    probe_at = now() + make_interval(secs => least(:cap, probe_interval * 2)),
    probe_holder = NULL, probe_until = NULL
WHERE scope = :scope AND state = 'open' AND probe_holder = :relay_id
RETURNING probe_interval

-- name: outage_close
-- Stripe answered: close the breaker for every replica, and make the rows that waited for it
-- due at once: those it held back and those whose call got no answer (:codes), at most
-- :horizon seconds ahead (the longest outage backoff), so the due index bounds the search.
-- Returns the rows released, nothing when it was closed already.
WITH closed AS (
    UPDATE meter_event_outbox_outage
    SET state = 'closed', closed_at = now(), closed_by = :relay_id, calls = calls + 1,
        probes = probes + CASE WHEN probe_holder = :relay_id THEN 1 ELSE 0 END,
        probe_holder = NULL, probe_until = NULL, probe_at = NULL, changed_at = now()
    WHERE scope = :scope AND state = 'open'
    RETURNING 1
),
released AS (
    UPDATE meter_event_outbox
    SET available_at = now(), updated_at = now()
    WHERE EXISTS (SELECT FROM closed) AND state = 'pending'
      AND available_at > now() AND available_at <= now() + make_interval(secs => :horizon)
      AND last_error_code = ANY(CAST(:codes AS text[]))
    RETURNING 1
)
SELECT (SELECT count(*) FROM released) FROM closed
