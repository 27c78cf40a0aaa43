DROP INDEX IF EXISTS meter_event_outbox_customer_history;
