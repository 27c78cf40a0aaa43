-- The cancel trigger's function as outbox_0027 left it (the probe first, outbox_0024's logic),
-- with its owner's rights and search path.
CREATE OR REPLACE FUNCTION meter_event_outbox_leased_cancel() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    probe uuid := pg_catalog.gen_random_uuid();
BEGIN
    INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by, leased_until,
                                           first_claimed_at, customer, event_name,
                                           stripe_account, action)
    VALUES (OLD.id, probe, 'cancel probe', '-infinity', pg_catalog.now(), OLD.customer,
            OLD.event_name, OLD.stripe_account, OLD.action)
    ON CONFLICT (outbox_id) DO NOTHING;
    IF FOUND THEN
        DELETE FROM meter_event_outbox_leases WHERE outbox_id = OLD.id AND lease_token = probe;
        RETURN NEW;
    END IF;
    NEW.state := OLD.state;
    NEW.action := OLD.action;
    NEW.attempts := OLD.attempts;
    NEW.cancelled_at := OLD.cancelled_at;
    NEW.available_at := OLD.available_at;
    RETURN NEW;
END $$;
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_leased_cancel() SECURITY DEFINER'
                   ' SET search_path = pg_catalog, %I, pg_temp', current_schema());
END $pin$;
