-- The claim and the outcome were two non-HOT updates per fact: every index whose key or
-- predicate mentions a changed column counts as changed, and `state` was in every partial
-- index's predicate and `available_at` (the lease deadline) in three keys. So a claim wrote a
-- whole new tuple plus an entry in six indexes, about 2 KB of WAL per fact with the outcome.
--
-- Now no index mentions `state` or a column the claim writes:
-- * `settled_state` (generated: NULL while the row is pending or in flight, else its state)
--   carries the predicates, and it stays NULL when a pending row is claimed;
-- * the lease deadline moves to `lease_until`, so a claimed row keeps its `available_at` and
--   its place in the lane index (it is its lane's head while its call runs: the claim and the
--   walk read the lease from the row);
-- * the busy index (in-flight rows per lane) goes: in v1 a lane is busy when its head is leased.
-- With room left on each page (fillfactor), a claim is a HOT update on the same page: no index
-- entry, and only the changed bytes of the tuple in the WAL.
--
-- Adding a stored generated column rewrites the table under an exclusive lock: on a large
-- table, prune first or migrate in a quiet window. Relays of the previous release must be
-- stopped first: their statements select rows by `state` and no longer match an index.

DROP INDEX IF EXISTS meter_event_outbox_due;
DROP INDEX IF EXISTS meter_event_outbox_lane;
DROP INDEX IF EXISTS meter_event_outbox_busy;
DROP INDEX IF EXISTS meter_event_outbox_attention;
DROP INDEX IF EXISTS meter_event_outbox_terminal_age;
DROP INDEX IF EXISTS meter_event_outbox_customer_history;
DROP INDEX IF EXISTS meter_event_outbox_attention_by_code;

ALTER TABLE meter_event_outbox
    ADD COLUMN settled_state text GENERATED ALWAYS AS (
        CASE WHEN state IN ('pending', 'in_flight') THEN NULL ELSE state END) STORED,
    ADD COLUMN lease_until timestamptz,
    -- Room for the claim's new tuple version on the row's own page (a HOT update needs it).
    SET (fillfactor = 75);

COMMENT ON COLUMN meter_event_outbox.settled_state IS
    'NULL while pending or in flight, else the state: what the partial indexes select on';
COMMENT ON COLUMN meter_event_outbox.lease_until IS
    'in_flight: the lease deadline (after it, claimable again). available_at stays as it was';

-- Rows leased by the previous release kept their deadline in available_at.
UPDATE meter_event_outbox SET lease_until = available_at WHERE state = 'in_flight';

-- The hot part: rows the relay still has to act on (pending, in flight).
CREATE INDEX meter_event_outbox_due
    ON meter_event_outbox (available_at) WHERE settled_state IS NULL;
CREATE INDEX meter_event_outbox_lane
    ON meter_event_outbox (customer, event_name, available_at, id) WHERE settled_state IS NULL;
CREATE INDEX meter_event_outbox_attention
    ON meter_event_outbox (last_error_code) WHERE settled_state IN ('failed', 'rejected');
CREATE INDEX meter_event_outbox_terminal_age
    ON meter_event_outbox (updated_at) WHERE settled_state IN ('accepted', 'cancelled');
CREATE INDEX meter_event_outbox_customer_history
    ON meter_event_outbox (customer, id) WHERE settled_state IS NOT NULL;
CREATE INDEX meter_event_outbox_attention_by_code
    ON meter_event_outbox (settled_state, (coalesce(last_error_code, '')), id)
    WHERE settled_state IN ('failed', 'rejected');

-- The status view on the new predicates (same columns; in flight: the earliest deadline).
CREATE OR REPLACE VIEW meter_event_outbox_status AS
SELECT 'pending'::text AS state, count(*) AS n, min(available_at) AS oldest_available_at
    FROM meter_event_outbox WHERE settled_state IS NULL AND state = 'pending'
UNION ALL
SELECT 'in_flight', count(*), min(lease_until)
    FROM meter_event_outbox WHERE settled_state IS NULL AND state = 'in_flight'
UNION ALL
SELECT 'accepted', n + (SELECT coalesce(sum(delta), 0)::bigint FROM meter_event_outbox_count_deltas d
                       WHERE d.state = 'accepted'), NULL
    FROM meter_event_outbox_counts WHERE state = 'accepted'
UNION ALL
SELECT 'failed', count(*), NULL FROM meter_event_outbox WHERE settled_state = 'failed'
UNION ALL
SELECT 'rejected', count(*), NULL FROM meter_event_outbox WHERE settled_state = 'rejected'
UNION ALL
SELECT 'cancelled', n + (SELECT coalesce(sum(delta), 0)::bigint FROM meter_event_outbox_count_deltas d
                        WHERE d.state = 'cancelled'), NULL
    FROM meter_event_outbox_counts WHERE state = 'cancelled';
