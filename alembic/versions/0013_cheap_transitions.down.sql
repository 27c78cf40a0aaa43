-- Back to the state-predicated indexes, the busy index and the deadline in available_at.
CREATE OR REPLACE VIEW meter_event_outbox_status AS
SELECT 'pending'::text AS state, count(*) AS n, min(available_at) AS oldest_available_at
    FROM meter_event_outbox WHERE state = 'pending'
UNION ALL
SELECT 'in_flight', count(*), min(available_at) FROM meter_event_outbox WHERE state = 'in_flight'
UNION ALL
SELECT 'accepted', n + (SELECT coalesce(sum(delta), 0)::bigint FROM meter_event_outbox_count_deltas d
                       WHERE d.state = 'accepted'), NULL
    FROM meter_event_outbox_counts WHERE state = 'accepted'
UNION ALL
SELECT 'failed', count(*), NULL FROM meter_event_outbox WHERE state = 'failed'
UNION ALL
SELECT 'rejected', count(*), NULL FROM meter_event_outbox WHERE state = 'rejected'
UNION ALL
SELECT 'cancelled', n + (SELECT coalesce(sum(delta), 0)::bigint FROM meter_event_outbox_count_deltas d
                        WHERE d.state = 'cancelled'), NULL
    FROM meter_event_outbox_counts WHERE state = 'cancelled';

UPDATE meter_event_outbox SET available_at = lease_until
WHERE state = 'in_flight' AND lease_until IS NOT NULL;

DROP INDEX IF EXISTS meter_event_outbox_due;
DROP INDEX IF EXISTS meter_event_outbox_lane;
DROP INDEX IF EXISTS meter_event_outbox_attention;
DROP INDEX IF EXISTS meter_event_outbox_terminal_age;
DROP INDEX IF EXISTS meter_event_outbox_customer_history;
DROP INDEX IF EXISTS meter_event_outbox_attention_by_code;

ALTER TABLE meter_event_outbox
    DROP COLUMN settled_state,
    DROP COLUMN lease_until,
    RESET (fillfactor);

CREATE INDEX meter_event_outbox_due
    ON meter_event_outbox (available_at) WHERE state IN ('pending', 'in_flight');
CREATE INDEX meter_event_outbox_lane
    ON meter_event_outbox (customer, event_name, available_at, id)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX meter_event_outbox_busy
    ON meter_event_outbox (customer, event_name, available_at) WHERE state = 'in_flight';
CREATE INDEX meter_event_outbox_attention
    ON meter_event_outbox (last_error_code) WHERE state IN ('failed', 'rejected');
CREATE INDEX meter_event_outbox_terminal_age
    ON meter_event_outbox (updated_at) WHERE state IN ('accepted', 'cancelled');
CREATE INDEX meter_event_outbox_customer_history
    ON meter_event_outbox (customer, id)
    WHERE state IN ('accepted', 'cancelled', 'failed', 'rejected');
CREATE INDEX meter_event_outbox_attention_by_code
    ON meter_event_outbox (state, (coalesce(last_error_code, '')), id)
    WHERE state IN ('failed', 'rejected');
