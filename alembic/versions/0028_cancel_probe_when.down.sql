-- The cancel trigger as outbox_0020 created it (outbox_0024's body stays): it also fires on
-- updates that leave a pending row pending.
DROP TRIGGER meter_event_outbox_leased_cancel ON meter_event_outbox;
CREATE TRIGGER meter_event_outbox_leased_cancel
    BEFORE UPDATE ON meter_event_outbox FOR EACH ROW
    WHEN (OLD.state = 'pending' AND NEW.cancel_requested_at IS NOT NULL
          AND NEW.state <> 'in_flight')
    EXECUTE FUNCTION meter_event_outbox_leased_cancel();
