-- outbox-relay roles: three group roles holding only what each job needs. Run as the owner of
-- the outbox tables (the role `outbox-relay migrate` runs as), with CREATEROLE if the roles do
-- not exist yet. Idempotent: run it again after every `outbox-relay migrate`, so tables added by
-- later migrations are covered (the grants walk the catalogue; see TABLES below). Then give
-- each login its role, e.g.
--   CREATE ROLE billing_app LOGIN PASSWORD '...' IN ROLE outbox_writer;
--
--   outbox_writer  applications: record usage (outbox_record_usage(), or the library's INSERT
--                  limited to the columns an application sets, never state); read back their
--                  facts' columns for replay checks. No UPDATE, no DELETE.
--   outbox_relay   `outbox-relay run`, retry, cancel, prune, reconcile, drift: read and write
--                  rows of the outbox's tables. No DDL (it owns nothing), no TRUNCATE, no
--                  change to the schema version.
--   outbox_reader  status, list, inspect, the console, /metrics: SELECT; and its own console
--                  sign-ins (outbox_console_sessions).
DO $roles$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['outbox_writer', 'outbox_relay', 'outbox_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        END IF;
    END LOOP;
END $roles$;

DO $grants$
DECLARE
    s       text := current_schema();
    t       record;
    fn      regprocedure;
    seq     text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO outbox_writer, outbox_relay, outbox_reader', s);
    -- TABLES: every table and view of the outbox, from the catalogue: names starting
    -- meter_event_outbox or outbox_ (the migrations' naming rule).
    FOR t IN
        SELECT c.relname, c.relkind FROM pg_class c
        WHERE c.relnamespace = s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
          AND (c.relname LIKE 'meter\_event\_outbox%' OR c.relname LIKE 'outbox\_%')
    LOOP
        EXECUTE format('REVOKE ALL ON %I.%I FROM outbox_writer, outbox_relay, outbox_reader',
                       s, t.relname);
        EXECUTE format('GRANT SELECT ON %I.%I TO outbox_relay, outbox_reader', s, t.relname);
        IF t.relkind IN ('r', 'p') AND t.relname <> 'outbox_alembic_version' THEN
            EXECUTE format('GRANT INSERT, UPDATE, DELETE ON %I.%I TO outbox_relay', s, t.relname);
        END IF;
    END LOOP;
    FOR seq IN
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = s::regnamespace AND c.relkind = 'S'
          AND (c.relname LIKE 'meter\_event\_outbox%' OR c.relname LIKE 'outbox\_%')
    LOOP
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %I.%I TO outbox_relay', s, seq);
    END LOOP;
    -- The writer: the columns an application sets, and the columns the library reads back.
    EXECUTE format('GRANT INSERT (identifier, event_name, customer, value, dimensions, metadata,'
                   ' occurred_at, stripe_account, created_at) ON %I.meter_event_outbox'
                   ' TO outbox_writer', s);
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = format('%I.meter_event_outbox', s)::regclass
               AND attname = 'trace_context' AND NOT attisdropped) THEN
        EXECUTE format('GRANT INSERT (trace_context) ON %I.meter_event_outbox TO outbox_writer', s);
    END IF;
    EXECUTE format('GRANT SELECT (id, identifier, event_name, customer, value, dimensions,'
                   ' occurred_at, stripe_account) ON %I.meter_event_outbox TO outbox_writer', s);
    -- The reader signs in to the console.
    IF to_regclass(format('%I.outbox_console_sessions', s)) IS NOT NULL THEN
        EXECUTE format('GRANT INSERT, DELETE ON %I.outbox_console_sessions TO outbox_reader', s);
    END IF;
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = s::regnamespace AND p.proname LIKE 'outbox\_%'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM outbox_writer, outbox_relay, outbox_reader',
                       fn);
    END LOOP;
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = s::regnamespace AND p.proname IN ('outbox_record_usage', 'outbox_wake')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO outbox_writer', fn);
    END LOOP;
    -- prune tends the created_at range index through these (owner's rights, outbox_0025).
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = s::regnamespace
          AND p.proname IN ('meter_event_outbox_forget_ranges',
                            'meter_event_outbox_summarize_ranges')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO outbox_relay', fn);
    END LOOP;
END $grants$;
