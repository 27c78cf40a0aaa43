DROP INDEX IF EXISTS meter_event_outbox_look_by_code;
DROP INDEX IF EXISTS meter_event_outbox_look_by_customer;
DROP INDEX IF EXISTS meter_event_outbox_look_by_state;
