-- outbox_record_usage() becomes SECURITY DEFINER: a role that may EXECUTE it inserts a pending
-- fact through the table's constraints, and can neither pick a state nor touch other rows.
-- search_path is pinned to the schema the outbox lives in (then pg_temp, last), so a caller
-- cannot substitute its own meter_event_outbox or operator. EXECUTE is taken from PUBLIC: the
-- writer role of `outbox-relay roles` (or a role the owner grants it to) keeps it.
-- outbox_wake() (called by inserts, rate-limited to one NOTIFY per few milliseconds) runs as its
-- owner too, so inserting roles need no right on meter_event_outbox_wake; anyone may call it.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace
          AND p.proname IN ('outbox_record_usage', 'outbox_wake')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       fn, current_schema());
    END LOOP;
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace
          AND p.proname = 'outbox_record_usage'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END $$;
