-- record_usage stores the W3C traceparent of the span it ran in (when the application uses
-- OpenTelemetry), so the relay's span for the Stripe call can link back to the request that
-- recorded the usage. Nullable without a default: adding it rewrites nothing. Its own column,
-- not a key of metadata: metadata is the application's (its size budget, its keys).
ALTER TABLE meter_event_outbox ADD COLUMN trace_context text
    CONSTRAINT meter_event_outbox_trace_context_size CHECK (octet_length(trace_context) <= 256);
