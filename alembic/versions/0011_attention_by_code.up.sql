-- Rejected rows are never pruned and their codes come from upstream, so this part of the table
-- can be large: 200,000 rejected rows made the console's "first identifiers per code" walk the
-- primary key for 27 s. With (state, code, id) each code's first rows are the index's first
-- entries for that key. Same expression as the console's queries (coalesce: '' = no code).
CREATE INDEX meter_event_outbox_attention_by_code
    ON meter_event_outbox (state, (coalesce(last_error_code, '')), id)
    WHERE state IN ('failed', 'rejected');
