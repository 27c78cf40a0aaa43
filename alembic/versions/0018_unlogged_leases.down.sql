-- Rows leased here become claimable again at once (pending, same key): nothing is lost.
DROP TRIGGER IF EXISTS meter_event_outbox_leased_cancel ON meter_event_outbox;
DROP TRIGGER IF EXISTS meter_event_outbox_old_claim ON meter_event_outbox;
DROP FUNCTION IF EXISTS meter_event_outbox_leased_cancel();
DROP FUNCTION IF EXISTS meter_event_outbox_leased_skip();
DROP TABLE IF EXISTS meter_event_outbox_leases;
