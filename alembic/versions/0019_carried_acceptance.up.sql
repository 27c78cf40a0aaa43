-- An attempt-history row per accepted call was about 265 bytes of WAL per usage fact (the row
-- and its two index entries), a sixth of the relay's work, to record a call that went as
-- expected. The row carries that call instead: its request id, attempt number, key generation,
-- latency and relay, written by the outcome's update that writes the row anyway (a few dozen
-- bytes). Only the first acceptance of a row's report, answered 200 with no cancel requested,
-- is carried; every other call (errors, unknown outcomes, a duplicate-identifier answer,
-- cancels, a second acceptance after a retry) keeps its history row. `inspect` and the console
-- show a carried call as a history entry (queries.sql, row_attempts). Nullable without a
-- default: adding them rewrites nothing. Older relays leave them NULL and keep writing history
-- rows, so a call is counted from one place only.
ALTER TABLE meter_event_outbox
    ADD COLUMN IF NOT EXISTS accepted_request_id text,
    ADD COLUMN IF NOT EXISTS accepted_attempt integer,
    ADD COLUMN IF NOT EXISTS accepted_key_generation integer,
    ADD COLUMN IF NOT EXISTS accepted_latency_ms real,
    ADD COLUMN IF NOT EXISTS accepted_by text;

-- The console's "calls in the last hour" and its calls-per-minute chart counted the attempt
-- history. Carried calls are counted here instead: one row per minute, relay and database
-- session (`backend`, its pid), added to by the outcome statement once per batch (a batch of a
-- thousand outcomes is one upsert). Keyed by session so that no two statements ever wait on
-- one row (a relay writes two outcome batches at once, replicas more). Rows older than a day
-- are removed by the relay on the way (the readers look three hours back at most).
CREATE TABLE IF NOT EXISTS meter_event_outbox_carried_calls (
    minute timestamptz NOT NULL,
    relay_id text NOT NULL,
    backend integer NOT NULL,
    calls bigint NOT NULL,
    PRIMARY KEY (minute, relay_id, backend)
);

-- Both hold failed and rejected rows only, and look_by_code (state, code, id) holds them too,
-- with the same key (its predicate adds pending rows with a code): every transition into
-- failed or rejected wrote three entries for one lookup. failures_with_identifiers reads
-- look_by_code now (queries.sql), one code at a time.
DROP INDEX IF EXISTS meter_event_outbox_attention;
DROP INDEX IF EXISTS meter_event_outbox_attention_by_code;
