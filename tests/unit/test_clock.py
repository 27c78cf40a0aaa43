"""One clock (relay/core/clock.py): the relay judges Stripe's timestamp window by the database's
clock corrected by Stripe's `Date` header, never by its host's alone; skew beyond the margin is
one log line per change and a gauge. Injected host clock: no waiting, no real time."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import structlog.testing
from prometheus_client import REGISTRY

from outbox import rules
from relay.core.clock import DATABASE, STRIPE, Clocks
from relay.core.rows import Claimed
from relay.stripe.policy import Refusals, local_refusal
from tests.unit.rows import claimed

TRUE = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)  # the database's and Stripe's time
MARGIN = timedelta(seconds=60)
TEN_MINUTES = timedelta(minutes=10)
DEDUP = timedelta(hours=20)


class Host:
    """This host's wall clock, off the true time by `skew`."""

    def __init__(self, skew: timedelta) -> None:
        self.true = TRUE
        self.skew = skew

    def __call__(self) -> datetime:
        return self.true + self.skew


def report(occurred_at: datetime) -> Claimed:
    return claimed(
        payload_json="{}", occurred_at=occurred_at, first_attempt_at=TRUE, created_at=occurred_at
    )


def clocks_on(skew: timedelta) -> tuple[Clocks, Host]:
    host = Host(skew)
    clocks = Clocks(MARGIN, host)
    clocks.observe_database(TRUE, host(), host())  # an instant round trip
    return clocks, host


def test_host_ten_minutes_ahead_does_not_fail_a_row_inside_the_databases_window() -> None:
    old = TRUE - timedelta(days=34, hours=23, minutes=55)
    clocks, host = clocks_on(TEN_MINUTES)
    assert local_refusal(report(old), clocks.now(), DEDUP, MARGIN) is None
    assert Refusals(clocks.now(), DEDUP, MARGIN).check(report(old)) is None
    # What the host's clock alone said (the bug): failed without a call.
    refused = local_refusal(report(old), host(), DEDUP, MARGIN)
    assert refused is not None and refused.code == "timestamp_too_far_in_past"


def test_host_ten_minutes_behind_does_not_hold_a_fresh_row() -> None:
    clocks, host = clocks_on(-TEN_MINUTES)
    assert local_refusal(report(TRUE), clocks.now(), DEDUP, MARGIN) is None
    held = local_refusal(report(TRUE), host(), DEDUP, MARGIN)  # the bug: a 6-minute wait
    assert held is not None and held.code == "timestamp_in_future"
    assert held.delay is not None and held.delay > 5 * 60


def test_stripes_date_header_corrects_the_databases_clock() -> None:
    clocks, _ = clocks_on(timedelta(0))
    stripe_ahead = timedelta(minutes=3)
    clocks.observe_date(format_datetime(TRUE + stripe_ahead, usegmt=True))
    offset = clocks.offset(STRIPE)
    assert offset is not None and abs(offset - stripe_ahead) <= timedelta(seconds=1)
    assert abs(clocks.now() - (TRUE + stripe_ahead)) <= timedelta(seconds=1)
    # A row the database accepted 34 d 23 h 58 m ago is past Stripe's window (with the margin)
    # by Stripe's clock: refused locally, without a call Stripe must refuse.
    edge = TRUE - rules.MAX_PAST + timedelta(minutes=2)
    refused = local_refusal(report(edge), clocks.now(), DEDUP, MARGIN)
    assert refused is not None and refused.code == "timestamp_too_far_in_past"


def test_the_database_round_trip_midpoint_is_the_databases_instant() -> None:
    host = Host(timedelta(seconds=30))
    clocks = Clocks(MARGIN, host)
    sent = host()
    host.true += timedelta(seconds=2)  # a slow round trip; the database answered halfway
    clocks.observe_database(TRUE + timedelta(seconds=1), sent, host())
    assert clocks.offset(DATABASE) == timedelta(seconds=-30)


def test_before_any_reading_the_host_clock_is_all_there_is() -> None:
    host = Host(TEN_MINUTES)
    assert Clocks(MARGIN, host).now() == host()


def test_unparseable_or_repeated_date_headers_teach_nothing() -> None:
    clocks, host = clocks_on(timedelta(0))
    for header in (None, "", "yesterday", "Sun, 06 Dec 2026 12:00:00 -0000"):
        clocks.observe_date(header)
    assert clocks.offset(STRIPE) is None
    header = format_datetime(TRUE, usegmt=True)
    clocks.observe_date(header)
    first = clocks.offset(STRIPE)
    host.true += timedelta(seconds=5)
    clocks.observe_date(header)  # the same Date again: parsed once per distinct value
    assert clocks.offset(STRIPE) == first


def test_skew_beyond_the_margin_is_one_log_line_per_change_and_a_gauge() -> None:
    host = Host(TEN_MINUTES)
    clocks = Clocks(MARGIN, host)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            clocks.observe_database(TRUE, host(), host())
        host.skew = timedelta(seconds=5)
        clocks.observe_database(TRUE, host(), host())
        clocks.observe_database(TRUE, host(), host())
    events = [(e["event"], e.get("clock")) for e in logs]
    assert events == [("clock_skew", DATABASE), ("clock_skew_resolved", DATABASE)]
    assert logs[0]["offset_s"] == -600.0 and logs[0]["margin_s"] == 60.0
    gauge = REGISTRY.get_sample_value("outbox_relay_clock_offset_seconds", {"clock": DATABASE})
    assert gauge == -5.0


def test_within_the_margin_is_silent() -> None:
    host = Host(MARGIN - timedelta(seconds=1))
    clocks = Clocks(MARGIN, host)
    with structlog.testing.capture_logs() as logs:
        clocks.observe_database(TRUE, host(), host())
    assert logs == []
