-- One row per `outbox-relay drift` run: the range compared, how many (customer, meter, hour)
-- groups, the total difference and the differing groups with the identifiers involved. The
-- web console shows the newest; old reports are small and kept for the record.
CREATE TABLE meter_event_outbox_drift_reports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    since         timestamptz NOT NULL,
    until         timestamptz NOT NULL,
    groups        integer NOT NULL,
    differing     integer NOT NULL,
    unsettled     integer NOT NULL,
    drift_events  numeric NOT NULL,
    differences   jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX meter_event_outbox_drift_reports_newest
    ON meter_event_outbox_drift_reports (created_at DESC);
COMMENT ON TABLE meter_event_outbox_drift_reports IS
    'Reports of outbox-relay drift: differences between accepted outbox totals and Stripe''s '
    'meter event summaries per (customer, meter, hour). The console shows the newest.';

-- Operator reads bounded by time (drift: facts recorded since; list --since) on a table holding
-- years of history. Rows are appended in created_at order and updated soon after, so a block
-- range index stays tight, costs almost nothing per insert and is a few pages in size.
-- occurred_at needs none: the occurred_at_window CHECK puts it at most 5 minutes after
-- created_at, so a created_at bound serves occurred_at ranges too.
CREATE INDEX meter_event_outbox_created_brin
    ON meter_event_outbox USING brin (created_at) WITH (autosummarize = on);
