CREATE OR REPLACE VIEW meter_event_outbox_status AS
SELECT s.state, coalesce(t.n, 0)::bigint AS n, NULL::timestamptz AS oldest_available_at
FROM unnest(ARRAY['pending', 'in_flight', 'accepted', 'failed', 'rejected', 'cancelled'])
         WITH ORDINALITY AS s(state, ord)
LEFT JOIN (SELECT state, sum(n) AS n FROM meter_event_outbox_tally WHERE state <> ''
           GROUP BY state) t ON t.state = s.state
ORDER BY s.ord;
-- Rows leased here become claimable again at once (pending, same key): nothing is lost.
DROP TRIGGER IF EXISTS meter_event_outbox_leased_cancel ON meter_event_outbox;
DROP TRIGGER IF EXISTS meter_event_outbox_old_claim ON meter_event_outbox;
DROP FUNCTION IF EXISTS meter_event_outbox_leased_cancel();
DROP FUNCTION IF EXISTS meter_event_outbox_leased_skip();
DROP FUNCTION IF EXISTS meter_event_outbox_possibly_sent(bigint);
DROP TABLE IF EXISTS meter_event_outbox_lease_epoch;
DROP TABLE IF EXISTS meter_event_outbox_lease_watermark;
DROP TABLE IF EXISTS meter_event_outbox_leases;
