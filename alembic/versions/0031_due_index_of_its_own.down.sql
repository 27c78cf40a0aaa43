-- Back to outbox_0030: the due index with the lane index's predicate, and the status view's
-- plain join.
CREATE INDEX IF NOT EXISTS meter_event_outbox_due_shared
    ON meter_event_outbox (available_at, id)
    WHERE state IN ('pending', 'in_flight');
DROP INDEX meter_event_outbox_due;
ALTER INDEX meter_event_outbox_due_shared RENAME TO meter_event_outbox_due;

CREATE OR REPLACE VIEW meter_event_outbox_status AS
WITH leased AS (
    SELECT count(*) AS n FROM meter_event_outbox_leases l
    JOIN meter_event_outbox o ON o.id = l.outbox_id AND o.state = 'pending'
    WHERE l.leased_until > now()
)
SELECT s.state,
       (coalesce(t.n, 0) + CASE s.state WHEN 'pending' THEN -leased.n
                                        WHEN 'in_flight' THEN leased.n ELSE 0 END)::bigint AS n,
       NULL::timestamptz AS oldest_available_at
FROM unnest(ARRAY['pending', 'in_flight', 'accepted', 'failed', 'rejected', 'cancelled'])
         WITH ORDINALITY AS s(state, ord)
CROSS JOIN leased
LEFT JOIN (SELECT state, sum(n) AS n FROM meter_event_outbox_tally WHERE state <> ''
           GROUP BY state) t ON t.state = s.state
ORDER BY s.ord;
