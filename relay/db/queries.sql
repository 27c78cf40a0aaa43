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
-- the head is not due, nothing in the lane is). In v2 a probe of the lease table's primary key
-- says whether the head is leased; in v1 two probes say whether the lane has a call in flight
-- (the lease table's lane index, which holds the head's own lease if it has one, and the lane
-- index after now()). The walk stops as soon as the batch is full, so it costs two probes per
-- row taken in v2 and three in v1 (plus one per lane passed over), however deep the backlog.
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
               o.available_at <= now()
               AND CASE WHEN CAST(:exclusive AS boolean) THEN (
                   -- v1: no call in flight in the lane. A correlated scalar probe, not NOT
                   -- EXISTS: the planner would hash that over every lease. A live lease of the
                   -- lane is in the lease table's lane index after now() (the head's own
                   -- lease among them: a lease carries its row's lane, so this probe also
                   -- says the head is not leased, and v1 needs no probe of the head's)...
                   SELECT l.outbox_id FROM meter_event_outbox_leases l
                   WHERE l.customer = o.customer AND l.event_name = o.event_name
                     AND l.leased_until > now()
                   LIMIT 1) IS NULL AND (
                   -- ... and a row claimed by a relay of an earlier release is `in_flight`
                   -- with its deadline in available_at, in the lane index's range after now()
                   -- (with the lane's rows in backoff). The bound is a row comparison on the
                   -- lane index's columns so that no other index can serve it.
                   SELECT b.id FROM meter_event_outbox b
                   WHERE b.customer = o.customer AND b.event_name = o.event_name
                     AND b.state IN ('pending', 'in_flight')
                     AND (b.customer, b.event_name, b.available_at)
                         > (o.customer, o.event_name, now())
                     AND b.state = 'in_flight'
                   LIMIT 1) IS NULL
               -- v2: the head itself has no live lease (a leased row stays pending: its
               -- lease is in the lease table, migration outbox_0020).
               ELSE coalesce((SELECT l.leased_until FROM meter_event_outbox_leases l
                              WHERE l.outbox_id = o.id), '-infinity') <= now() END AS taken
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

-- name: claim_plan
-- The claim's transaction begins with this: how PostgreSQL plans `claim`, for this transaction
-- only (LOCAL: `lease` and `reset_in_flight`, primary-key probes, run under it too; the
-- relay's other statements keep PostgreSQL's own choices). The relay prepares
-- `claim`, and its generic plan is the right one whatever the parameters (see `claim`'s
-- top-up); left to choose, PostgreSQL kept planning it afresh on every call, because a plan
-- made for the batch at hand always looked cheaper than one that cannot know it. That planning
-- (about 0.4 ms) was most of what a relay that keeps up cost PostgreSQL (bench.keep_up). And
-- no bitmap scan: a plan that knows the top-up's LIMIT can read every due row through a bitmap
-- and sort them (a lease probe each), where the ordered scan of the due index stops once
-- the batch is full; that is the plan behind a pooler, where nothing is prepared. And no JIT:
-- the claim's estimated cost grows with the backlog past jit_above_cost (the planner cannot
-- know the top-up stops once the batch is full), and compiling cost about 100 ms a claim. The
-- pool turns JIT off on a direct connection (relay/db/pool.py, NO_JIT); behind a pooler a
-- session's SET would stay on a server connection another client gets next, a LOCAL one not.
-- And no sequential scan: every table these statements read is read by an index (the lease
-- table's probes by its primary key: see `outcome_plan`).
SELECT pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true),
       pg_catalog.set_config('enable_bitmapscan', 'off', true),
       pg_catalog.set_config('enable_seqscan', 'off', true),
       pg_catalog.set_config('jit', 'off', true)

-- name: outcome_plan
-- The outcome's transaction begins with this, as the claim's with `claim_plan`: how PostgreSQL
-- plans `record_outcomes`, for this transaction only. No sequential scan: the outcome reads the
-- lease table by its primary key and deletes by row version, and a plan made while that table
-- was small (a new outbox; after a crash of PostgreSQL, which empties it) scanned it instead,
-- once per row of the batch, and the plan stays cached while the table grows to hundreds of
-- pages of dead leases, until its next VACUUM (a backlog's batch of 1,000 rows: 137 ms against
-- 24, tests/integration/relay/test_small_lease_table_plans.py). With no other path the planner
-- still scans (a table without an index), so nothing can fail for it. And no JIT, as in the
-- claim. And its generic plan, as the claim's: left to choose, PostgreSQL planned the outcome
-- afresh on most calls (a plan made for a small batch looks cheaper than one that cannot know
-- its size): 0.3 ms of planning for an outcome of one row, against 0.45 ms to run it, and a
-- relay that keeps up writes outcomes of a few rows (tests/integration/relay/test_claim_plan.py).
SELECT pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true),
       pg_catalog.set_config('enable_seqscan', 'off', true),
       pg_catalog.set_config('jit', 'off', true)

-- name: claim
-- The claim's first statement (relay.db.store: `claim`, then `lease`, one short transaction; the
-- outbox row is not updated, its lease goes to the UNLOGGED lease table, migration outbox_0020:
-- no new row version, no index entries, no WAL but the row lock). Lock the heads the walk chose
-- (one per lane) if they are still due and unleased in this statement's snapshot (SKIP LOCKED:
-- another relay may be claiming the same head; one primary-key probe each) and, with
-- :exclusive (v1: one call in flight per lane), only while their lane still has no call in
-- flight. Rarely, a row committed with an earlier available_at between a walk and its claim
-- becomes a second head; in v1 Stripe then answers 409 and that row retries (same key, attempt
-- not counted): a conflict costs a retry, never a double count.
-- With :fill, top the batch up with the oldest other due, unleased rows (v2 stream, where lanes
-- need no exclusivity), after the relay's top-up cursor (relay.core.top_up.TopUp): after the
-- newest row its previous top-up locked (:after_at, :after_id) in a backlog, or from :behind
-- before now() after a short top-up. Leased rows stay pending and due in the due index, and a
-- settled row's entry stays there, dead, until the outbox's next VACUUM, so a scan from the
-- start would pass over every row leased before it (three buffer reads each) and every entry
-- settled since that VACUUM; the cursor starts the scan after them. Rows left behind it
-- (committed long after their transaction began, lease expired, released unsent) are taken
-- when the relay starts again from the start, once every TopUp.RESTART_SECONDS. Returns
-- available_at for the top-up's rows (NULL for heads, and for a row due since '-infinity'):
-- where the cursor moves.
-- The row lock orders the claim against outcomes: an outcome updates the row, so a claim that
-- locks it afterwards re-reads it (no longer due) and leaves it out. Returns the ids locked.
-- This statement's snapshot can be older than a lease: another claim that held a row and
-- committed its lease while this statement ran lets it lock that row. So the leases are taken
-- by the next statement, with a snapshot taken after the row locks (see `lease`).
-- `in_flight`: the row was left in_flight by a relay of an earlier release (its lease on the row
-- itself, expired): once leased it is put back to pending (`reset_in_flight`).
WITH heads AS MATERIALIZED (
    -- The ids of one walk (:one_walk) name each lane once: taken as they are.
    SELECT u.id FROM unnest(CAST(:ids AS bigint[])) AS u(id) WHERE CAST(:one_walk AS boolean)
    UNION ALL
    -- Otherwise one walked row per lane, the oldest: a walk that wrapped around within one
    -- pass may name a lane twice, with a row committed in between as its new head. (Only
    -- one of the two branches runs: :one_walk is a one-time filter, in a generic plan too.)
    (SELECT DISTINCT ON (r.customer, r.event_name) r.id
     FROM unnest(CAST(:ids AS bigint[])) AS u(id)
     CROSS JOIN LATERAL (  -- one primary-key probe per id, never a hash of the table
         -- `IS TRUE`: a state test the due and lane indexes' predicate cannot be proved from,
         -- so neither can serve this probe. With the plain test, in a table whose statistics
         -- say almost nothing is pending (an outbox in service), the planner read each id
         -- through the due index (its second column: a scan from the index's start).
         SELECT o.id, o.customer, o.event_name, o.available_at
         FROM meter_event_outbox o
         WHERE o.id = u.id AND (o.state IN ('pending', 'in_flight')) IS TRUE LIMIT 1) r
     WHERE NOT CAST(:one_walk AS boolean)
     ORDER BY r.customer, r.event_name, r.available_at, r.id)
),
chosen AS MATERIALIZED (
    SELECT w.id, w.in_flight
    FROM heads h
    CROSS JOIN LATERAL (
        SELECT o.id, o.state = 'in_flight' AS in_flight
        FROM meter_event_outbox o
        WHERE o.id = h.id AND (o.state IN ('pending', 'in_flight')) IS TRUE  -- as in heads
          AND o.available_at <= now()
          -- v1: the lane is still free (correlated scalar probes, as in the walk; a live
          -- lease of the head is one of the lane's). v2: the head has no live lease.
          AND CASE WHEN CAST(:exclusive AS boolean) THEN (
              SELECT l.outbox_id FROM meter_event_outbox_leases l
              WHERE l.customer = o.customer AND l.event_name = o.event_name
                AND l.leased_until > now()
              LIMIT 1) IS NULL AND (
              SELECT b.id FROM meter_event_outbox b
              WHERE b.customer = o.customer AND b.event_name = o.event_name
                AND b.state IN ('pending', 'in_flight')
                AND (b.customer, b.event_name, b.available_at) > (o.customer, o.event_name, now())
                AND b.state = 'in_flight'
              LIMIT 1) IS NULL
              ELSE coalesce((SELECT l.leased_until FROM meter_event_outbox_leases l
                             WHERE l.outbox_id = o.id), '-infinity') <= now() END
        LIMIT 1
        FOR UPDATE SKIP LOCKED) w
),
filled AS MATERIALIZED (
    SELECT o.id, o.available_at, o.state = 'in_flight' AS in_flight
    FROM meter_event_outbox o
    -- Written so only an ordered scan of the due index can serve it, stopping after :fill
    -- rows (with `available_at <= now()` a stale estimate can pick a bitmap scan and a sort
    -- of every due row). The cursor is a row comparison on the due index's columns
    -- (available_at, id, migration outbox_0026), so the scan starts right after it, also
    -- among the many rows one INSERT statement gives the same available_at; :behind starts it
    -- that long before now(), before every id. Neither: the scan starts before every row
    -- ('-infinity' and the smallest bigint; ids come from the identity sequence). The bound
    -- comes from a sub-select so that the planner never sees its value: the statement is
    -- prepared, and its generic plan must start the scan at the cursor (an `IS NULL OR` left
    -- it a filter, read past every row before it); and planned with '-infinity' in sight, the
    -- planner chose a sequential scan and a sort of every due row. So every plan, custom or
    -- generic, is the same ordered scan.
    -- The sum (not the difference with now(), which PostgreSQL refuses for an infinite
    -- timestamp: "cannot subtract infinite timestamps") keeps an infinite available_at as it
    -- is: nothing CHECKs it finite, '-infinity' is due and 'infinity' never is.
    -- The state test and the tautology after it are the due index's predicate, word for word
    -- (migration outbox_0031): only the due index can serve this, never the lane index.
    WHERE (o.state IN ('pending', 'in_flight')) IS TRUE
      AND (isfinite(o.available_at) OR NOT isfinite(o.available_at))
      AND o.available_at + interval '0' <= now()
      AND (o.available_at, o.id)
          > (SELECT coalesce(CAST(:after_at AS timestamptz), now() - CAST(:behind AS interval),
                             '-infinity'),
                    coalesce(CAST(:after_id AS bigint), CAST('-9223372036854775808' AS bigint)))
      AND o.id NOT IN (SELECT id FROM chosen)
      AND coalesce((SELECT l.leased_until FROM meter_event_outbox_leases l
                    WHERE l.outbox_id = o.id), '-infinity') <= now()
    ORDER BY o.available_at, o.id
    LIMIT :fill
    FOR UPDATE SKIP LOCKED
)
SELECT id, NULL::timestamptz AS available_at, in_flight FROM chosen
UNION ALL
-- '-infinity' and dates before year 1 have no datetime in Python (psycopg refuses to load them):
-- such a row moves no cursor (the relay still counts it: a top-up full of them makes the next
-- one start from the start again). Rows due later than year 9999 are never due, so never here.
SELECT id,
       CASE WHEN available_at >= TIMESTAMPTZ '0001-01-01 00:00:00+00' THEN available_at END,
       in_flight
FROM filled

-- name: lease
-- The claim's second statement, in the same transaction as `claim`, on the rows it locked. Its
-- snapshot is taken after those row locks, so it sees every lease committed before them: the
-- lease of a relay that claimed one of these rows while `claim` ran (and committed, releasing
-- the row) is seen here, live, and that row is left out, never waited for. A lease that an
-- outcome, a webhook's rejection or the fold is deleting right now (they delete the lease,
-- then update the row this transaction holds) is skipped (SKIP LOCKED), never waited for:
-- waiting on the lease while holding the row was the deadlock between a claim and an outcome.
-- So a claim never waits, and only a lease seen expired and locked here is taken over.
-- The row lock arbitrates between claims (the lease table's primary key refuses a second lease
-- of a row all the same, see `fresh`); the takeover keeps `first_claimed_at`, the
-- dedup clock of a relay that died after its call. A row left `in_flight` by a relay of the
-- earlier release whose lease expired is put back to pending by `reset_in_flight` once leased
-- here, in the same transaction, so that relay's late outcome loses its compare-and-set.
WITH locked AS MATERIALIZED (
    SELECT o.id, o.identifier, o.event_name, o.customer, o.dimensions, o.value, o.occurred_at,
           o.stripe_account, o.action, o.attempts, o.key_generation, o.first_attempt_at,
           o.accepted_at, o.created_at, o.state,
           (SELECT l.leased_until FROM meter_event_outbox_leases l
            WHERE l.outbox_id = o.id) AS leased_until
    FROM unnest(CAST(:ids AS bigint[])) AS u(id)
    CROSS JOIN LATERAL (  -- one primary-key probe per id, and one of its lease
        SELECT * FROM meter_event_outbox o WHERE o.id = u.id LIMIT 1) o
),
expired AS MATERIALIZED (  -- leases to take over: seen expired, and nobody deleting them
    SELECT l.outbox_id
    FROM locked k
    CROSS JOIN LATERAL (
        SELECT l.outbox_id FROM meter_event_outbox_leases l
        WHERE l.outbox_id = k.id AND l.leased_until <= now()
        LIMIT 1
        FOR UPDATE SKIP LOCKED) l
    WHERE k.leased_until <= now()
),
free AS MATERIALIZED (
    SELECT k.* FROM locked k
    WHERE k.leased_until IS NULL OR k.id IN (SELECT outbox_id FROM expired)
),
-- One token for the claim's leases: the compare-and-set is on (row, token), so a token needs
-- to tell this lease of a row from the row's other leases only, which come from other claims
-- (another relay's, or a takeover), each with a token of its own. A random UUID costs
-- PostgreSQL about a microsecond; one per row was a tenth of this statement.
claim_token AS MATERIALIZED (SELECT gen_random_uuid() AS token),
-- A row no lease of which this snapshot sees gets a plain INSERT: a lease is only ever inserted
-- by a statement holding its row's lock (this one, after its claim; the cancel probe, which
-- deletes its own in the same statement), and a lease committed before this transaction
-- locked the row is in this snapshot (READ COMMITTED, which the relay's pool pins:
-- relay/db/pool.py). So no other lease of it can exist or appear, and the primary key would
-- refuse one rather than let two stand. The speculative insertion of ON CONFLICT (a probe of
-- the primary key first, a token, a confirmation) cost about 1.2 us per row more
-- (bench.lease_ab). A lease seen expired and locked in `expired` is taken over in place.
fresh AS MATERIALIZED (
    INSERT INTO meter_event_outbox_leases
        (outbox_id, lease_token, leased_by, leased_until, first_claimed_at, customer,
         event_name, stripe_account, action)
    SELECT k.id, t.token, :relay_id, now() + make_interval(secs => :lease_seconds),
           coalesce(k.first_attempt_at, now()), k.customer, k.event_name, k.stripe_account,
           k.action
    FROM free k CROSS JOIN claim_token t
    WHERE k.leased_until IS NULL
    RETURNING outbox_id, lease_token, first_claimed_at
),
taken_over AS MATERIALIZED (
    UPDATE meter_event_outbox_leases l
    SET lease_token = t.token, leased_by = :relay_id,
        leased_until = now() + make_interval(secs => :lease_seconds), leased_at = now(),
        first_claimed_at = least(l.first_claimed_at, coalesce(k.first_attempt_at, now())),
        customer = k.customer, event_name = k.event_name, stripe_account = k.stripe_account,
        action = k.action
    FROM free k CROSS JOIN claim_token t
    WHERE l.outbox_id = k.id AND k.leased_until IS NOT NULL AND l.leased_until <= now()
      -- A one-time filter: with no lease to take over (almost every claim) the join below is
      -- never run, whatever plan it got. A generic plan made while the lease table was small
      -- (a new outbox, or after a crash of PostgreSQL, which empties it) hashes `free` and
      -- scans the table, every dead lease since its last VACUUM, to find no row.
      AND EXISTS (SELECT FROM expired)
    RETURNING l.outbox_id, l.lease_token, l.first_claimed_at
),
leased AS (SELECT * FROM fresh UNION ALL SELECT * FROM taken_over)
SELECT k.id, leased.lease_token, k.identifier, k.event_name, k.customer,
       -- What Stripe receives as `payload`, built here as the table's generated `payload` column
       -- builds it (alembic/versions/0001_outbox.up.sql), which the relay no longer reads: the
       -- column can then be dropped by a later release (62 bytes of WAL per recorded fact)
       -- while relays of this one still run.
       (k.dimensions || jsonb_object(ARRAY['stripe_customer_id', k.customer,
                                           'value', trunc(k.value)::text]))::text AS payload_json,
       k.occurred_at, k.stripe_account, k.action, k.attempts,
       k.key_generation, k.first_attempt_at AS previous_first_attempt_at,
       coalesce(k.first_attempt_at, leased.first_claimed_at) AS first_attempt_at,
       k.accepted_at, k.created_at
FROM free k JOIN leased ON leased.outbox_id = k.id

-- name: reset_in_flight
-- The claim's third statement, only when `claim` locked a row left `in_flight` by a relay of the
-- earlier release (its lease on the row itself, expired) and `lease` leased it: pending again,
-- so that relay's late outcome loses its compare-and-set. The rows are still locked by the
-- claim's transaction. Not a CTE of `lease`: an UPDATE fires the table's statement triggers
-- (the tallies' transition-table trigger) even when it changes no row, a cost every claim
-- paid for a statement that almost never changes one. `IS TRUE`: see `status_tally`.
UPDATE meter_event_outbox
SET state = 'pending', lease_token = NULL, leased_by = NULL, updated_at = now()
WHERE id = ANY(CAST(:ids AS bigint[])) AND (state = 'in_flight') IS TRUE

-- name: record_outcomes
-- Write a batch of outcomes in one statement (River's shape, `UPDATE ... FROM` a set of rows).
-- The set travels as parallel arrays, one element per row (id, lease token, the key generation
-- it was sent with, the index of its decision, the call's request id and latency), and the
-- distinct decisions as one JSON document (a stream call's rows share one, and so do v1 calls
-- answered alike): unnest of typed arrays costs PostgreSQL a fraction of what taking the same
-- fields out of a JSON object per row did.
-- The compare-and-set on lease_token means a relay whose lease expired (and whose row another
-- relay re-claimed) changes nothing.
-- A cancel requested while the report was in flight: after a success the row becomes a
-- pending cancellation; after a failure that may still have been counted (`may_have_counted`:
-- the last call's outcome is unknown) too; after a definitive refusal nothing was counted and
-- the row is cancelled; after an unknown outcome the report is resolved first (same key), so an
-- adjustment never races the event it cancels.
-- Outcomes of calls to Stripe (`called`) are the attempt history, written in the same statement
-- and only for rows whose compare-and-set matched. A clean acceptance (a row's first, of its
-- report, answered 200, no cancel requested) is carried on the row (accepted_request_id,
-- accepted_attempt, accepted_key_generation, accepted_latency_ms, accepted_by: migration 0018)
-- and counted once per batch in the carried calls of this minute (a row per minute, relay
-- and session: concurrent batches never wait on each other); every other call appends
-- one history row. The row is written anyway, so a carried call costs a few dozen bytes of WAL
-- against about 265 for a history row and its index entries.
-- The compare-and-set is on the lease table (migration outbox_0020): the lease is deleted first,
-- only if it still carries our token (a relay whose lease expired and was taken over deletes
-- nothing), and only rows whose lease was deleted are updated, and only while still pending
-- (a webhook may have rejected the row meanwhile). After a crash of PostgreSQL the lease table
-- is empty: the old holder's outcome writes nothing and the row replays with the same key.
WITH input AS MATERIALIZED (
    SELECT r.id, r.token, r.key_generation, r.request_id, r.latency_ms, d.*,
           -- a call whose acceptance the row can carry (the row's own conditions below)
           d.called AND d.state = 'accepted' AND d.action = 'report' AND d.code IS NULL
               AND d.http_status = 200 AS clean
    FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]),
                CAST(:key_generations AS int[]), CAST(:decision_of AS int[]),
                CAST(:request_ids AS text[]), CAST(:latencies AS real[]))
         AS r(id, token, key_generation, decision, request_id, latency_ms)
    JOIN jsonb_to_recordset(CAST(:decisions AS jsonb))
         AS d(n int, state text, delay float8, counted int, new_key int, code text, message text,
              reached boolean, may_have_counted boolean, cancel_state text, cancel_now boolean,
              called boolean, action text, http_status int)
      ON d.n = r.decision
),
-- Each row's lease, found by its primary key, driven by the input: a LATERAL subquery that is not
-- pulled up (OFFSET 0) can only run inside a nested loop with the input outside. A join of the
-- input with the lease table was the planner's to turn around, and after a VACUUM that found no
-- live lease (a relay idle while autovacuum came by: a quiet night, an outage of Stripe) the
-- statistics say the table is empty until its next VACUUM: the plan then scanned every live lease
-- and compared each with every outcome of the batch (1,000 x 1,000: 393 ms for a backlog's batch
-- instead of 23; tests/integration/relay/test_small_lease_table_plans.py).
held AS MATERIALIZED (
    SELECT i.*, l.ctid AS lease_ctid, l.first_claimed_at, l.leased_by,
           -- taken over from an earlier holder (a takeover keeps its first claim and stamps
           -- leased_at; a fresh lease has both at the claim's now()): that holder's call
           -- may have counted whatever this one's outcome is
           l.first_claimed_at < l.leased_at AS carried_over
    FROM input i
    CROSS JOIN LATERAL (
        SELECT l.ctid, l.first_claimed_at, l.leased_by, l.leased_at
        FROM meter_event_outbox_leases l
        WHERE l.outbox_id = i.id AND l.lease_token = i.token
        OFFSET 0) l
),
-- The compare-and-set: the leases still carrying our token are deleted, by the row versions read
-- above (a TID scan: no join). A lease deleted since this statement's snapshot is skipped. One
-- taken over meanwhile (by another relay's claim: a new version, another token) is re-checked by
-- READ COMMITTED on its newest version, which PostgreSQL 15 refuses for its TID (another
-- ctid), and the (row, token) test, a hashed subplan that stays a filter (`IS TRUE`, as below),
-- refuses whatever a release's re-check of the TID does. Either way its row is not written
-- below. So a lease must never be updated in place but by a takeover: a lease updated under its
-- own token would be refused too, and its row sent again (same key) once the lease expired.
released AS MATERIALIZED (
    DELETE FROM meter_event_outbox_leases l
    WHERE l.ctid = ANY (ARRAY(SELECT h.lease_ctid FROM held h))
      AND ((l.outbox_id, l.lease_token) IN (SELECT h.id, h.token FROM held h)) IS TRUE
    RETURNING l.outbox_id
),
written AS (
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
        leased_by = u.leased_by,  -- the row's story: which relay sent it last
        attempts = CASE  -- a cancel starts with a fresh budget
            WHEN o.action = 'report' AND o.cancel_requested_at IS NOT NULL
                 AND u.cancel_now THEN 0
            ELSE o.attempts + u.counted END,
        key_generation = o.key_generation + u.new_key,
        -- The dedup clock starts when a call may have counted: this one (reached), or the
        -- call of a relay whose expired lease this claim took over (its first claim, carried
        -- in the lease). Otherwise the row keeps what it had.
        first_attempt_at = CASE WHEN u.reached OR u.carried_over
                                THEN coalesce(o.first_attempt_at, u.first_claimed_at)
                                ELSE o.first_attempt_at END,
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
        updated_at = now(),
        -- The carried call: set once (a row accepted before keeps its first), never cleared.
        accepted_request_id = CASE WHEN u.clean AND o.accepted_at IS NULL
                                        AND o.cancel_requested_at IS NULL
                                   THEN u.request_id ELSE o.accepted_request_id END,
        accepted_attempt = CASE WHEN u.clean AND o.accepted_at IS NULL
                                     AND o.cancel_requested_at IS NULL
                                THEN o.attempts + u.counted ELSE o.accepted_attempt END,
        accepted_key_generation = CASE WHEN u.clean AND o.accepted_at IS NULL
                                            AND o.cancel_requested_at IS NULL
                                       THEN u.key_generation ELSE o.accepted_key_generation END,
        accepted_latency_ms = CASE WHEN u.clean AND o.accepted_at IS NULL
                                        AND o.cancel_requested_at IS NULL
                                   THEN u.latency_ms ELSE o.accepted_latency_ms END,
        accepted_by = CASE WHEN u.clean AND o.accepted_at IS NULL
                                AND o.cancel_requested_at IS NULL
                           THEN CAST(:relay_id AS text) ELSE o.accepted_by END
    -- In id order: the rows are locked in one order whatever the batch's, as a plan driven by
    -- the due index happened to give (tests/integration/relay/test_hostile_cancel_probe.py).
    FROM (SELECT * FROM held ORDER BY id) u
    -- `IS TRUE`, as in the claim's probes: with a plain `o.state = 'pending'` the planner could
    -- read the rows through the due index (its predicate is the pending and in-flight states),
    -- and in a table whose statistics say almost nothing is pending (an outbox in service: its
    -- history) the generic plan did, scanning every pending row of that index for each batch,
    -- instead of one primary-key probe per row (bench.keep_up).
    WHERE o.id = u.id AND (o.state = 'pending') IS TRUE
      -- Only rows whose lease this statement deleted. `IS TRUE` keeps the IN a hashed subplan,
      -- built once and probed per row: left bare, the planner makes it a join that it could
      -- turn around too.
      AND (u.id IN (SELECT r.outbox_id FROM released r)) IS TRUE
    -- o.* here are the values just written; the sent action and key come from the claim.
    -- `carried`: this statement wrote the carried call (its acceptance is this statement's).
    RETURNING o.id, o.attempts, o.state, u.called, u.action, u.key_generation, u.http_status,
              u.code, u.message, u.request_id, u.latency_ms,
              u.clean AND o.accepted_attempt IS NOT NULL AND o.accepted_at = now() AS carried
),
history AS (
    INSERT INTO meter_event_outbox_attempts (outbox_id, attempt, key_generation, action, state,
        http_status, code, message, stripe_request_id, latency_ms, relay_id)
    SELECT w.id, w.attempts, w.key_generation, w.action, w.state, w.http_status, w.code,
           w.message, w.request_id, w.latency_ms, :relay_id
    FROM written w WHERE w.called AND NOT w.carried
),
carried AS (
    INSERT INTO meter_event_outbox_carried_calls AS c (minute, relay_id, backend, calls)
    SELECT date_trunc('minute', now()), :relay_id, pg_backend_pid(), count(*)
    FROM written w WHERE w.carried HAVING count(*) > 0
    ON CONFLICT (minute, relay_id, backend) DO UPDATE SET calls = c.calls + EXCLUDED.calls
),
expired AS (  -- a primary-key probe; finds rows once a minute at most
    DELETE FROM meter_event_outbox_carried_calls
    WHERE minute < date_trunc('minute', now()) - interval '1 day'
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

-- name: status_tally
-- Rows per state, and per code and account where the tallies keep them (pending, failed,
-- rejected; see alembic/versions/0015_status_tallies.up.sql): what `status` and the console's
-- buckets are made of, a read of a few tally rows however large the backlog.
-- A pending row with a live lease (migration outbox_0020) is in flight: the tallies count it
-- pending (a claim no longer changes the row), so the live leases move from their pending key
-- to in_flight here (one primary-key probe per live lease).
-- The probe tests the row's state with `IS TRUE`, as every statement that reads rows by id or
-- from a lease does (the claim's heads, `record_outcomes`, `reset_in_flight`, `reject`,
-- `fold_counts`, `list_rows`' leased rows, the status view): no partial index's predicate can
-- be proved from it. With a plain `o.state = 'pending'`, the due and lane indexes qualify,
-- and where the last VACUUM saw almost nothing pending (an outbox in service) the planner
-- takes them for empty until the next one: after an outage's backlog it read every pending
-- row through one of them for each call (tests/integration/relay/test_stale_statistics.py).
-- A LATERAL with LIMIT 1 keeps it a probe per lease, never a hash of the table.
SELECT state, code, stripe_account, sum(n)::bigint AS n FROM (
    SELECT state, code, stripe_account, n FROM meter_event_outbox_tally WHERE state <> ''
    UNION ALL
    SELECT k.state, k.code, k.stripe_account, k.n * k.sign
    FROM (SELECT coalesce(o.last_error_code, '') AS code,
                 CASE WHEN o.last_error_code IS NOT NULL THEN coalesce(o.stripe_account, '')
                      ELSE '' END AS stripe_account,
                 count(*) AS n
          FROM meter_event_outbox_leases l
          CROSS JOIN LATERAL (SELECT o.last_error_code, o.stripe_account
                              FROM meter_event_outbox o
                              WHERE o.id = l.outbox_id AND (o.state = 'pending') IS TRUE
                              LIMIT 1) o
          WHERE l.leased_until > now()
          GROUP BY 1, 2) c
    CROSS JOIN LATERAL (VALUES ('pending', c.code, c.stripe_account, c.n, -1),
                               ('in_flight', '', '', c.n, 1))
        AS k(state, code, stripe_account, n, sign)
) t
GROUP BY state, code, stripe_account
HAVING sum(n) <> 0 OR state NOT IN ('pending', 'in_flight')
ORDER BY state, code, stripe_account

-- name: status_tally_before_leases
-- status_tally on a schema before the lease table (outbox_0015 to outbox_0017): the tallies as
-- they are (in-flight rows are `in_flight` there).
SELECT state, code, stripe_account, n FROM meter_event_outbox_tally
WHERE state <> ''
ORDER BY state, code, stripe_account

-- name: status_tally_counted
-- status_tally on a schema older than the tallies (outbox_0015): the same rows, counted through
-- the partial indexes of the hot states and the old folded counters (`status` of a newer CLI
-- during an upgrade; run `outbox-relay migrate` for the cheap read).
SELECT state, CASE WHEN state = 'pending' AND last_error_code IS NULL THEN ''
                   WHEN state IN ('pending', 'failed', 'rejected')
                   THEN coalesce(last_error_code, '') ELSE '' END AS code,
       CASE WHEN state = 'pending' AND last_error_code IS NOT NULL
            THEN coalesce(stripe_account, '') ELSE '' END AS stripe_account,
       count(*) AS n
FROM meter_event_outbox WHERE state IN ('pending', 'in_flight', 'failed', 'rejected')
GROUP BY 1, 2, 3
UNION ALL
SELECT state, '', '', n FROM meter_event_outbox_status WHERE state IN ('accepted', 'cancelled')

-- name: next_attempts
-- Per code of pending rows, when the next of them is due: the first entry of each code in the
-- waiting index (one probe per code).
SELECT c.code, w.available_at AS next_attempt_at
FROM unnest(CAST(:codes AS text[])) AS c(code)
CROSS JOIN LATERAL (
    SELECT o.available_at FROM meter_event_outbox o
    WHERE o.state = 'pending' AND o.last_error_code IS NOT NULL AND o.last_error_code = c.code
    ORDER BY o.available_at LIMIT 1) w

-- name: row_story
-- Every column of one row an operator may need (`inspect`, the console's row page), and how
-- long until it is due by the database's clock (the one clock).
-- A pending row with a lease (migration outbox_0020) is in flight: its state, holder, first
-- claim and deadline come from the lease. An expired lease counts too: its holder died or
-- stalled after it may have called Stripe, and the row is in flight until a claim takes it
-- over (as cancel_usage treats it, and as the row said before the lease left it).
SELECT o.id, o.identifier,
       CASE WHEN l.leased_until IS NOT NULL THEN 'in_flight' ELSE o.state END AS state,
       o.action, o.event_name, o.customer, o.value,
       -- built as the lease statement builds it (never read from the generated column)
       o.dimensions || jsonb_object(ARRAY['stripe_customer_id', o.customer,
                                          'value', trunc(o.value)::text]) AS payload,
       o.dimensions, o.metadata,
       o.occurred_at, o.stripe_account, o.attempts, o.key_generation,
       coalesce(l.leased_until, o.available_at) AS available_at,
       coalesce(l.leased_by, o.leased_by) AS leased_by,
       o.last_error_code, o.last_error_message, o.stripe_request_id, o.created_at,
       coalesce(o.first_attempt_at, l.first_claimed_at) AS first_attempt_at,
       o.accepted_at, o.cancel_requested_at, o.cancelled_at, o.updated_at, o.inferred_from,
       -- An infinite available_at (nothing CHECKs it finite; PostgreSQL refuses to subtract
       -- it): '-infinity' is due now, 'infinity' never (NULL)
       CASE WHEN isfinite(coalesce(l.leased_until, o.available_at))
            THEN coalesce(l.leased_until, o.available_at) - now()
            WHEN o.available_at < now() THEN interval '0' END AS due_in
FROM meter_event_outbox o
LEFT JOIN meter_event_outbox_leases l ON l.outbox_id = o.id AND o.state = 'pending'
WHERE o.identifier = :identifier

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
-- A report in flight is `in_flight` (a relay of an earlier release) or pending with a lease
-- (migration outbox_0020), live or expired: an expired one is a relay that died after its call,
-- as an `in_flight` row past its deadline was. Its lease is dropped, and the late outcome then
-- finds none.
WITH leased AS (
    DELETE FROM meter_event_outbox_leases l
    USING meter_event_outbox o
    WHERE o.identifier = ANY(CAST(:identifiers AS text[]))
      AND o.stripe_account IS NOT DISTINCT FROM CAST(:account AS text)
      AND (o.state = 'pending') IS TRUE AND o.action = 'report'  -- see `status_tally`
      AND l.outbox_id = o.id
    RETURNING l.outbox_id
)
UPDATE meter_event_outbox o
SET state = 'rejected', last_error_code = :code, last_error_message = :message,
    lease_token = NULL, updated_at = now()
WHERE o.identifier = ANY(CAST(:identifiers AS text[]))
  AND o.stripe_account IS NOT DISTINCT FROM CAST(:account AS text)
  AND (o.state = 'accepted' OR (o.state = 'in_flight' AND o.action = 'report')
       OR (o.state = 'pending' AND o.id IN (SELECT outbox_id FROM leased))
       -- or pending with no lease, but in the outbox when a crash of PostgreSQL emptied the
       -- lease table (its first report may have landed: migration outbox_0020's watermark)
       OR (o.state = 'pending' AND o.action = 'report'
           AND meter_event_outbox_possibly_sent(o.id)))
RETURNING o.identifier

-- name: database_probe
-- The database watch (relay/pipeline/database_watch.py): the database's clock, the instant of
-- the statement as the outbox's INSERT sees it, and whether this session may write (off on a
-- primary; on for a hot standby, or under default_transaction_read_only).
SELECT statement_timestamp() AS now,
       current_setting('transaction_read_only') = 'on' AS read_only

-- name: fold_plan
-- The fold's transaction begins with this: no statement timeout for the fold, whatever the
-- role's or the database's. A fold is a few milliseconds, but the one after a crash of
-- PostgreSQL emptied the UNLOGGED deltas recounts every tally in one statement (about 8 s on
-- ten million rows, migration outbox_0032): under a shorter site-wide timeout it was cancelled
-- on every try and no fold ran again. For this transaction only (a pooler's server connection
-- keeps nothing of it).
-- No lock timeout either: a fold waits only for another fold (or `outbox-relay recover`), and
-- one cut short by a site-wide lock_timeout failed as if the database were unreachable.
SELECT pg_catalog.set_config('statement_timeout', '0', true),
       pg_catalog.set_config('lock_timeout', '0', true)

-- name: fold_counts
-- First, a crash of PostgreSQL (or a failover) emptied the UNLOGGED lease table if the marker is
-- gone (migration outbox_0020): re-create it and raise the logged watermark to max(id) in this
-- same transaction, so every row that may have been leased before the crash stays "possibly
-- sent" (cancel_usage, reject). One probe of a one-row table when nothing was lost; max(id) is
-- read only when the marker was inserted. A concurrent relay waits on the marker's key, then
-- inserts nothing; the watermark only grows.
-- Also drop leases left behind (migration outbox_0020): expired, and their row is no longer
-- pending (a webhook or an inference settled it while a relay that then died held it). An
-- expired lease of a pending row stays: the relay that takes it over keeps its first claim
-- (the dedup clock). The lease table is UNLOGGED: this writes no WAL.
WITH orphans AS (
    DELETE FROM meter_event_outbox_leases l
    WHERE l.leased_until < now() - interval '1 minute'
      -- A correlated probe per expired lease (see `status_tally`), never a hash of the table.
      AND NOT coalesce((SELECT (o.state = 'pending') IS TRUE FROM meter_event_outbox o
                        WHERE o.id = l.outbox_id), false)
), marked AS (
    INSERT INTO meter_event_outbox_lease_epoch DEFAULT VALUES ON CONFLICT DO NOTHING
    RETURNING one
), raised AS (
    UPDATE meter_event_outbox_lease_watermark w
    SET possibly_sent_below = greatest(w.possibly_sent_below,
                                       (SELECT coalesce(max(o.id), 0) FROM meter_event_outbox o))
    WHERE EXISTS (SELECT 1 FROM marked)
)
SELECT outbox_fold_counts()

-- name: hold_fold
-- `outbox-relay recover` (relay/db/operations.py) waits here for a fold running now, then folds
-- in the same transaction: `outbox_fold_counts()` only tries this lock (a fold already running
-- is enough for the relays), but the recover's fold must run. The key is the function's own
-- (migration outbox_0032); the same session takes it again inside the function.
SELECT pg_catalog.pg_advisory_xact_lock(
           pg_catalog.hashtext('outbox_fold_counts'::text),
           'meter_event_outbox_tally_deltas'::regclass::oid::int)::text

-- name: forget_unlogged
-- `outbox-relay recover`: the database was moved without its UNLOGGED tables (logical
-- replication skips them; a copy of the data only) while their markers were written anew (by the
-- new database's migration), so no fold can tell that the leases and the tally deltas were lost.
-- Deleting both markers makes the database look as after a crash of PostgreSQL, which the fold
-- that follows in this transaction (`fold_counts`) repairs: it raises the lease watermark to
-- max(id), so every row recorded so far "may have been sent" (a report at Stripe when the
-- database moved keeps its cancel and its rejection safe), and recounts the tallies.
WITH leases AS (
    DELETE FROM meter_event_outbox_lease_epoch RETURNING 1
), tallies AS (
    DELETE FROM meter_event_outbox_tally_epoch RETURNING 1
)
SELECT (SELECT count(*) FROM leases) + (SELECT count(*) FROM tallies)

-- name: recovered
-- What `outbox-relay recover` left: the watermark, whether the tallies were recounted, and the
-- transactions prepared for two-phase commit before the recount was asked for, which it waits
-- for (a prepared transaction's delta row was lost with the others; outbox_0032): none once
-- recounted (no loss noticed, no such transaction).
SELECT w.possibly_sent_below,
       coalesce((SELECT e.lost_noticed_at IS NULL FROM meter_event_outbox_tally_epoch e), false)
           AS recounted,
       (SELECT count(*) FROM pg_catalog.pg_prepared_xacts p, meter_event_outbox_tally_epoch e
        WHERE p.database = pg_catalog.current_database()
          AND p.prepared <= e.lost_noticed_at) AS prepared
FROM meter_event_outbox_lease_watermark w

-- name: subscriptions_enabled
-- `outbox-relay recover` refuses while logical replication still applies changes to this
-- database: rows copied after it would lie above its watermark again, and the tallies folded on
-- the source would collide with its recount (the apply worker stops on a duplicate key).
SELECT s.subname FROM pg_catalog.pg_subscription s
WHERE s.subenabled
  AND s.subdbid = (SELECT d.oid FROM pg_catalog.pg_database d
                   WHERE d.datname = pg_catalog.current_database())
ORDER BY s.subname

-- name: sequences_behind
-- Logical replication does not carry sequences: after a move, the outbox's own may lie below
-- the ids already in their tables, and the next insert fails on a duplicate key. Each sequence
-- behind its table, with the statement its owner runs (the relay's role may not set it).
-- `tests/integration/relay/test_recover.py` holds this list to every sequence of the outbox.
SELECT q.seq AS sequence,
       pg_catalog.format('SELECT setval(%L, (SELECT max(id) FROM %I.%I))', q.seq,
                         pg_catalog.current_schema(), q.tab) AS fix
FROM (VALUES
        ('meter_event_outbox', pg_catalog.pg_get_serial_sequence('meter_event_outbox', 'id'),
         (SELECT max(o.id) FROM meter_event_outbox o)),
        ('meter_event_outbox_attempts',
         pg_catalog.pg_get_serial_sequence('meter_event_outbox_attempts', 'id'),
         (SELECT max(a.id) FROM meter_event_outbox_attempts a)),
        ('meter_event_outbox_drift_reports',
         pg_catalog.pg_get_serial_sequence('meter_event_outbox_drift_reports', 'id'),
         (SELECT max(r.id) FROM meter_event_outbox_drift_reports r))
     ) q(tab, seq, top)
WHERE q.top > coalesce(pg_catalog.pg_sequence_last_value(q.seq::regclass), 0)
ORDER BY q.seq

-- name: prune
-- Retention: delete old terminal rows in a bounded batch (the caller loops), oldest first, and
-- their attempt history in the same statement (the history has no foreign key: see 0003).
-- Returns the heap block of each deleted row: the caller forgets their created_at ranges
-- (`forget_ranges`, outbox_0025) in a statement of its own, issued only when this role may:
-- PostgreSQL checks EXECUTE when it prepares a statement, so a call in this one failed the
-- prune for a role without the grant, whatever guard stood before it.
WITH gone AS (
    DELETE FROM meter_event_outbox o
    WHERE o.id IN (
        SELECT id FROM meter_event_outbox
        WHERE state IN ('accepted', 'cancelled')
          AND updated_at < now() - make_interval(secs => :age_seconds)
        ORDER BY updated_at
        LIMIT :batch_size
        FOR UPDATE SKIP LOCKED)
    RETURNING o.id, coalesce(o.stripe_account, '') AS account, o.customer, o.event_name,
              date_trunc('hour', o.occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
              (o.ctid::text::point)[0]::bigint AS block
),
history AS (
    DELETE FROM meter_event_outbox_attempts a WHERE a.outbox_id IN (SELECT id FROM gone)
),
-- The confirmation of the pruned rows' groups goes with them (primary-key probes): settled
-- groups only; one still awaiting or drifting stays for the operator to see.
settled_groups AS (
    DELETE FROM meter_event_outbox_groups g
    USING (SELECT DISTINCT account, customer, event_name, hour FROM gone) k
    WHERE g.stripe_account = k.account AND g.customer = k.customer
      AND g.event_name = k.event_name AND g.hour = k.hour
      AND g.state IN ('confirmed', 'not_confirmable')
    RETURNING CASE WHEN g.state = 'confirmed' THEN g.confirmed_events ELSE 0 END AS n
),
uncounted AS (
    UPDATE meter_event_outbox_confirmation_cursor k
    SET confirmed = greatest(0, k.confirmed - (SELECT sum(n) FROM settled_groups))
    WHERE EXISTS (SELECT 1 FROM settled_groups)
)
SELECT block FROM gone

-- name: may_tend_ranges
-- Whether this role may tend the created_at range index (outbox_0025: granted to the relay's
-- role by `outbox-relay roles`; a role granted before that migration may not, and prunes
-- without tending; so may one that runs before `migrate` added the functions). Asked before
-- the tending statements, never inside them (see `prune`).
SELECT coalesce(has_function_privilege(to_regprocedure('meter_event_outbox_summarize_ranges()'),
                                       'EXECUTE')
                AND has_function_privilege(
                    to_regprocedure('meter_event_outbox_forget_ranges(bigint[])'), 'EXECUTE'),
                false)

-- name: summarize_ranges
-- Before a prune deletes: summarize the created_at ranges the last prune left unsummarized,
-- refilled since with new rows (outbox_0025). -1 when a VACUUM holds the table (skipped, never
-- waited for).
SELECT meter_event_outbox_summarize_ranges()

-- name: forget_ranges
-- After a prune batch: forget the summaries of the created_at ranges holding the heap blocks
-- it deleted from (:blocks, a bigint[]), whose pages VACUUM gives to new rows that would widen
-- the old summaries for good (outbox_0025). Forgetting is correct whenever it runs (a range
-- without a summary is read by every bounded query). -1 when a VACUUM holds the table.
SELECT meter_event_outbox_forget_ranges(CAST(:blocks AS bigint[]))

-- name: last_status_for_code
-- The HTTP status of the latest attempt of the pending row with this code put back last
-- (the waiting index's last entry of the code, then its newest attempt): 401/403 mean the row
-- waits for the auth probe rather than backing off. NULL when that row has no attempt.
SELECT (SELECT a.http_status FROM meter_event_outbox_attempts a
        WHERE a.outbox_id = o.id ORDER BY a.id DESC LIMIT 1)
FROM meter_event_outbox o
WHERE o.state = 'pending' AND o.last_error_code IS NOT NULL AND o.last_error_code = :code
ORDER BY o.available_at DESC
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
-- A pending row with a live lease (migration outbox_0020) is shown in flight, with its lease's
-- deadline as available_at (one lease-table probe per row shown); --state in_flight reads
-- the lease table (live leases are few) besides the rows of an earlier release's relays.
SELECT identifier, state, action, customer, event_name, value, stripe_account, attempts,
       last_error_code, created_at, occurred_at, available_at, accepted_at, updated_at
FROM (
    SELECT newest.id, identifier,
           CASE WHEN l.leased_until IS NOT NULL THEN 'in_flight' ELSE state END AS state,
           action, customer, event_name, value, stripe_account, attempts, last_error_code,
           created_at, occurred_at, coalesce(l.leased_until, available_at) AS available_at,
           accepted_at, updated_at
    FROM (
    (SELECT * FROM matching
     ORDER BY id DESC LIMIT CASE WHEN CAST(:customer AS text) IS NULL THEN :limit ELSE 0 END)
    UNION ALL
    (SELECT o.id, o.identifier, o.state, o.action, o.customer, o.event_name, o.value,
            o.stripe_account, o.attempts, o.last_error_code, o.created_at, o.occurred_at,
            o.available_at, o.accepted_at, o.updated_at
     FROM meter_event_outbox_leases l
     CROSS JOIN LATERAL (  -- a probe per live lease (see `status_tally`)
         SELECT * FROM meter_event_outbox o
         WHERE o.id = l.outbox_id AND (o.state = 'pending') IS TRUE LIMIT 1) o
     WHERE CAST(:state AS text) = 'in_flight' AND l.leased_until > now()
       AND (CAST(:code AS text) IS NULL OR o.last_error_code = :code)
       AND (CAST(:customer AS text) IS NULL OR o.customer = :customer)
       AND (CAST(:event_name AS text) IS NULL OR o.event_name = :event_name)
       AND (CAST(:since AS timestamptz) IS NULL OR o.created_at >= :since)
     ORDER BY o.id DESC LIMIT :limit)
    UNION ALL
    (SELECT * FROM matching WHERE state IN ('pending', 'in_flight')
     ORDER BY id DESC LIMIT CASE WHEN CAST(:customer AS text) IS NULL THEN 0 ELSE :limit END)
    UNION ALL
    (SELECT * FROM matching WHERE state IN ('accepted', 'cancelled', 'failed', 'rejected')
     ORDER BY id DESC LIMIT CASE WHEN CAST(:customer AS text) IS NULL THEN 0 ELSE :limit END)
    ) newest
    LEFT JOIN LATERAL (
        SELECT l.leased_until FROM meter_event_outbox_leases l
        WHERE l.outbox_id = newest.id AND newest.state = 'pending' AND l.leased_until > now()
    ) l ON true
) shown
WHERE CAST(:state AS text) IS NULL OR shown.state = :state
ORDER BY id DESC
LIMIT :limit

-- name: row_attempts
-- One row's attempt history, oldest first (the attempt table's (outbox_id, id) index), with the
-- call its row carries (a clean acceptance: record_outcomes) in its place among them, by time:
-- the same entry a history row would have been. Counted from the row only when no history row
-- has that call (a row is written by one relay; this keeps it so whatever wrote it).
SELECT attempted_at, attempt, key_generation, action, state, http_status, code, message,
       stripe_request_id, latency_ms, relay_id
FROM (
    (SELECT a.id, a.attempted_at, a.attempt, a.key_generation, a.action, a.state,
            a.http_status, a.code, a.message, a.stripe_request_id, a.latency_ms, a.relay_id
     FROM meter_event_outbox_attempts a WHERE a.outbox_id = :outbox_id
     ORDER BY a.id LIMIT :limit)
    UNION ALL
    SELECT NULL, o.accepted_at, o.accepted_attempt, o.accepted_key_generation, 'report',
           'accepted', 200, NULL, NULL, o.accepted_request_id, o.accepted_latency_ms,
           o.accepted_by
    FROM meter_event_outbox o
    WHERE o.id = :outbox_id AND o.accepted_attempt IS NOT NULL
      AND NOT EXISTS (
          SELECT FROM meter_event_outbox_attempts a
          WHERE a.outbox_id = o.id AND a.action = 'report' AND a.state = 'accepted'
            AND a.attempt = o.accepted_attempt
            AND a.key_generation = o.accepted_key_generation)
) h
ORDER BY h.attempted_at, h.id NULLS FIRST LIMIT :limit

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
  AND (state = 'accepted' OR (state IN ('pending', 'in_flight') AND (first_attempt_at IS NOT NULL
       -- a first call in flight: its lease (migration outbox_0020) holds its first claim
       OR EXISTS (SELECT 1 FROM meter_event_outbox_leases l
                  WHERE l.outbox_id = meter_event_outbox.id))))
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
-- The oldest fact not yet reported (a row in backoff or waiting on auth is still unsent:
-- available_at would hide it), from when it was recorded, and when that fact happened. Two
-- probes (migration outbox_0021): the first entry of the index of unsent rows whose
-- available_at moved away from created_at, and the first entry of the due index among the rows
-- due since they were recorded (available_at = created_at: in that range available_at is their
-- recording time, so the first is the oldest). That second walk stops at the first's recording
-- time: a fresh row recorded later cannot be the answer, and the only rows it steps over before
-- then are moved rows due before they were recorded (an update whose transaction began before
-- the row's insert: a handful at most).
WITH moved AS MATERIALIZED (
    SELECT created_at, occurred_at FROM meter_event_outbox
    WHERE state IN ('pending', 'in_flight') AND available_at <> created_at
    ORDER BY created_at LIMIT 1
), fresh AS MATERIALIZED (
    SELECT created_at, occurred_at FROM meter_event_outbox
    WHERE (state IN ('pending', 'in_flight')) IS TRUE  -- the due index's predicate (outbox_0031)
      AND (isfinite(available_at) OR NOT isfinite(available_at))
      AND available_at = created_at
      AND available_at < coalesce((SELECT created_at FROM moved), 'infinity')
    ORDER BY available_at LIMIT 1
)
SELECT u.created_at, u.occurred_at,
       now() - u.created_at AS created_age, now() - u.occurred_at AS occurred_age
FROM (SELECT * FROM moved UNION ALL SELECT * FROM fresh ORDER BY created_at LIMIT 1) u
RIGHT JOIN (SELECT) one ON true

-- name: finished_last_hour
-- Rows that reached accepted or cancelled in the last hour: the newest :cap entries of the
-- terminal-age index at most (a backward walk), so an hour at Stripe's full rate (millions of
-- rows) costs a bounded read; `capped` says the counts cover the newest rows only.
SELECT count(*) FILTER (WHERE f.state = 'accepted') AS accepted,
       count(*) FILTER (WHERE f.state = 'cancelled') AS cancelled,
       count(*) = :cap AS capped
FROM (SELECT state FROM meter_event_outbox
      WHERE state IN ('accepted', 'cancelled') AND updated_at > now() - interval '1 hour'
      ORDER BY updated_at DESC LIMIT :cap) f

-- name: attempts_last_hour
-- Stripe calls of the last hour from the attempt history: the newest :cap attempts at most
-- (a backward walk of the primary key), so a busy hour costs a bounded read; plus the calls
-- carried on their rows (clean acceptances, record_outcomes), from the per-minute counts of the
-- minutes that began in the last hour (about 60 rows per relay). `capped` is the history's.
SELECT a.calls + c.calls AS calls, a.errors, least(a.since, c.since) AS since, a.capped
FROM (SELECT count(*) AS calls,
             count(*) FILTER (WHERE h.code IS NOT NULL) AS errors,
             min(h.attempted_at) AS since,
             count(*) = :cap AS capped
      FROM (SELECT attempted_at, code FROM meter_event_outbox_attempts
            ORDER BY id DESC LIMIT :cap) h
      WHERE h.attempted_at > now() - interval '1 hour') a,
     (SELECT coalesce(sum(calls), 0)::bigint AS calls, min(minute) AS since
      FROM meter_event_outbox_carried_calls
      WHERE minute > now() - interval '1 hour') c

-- name: attempt_errors_last_hour
SELECT a.code, count(*) AS n
FROM (SELECT attempted_at, code FROM meter_event_outbox_attempts
      ORDER BY id DESC LIMIT :cap) a
WHERE a.attempted_at > now() - interval '1 hour' AND a.code IS NOT NULL
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :limit

-- name: failures_with_identifiers
-- Rows waiting for an operator's decision, by code (from the tallies), each with its first few
-- identifiers: the first :per_code entries of the look_by_code index (state, code, id) from
-- the code's position on, those of another code dropped. Written as a position in the index (a
-- row comparison) rather than an equality: with an equality on a code from the tallies the
-- planner guessed a few rows and read every row of the code through a bitmap (a code can have
-- 200,000 rejected rows). The index also holds pending rows with a code (between 'failed'
-- and 'rejected'), so the walk is bounded on both sides to the code's own entries (two row
-- comparisons: the start and the end of the index range). The states are an OR, not IN: an
-- IN on the index's first column becomes an index condition, and PostgreSQL 15 then cannot
-- return that scan in order (it sorted all 200,000; an equality on the state instead made
-- it start at the state's first entry: 140 ms for 20 codes). The OR still proves the index's
-- predicate and is a mere filter.
SELECT f.state, f.code, f.n, ids.identifiers
FROM (SELECT state, code, n FROM meter_event_outbox_tally
      WHERE state IN ('failed', 'rejected')) f,
     LATERAL (SELECT array_agg(s.identifier ORDER BY s.id) AS identifiers
              FROM (SELECT o.identifier, o.id, o.state, coalesce(o.last_error_code, '') AS code
                    FROM meter_event_outbox o
                    WHERE (o.state = 'failed' OR o.state = 'rejected')
                      AND (o.state, coalesce(o.last_error_code, ''), o.id) > (f.state, f.code, 0)
                      AND (o.state, coalesce(o.last_error_code, ''), o.id)
                          <= (f.state, f.code, 9223372036854775807)
                    ORDER BY o.state, coalesce(o.last_error_code, ''), o.id
                    LIMIT :per_code) s
              WHERE s.state = f.state AND s.code = f.code) ids
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
),
history AS (
    SELECT date_trunc('minute', attempted_at) AS minute,
           count(*) FILTER (WHERE action = 'report' AND state = 'accepted') * k AS accepted,
           count(*) FILTER (WHERE code IS NOT NULL) * k AS errors,
           count(*) * k AS calls,
           k AS stride
    FROM sampled
    GROUP BY 1, k
),
-- The calls carried on their rows (clean acceptances), counted exactly per minute and relay.
carried AS (
    SELECT minute, sum(calls)::bigint AS calls FROM meter_event_outbox_carried_calls
    WHERE minute > now() - make_interval(secs => :seconds) - interval '1 minute'
    GROUP BY minute
)
SELECT coalesce(h.minute, c.minute) AS minute,
       coalesce(h.accepted, 0) + coalesce(c.calls, 0) AS accepted,
       coalesce(h.errors, 0) AS errors,
       coalesce(h.calls, 0) + coalesce(c.calls, 0) AS calls,
       coalesce(h.stride, (SELECT k FROM stride), 1) AS stride
FROM history h FULL JOIN carried c ON c.minute = h.minute
ORDER BY 1

-- name: customer_backlog
-- Customers with the most unsent rows, from the tallies (one row per customer with a backlog).
SELECT customer, n FROM meter_event_outbox_tally
WHERE state = '' ORDER BY n DESC, customer LIMIT :limit

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
FROM meter_event_outbox WHERE (state IN ('pending', 'in_flight')) IS TRUE  -- the due index's
  AND (isfinite(available_at) OR NOT isfinite(available_at))            -- predicate (outbox_0031)
UNION
SELECT stripe_account, event_name FROM meter_event_outbox_event_names
WHERE last_seen_at > now() - make_interval(days => 35)
ORDER BY 1, 2

-- name: held_by_meter
-- Rows held for their meter, per account, event name and code: the groups and their rows from
-- the tallies (alembic/versions/0018_held_tallies.up.sql: the tally key of pending rows with a
-- code carries the event name), the oldest fact of each group from the first entry of its range
-- in meter_event_outbox_held_by_meter. A few tally rows, the unfolded deltas and one index
-- entry per group, however many rows are held. The codes are HELD_CODES (relay/core/meters.py),
-- written out as the index's predicate has them (so the planner can use it; a test compares
-- the three lists).
-- The probe asks for the first entry at or after (code, account, event name, -infinity) in
-- index order: with three equalities instead, the planner took each group for a row or two
-- and read all of its rows (bitmap scan, then sort); a range makes the ordered walk that stops
-- at the first entry the cheap plan. The tallies and the rows are read under one snapshot, so
-- every group the tallies show has its first entry there (the equalities below only check it).
SELECT g.account, g.event_name, g.code, g.n, o.occurred_at AS oldest_occurred_at
FROM (SELECT t.code, t.stripe_account AS account, t.event_name, sum(t.n)::bigint AS n
      FROM (SELECT code, stripe_account, event_name, n FROM meter_event_outbox_tallies
            WHERE state = 'pending'
            UNION ALL
            SELECT code, stripe_account, event_name, delta
            FROM meter_event_outbox_tally_delta_keys
            WHERE state = 'pending') t
      WHERE t.code IN ('meter_missing', 'meter_inactive', 'meter_pre_aggregated',
                       'meter_key_collision', 'meter_conflict', 'meter_checking')
      GROUP BY 1, 2, 3 HAVING sum(t.n) > 0) g
CROSS JOIN LATERAL (
    SELECT r.last_error_code AS code, coalesce(r.stripe_account, '') AS account, r.event_name,
           r.occurred_at
    FROM meter_event_outbox r
    WHERE r.state = 'pending'
      AND r.last_error_code IN ('meter_missing', 'meter_inactive', 'meter_pre_aggregated',
                                'meter_key_collision', 'meter_conflict', 'meter_checking')
      AND (r.last_error_code, coalesce(r.stripe_account, ''), r.event_name, r.occurred_at)
          >= (g.code, g.account, g.event_name, '-infinity')
    ORDER BY r.last_error_code, coalesce(r.stripe_account, ''), r.event_name, r.occurred_at
    LIMIT 1) o
WHERE (o.code, o.account, o.event_name) = (g.code, g.account, g.event_name)
ORDER BY 1, 2, 3

-- name: held_by_meter_counted
-- held_by_meter on a schema older than outbox_0018 (`status` of a newer CLI during an upgrade):
-- every held row of one code read through the waiting index and grouped, as it was then. One
-- code per statement: given all the codes at once (`= ANY`, or a join on them) the planner
-- walked every unsent row through the unsent-age index instead, when created_at was correlated.
SELECT coalesce(stripe_account, '') AS account, event_name, last_error_code AS code,
       count(*) AS n, min(occurred_at) AS oldest_occurred_at
FROM meter_event_outbox
WHERE state = 'pending' AND last_error_code IS NOT NULL AND last_error_code = :code
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
-- :horizon seconds ahead (the longest outage backoff). The rows with a code are few (the
-- look_by_code index, outbox_0014).
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

-- Confirmation against Stripe's totals (alembic/versions/0015_confirmation.up.sql). Hours are
-- UTC hours of occurred_at, as Stripe's summaries and `drift_ours`.

-- name: discover_groups
-- Note the groups of rows accepted (or cancelled) since the cursor, up to the end of the last
-- whole discovery window (:window_seconds, aligned to UTC, ended at least :margin_seconds ago
-- by the database's clock, so rows still committing with an earlier updated_at are not
-- passed over) and at most about :batch_size rows per statement (the
-- first pass on a long history catches up in bounded steps, oldest first, through the
-- terminal-age index). A new group is due once its hour has closed and the settle delay has
-- passed; a confirmed or drifting group with rows changed since its last comparison goes back
-- to `awaiting`; an awaiting group adds the new rows to its count. Returns the groups written
-- and whether the cursor stopped short of the window's end (more to do).
WITH cursor_at AS (SELECT through FROM meter_event_outbox_confirmation_cursor),
window_end AS (
    SELECT to_timestamp(floor((extract(epoch FROM now()) - :margin_seconds) / :window_seconds)
                        * :window_seconds) AS at
),
upper AS (
    SELECT least((SELECT at FROM window_end), coalesce((
        SELECT o.updated_at FROM meter_event_outbox o, cursor_at c
        WHERE o.state IN ('accepted', 'cancelled') AND o.updated_at > c.through
        ORDER BY o.updated_at OFFSET :batch_size LIMIT 1), 'infinity')) AS until
),
changed AS (
    SELECT coalesce(o.stripe_account, '') AS account, o.customer, o.event_name,
           date_trunc('hour', o.occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
           count(*) FILTER (WHERE o.state = 'accepted') AS events,
           coalesce(sum(o.value) FILTER (WHERE o.state = 'accepted'), 0) AS value,
           max(o.updated_at) AS latest
    FROM meter_event_outbox o, cursor_at c, upper u
    WHERE o.state IN ('accepted', 'cancelled')
      AND o.updated_at > c.through AND o.updated_at <= u.until
    GROUP BY 1, 2, 3, 4
),
written AS (
    INSERT INTO meter_event_outbox_groups AS g
        (stripe_account, customer, event_name, hour, due_at, events, value)
    SELECT ch.account, ch.customer, ch.event_name, ch.hour,
           greatest(ch.hour + interval '1 hour', u.until)
               + make_interval(secs => :settle_seconds),
           ch.events, ch.value
    FROM changed ch, upper u
    -- A group a comparison already read these rows for (a targeted one) is not reopened.
    WHERE NOT EXISTS (
        SELECT 1 FROM meter_event_outbox_groups k
        WHERE k.stripe_account = ch.account AND k.customer = ch.customer
          AND k.event_name = ch.event_name AND k.hour = ch.hour
          AND k.counted_through >= ch.latest)
    ON CONFLICT (stripe_account, customer, event_name, hour) DO UPDATE
    SET state = 'awaiting',
        -- An awaiting group waits for its latest rows too; a confirmed or drifting one is due
        -- again once the new rows settled (not at the drift's hourly recheck).
        due_at = CASE WHEN g.state = 'awaiting' THEN greatest(g.due_at, EXCLUDED.due_at)
                      ELSE EXCLUDED.due_at END,
        events = CASE WHEN g.state = 'confirmed' THEN EXCLUDED.events
                      ELSE g.events + EXCLUDED.events END,
        value = CASE WHEN g.state = 'confirmed' THEN EXCLUDED.value
                     ELSE g.value + EXCLUDED.value END
    WHERE g.state <> 'not_confirmable'
    RETURNING 1
),
moved AS (
    UPDATE meter_event_outbox_confirmation_cursor k SET through = u.until
    FROM upper u WHERE u.until > k.through
    RETURNING k.through
)
SELECT (SELECT count(*) FROM written) AS groups,
       (SELECT u.until < w.at FROM upper u, window_end w) AS more

-- name: lease_comparisons
-- Take up to :series (account, customer, event name) series that have groups due, oldest due
-- first, under a lease per series (one comparison per group across replicas: a series another
-- relay holds, unexpired, is left out), and return their due groups, oldest hour first, at most
-- :hours per series (one summary call pages through them).
WITH due AS (
    SELECT g.stripe_account, g.customer, g.event_name, min(g.due_at) AS first_due
    FROM (SELECT stripe_account, customer, event_name, due_at
          FROM meter_event_outbox_groups
          WHERE state IN ('awaiting', 'drift') AND due_at <= now()
          ORDER BY due_at LIMIT :scan) g
    WHERE NOT EXISTS (
        SELECT 1 FROM meter_event_outbox_comparison_leases l
        WHERE l.stripe_account = g.stripe_account AND l.customer = g.customer
          AND l.event_name = g.event_name AND l.until > now())
    GROUP BY 1, 2, 3
    ORDER BY first_due
    LIMIT :series
),
leased AS (
    INSERT INTO meter_event_outbox_comparison_leases AS l
        (stripe_account, customer, event_name, token, leased_by, until)
    SELECT stripe_account, customer, event_name, gen_random_uuid(), :relay_id,
           now() + make_interval(secs => :lease_seconds)
    FROM due
    ON CONFLICT (stripe_account, customer, event_name) DO UPDATE
    SET token = EXCLUDED.token, leased_by = EXCLUDED.leased_by, until = EXCLUDED.until
    WHERE l.until <= now()
    RETURNING l.stripe_account, l.customer, l.event_name, l.token
)
SELECT l.stripe_account AS account, l.customer, l.event_name, l.token, h.hour, h.state,
       h.zero_reads, h.report_id, h.report_code
FROM leased l
CROSS JOIN LATERAL (
    SELECT g.hour, g.state, g.zero_reads, g.report_id, g.report_code
    FROM meter_event_outbox_groups g
    WHERE g.stripe_account = l.stripe_account AND g.customer = l.customer
      AND g.event_name = l.event_name AND g.state IN ('awaiting', 'drift')
      AND g.due_at <= now()
    ORDER BY g.hour LIMIT :hours) h
ORDER BY 1, 2, 3, 5

-- name: series_ours
-- Our side of one series between :since and :until: per hour, the accepted rows' sum and count
-- (cancelled rows, and reports whose cancel is in progress, are never counted: they are open or
-- cancelled), the rows not settled (`open`: sent without an outcome yet, or accepted less than
-- the settle delay ago, so Stripe's summaries may not show them yet: the hour is compared
-- once they settle),
-- the latest updated_at of what was read (what the comparison covers) and a few identifiers.
SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       coalesce(sum(value) FILTER (WHERE state = 'accepted'), 0) AS value,
       count(*) FILTER (WHERE state = 'accepted') AS events,
       count(*) FILTER (WHERE state IN ('pending', 'in_flight')
                           OR (state = 'accepted'
                               AND updated_at > now() - make_interval(secs => :settle_seconds)))
           AS open,
       max(updated_at) FILTER (WHERE state IN ('accepted', 'cancelled')) AS latest,
       (array_agg(identifier ORDER BY id) FILTER (WHERE state = 'accepted'))[1:10]
           AS identifiers
FROM meter_event_outbox
WHERE customer = :customer AND event_name = :event_name
  AND stripe_account IS NOT DISTINCT FROM nullif(CAST(:account AS text), '')
  AND created_at >= CAST(:since AS timestamptz) - interval '5 minutes'
  AND occurred_at >= :since AND occurred_at < :until
  AND (state IN ('accepted', 'cancelled')
       OR (state IN ('pending', 'in_flight') AND (first_attempt_at IS NOT NULL
           -- a first call in flight: its lease (migration outbox_0020) holds its first claim
           OR EXISTS (SELECT 1 FROM meter_event_outbox_leases l
                      WHERE l.outbox_id = meter_event_outbox.id))))
GROUP BY 1

-- name: record_comparisons
-- The verdicts of one series' comparison, written only while this relay still holds the
-- series' lease (:token): a relay whose lease expired and was taken over changes nothing.
-- `due_in` is seconds from now until the group is compared again (NULL: confirmed or not
-- confirmable, never again unless its rows change); :keep_counts when nothing was read (the
-- counts stay). Then the lease is given back.
WITH v AS (
    SELECT * FROM jsonb_to_recordset(CAST(:verdicts AS jsonb)) AS v(
        hour timestamptz, state text, due_in float8, events bigint, value numeric,
        stripe_value numeric, summary_id text, counted_through timestamptz, zero_reads int,
        detail text)
),
ours AS (
    SELECT 1 FROM meter_event_outbox_comparison_leases
    WHERE stripe_account = :account AND customer = :customer AND event_name = :event_name
      AND token = :token
),
before AS (
    SELECT g.hour,
           CASE WHEN g.state IN ('confirmed', 'awaiting') THEN g.confirmed_events ELSE 0 END AS n
    FROM meter_event_outbox_groups g
    WHERE g.stripe_account = :account AND g.customer = :customer
      AND g.event_name = :event_name AND g.hour IN (SELECT hour FROM v)
),
written AS (
    UPDATE meter_event_outbox_groups g
    SET state = v.state,
        confirmed_events = CASE
            WHEN v.state = 'confirmed' AND NOT CAST(:keep_counts AS boolean) THEN v.events
            WHEN v.state IN ('drift', 'not_confirmable') THEN 0
            ELSE g.confirmed_events END,
        due_at = CASE WHEN v.due_in IS NULL THEN g.due_at
                      ELSE now() + make_interval(secs => v.due_in) END,
        events = CASE WHEN CAST(:keep_counts AS boolean) THEN g.events ELSE v.events END,
        value = CASE WHEN CAST(:keep_counts AS boolean) THEN g.value ELSE v.value END,
        stripe_value = CASE WHEN CAST(:keep_counts AS boolean) THEN g.stripe_value
                            ELSE v.stripe_value END,
        summary_id = coalesce(v.summary_id, g.summary_id), compared_at = now(),
        confirmed_at = CASE WHEN v.state = 'confirmed' THEN now() ELSE g.confirmed_at END,
        counted_through = coalesce(v.counted_through, g.counted_through),
        confirmed_through = CASE WHEN v.state = 'confirmed' THEN v.counted_through
                                 WHEN v.state IN ('drift', 'not_confirmable') THEN NULL
                                 ELSE g.confirmed_through END,
        zero_reads = v.zero_reads, detail = v.detail,
        report_id = CASE WHEN v.state = 'awaiting' THEN g.report_id END,
        report_code = CASE WHEN v.state = 'awaiting' THEN g.report_code END
    FROM v
    WHERE EXISTS (SELECT 1 FROM ours)
      AND g.stripe_account = :account AND g.customer = :customer
      AND g.event_name = :event_name AND g.hour = v.hour
    RETURNING g.hour,
              CASE WHEN g.state IN ('confirmed', 'awaiting') THEN g.confirmed_events
                   ELSE 0 END AS n
),
delta AS (
    SELECT (SELECT coalesce(sum(n), 0) FROM written)
           - (SELECT coalesce(sum(b.n), 0) FROM before b
              WHERE b.hour IN (SELECT hour FROM written)) AS n
),
counted AS (
    UPDATE meter_event_outbox_confirmation_cursor k SET confirmed = k.confirmed + d.n
    FROM delta d WHERE d.n <> 0
),
released AS (
    -- Expired rather than deleted: the next lease of the series updates the same row in
    -- place (a heap-only update: no index entry), the cheapest write per comparison.
    UPDATE meter_event_outbox_comparison_leases SET until = '-infinity'
    WHERE stripe_account = :account AND customer = :customer AND event_name = :event_name
      AND token = :token
)
SELECT count(*) FROM written

-- name: infer_rejected
-- Stripe's total for this group is 0 while our accepted rows sum to more: every accepted row of
-- the group that the comparison counted (updated_at up to :counted_through) was dropped by
-- Stripe. They become `rejected` with the error report's code (or dropped_by_stripe) and
-- `inferred_from` naming the report (or 'summaries'). Rows changed since are left for the
-- next comparison. Under a sum meter (:positive_only) rows of value 0 stay accepted: a total of
-- 0 cannot tell whether Stripe counted them.
UPDATE meter_event_outbox o
SET state = 'rejected', last_error_code = :code, last_error_message = :message,
    inferred_from = :source, lease_token = NULL, updated_at = now()
WHERE o.customer = :customer AND o.event_name = :event_name
  AND o.stripe_account IS NOT DISTINCT FROM nullif(CAST(:account AS text), '')
  AND o.created_at >= CAST(:hour AS timestamptz) - interval '5 minutes'
  AND o.occurred_at >= :hour AND o.occurred_at < CAST(:hour AS timestamptz) + interval '1 hour'
  AND o.state = 'accepted' AND o.updated_at <= :counted_through
  AND (o.value > 0 OR NOT CAST(:positive_only AS boolean))
RETURNING o.identifier

-- name: schedule_comparisons
-- An error report counted more failures than it named: compare, once the summaries settled,
-- every group with rows of its account and meter accepted in its validation window (widened
-- by the caller to whole hours; acceptance times found through the terminal-age index). The
-- meter's event names come from the catalogue (the report's meter id) and from the rows its
-- samples name. The report's id and code stay on the group for the inference.
WITH names AS (
    SELECT event_name FROM meter_event_outbox_meters
    WHERE stripe_account = coalesce(CAST(:account AS text), '') AND meter_id = :meter_id
    UNION
    SELECT event_name FROM meter_event_outbox
    WHERE identifier = ANY(CAST(:samples AS text[]))
      AND stripe_account IS NOT DISTINCT FROM CAST(:account AS text)
),
hit AS (
    SELECT DISTINCT coalesce(o.stripe_account, '') AS account, o.customer, o.event_name,
           date_trunc('hour', o.occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour
    FROM meter_event_outbox o
    WHERE o.state IN ('accepted', 'rejected') AND o.updated_at >= :since
      AND o.updated_at < :until
      AND o.stripe_account IS NOT DISTINCT FROM CAST(:account AS text)
      AND o.event_name IN (SELECT event_name FROM names)
)
INSERT INTO meter_event_outbox_groups AS g
    (stripe_account, customer, event_name, hour, due_at, report_id, report_code)
SELECT account, customer, event_name, hour,
       greatest(hour + interval '1 hour', CAST(:validation_end AS timestamptz), now())
           + make_interval(secs => :settle_seconds),
       :report_id, :code
FROM hit
ON CONFLICT (stripe_account, customer, event_name, hour) DO UPDATE
SET state = 'awaiting', due_at = least(g.due_at, EXCLUDED.due_at),
    report_id = EXCLUDED.report_id, report_code = EXCLUDED.report_code
WHERE g.state <> 'not_confirmable'
RETURNING 1

-- name: reject_without_meter
-- A no_meter_found report with failures it did not name: Stripe has no meter for the event
-- names its samples carry, so it counted none of that account's events of those names received
-- in the report's window. The accepted ones become `rejected` (inferred, with the report's id)
-- only while the catalogue, read successfully, shows no active meter for the name.
UPDATE meter_event_outbox o
SET state = 'rejected', last_error_code = :code, last_error_message = :message,
    inferred_from = :report_id, lease_token = NULL, updated_at = now()
WHERE o.state = 'accepted' AND o.updated_at >= :since AND o.updated_at < :until
  AND o.stripe_account IS NOT DISTINCT FROM CAST(:account AS text)
  AND o.event_name IN (
      SELECT s.event_name FROM meter_event_outbox s
      WHERE s.identifier = ANY(CAST(:samples AS text[]))
        AND s.stripe_account IS NOT DISTINCT FROM CAST(:account AS text))
  AND EXISTS (
      SELECT 1 FROM meter_event_outbox_meter_reads r
      WHERE r.stripe_account = coalesce(CAST(:account AS text), '') AND r.outcome = 'ok')
  AND NOT EXISTS (
      SELECT 1 FROM meter_event_outbox_meters m
      WHERE m.stripe_account = coalesce(CAST(:account AS text), '')
        AND m.event_name = o.event_name AND m.status = 'active')
RETURNING o.identifier

-- name: confirmation_counts
-- `status`: accepted rows confirmed (a maintained counter), in drifting groups, in groups that
-- cannot be confirmed, and since when rows wait: the oldest hour of a group not confirmed, or
-- the acceptance hour of the oldest row discovery has not reached. Read through the two
-- partial indexes of groups not confirmed and one probe of the terminal-age index: history is
-- never read.
SELECT (SELECT confirmed FROM meter_event_outbox_confirmation_cursor) AS confirmed,
       coalesce((SELECT sum(events) FROM meter_event_outbox_groups
                 WHERE state = 'drift'), 0) AS drifting,
       (SELECT count(*) FROM meter_event_outbox_groups WHERE state = 'drift') AS drifting_groups,
       coalesce((SELECT sum(events) FROM meter_event_outbox_groups
                 WHERE state = 'not_confirmable'), 0) AS not_confirmable,
       least((SELECT min(hour) FROM meter_event_outbox_groups
              WHERE state IN ('awaiting', 'drift')),
             (SELECT date_trunc('hour', o.updated_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
              FROM meter_event_outbox o, meter_event_outbox_confirmation_cursor c
              WHERE o.state IN ('accepted', 'cancelled') AND o.updated_at > c.through
                AND o.state = 'accepted'
              ORDER BY o.updated_at LIMIT 1)) AS oldest_unconfirmed_hour

-- name: row_confirmation
-- How one row stands against Stripe's totals (`inspect`, the console's row page): its group's
-- state and, when the group matched with this row counted, when and by which summary.
SELECT g.state AS group_state, g.hour, g.due_at, g.compared_at, g.stripe_value, g.value,
       g.detail, g.report_id,
       (g.confirmed_through IS NOT NULL AND o.updated_at <= g.confirmed_through
        AND g.state <> 'drift') AS confirmed,
       CASE WHEN o.updated_at <= g.confirmed_through THEN g.confirmed_at END AS confirmed_at,
       CASE WHEN o.updated_at <= g.confirmed_through THEN g.summary_id END AS summary_id
FROM meter_event_outbox o
JOIN meter_event_outbox_groups g
  ON g.stripe_account = coalesce(o.stripe_account, '') AND g.customer = o.customer
 AND g.event_name = o.event_name
 AND g.hour = date_trunc('hour', o.occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
WHERE o.identifier = :identifier
