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
