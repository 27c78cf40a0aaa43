-- The console lists "rows that need a look": failed, rejected, and pending rows that carry an
-- error code (retrying, or held for a key, account or meter problem). Its pages go forward by
-- id (keyset), so each filter needs an index whose entries for that filter are in id order;
-- meter_event_outbox_attention_by_code serves failed and rejected rows by code only.
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
-- By code. attention_by_code holds failed and rejected rows by code already, but a partial
-- index whose predicate implies the state cannot use a state key column (the planner drops the
-- implied condition), and the list's ORDER BY state, id needs one (queries.sql, look_rows).
CREATE INDEX IF NOT EXISTS meter_event_outbox_look_by_code
    ON meter_event_outbox (state, (coalesce(last_error_code, '')), id)
    WHERE state IN ('failed', 'rejected')
       OR (state = 'pending' AND last_error_code IS NOT NULL);
