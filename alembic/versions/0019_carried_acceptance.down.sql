CREATE INDEX IF NOT EXISTS meter_event_outbox_attention_by_code
    ON meter_event_outbox (state, (coalesce(last_error_code, '')), id)
    WHERE state IN ('failed', 'rejected');
CREATE INDEX IF NOT EXISTS meter_event_outbox_attention
    ON meter_event_outbox (last_error_code)
    WHERE state IN ('failed', 'rejected');
DROP TABLE IF EXISTS meter_event_outbox_carried_calls;
-- The calls carried on rows become history rows again, so the older release's `inspect` still
-- shows them (attempted_at: the acceptance, which the same statement wrote).
INSERT INTO meter_event_outbox_attempts (outbox_id, attempted_at, attempt, key_generation,
    action, state, http_status, stripe_request_id, latency_ms, relay_id)
SELECT o.id, o.accepted_at, o.accepted_attempt, o.accepted_key_generation, 'report',
       'accepted', 200, o.accepted_request_id, o.accepted_latency_ms, o.accepted_by
FROM meter_event_outbox o
WHERE o.accepted_attempt IS NOT NULL
ORDER BY o.accepted_at, o.id;
ALTER TABLE meter_event_outbox
    DROP COLUMN IF EXISTS accepted_request_id,
    DROP COLUMN IF EXISTS accepted_attempt,
    DROP COLUMN IF EXISTS accepted_key_generation,
    DROP COLUMN IF EXISTS accepted_latency_ms,
    DROP COLUMN IF EXISTS accepted_by;
