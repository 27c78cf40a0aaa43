-- Back to 0012's counters: folded counts of accepted and cancelled rows only (the hot states are
-- counted live by the status view again).
LOCK TABLE meter_event_outbox IN SHARE ROW EXCLUSIVE MODE;

DROP INDEX meter_event_outbox_waiting;
DROP INDEX meter_event_outbox_unsent_age;
DROP VIEW meter_event_outbox_status;
DROP TRIGGER meter_event_outbox_tally_inserts ON meter_event_outbox;
DROP TRIGGER meter_event_outbox_tally_updates ON meter_event_outbox;
DROP TRIGGER meter_event_outbox_tally_deletes ON meter_event_outbox;
DROP FUNCTION meter_event_outbox_tally_changes();
DROP FUNCTION outbox_fold_counts();

CREATE TABLE meter_event_outbox_counts (
    state text PRIMARY KEY,
    n     bigint NOT NULL DEFAULT 0
);
INSERT INTO meter_event_outbox_counts (state, n)
SELECT s.state, coalesce((SELECT sum(t.n) FROM meter_event_outbox_tally t WHERE t.state = s.state), 0)
FROM unnest(ARRAY['accepted', 'cancelled']) AS s(state);

DROP VIEW meter_event_outbox_tally;
DROP VIEW meter_event_outbox_tally_delta_keys;
DROP FUNCTION outbox_tally_keys(text, text, text, text);
DROP TABLE meter_event_outbox_tally_deltas;
DROP TABLE meter_event_outbox_tallies;

CREATE TABLE meter_event_outbox_count_deltas (
    state text NOT NULL,
    delta bigint NOT NULL
);

CREATE FUNCTION meter_event_outbox_count_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO meter_event_outbox_count_deltas (state, delta)
        SELECT state, sum(delta) FROM (
            SELECT state, 1 AS delta FROM new_rows WHERE state IN ('accepted', 'cancelled')
            UNION ALL
            SELECT state, -1 FROM old_rows WHERE state IN ('accepted', 'cancelled')
        ) t GROUP BY state HAVING sum(delta) <> 0;
    ELSE
        INSERT INTO meter_event_outbox_count_deltas (state, delta)
        SELECT state, -count(*) FROM old_rows WHERE state IN ('accepted', 'cancelled')
        GROUP BY state;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER meter_event_outbox_count_updates
    AFTER UPDATE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_count_changes();
CREATE TRIGGER meter_event_outbox_count_deletes
    AFTER DELETE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_count_changes();

CREATE FUNCTION outbox_fold_counts() RETURNS bigint
LANGUAGE sql AS $$
    WITH moved AS (
        DELETE FROM meter_event_outbox_count_deltas d
        WHERE d.ctid IN (SELECT ctid FROM meter_event_outbox_count_deltas FOR UPDATE SKIP LOCKED)
        RETURNING d.state, d.delta
    ), summed AS (
        SELECT state, sum(delta) AS delta FROM moved GROUP BY state
    ), applied AS (
        UPDATE meter_event_outbox_counts c SET n = c.n + s.delta
        FROM summed s WHERE c.state = s.state
        RETURNING 1
    )
    SELECT count(*) FROM moved
$$;

CREATE VIEW meter_event_outbox_status AS
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
