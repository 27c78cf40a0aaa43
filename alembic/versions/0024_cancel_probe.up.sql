-- cancel_usage of a pending row whose report is in flight must only stamp the request
-- (invariant 10). outbox_0020's trigger decided that with EXISTS on the lease table, which reads
-- the application's transaction snapshot: under REPEATABLE READ or SERIALIZABLE a snapshot taken
-- before a claim committed misses its lease, and since a claim only locks the row (it does not
-- update it) the cancel's UPDATE meets no concurrent update either. The row was cancelled on the
-- spot while its report was at Stripe, and the report's outcome then wrote nothing.
--
-- The trigger now probes the lease key with an insert, which is judged against every committed
-- lease, not the snapshot: a lease the snapshot sees leaves the insert undone (the request is
-- only stamped); a lease committed after the snapshot raises a serialization failure, as a
-- concurrent update of the row did before outbox_0020 (the application retries the transaction
-- and its retry sees the lease); a claim still in progress is waited for; with no lease the probe
-- is deleted again at once and the cancel goes ahead. The lease table is UNLOGGED: no WAL. A
-- lease the statement itself deleted (an outcome's, earlier in the same statement) is no
-- conflict, as the EXISTS did not see it either.
CREATE OR REPLACE FUNCTION meter_event_outbox_leased_cancel() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    probe uuid := gen_random_uuid();
BEGIN
    INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by, leased_until,
                                           first_claimed_at, customer, event_name,
                                           stripe_account, action)
    VALUES (OLD.id, probe, 'cancel probe', '-infinity', now(), OLD.customer, OLD.event_name,
            OLD.stripe_account, OLD.action)
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
-- CREATE OR REPLACE resets the function's attributes: it reads and writes the lease table
-- whoever cancels (an application role without rights on it).
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_leased_cancel() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
END $pin$;
