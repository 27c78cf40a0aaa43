-- `outbox-relay list --customer` over a long history: the newest rows of one customer in a
-- settled state, read backwards from this index instead of walking the whole table (the lane
-- index already covers the customer's pending and in-flight rows). Partial, so a row gets an
-- entry once, when its outcome settles it, not on every claim. On a large table build it
-- beforehand without blocking writes, under the same name, and this step leaves it alone:
--   CREATE INDEX CONCURRENTLY meter_event_outbox_customer_history ON meter_event_outbox
--       (customer, id) WHERE state IN ('accepted', 'cancelled', 'failed', 'rejected');
CREATE INDEX IF NOT EXISTS meter_event_outbox_customer_history
    ON meter_event_outbox (customer, id)
    WHERE state IN ('accepted', 'cancelled', 'failed', 'rejected');
