-- The outage breaker (relay/stripe/outage.py): whether Stripe is answering at all. 'open'
-- after a run of calls that got no answer or a 502/503/504 in front of the API: relays then
-- send nothing but one probe call at a time (`probe_holder` holds the probe's lease), at an
-- interval that doubles up to a cap, until a probe gets an answer and closes it for all.
-- A key or account that Stripe refuses is not an outage: that is per account (auth_gate.py).
CREATE TABLE IF NOT EXISTS meter_event_outbox_outage (
    scope          text PRIMARY KEY,
    state          text NOT NULL DEFAULT 'closed',
    -- the first failed call of the run that opened it (the outage began then, as far as seen)
    since          timestamptz,
    opened_at      timestamptz,
    opened_by      text,
    closed_at      timestamptz,
    closed_by      text,
    -- the answer of the last failed call: 502, 503, 504, or NULL for no answer
    last_status    integer,
    -- calls made since `since`, and how many of them failed (the console's percentage)
    calls          bigint NOT NULL DEFAULT 0,
    failed_calls   bigint NOT NULL DEFAULT 0,
    probes         integer NOT NULL DEFAULT 0,
    probe_interval double precision NOT NULL DEFAULT 0,
    probe_at       timestamptz,
    probe_holder   text,
    probe_until    timestamptz,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT meter_event_outbox_outage_state_valid CHECK (state IN ('closed', 'open')),
    CONSTRAINT meter_event_outbox_outage_counts_valid
        CHECK (calls >= 0 AND failed_calls >= 0 AND failed_calls <= calls AND probes >= 0)
);
INSERT INTO meter_event_outbox_outage (scope) VALUES ('stripe') ON CONFLICT (scope) DO NOTHING;
