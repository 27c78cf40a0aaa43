-- The meters of each Stripe account that has rows, as last read from `GET /v1/billing/meters`
-- (every page, active and inactive). One table, so replicas, the operator commands and the
-- console share one view. The relay replaces an account's rows on every successful read;
-- a row edited by hand lasts until the next read and is checked when loaded (the CHECKs below
-- and relay/stripe/catalogue.py), so a bad edit holds rows, never sends them with wrong keys.
CREATE TABLE IF NOT EXISTS meter_event_outbox_meters (
    -- '' is the platform account (the rows' stripe_account IS NULL).
    stripe_account    text NOT NULL,
    meter_id          text NOT NULL,
    event_name        text NOT NULL,
    status            text NOT NULL,
    customer_key      text NOT NULL,
    value_key         text NOT NULL,
    event_time_window text,
    formula           text NOT NULL,
    fetched_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stripe_account, meter_id),
    CONSTRAINT meter_event_outbox_meters_status_valid CHECK (status IN ('active', 'inactive')),
    CONSTRAINT meter_event_outbox_meters_window_valid
        CHECK (event_time_window IS NULL OR event_time_window IN ('hour', 'day')),
    CONSTRAINT meter_event_outbox_meters_keys_valid
        CHECK (length(customer_key) BETWEEN 1 AND 100 AND length(value_key) BETWEEN 1 AND 100
               AND length(event_name) BETWEEN 1 AND 100)
);
CREATE INDEX IF NOT EXISTS meter_event_outbox_meters_event_name
    ON meter_event_outbox_meters (stripe_account, event_name);

-- The last read of each account's meters: 'ok', 'forbidden' (a key that may not read meters:
-- the last known catalogue, or none, stays in force) or 'failed' (an outage, a malformed or
-- endless answer).
CREATE TABLE IF NOT EXISTS meter_event_outbox_meter_reads (
    stripe_account text PRIMARY KEY,
    outcome        text NOT NULL,
    detail         text,
    read_at        timestamptz NOT NULL DEFAULT now(),
    ok_at          timestamptz,
    CONSTRAINT meter_event_outbox_meter_reads_outcome_valid
        CHECK (outcome IN ('ok', 'forbidden', 'failed'))
);

-- Event names the relay has claimed, per account, with when last seen: `outbox-relay doctor`
-- checks the meters of recent history from here (a few rows) instead of scanning the outbox.
-- Written once per refresh by each relay, never per row.
CREATE TABLE IF NOT EXISTS meter_event_outbox_event_names (
    stripe_account text NOT NULL,
    event_name     text NOT NULL,
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stripe_account, event_name)
);
