-- The process that owns a relay row: a random token drawn at start. A heartbeat that finds a
-- live row of the same relay_id owned by another token refuses to take it (see the relay's
-- `heartbeat` query): two processes with one OUTBOX_RELAY_ID would each take a full share of
-- the rate limit. NULL: a row written by a relay from before this revision.
ALTER TABLE meter_event_outbox_relays ADD COLUMN process_token uuid;
COMMENT ON COLUMN meter_event_outbox_relays.process_token IS
    'Random token of the process holding this relay_id; another process with the same id refuses to start while the row is live';
