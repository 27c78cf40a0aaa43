-- The console lists "rows that need a look": failed, rejected, and pending rows that carry an
-- error code (retrying, or held for a key, account or meter problem). Its pages go forward by
-- id (keyset), so each filter needs an index whose entries for that filter are in id order;
-- meter_event_outbox_attention_by_code already serves failed and rejected rows by code.
-- All three are partial: accepted history never enters them, and a pending row enters only
-- while it carries an error code (during an outage, the rows that wait).
-- By state alone (the console's default list, and "retrying" or "held").
CREATE INDEX IF NOT EXISTS meter_event_outbox_look_by_state
    ON meter_event_outbox (state, id)
    WHERE state IN ('failed', 'rejected')
       OR (state = 'pending' AND last_error_code IS NOT NULL);
-- By customer (one customer's failures among hundreds of thousands of others).
CREATE INDEX IF NOT EXISTS meter_event_outbox_look_by_customer
    ON meter_event_outbox (customer, state, id)
    WHERE state IN ('failed', 'rejected')
       OR (state = 'pending' AND last_error_code IS NOT NULL);
-- Pending rows by code, the counterpart of attention_by_code (same expression: '' = no code).
CREATE INDEX IF NOT EXISTS meter_event_outbox_look_pending_by_code
    ON meter_event_outbox ((coalesce(last_error_code, '')), id)
    WHERE state = 'pending' AND last_error_code IS NOT NULL;
