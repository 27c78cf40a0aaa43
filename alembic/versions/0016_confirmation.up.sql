-- Stripe's truth per group. A 200 from Stripe means "accepted for processing"; Stripe's hourly
-- event summaries say what it counted. One row per (account, customer, event name, hour of
-- occurred_at, UTC) that has accepted rows, written when the group is first seen and when it is
-- compared: the outbox rows themselves are never rewritten to say they were confirmed (a row is
-- confirmed when its group is and it was counted in the comparison: updated_at <=
-- counted_through), so confirmation costs a few writes per group, not one per fact.
CREATE TABLE IF NOT EXISTS meter_event_outbox_groups (
    -- '' is the platform account (the rows' stripe_account IS NULL).
    stripe_account  text NOT NULL,
    customer        text NOT NULL,
    event_name      text NOT NULL,
    hour            timestamptz NOT NULL,
    -- awaiting: to compare once due_at passes; confirmed: Stripe's total matched ours;
    -- drift: it differed (compared again later); not_confirmable: the meter's formula cannot
    -- be compared by sum (`last`) or the account has no such meter.
    state           text NOT NULL DEFAULT 'awaiting',
    due_at          timestamptz NOT NULL,
    events          bigint NOT NULL DEFAULT 0,   -- our accepted rows at the last look
    -- Rows the last match confirmed (0 once the group drifts): the confirmed counter below
    -- is the sum of this over confirmed and awaiting groups.
    confirmed_events bigint NOT NULL DEFAULT 0,
    value           numeric NOT NULL DEFAULT 0,  -- their sum
    stripe_value    numeric,                     -- Stripe's total at the last comparison
    summary_id      text,                        -- the summary that confirmed the group
    compared_at     timestamptz,
    confirmed_at    timestamptz,
    -- The latest updated_at of the rows the last comparison counted: rows changed after it
    -- (a backdated fact, a cancel) are not covered and send the group back to `awaiting`.
    counted_through timestamptz,
    -- The same, of the last comparison that matched: a row is confirmed when its group is
    -- confirmed and its updated_at is not later than this.
    confirmed_through timestamptz,
    zero_reads      smallint NOT NULL DEFAULT 0, -- consecutive reads with Stripe's total at 0
    -- An error report with failures it did not list asked for this comparison.
    report_id       text,
    report_code     text,
    detail          text,
    PRIMARY KEY (stripe_account, customer, event_name, hour),
    CONSTRAINT meter_event_outbox_groups_state_valid
        CHECK (state IN ('awaiting', 'confirmed', 'drift', 'not_confirmable'))
);
-- The work queue and `status`: only groups not confirmed, so both stay small however long the
-- history is.
CREATE INDEX IF NOT EXISTS meter_event_outbox_groups_due
    ON meter_event_outbox_groups (due_at)
    WHERE state IN ('awaiting', 'drift');
-- `status` counts the rows of groups that cannot be confirmed (few meters are `last`).
CREATE INDEX IF NOT EXISTS meter_event_outbox_groups_not_confirmable
    ON meter_event_outbox_groups (event_name)
    WHERE state = 'not_confirmable';

-- One comparison at a time per (account, customer, event name) series across replicas: a
-- relay takes the series' lease before its summary call and expires it after (the row stays,
-- so the next lease is an update in place); an expired lease (a relay that died) is taken
-- over. One row per series ever compared.
CREATE TABLE IF NOT EXISTS meter_event_outbox_comparison_leases (
    stripe_account text NOT NULL,
    customer       text NOT NULL,
    event_name     text NOT NULL,
    token          uuid NOT NULL,
    leased_by      text NOT NULL,
    until          timestamptz NOT NULL,
    PRIMARY KEY (stripe_account, customer, event_name)
);

-- Where discovery of accepted (or cancelled) rows stopped: rows whose updated_at is later
-- belong to groups that must be compared (again). It moves in whole windows
-- (OUTBOX_CONFIRM_WINDOW_SECONDS, an hour by default), so each group is written once per
-- window, not once per pass.
-- `confirmed` counts the accepted rows confirmed (kept by the comparisons and `prune`), so
-- `status` never sums history: awaiting = accepted - confirmed - drifting - not confirmable.
CREATE TABLE IF NOT EXISTS meter_event_outbox_confirmation_cursor (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    through   timestamptz NOT NULL,
    confirmed bigint NOT NULL DEFAULT 0
);
INSERT INTO meter_event_outbox_confirmation_cursor (through)
VALUES ('-infinity') ON CONFLICT DO NOTHING;

-- A rejection the relay inferred from Stripe's totals rather than read in an error report's
-- samples: the report's id, or 'summaries' when no report explains it (code
-- dropped_by_stripe). NULL for every other row; adding a nullable column rewrites nothing.
ALTER TABLE meter_event_outbox ADD COLUMN IF NOT EXISTS inferred_from text;
