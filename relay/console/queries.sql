-- Read queries of the web console and of /metrics. Each stays cheap on a table holding years
-- of history: history is read only through the status view's maintained counters, the partial
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
-- Pending rows that failed at least once, by their last code: retrying, not yet given up.
SELECT last_error_code AS code, count(*) AS n, min(created_at) AS oldest_created_at,
       min(available_at) AS next_attempt_at
FROM meter_event_outbox
WHERE state = 'pending' AND last_error_code IS NOT NULL
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :limit

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

-- name: failures_by_code
-- Rows waiting for an operator's decision, by code, each with its first few identifiers.
SELECT f.state, f.code, f.n, ids.identifiers
FROM (SELECT state, coalesce(last_error_code, '') AS code, count(*) AS n
      FROM meter_event_outbox WHERE state IN ('failed', 'rejected')
      GROUP BY 1, 2) f,
     LATERAL (SELECT array_agg(identifier ORDER BY id) AS identifiers
              FROM (SELECT o.identifier, o.id FROM meter_event_outbox o
                    WHERE o.state = f.state AND coalesce(o.last_error_code, '') = f.code
                    ORDER BY o.id LIMIT :per_code) s) ids
ORDER BY f.n DESC, f.state, f.code

-- name: failed_rows
-- One code's failed or rejected rows, oldest first ('' stands for rows without a code).
SELECT identifier, state, customer, event_name, value, attempts, last_error_message,
       created_at, updated_at
FROM meter_event_outbox
WHERE state IN ('failed', 'rejected') AND coalesce(last_error_code, '') = :code
ORDER BY id LIMIT :limit

-- name: customer_backlog
-- Customers with the most unsent rows (the lane index leads with customer).
SELECT customer, count(*) AS n, min(created_at) AS oldest_created_at
FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')
GROUP BY customer ORDER BY 2 DESC, 1 LIMIT :limit

-- name: live_relays
SELECT relay_id, started_at, seen_at FROM meter_event_outbox_relays
WHERE seen_at > now() - make_interval(secs => :stale_seconds)
ORDER BY relay_id

-- name: row_story
SELECT id, identifier, state, action, event_name, customer, value, dimensions, metadata,
       occurred_at, stripe_account, attempts, key_generation, available_at, leased_by,
       last_error_code, last_error_message, stripe_request_id, created_at, first_attempt_at,
       accepted_at, cancel_requested_at, cancelled_at, updated_at,
       available_at - now() AS due_in
FROM meter_event_outbox WHERE identifier = :identifier

-- name: row_attempts
SELECT attempted_at, attempt, key_generation, action, state, http_status, code, message,
       stripe_request_id, latency_ms, relay_id
FROM meter_event_outbox_attempts WHERE outbox_id = :outbox_id
ORDER BY id LIMIT :limit

-- name: latest_drift_report
-- The newest report of `outbox-relay drift` (or no row).
SELECT id, created_at, since, until, groups, differing, unsettled, drift_events, differences
FROM meter_event_outbox_drift_reports ORDER BY created_at DESC LIMIT 1
