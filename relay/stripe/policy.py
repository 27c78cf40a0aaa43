"""Turn a verdict into the row's next state: backoff, budgets and local refusals.

Local refusals (invariants 5 and 6) happen before any call: a timestamp Stripe would reject,
or a row whose first attempt is so old that Stripe's identifier dedup might have forgotten it.
"""

import random
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from outbox.rules import IN_FUTURE, earliest_send, window_bounds, window_problem
from relay.core.rows import Claimed, Outcome
from relay.core.vocabulary import (
    CANCEL_WINDOW_EXPIRED,
    DEDUP_WINDOW_EXPIRED,
    RETRY_BUDGET_EXHAUSTED,
    TIMESTAMP_IN_FUTURE,
    TIMESTAMP_TOO_FAR_IN_PAST,
    State,
)
from relay.stripe.classify import Classified, Verdict

# Margin so a row refused at neither end by us is not refused by Stripe after the error of our
# estimate of Stripe's clock (relay.core.clock) and transit time: the default of
# OUTBOX_CLOCK_MARGIN.
CLOCK_MARGIN = timedelta(seconds=60)
CANCEL_WINDOW = timedelta(hours=24)
BACKOFF_CAP = 300.0  # seconds


class _Called(TypedDict):
    """The fields of `Outcome.answered` every answered call shares, whatever the verdict."""

    code: str | None
    message: str | None
    request_id: str | None
    latency_ms: float | None
    http_status: int | None
    counted: int
    reached: bool | None


def local_refusal(
    row: Claimed, now: datetime, dedup_window: timedelta, margin: timedelta = CLOCK_MARGIN
) -> Outcome | None:
    """An outcome decided without calling Stripe, or None when the row may be sent. `now` is
    Stripe's clock as the relay knows it (relay.core.clock.Clocks.now), never its host's."""
    if row.action == "cancel":
        if row.accepted_at is not None and row.accepted_at < now - CANCEL_WINDOW:
            return Outcome.refused(
                row,
                CANCEL_WINDOW_EXPIRED,
                "Stripe accepts cancellations only within 24 h of receipt",
            )
        return None
    # The window rule of outbox.rules, the one the database applied at recording, narrowed by
    # the margin for the error of our estimate of Stripe's clock.
    problem = window_problem(row.occurred_at, now, margin)
    if problem is IN_FUTURE:  # valid a little later (the outbox accepts up to 5 minutes ahead)
        wait = (earliest_send(row.occurred_at, margin) - now).total_seconds() + 1
        return Outcome.unsent(row, TIMESTAMP_IN_FUTURE, "waiting until Stripe accepts it", wait)
    if problem:
        return Outcome.refused(
            row, TIMESTAMP_TOO_FAR_IN_PAST, "usage is older than Stripe's 35-day window; not sent"
        )
    first = row.previous_first_attempt_at
    if first is not None and first < now - dedup_window:
        return Outcome.refused(
            row,
            DEDUP_WINDOW_EXPIRED,
            "unconfirmed since the first attempt at "
            f"{first.isoformat()}; Stripe may have forgotten the identifier, so a resend could "
            "double-count. Check the meter's event summaries, then retry --force or cancel.",
            may_have_counted=True,  # an earlier attempt's outcome is unknown
        )
    return None


class Refusals:
    """`local_refusal` for the rows of one call, at one `now`: the bounds are computed once,
    so a sendable report costs two comparisons (the full rule runs only for the others)."""

    def __init__(
        self, now: datetime, dedup_window: timedelta, margin: timedelta = CLOCK_MARGIN
    ) -> None:
        self._now = now
        self._dedup_window = dedup_window
        self._margin = margin
        self._earliest, self._latest = window_bounds(now, margin)
        self._dedup_cutoff = now - dedup_window

    def check(self, row: Claimed) -> Outcome | None:
        if row.action == "report" and self._earliest <= row.occurred_at <= self._latest:
            first = row.previous_first_attempt_at
            if first is None or first >= self._dedup_cutoff:
                return None
        return local_refusal(row, self._now, self._dedup_window, self._margin)


def backoff(attempt: int, base: float = 0.5, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with full jitter (AWS style): spreads retries of a burst."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))  # noqa: S311 (jitter)


def outage_backoff(row: Claimed, now: datetime, cap: float = BACKOFF_CAP) -> float:
    """Backoff for calls that got no answer about the row (an outage): they do not count, so
    the attempt number cannot grow the delay. The time since the first call that may have
    reached Stripe does: half of it, at least 0.5 s, capped, with full jitter, so a row makes a
    few dozen calls in an outage of hours instead of one per half second."""
    elapsed = max(0.0, (now - row.first_attempt_at).total_seconds())
    return random.uniform(0.5, max(0.5, min(cap, elapsed / 2)))  # noqa: S311 (jitter)


def decide(
    row: Claimed,
    result: Classified,
    max_attempts: int,
    latency_ms: float,
    now: datetime | None = None,
) -> Outcome:
    """The row's next state after one call to Stripe (see the table in relay.stripe.classify)."""
    done: State = "cancelled" if row.action == "cancel" else "accepted"
    if result.verdict is Verdict.ACCEPTED:  # the hot path: no error fields
        # A sender's plain success carries no status: it was a 200.
        status = result.http_status or 200
        return Outcome.answered(
            row, done, request_id=result.request_id, latency_ms=latency_ms, http_status=status
        )
    counted = 1 if result.counts else 0
    attempt = row.attempts + counted
    # An earlier call, or this one, may have counted the event: a cancel must still be sent.
    may_have_counted = row.previous_first_attempt_at is not None or result.reached
    common: _Called = {
        "code": result.code,
        "message": result.message,
        "request_id": result.request_id,
        "latency_ms": latency_ms,
        "http_status": result.http_status,
        "counted": counted,
        "reached": result.reached,
    }
    match result.verdict:
        case Verdict.FAILED | Verdict.FAILED_BUG:
            return Outcome.answered(row, "failed", may_have_counted=may_have_counted, **common)
        case Verdict.AUTH:
            # Not the row's fault: keep it pending, do not burn its attempts. No delay of its
            # own: the auth gate holds the account's rows until its probe succeeds.
            return Outcome.answered(row, "pending", **common)
        case Verdict.RETRY_SOON:
            # 409: the lane or the key is busy at Stripe (e.g. our earlier request after a
            # timeout is still executing). Nothing of this call executed: not an attempt.
            return Outcome.answered(row, "pending", delay=max(0.5, backoff(attempt)), **common)
    if counted and attempt >= max_attempts:
        return Outcome.answered(
            row,
            "failed",
            may_have_counted=may_have_counted,
            **common
            | {
                "code": RETRY_BUDGET_EXHAUSTED,
                "message": f"gave up after {attempt} attempts; last: {result.code}: "
                f"{result.message}",
            },
        )
    if result.verdict is Verdict.RETRY_SLOWER:
        delay = max(1.0, backoff(attempt))
    elif counted:
        delay = backoff(attempt)
    else:  # no answer about the row: retried until the dedup window (local_refusal)
        delay = outage_backoff(row, now or datetime.now(UTC))
    new_key = 1 if result.verdict is Verdict.RETRY_NEW_KEY else 0
    return Outcome.answered(row, "pending", delay=delay, new_key=new_key, **common)
