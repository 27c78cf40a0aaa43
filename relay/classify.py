"""What the relay does with each answer from Stripe: the one classification table.

Every Stripe answer (or failure to get one) maps to a `Verdict`, and the verdict alone decides
the row's next state, whether the idempotency key changes, whether the attempt counts, and how
the relay's pacing reacts. The README documents this table; keep the two in step.

| answer                                   | verdict          | row        | key        |
|------------------------------------------|------------------|------------|------------|
| 200                                      | ACCEPTED         | accepted   | -          |
| 400 "already exists" (duplicate id)      | ACCEPTED         | accepted   | -          |
| 409 (concurrent call / key in use)       | RETRY_SOON       | pending    | same       |
| 429 rate limit                           | RETRY_SLOWER     | pending    | same       |
| 5xx (cached by the idempotency layer)    | RETRY_NEW_KEY    | pending    | new gen.   |
| timeout / connection error               | RETRY_SAME_KEY   | pending    | same       |
| 400 idempotency_error                    | FAILED_BUG       | failed     | -          |
| other 400 / 404                          | FAILED           | failed     | -          |
| 401 / 403                                | AUTH             | pending    | same       |

AUTH also pauses all sending (the key is bad, not the row) and does not count the attempt.
"""

import enum
from dataclasses import dataclass

import stripe


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    RETRY_SOON = "retry_soon"
    RETRY_SLOWER = "retry_slower"
    RETRY_NEW_KEY = "retry_new_key"
    RETRY_SAME_KEY = "retry_same_key"
    FAILED = "failed"
    FAILED_BUG = "failed_bug"
    AUTH = "auth"


@dataclass(frozen=True, slots=True)
class Classified:
    """A verdict plus what to store on the row."""

    verdict: Verdict
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    http_status: int | None = None  # None: no HTTP answer (timeout, connection error)


_DUPLICATE_MARKERS = ("already exists", "duplicate")


def is_duplicate_identifier(err: stripe.InvalidRequestError) -> bool:
    """Stripe's answer to a repeated identifier: an earlier attempt already landed."""
    message = (err.user_message or str(err) or "").lower()
    return any(marker in message for marker in _DUPLICATE_MARKERS) and "identifier" in message


def classify_error(err: Exception) -> Classified:
    """Map an exception from the stripe SDK (or the network) to a verdict."""
    request_id = getattr(err, "request_id", None)
    code = getattr(err, "code", None)
    message = _message(err)
    status = getattr(err, "http_status", None)

    def verdict(v: Verdict, code: str | None) -> Classified:
        return Classified(v, code, message, request_id, status)

    if isinstance(err, stripe.IdempotencyError):
        return verdict(Verdict.FAILED_BUG, "idempotency_error")
    if isinstance(err, stripe.InvalidRequestError) and is_duplicate_identifier(err):
        return Classified(Verdict.ACCEPTED, None, None, request_id, status)
    if isinstance(err, stripe.AuthenticationError | stripe.PermissionError) or status in (401, 403):
        return verdict(Verdict.AUTH, code or f"http_{status}")
    if isinstance(err, stripe.RateLimitError) or status == 429:
        return verdict(Verdict.RETRY_SLOWER, code or "rate_limited")
    if status == 409:
        return verdict(Verdict.RETRY_SOON, code or "conflict")
    if status is not None and status >= 500:
        return verdict(Verdict.RETRY_NEW_KEY, code or f"http_{status}")
    if isinstance(err, stripe.APIConnectionError) or status is None:
        return verdict(Verdict.RETRY_SAME_KEY, "connection_error")
    return verdict(Verdict.FAILED, code or f"http_{status}")


def _message(err: Exception) -> str:
    text = getattr(err, "user_message", None) or str(err) or type(err).__name__
    return text[:500]
