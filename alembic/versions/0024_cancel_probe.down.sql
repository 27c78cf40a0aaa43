-- outbox_0020's trigger body: EXISTS on the lease table (misses a lease committed after a
-- REPEATABLE READ snapshot).
CREATE OR REPLACE FUNCTION meter_event_outbox_leased_cancel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM meter_event_outbox_leases l WHERE l.outbox_id = OLD.id) THEN
        NEW.state := OLD.state;
        NEW.action := OLD.action;
        NEW.attempts := OLD.attempts;
        NEW.cancelled_at := OLD.cancelled_at;
        NEW.available_at := OLD.available_at;
    END IF;
    RETURN NEW;
END $$;
-- CREATE OR REPLACE resets the function's attributes: it reads and writes the lease table
-- whoever cancels (an application role without rights on it).
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_leased_cancel() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
END $pin$;
