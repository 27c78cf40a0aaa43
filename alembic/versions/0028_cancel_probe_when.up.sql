-- The cancel trigger (outbox_0020, its body outbox_0024) keeps a cancel_usage from finishing a
-- pending row whose report is in flight: with a lease on the row it puts back the row's state,
-- action, attempts, cancelled_at and available_at. It fired on every update of a pending row
-- with a cancel requested that left it anything but in_flight, so also on the relay's own
-- outcome of such a report (a success: a pending cancellation), which deleted the lease earlier
-- in the same statement: the probe's insert and delete restored nothing, at a cost of about
-- 4 us of CPU per row of a batch with one row in ten cancelled (bench.store_statements).
--
-- It now fires only when the update takes the row out of pending. An update that leaves a
-- pending row pending needs nothing restored:
--   - cancel_usage (this library's and the previous release's) leaves a pending row's action,
--     attempts and available_at as they are and sets cancelled_at only when it cancels the row
--     (state 'cancelled', which still fires): a stamp only, whatever the lease;
--   - the relay's outcome deletes the lease first (its compare-and-set): the probe finds none;
--   - release_held and outage_close move available_at of rows not due, which no claim leased.
-- A cancel that only stamps no longer waits for a claim in progress on the probe (it waits on
-- the row lock the claim holds) nor fails to serialize on a lease committed after its
-- snapshot: nothing of the row changes either way; its result may say `pending` where the
-- retried transaction said `in_flight`. Not narrowed to `OLD.cancel_requested_at IS NULL`
-- (the request being set now): a repeated cancel_usage of a never-sent report in flight
-- would then cancel it on the spot (invariant 10).
DROP TRIGGER meter_event_outbox_leased_cancel ON meter_event_outbox;
CREATE TRIGGER meter_event_outbox_leased_cancel
    BEFORE UPDATE ON meter_event_outbox FOR EACH ROW
    WHEN (OLD.state = 'pending' AND NEW.cancel_requested_at IS NOT NULL
          AND NEW.state NOT IN ('pending', 'in_flight'))
    EXECUTE FUNCTION meter_event_outbox_leased_cancel();
