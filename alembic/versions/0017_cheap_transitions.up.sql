-- Claims and outcomes are updates: each writes a new version of the row. When the page has no
-- room for it, the version goes to another page, and PostgreSQL logs the whole tuple plus a
-- lock record for the old one (about 400 bytes a time, twice per fact). With room left on
-- each page (fillfactor) the new version stays on its page: only the changed bytes are logged
-- (prefix and suffix compression) and no lock record. New pages only: rows already written
-- keep their pages.
ALTER TABLE meter_event_outbox SET (fillfactor = 75);

-- A claim is a non-HOT update (it changes `state` and `available_at`, which the partial indexes
-- use), so it writes an entry into every index whose predicate matches the claimed row. The
-- busy index (in-flight rows per lane) was one of them: an entry per claim, about 90 bytes of
-- WAL per fact, to answer "has this lane a call in flight?". The lane index answers it as well:
-- an in-flight row's available_at is its lease deadline, so it sits in its lane's range after
-- now(), with the lane's rows in backoff (the relay's probe reads that short range).
DROP INDEX IF EXISTS meter_event_outbox_busy;
