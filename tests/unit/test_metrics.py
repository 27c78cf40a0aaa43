"""The batch histogram exposes what a prometheus_client Histogram exposes for the same values."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from relay.core.metrics import BatchHistogram

BUCKETS = (0.01, 0.5, 1, 60)
VALUES = [0.0, 0.01, 0.010001, 0.5, 0.7, 1.0, 59.9, 60.0, 61.0, 3600.0]


def exposition(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if not line.startswith("#") and "_created" not in line]


def test_batch_histogram_matches_prometheus_client_histogram() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for value in VALUES:
        reference.observe(value)
    batch = BatchHistogram("h_seconds", "doc", BUCKETS, registry=ours)
    batch.observe_many(VALUES[:4])
    batch.observe(VALUES[4])
    batch.observe_many(VALUES[5:])
    assert exposition(ours) == exposition(theirs)
    assert 'h_seconds_bucket{le="0.01"} 2.0' in exposition(ours)  # le: a bound counts in


def test_outcome_codes_outside_the_known_set_are_counted_as_other() -> None:
    """Codes come from upstream: unknown ones must not grow the series or reach /metrics raw."""
    from prometheus_client import REGISTRY, generate_latest

    from relay.core import metrics

    def other() -> float:
        labels = {"state": "failed", "code": "other"}
        return REGISTRY.get_sample_value("outbox_relay_outcomes_total", labels) or 0.0

    before = other()
    hostile = [f"\x1b]0;owned\x07code_{i}" for i in range(50)] + ["http_9999", "made_up"]
    for code in hostile:
        metrics.outcome("failed", code).inc()
    metrics.outcome("failed", "meter_event_customer_not_found").inc()
    metrics.outcome("pending", "http_503").inc()
    metrics.outcome("accepted", None).inc()
    text = generate_latest().decode()
    assert "\x1b" not in text and "owned" not in text and "made_up" not in text
    assert other() - before == 52
    assert 'code="meter_event_customer_not_found",state="failed"' in text
    assert 'code="http_503",state="pending"' in text
