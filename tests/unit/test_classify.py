"""classify_error(): every row of the classification table, from the SDK's exceptions."""

import pytest
import stripe

from relay.stripe.classify import Verdict, classify_error


def error(
    cls: type[stripe.StripeError], status: int, message: str = "boom", code: str | None = None
) -> stripe.StripeError:
    if cls is stripe.InvalidRequestError:  # it also takes the parameter at fault
        return stripe.InvalidRequestError(message, None, http_status=status, code=code)
    return cls(message, http_status=status, code=code)


@pytest.mark.parametrize(
    ("err", "verdict", "code"),
    [
        (
            error(stripe.InvalidRequestError, 400, "An event with identifier u1 already exists"),
            Verdict.ACCEPTED,
            None,
        ),
        (error(stripe.APIError, 409), Verdict.RETRY_SOON, "conflict"),
        (error(stripe.RateLimitError, 429), Verdict.RETRY_SLOWER, "rate_limited"),
        (error(stripe.APIError, 500), Verdict.RETRY_NEW_KEY, "http_500"),
        (error(stripe.APIError, 503), Verdict.RETRY_NEW_KEY, "http_503"),
        (error(stripe.APIError, 504), Verdict.RETRY_NEW_KEY, "http_504"),
        (stripe.APIConnectionError("reset"), Verdict.RETRY_SAME_KEY, "connection_error"),
        (error(stripe.IdempotencyError, 400), Verdict.FAILED_BUG, "idempotency_error"),
        (
            error(stripe.InvalidRequestError, 400, code="timestamp_too_far_in_past"),
            Verdict.FAILED,
            "timestamp_too_far_in_past",
        ),
        (error(stripe.InvalidRequestError, 404), Verdict.FAILED, "http_404"),
        (error(stripe.AuthenticationError, 401), Verdict.AUTH, "http_401"),
        (error(stripe.PermissionError, 403), Verdict.AUTH, "http_403"),
    ],
)
def test_classification_table(err: stripe.StripeError, verdict: Verdict, code: str | None):
    result = classify_error(err)
    assert (result.verdict, result.code) == (verdict, code)


def test_the_http_status_is_kept_for_the_attempt_history() -> None:
    assert classify_error(error(stripe.APIError, 502)).http_status == 502
    assert classify_error(stripe.APIConnectionError("reset")).http_status is None


def test_messages_are_bounded() -> None:
    result = classify_error(error(stripe.InvalidRequestError, 400, "x" * 2000))
    assert result.message is not None and len(result.message) == 500


@pytest.mark.parametrize(
    ("err", "counts"),
    [
        (error(stripe.APIError, 500), True),  # executed and cached: Stripe answered
        (error(stripe.APIError, 502), False),  # in front of the API: an outage
        (error(stripe.APIError, 503), False),
        (error(stripe.APIError, 504), False),
        (stripe.APIConnectionError("refused"), False),
        (error(stripe.RateLimitError, 429), False),
        (error(stripe.InvalidRequestError, 400, code="parameter_invalid"), True),
    ],
)
def test_only_definitive_answers_count_against_the_budget(err: stripe.StripeError, counts: bool):
    """Only definitive answers use up the retry budget (invariant 12): the `counts` column."""
    assert classify_error(err).counts is counts


def test_resource_missing_on_a_cancel_is_retried_and_on_a_report_fails() -> None:
    """The cancel may have overtaken its event, still being processed (invariant 10)."""
    missing = error(stripe.InvalidRequestError, 400, "No meter event", code="resource_missing")
    assert classify_error(missing, cancel=True).verdict is Verdict.RETRY_NEW_KEY
    assert classify_error(missing).verdict is Verdict.FAILED
