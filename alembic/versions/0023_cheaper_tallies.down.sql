-- Back to 0022: updates go through meter_event_outbox_tally_changes() (0018) again.
ALTER TABLE meter_event_outbox_tallies RESET (fillfactor);
DROP TRIGGER IF EXISTS meter_event_outbox_tally_updates ON meter_event_outbox;
CREATE TRIGGER meter_event_outbox_tally_updates
    AFTER UPDATE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION meter_event_outbox_tally_changes();
DROP FUNCTION IF EXISTS meter_event_outbox_tally_update_changes();
