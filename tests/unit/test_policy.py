"""decide(), local_refusal() and its per-call form Refusals: the row's next state, without
Stripe or PostgreSQL."""

from datetime import timedelta

import pytest

from outbox import rules
from relay.stripe.classify import Classified, Verdict, for_answer
from relay.stripe.policy import CLOCK_MARGIN, Refusals, decide, local_refusal
from tests.unit.rows import NOW, claimed

WINDOW = timedelta(hours=20)


def test_accepted_report_and_cancel() -> None:
    ok = Classified(Verdict.ACCEPTED, request_id="req_1")
    report = decide(claimed(), ok, 25, 12.0)
    assert (report.state, report.request_id, report.http_status, report.called) == (
        "accepted",
        "req_1",
        200,
        True,
    )
    assert decide(claimed(action="cancel"), ok, 25, 1.0).state == "cancelled"


@pytest.mark.parametrize(
    ("answer", "state", "counted", "new_key", "reached"),
    [
        ("invalid", "failed", 1, 0, False),
        ("idempotency_error", "failed", 1, 0, False),
        ("auth", "pending", 0, 0, False),
        ("conflict", "pending", 0, 0, False),
        ("rate_limited", "pending", 0, 0, False),
        ("server_error", "pending", 1, 1, False),
        ("unavailable", "pending", 0, 1, True),
        ("no_answer", "pending", 0, 0, True),
        ("cancel_too_early", "pending", 1, 1, False),
    ],
)
def test_each_answer(answer: str, state: str, counted: int, new_key: int, reached: bool) -> None:
    result = for_answer(answer, "some_code", "msg", "req_2", 500)
    outcome = decide(claimed(), result, 25, 5.0, now=NOW)
    assert (outcome.state, outcome.counted, outcome.new_key) == (state, counted, new_key)
    assert (outcome.http_status, outcome.called) == (500, True)
    # Only a call that may have counted the event keeps the dedup clock running.
    assert outcome.reached_stripe is reached
    assert outcome.may_have_counted is (state == "failed" and reached)


def test_retry_soon_and_slower_wait_at_least_their_minimum() -> None:
    soon = decide(claimed(), for_answer("conflict"), 25, 1.0)
    slower = decide(claimed(), for_answer("rate_limited"), 25, 1.0)
    assert soon.delay >= 0.5 and slower.delay >= 1.0


def test_the_last_allowed_attempt_fails_and_may_have_been_counted() -> None:
    result = for_answer("server_error", "http_500", "boom", http_status=500)
    row = claimed(attempts=24, previous_first_attempt_at=NOW - timedelta(minutes=5))
    outcome = decide(row, result, 25, 1.0)
    assert (outcome.state, outcome.code) == ("failed", "retry_budget_exhausted")
    assert outcome.may_have_counted  # an earlier call may have: a cancel must still be sent
    assert "http_500" in (outcome.message or "")


def test_an_outage_does_not_use_up_the_budget() -> None:
    """Invariant 12: calls that got no answer about the row never exhaust its attempts; their
    backoff grows with the time since the first call instead, up to the cap."""
    row = claimed(attempts=24, first_attempt_at=NOW - timedelta(hours=3))
    for name in ("no_answer", "unavailable"):
        outcome = decide(row, for_answer(name, http_status=503), 25, 1.0, now=NOW)
        assert (outcome.state, outcome.counted) == ("pending", 0)
        assert 0.5 <= outcome.delay <= 300
    fresh = decide(claimed(), for_answer("no_answer"), 25, 1.0, now=NOW)
    assert fresh.delay == 0.5


def test_a_sendable_row_is_not_refused() -> None:
    assert local_refusal(claimed(), NOW, WINDOW) is None


def test_usage_older_than_stripes_window_fails_without_a_call() -> None:
    outcome = local_refusal(claimed(occurred_at=NOW - timedelta(days=35)), NOW, WINDOW)
    assert outcome is not None
    assert (outcome.state, outcome.code, outcome.counted) == (
        "failed",
        "timestamp_too_far_in_past",
        0,
    )
    assert not outcome.called and not outcome.may_have_counted


def test_usage_a_few_minutes_ahead_waits_until_stripe_accepts_it() -> None:
    ahead = NOW + timedelta(minutes=4, seconds=30)
    outcome = local_refusal(claimed(occurred_at=ahead), NOW, WINDOW)
    assert outcome is not None
    assert (outcome.state, outcome.code, outcome.counted) == ("pending", "timestamp_in_future", 0)
    # Sent once within Stripe's 5 minutes less the clock margin (60 s), plus a second.
    assert outcome.delay == pytest.approx(31)
    assert local_refusal(claimed(occurred_at=NOW + timedelta(minutes=4)), NOW, WINDOW) is None


def test_an_attempt_older_than_the_dedup_window_fails_and_may_have_been_counted() -> None:
    row = claimed(previous_first_attempt_at=NOW - timedelta(hours=21), attempts=3)
    outcome = local_refusal(row, NOW, WINDOW)
    assert outcome is not None
    assert (outcome.state, outcome.code) == ("failed", "dedup_window_expired")
    assert outcome.may_have_counted and not outcome.called


def test_a_cancel_after_stripes_24_hours_is_refused() -> None:
    late = claimed(action="cancel", accepted_at=NOW - timedelta(hours=25))
    outcome = local_refusal(late, NOW, WINDOW)
    assert outcome is not None and outcome.code == "cancel_window_expired"
    assert local_refusal(claimed(action="cancel", accepted_at=NOW), NOW, WINDOW) is None


def test_uncounted_outcomes_restore_the_first_attempt_time() -> None:
    """`record_outcomes` keeps the claim's first attempt only for calls that reached Stripe."""
    row = claimed(previous_first_attempt_at=None)
    assert not decide(row, for_answer("auth", "http_401"), 25, 1.0).reached_stripe
    assert decide(row, for_answer("no_answer"), 25, 1.0).reached_stripe


TICK = timedelta(microseconds=1)


def test_refusals_of_a_call_agree_with_local_refusal_at_every_boundary() -> None:
    """The per-call fast path (bounds computed once) refuses exactly what the rule refuses."""
    refusals = Refusals(NOW, WINDOW)
    earliest, latest = rules.window_bounds(NOW, CLOCK_MARGIN)
    cutoff = NOW - WINDOW
    cases = [
        claimed(occurred_at=at, previous_first_attempt_at=first, action=action, accepted_at=acc)
        for at in (earliest - TICK, earliest, NOW, latest, latest + TICK)
        for first in (None, cutoff - TICK, cutoff, NOW)
        for action in ("report", "cancel")
        for acc in (None, NOW - timedelta(hours=25))
    ]
    for row in cases:
        assert refusals.check(row) == local_refusal(row, NOW, WINDOW), row
    # Sent: reports inside both bounds and the dedup window; cancels not past 24 h.
    assert sum(refusals.check(r) is None for r in cases) == 18 + 20
