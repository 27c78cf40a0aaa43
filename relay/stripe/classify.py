"""What the relay does with each answer from Stripe: the one classification table.

Every Stripe answer (or failure to get one) is one row of `TABLE`, and that row alone decides
the row's next state, whether the idempotency key changes, whether the attempt uses up one of
the row's attempts (`counts`), and whether the call may have counted the event at Stripe
(`reached`: it starts the dedup clock, and a cancel of a row none of whose calls reached is
done locally). The README documents this table; keep the two in step.

| answer                                 | verdict        | row      | key      | counts | reached |
|----------------------------------------|----------------|----------|----------|--------|---------|
| 200                                    | ACCEPTED       | accepted | -        | yes    | yes     |
| 400 "already exists" (duplicate id)    | ACCEPTED       | accepted | -        | yes    | yes     |
| 409 (concurrent call / key in use)     | RETRY_SOON     | pending  | same     | no     | no      |
| 429 rate limit                         | RETRY_SLOWER   | pending  | same     | no     | no      |
| 500 (executed, cached under the key)   | RETRY_NEW_KEY  | pending  | new gen. | yes    | no      |
| 502 / 503 / 504 (in front of the API)  | RETRY_NEW_KEY  | pending  | new gen. | no     | yes     |
| timeout / connection error (no answer) | RETRY_SAME_KEY | pending  | same     | no     | yes     |
| 400/404 resource_missing on a cancel   | RETRY_NEW_KEY  | pending  | new gen. | yes    | no      |
| 400 idempotency_error                  | FAILED_BUG     | failed   | -        | yes    | no      |
| other 400 / 404                        | FAILED         | failed   | -        | yes    | no      |
| 401 / 403                              | AUTH           | pending  | same     | no     | no      |

Only answers Stripe gave about the row itself count: an outage of any length (no answer, or a
gateway's 502/503/504) fails no row before the dedup window (`policy.local_refusal`). 502/503/504
and no answer are `reached` because a gateway error or a cut connection may come after the API
executed. A cancel answered resource_missing may have overtaken its event (Stripe processes
events asynchronously): it is retried (new key: whether Stripe cached that answer is unknown).
AUTH pauses the account (403) or the key (401) the call used, not the row (relay.stripe.auth_gate).
"""

import enum
from dataclasses import dataclass
from typing import NamedTuple

import stripe

from relay.core.vocabulary import RelayCode


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
class Rule:
    """One row of the table."""

    verdict: Verdict
    counts: bool  # uses up one of the row's attempts (OUTBOX_MAX_ATTEMPTS)
    reached: bool  # the event may have been counted by this call (starts the dedup clock)
    code: RelayCode | None = None  # the row's code (replaces Stripe's)
    fallback: RelayCode | None = None  # the row's code when Stripe gave none (else http_<status>)


TABLE: dict[str, Rule] = {
    "ok": Rule(Verdict.ACCEPTED, counts=True, reached=True),
    "duplicate_identifier": Rule(Verdict.ACCEPTED, counts=True, reached=True),
    "conflict": Rule(Verdict.RETRY_SOON, counts=False, reached=False, fallback="conflict"),
    "rate_limited": Rule(
        Verdict.RETRY_SLOWER, counts=False, reached=False, fallback="rate_limited"
    ),
    "server_error": Rule(Verdict.RETRY_NEW_KEY, counts=True, reached=False),
    "unavailable": Rule(Verdict.RETRY_NEW_KEY, counts=False, reached=True),
    "no_answer": Rule(Verdict.RETRY_SAME_KEY, counts=False, reached=True, code="connection_error"),
    "cancel_too_early": Rule(Verdict.RETRY_NEW_KEY, counts=True, reached=False),
    "idempotency_error": Rule(
        Verdict.FAILED_BUG, counts=True, reached=False, code="idempotency_error"
    ),
    "invalid": Rule(Verdict.FAILED, counts=True, reached=False),
    "auth": Rule(Verdict.AUTH, counts=False, reached=False),
}

GATEWAY_STATUSES = (502, 503, 504)


@dataclass(frozen=True, slots=True)
class Classified:
    """A verdict plus what to store on the row."""

    verdict: Verdict
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    http_status: int | None = None  # None: no HTTP answer (timeout, connection error)
    counts: bool = True  # see Rule
    reached: bool = True


class Answer(NamedTuple):
    """What the table reads from one Stripe answer, whoever made the call.

    The SDK path (an exception) and the lean path (a raw response, relay/stripe/calls.py) both
    reduce to this view, so one table classifies both and they cannot drift apart. `status` None: no
    HTTP answer. `error_type` and `code` come from the error body (`error.type`, `error.code`).
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


def row_of(answer: Answer, cancel: bool = False) -> str:
    """Which row of the table an answer is (`cancel`: the call was a meter event adjustment)."""
    status, error_type, code, message, _ = answer
    if status is not None and 200 <= status < 300:
        return "ok"
    invalid_request = status in (400, 404)
    if invalid_request and error_type == "idempotency_error":
        return "idempotency_error"
    if invalid_request and code != "rate_limit" and is_duplicate_identifier(message):
        return "duplicate_identifier"
    if status in (401, 403):
        return "auth"
    if status == 429 or (status == 400 and code == "rate_limit"):
        return "rate_limited"
    if status == 409:
        return "conflict"
    if status in GATEWAY_STATUSES:
        return "unavailable"
    if status is not None and status >= 500:
        return "server_error"
    if status is None:
        return "no_answer"
    if cancel and code == "resource_missing":
        return "cancel_too_early"
    return "invalid"


def for_answer(
    name: str,
    code: str | None = None,
    message: str | None = None,
    request_id: str | None = None,
    http_status: int | None = None,
) -> Classified:
    """The classification of the table's row `name` (also for senders and tests that know
    the answer without a response)."""
    rule = TABLE[name]
    if rule.verdict is Verdict.ACCEPTED:
        return Classified(Verdict.ACCEPTED, None, None, request_id, http_status)
    code = rule.code or code or rule.fallback or f"http_{http_status}"
    return Classified(
        rule.verdict, code, message, request_id, http_status, rule.counts, rule.reached
    )


def classify(answer: Answer, cancel: bool = False) -> Classified:
    """The table (module docstring): one answer to a verdict and what to store."""
    return for_answer(
        row_of(answer, cancel), answer.code, answer.message, answer.request_id, answer.status
    )


def classify_error(err: Exception, cancel: bool = False) -> Classified:
    """Map an exception from the stripe SDK (or the network) to its verdict."""
    return classify(answer_of_error(err), cancel)


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
