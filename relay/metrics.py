"""Prometheus metrics of the relay (served on /metrics)."""

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

CLAIMED = Counter("outbox_relay_claimed_rows_total", "Rows claimed for sending")
OUTCOMES = Counter(
    "outbox_relay_outcomes_total",
    "Outcomes written, by resulting state and error code",
    ["state", "code"],
)
STRIPE_CALLS = Counter("outbox_relay_stripe_calls_total", "Stripe calls by verdict", ["verdict"])
LATENCY = Histogram(
    "outbox_relay_stripe_latency_seconds",
    "Stripe call latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 10),
)
INFLIGHT = Gauge(
    "outbox_relay_inflight_calls", "Rows held now: claimed, their outcome not written yet"
)
COMMIT_TO_ACCEPTED = Histogram(
    "outbox_relay_commit_to_accepted_seconds",
    "From the row's commit (created_at) to Stripe's acceptance being written",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
RATE = Gauge("outbox_relay_rate_limit_per_second", "Current adaptive client-side rate limit")
AUTH_PAUSED = Gauge("outbox_relay_auth_paused", "1 while sending is paused on a 401/403")
DB_ERRORS = Counter("outbox_relay_database_errors_total", "Failed database statements")
WEBHOOKS = Counter("outbox_relay_webhooks_total", "Webhook deliveries by result", ["result"])
HTTP_DISCONNECTED = Counter(
    "outbox_relay_http_disconnected_total", "HTTP clients gone before their request was read"
)
HTTP_EVICTED = Counter(
    "outbox_relay_http_evicted_total", "HTTP connections closed to admit a new one at the cap"
)


@cache
def outcome(state: str, code: str | None) -> Counter:
    """The labelled child, cached: `labels()` is costly on a per-row hot path."""
    return OUTCOMES.labels(state, code or "")


@cache
def stripe_call(verdict: str) -> Counter:
    return STRIPE_CALLS.labels(verdict)
