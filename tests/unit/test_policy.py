"""decide() and local_refusal(): the row's next state, without Stripe or PostgreSQL."""

from datetime import timedelta

import pytest

from relay.classify import Classified, Verdict
from relay.policy import decide, local_refusal
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
    ("verdict", "state", "counted", "new_key"),
    [
        (Verdict.FAILED, "failed", 1, 0),
        (Verdict.FAILED_BUG, "failed", 1, 0),
        (Verdict.AUTH, "pending", 0, 0),
        (Verdict.RETRY_SOON, "pending", 0, 0),
        (Verdict.RETRY_SLOWER, "pending", 1, 0),
        (Verdict.RETRY_NEW_KEY, "pending", 1, 1),
        (Verdict.RETRY_SAME_KEY, "pending", 1, 0),
    ],
)
def test_each_verdict(verdict: Verdict, state: str, counted: int, new_key: int) -> None:
    result = Classified(verdict, "some_code", "msg", "req_2", 500)
    outcome = decide(claimed(), result, 25, 5.0)
    assert (outcome.state, outcome.counted, outcome.new_key) == (state, counted, new_key)
    assert (outcome.code, outcome.http_status, outcome.called) == ("some_code", 500, True)
    assert not outcome.may_have_counted


def test_retry_soon_and_slower_wait_at_least_their_minimum() -> None:
    soon = decide(claimed(), Classified(Verdict.RETRY_SOON, "conflict"), 25, 1.0)
    slower = decide(claimed(), Classified(Verdict.RETRY_SLOWER, "rate_limited"), 25, 1.0)
    assert soon.delay >= 0.5 and slower.delay >= 1.0


def test_the_last_allowed_attempt_fails_and_may_have_been_counted() -> None:
    result = Classified(Verdict.RETRY_SAME_KEY, "connection_error", "timed out")
    outcome = decide(claimed(attempts=24), result, 25, 1.0)
    assert (outcome.state, outcome.code) == ("failed", "retry_budget_exhausted")
    assert outcome.may_have_counted  # a cancel requested meanwhile must still be sent
    assert "connection_error" in (outcome.message or "")


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
    row = claimed(previous_first_attempt_at=None)
    auth = decide(row, Classified(Verdict.AUTH, "http_401"), 25, 1.0)
    assert auth.first_attempt_at is None
    sent = decide(row, Classified(Verdict.RETRY_SAME_KEY, "connection_error"), 25, 1.0)
    assert sent.first_attempt_at == NOW
