-- A claim used to update the row (pending -> in_flight, lease token, deadline in available_at):
-- a non-HOT update, a new row version and an entry in every index whose predicate matches,
-- about 550 bytes of WAL per fact. The lease lives here instead, in an UNLOGGED table (no WAL).
-- A crash of PostgreSQL empties it: the rows it leased are still `pending` in the outbox, are
-- claimed again and replay with the same idempotency key and identifier (invariant 1), and the
-- old holder's outcome finds no lease and writes nothing (compare-and-set, invariant 2).
--
-- A row is in flight when it is pending with a live lease here (or, written by a relay of an
-- earlier release, `in_flight` in the outbox with its deadline in available_at).
CREATE UNLOGGED TABLE IF NOT EXISTS meter_event_outbox_leases (
    outbox_id        bigint PRIMARY KEY,      -- the arbiter between claims: one lease per row
    lease_token      uuid NOT NULL,
    leased_by        text NOT NULL,
    leased_until     timestamptz NOT NULL,
    -- The first claim of the row since its last outcome, carried over when an expired lease is
    -- taken over: a relay that died after its call started the dedup clock (invariant 6).
    first_claimed_at timestamptz NOT NULL,
    leased_at        timestamptz NOT NULL DEFAULT now(),
    customer         text NOT NULL,           -- the lane, for v1's one-call-per-lane probe
    event_name       text NOT NULL,
    stripe_account   text,
    action           text NOT NULL
);
-- v1: "has this lane a call in flight?" is one probe of this index's range after now().
CREATE INDEX IF NOT EXISTS meter_event_outbox_leases_lane
    ON meter_event_outbox_leases (customer, event_name, leased_until);

-- A crash of PostgreSQL (or a failover to a standby) empties the lease table while a row's FIRST
-- report may be at Stripe: nothing on the row then says it may have been sent (first_attempt_at
-- is NULL until an outcome), and a cancel would cancel it on the spot (invariant 10). The reset
-- is detected durably instead: this UNLOGGED one-row marker is emptied with the leases, and
-- the relay (each fold, store.fold_counts) re-creates it and, in the same transaction, raises
-- the LOGGED watermark to max(id) of the outbox. Ids are not commit-ordered, yet every row that
-- existed before the crash was committed before it, so the max(id) read after it covers them;
-- a row committed later with a smaller id was never leased before the crash (at worst one
-- extra, idempotent call on its cancel). Two relays at once: the second waits on the marker's
-- key and inserts nothing; the watermark only grows (greatest).
CREATE UNLOGGED TABLE IF NOT EXISTS meter_event_outbox_lease_epoch (
    one boolean PRIMARY KEY DEFAULT true CHECK (one)
);
CREATE TABLE IF NOT EXISTS meter_event_outbox_lease_watermark (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    possibly_sent_below bigint NOT NULL DEFAULT 0  -- rows with id <= this may have been sent
);
INSERT INTO meter_event_outbox_lease_watermark DEFAULT VALUES ON CONFLICT DO NOTHING;
INSERT INTO meter_event_outbox_lease_epoch DEFAULT VALUES ON CONFLICT DO NOTHING;

-- May Stripe have this pending row's report? It has a lease (live or expired), or it lay in
-- the outbox when the leases were lost (id <= watermark), or the marker says they were lost
-- and no relay has noticed yet. (first_attempt_at IS NOT NULL is the callers' own test.)
CREATE OR REPLACE FUNCTION meter_event_outbox_possibly_sent(row_id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM meter_event_outbox_leases l WHERE l.outbox_id = row_id)
        OR NOT EXISTS (SELECT 1 FROM meter_event_outbox_lease_epoch)
        OR row_id <= coalesce((SELECT w.possibly_sent_below
                               FROM meter_event_outbox_lease_watermark w), 0)
$$;

-- Rolling upgrade: a relay of the previous release claims by updating the row to in_flight.
-- A row with a live lease here is in flight for this release's relays: that claim skips it.
CREATE OR REPLACE FUNCTION meter_event_outbox_leased_skip() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM meter_event_outbox_leases l
               WHERE l.outbox_id = OLD.id AND l.leased_until > now()) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS meter_event_outbox_old_claim ON meter_event_outbox;
CREATE TRIGGER meter_event_outbox_old_claim
    BEFORE UPDATE ON meter_event_outbox FOR EACH ROW
    WHEN (OLD.state = 'pending' AND NEW.state = 'in_flight')
    EXECUTE FUNCTION meter_event_outbox_leased_skip();

-- cancel_usage (this release's library and earlier ones): a pending row with a lease has a
-- report in flight, so the request is only stamped and the outcome decides (invariant 10),
-- exactly as for an `in_flight` row. Any lease, live or expired: an outcome deletes its lease,
-- so a lease left on a pending row is a call whose outcome is unknown (a relay that died after
-- its call; the relay that takes the lease over resolves it), as an `in_flight` row past its
-- deadline was. On every cancel of such a row, not only the first: a repeated cancel_usage
-- would otherwise cancel it on the spot (its first_attempt_at is still NULL) while the report
-- lands. The relay's outcome (and a webhook's rejection) deletes the lease in the same
-- statement before it updates the row, and this function's query sees that deletion. A claim
-- of the previous release (NEW.state `in_flight`) is left to meter_event_outbox_old_claim: it
-- takes over an expired lease there, the request stamped on the row it leases.
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
DROP TRIGGER IF EXISTS meter_event_outbox_leased_cancel ON meter_event_outbox;
CREATE TRIGGER meter_event_outbox_leased_cancel
    BEFORE UPDATE ON meter_event_outbox FOR EACH ROW
    WHEN (OLD.state = 'pending' AND NEW.cancel_requested_at IS NOT NULL
          AND NEW.state <> 'in_flight')
    EXECUTE FUNCTION meter_event_outbox_leased_cancel();

-- The triggers read the lease table whoever updates the row (an application cancelling through
-- a role without rights on it): SECURITY DEFINER with a pinned search_path.
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION meter_event_outbox_leased_skip() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION meter_event_outbox_leased_cancel() SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION meter_event_outbox_possibly_sent(bigint) SECURITY DEFINER'
                   ' SET search_path = %I, pg_temp', current_schema());
END $pin$;

-- Rows per state: a pending row with a live lease is in flight (the tallies count it pending:
-- a claim no longer changes the row). One primary-key probe per live lease.
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
