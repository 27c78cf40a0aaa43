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
from typing import NamedTuple

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


class Answer(NamedTuple):
    """What the table reads from one Stripe answer, whoever made the call.

    The SDK path (an exception) and the lean path (a raw response) both reduce to this view,
    so one table classifies both and they cannot drift apart. `status` None: no HTTP answer.
    `error_type` and `code` come from the error body (`error.type`, `error.code`).
    """

    status: int | None
    error_type: str | None = None
    code: str | None = None
    message: str | None = None
    request_id: str | None = None


_DUPLICATE_MARKERS = ("already exists", "duplicate")


def is_duplicate_identifier(message: str | None) -> bool:
    """Stripe's answer to a repeated identifier: an earlier attempt already landed."""
    text = (message or "").lower()
    return any(marker in text for marker in _DUPLICATE_MARKERS) and "identifier" in text


def classify(answer: Answer) -> Classified:
    """The table (module docstring): one answer to a verdict."""
    status, error_type, code, message, request_id = answer

    def verdict(v: Verdict, code: str | None, message: str | None = message) -> Classified:
        return Classified(v, code, message, request_id, status)

    if status is not None and 200 <= status < 300:
        return verdict(Verdict.ACCEPTED, None, None)
    invalid_request = status in (400, 404)
    if invalid_request and error_type == "idempotency_error":
        return verdict(Verdict.FAILED_BUG, "idempotency_error")
    if invalid_request and code != "rate_limit" and is_duplicate_identifier(message):
        return verdict(Verdict.ACCEPTED, None, None)
    if status in (401, 403):
        return verdict(Verdict.AUTH, code or f"http_{status}")
    if status == 429 or (status == 400 and code == "rate_limit"):
        return verdict(Verdict.RETRY_SLOWER, code or "rate_limited")
    if status == 409:
        return verdict(Verdict.RETRY_SOON, code or "conflict")
    if status is not None and status >= 500:
        return verdict(Verdict.RETRY_NEW_KEY, code or f"http_{status}")
    if status is None:
        return verdict(Verdict.RETRY_SAME_KEY, "connection_error")
    return verdict(Verdict.FAILED, code or f"http_{status}")


def classify_error(err: Exception) -> Classified:
    """Map an exception from the stripe SDK (or the network) to a verdict."""
    return classify(answer_of_error(err))


def answer_of_error(err: Exception) -> Answer:
    """The table's view of an SDK exception: its status and the error body it parsed.

    A connection error has no status, whatever the SDK put on it.
    """
    status = (
        None if isinstance(err, stripe.APIConnectionError) else getattr(err, "http_status", None)
    )
    body = getattr(err, "json_body", None)
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    # The SDK tells an idempotency error by its class as well as by the body's type.
    idempotency = isinstance(err, stripe.IdempotencyError)
    return Answer(
        status,
        "idempotency_error" if idempotency else error.get("type"),
        error.get("code") or getattr(err, "code", None),
        error_message(err),
        getattr(err, "request_id", None),
    )


def error_message(err: Exception) -> str:
    """What to store on the row: Stripe's own message, else the exception's text."""
    text = getattr(err, "user_message", None) or str(err) or type(err).__name__
    return text[:500]
