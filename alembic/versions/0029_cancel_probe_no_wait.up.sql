-- The cancel trigger (its body outbox_0024's, qualified by outbox_0027) probed the lease key
-- with an INSERT first, and an INSERT waits for a transaction that is deleting that key. An
-- outcome (or a webhook's rejection) deletes its leases first and updates the rows after: a
-- cancel that held its row and waited on a lease the outcome had deleted closed a cycle
-- (outcome -> the cancel's row, cancel -> the outcome's deletion), and PostgreSQL aborted one
-- of them, the application's transaction as often as not (SQLSTATE 40P01).
--
-- The trigger now first reads the lease table, as outbox_0020's did (a read never waits): a
-- lease it sees, live, expired or being deleted by a transaction in progress, leaves the
-- request only stamped. The probe runs only when it sees none, for what a snapshot can miss.
--   READ COMMITTED: the read has a snapshot of its own, taken while the cancel holds the row
--   (a BEFORE UPDATE trigger runs on the locked row). Every lease is inserted (or taken over)
--   by a claim holding that row until it commits, so a lease committed before the row was
--   ours is seen, and none can be in progress; a lease being deleted is still seen. The probe
--   then meets no live lease and waits for nobody: a cancel never waits on a lease.
--   REPEATABLE READ, SERIALIZABLE: the read has the transaction's snapshot. A lease committed
--   before it is seen (its deletion then committed after it means the outcome updated the row:
--   the cancel's update fails to serialize before the trigger). A lease committed after it
--   is probed as in outbox_0024: a serialization failure (40001; the retry sees the lease).
--   If that lease is being deleted by an outcome or a rejection at that moment, the probe
--   still waits for it while holding the row the deleter will update next: a deadlock, as
--   before. No check that never waits can find a lease the snapshot does not see (a SELECT,
--   with NOWAIT or SKIP LOCKED, reads the snapshot; only a unique-key probe reaches past it,
--   and it waits for the key's writer); closing that case takes the deleters locking their
--   rows before deleting the leases (a lock per row on the relay's hot path).
-- A lease the statement itself deleted (an outcome's, earlier in the same statement) is seen
-- by neither the read nor the probe, as before.
CREATE OR REPLACE FUNCTION meter_event_outbox_leased_cancel() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    probe uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM meter_event_outbox_leases l WHERE l.outbox_id = OLD.id) THEN
        probe := pg_catalog.gen_random_uuid();
        INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by, leased_until,
                                               first_claimed_at, customer, event_name,
                                               stripe_account, action)
        VALUES (OLD.id, probe, 'cancel probe', '-infinity', pg_catalog.now(), OLD.customer,
                OLD.event_name, OLD.stripe_account, OLD.action)
        ON CONFLICT (outbox_id) DO NOTHING;
        IF FOUND THEN
            DELETE FROM meter_event_outbox_leases
            WHERE outbox_id = OLD.id AND lease_token = probe;
            RETURN NEW;
        END IF;
    END IF;
    NEW.state := OLD.state;
    NEW.action := OLD.action;
    NEW.attempts := OLD.attempts;
    NEW.cancelled_at := OLD.cancelled_at;
    NEW.available_at := OLD.available_at;
    RETURN NEW;
END $$;
-- CREATE OR REPLACE resets the function's settings: its owner's rights and outbox_0027's
-- search path (pg_catalog first).
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_leased_cancel() SECURITY DEFINER'
                   ' SET search_path = pg_catalog, %I, pg_temp', current_schema());
END $pin$;
