"""The relay's shared words, spelled once: row states, row actions, outcome kinds, and the codes
the relay itself writes.

States, actions and codes are `Literal` types, not enums: the values are the strings the
table's CHECK constraints hold and psycopg returns, so a row read from the database is already
typed, and the hot path compares plain strings. mypy checks every spelling against these lists.
"""

import re
from typing import Final, Literal, get_args

State = Literal["pending", "in_flight", "accepted", "failed", "rejected", "cancelled"]
STATES: Final[tuple[State, ...]] = get_args(State)
UNSENT_STATES: Final[frozenset[State]] = frozenset({"pending", "in_flight"})

Action = Literal["report", "cancel"]  # a row reports a fact, or cancels one reported earlier

OutcomeKind = Literal["answered", "refused", "unsent", "released"]
"""How an outcome was decided (relay.core.rows.Outcome's named constructors):
- answered: Stripe answered the row's call (relay.stripe.policy.decide);
- refused: decided locally, without a call: Stripe would refuse the row (invariants 5 and 6);
- unsent: back to pending without a call (held, not due yet, released before its call);
- released: its call started but gave no answer (cut off at shutdown, or it crashed).
Only an answered call settles the auth gate's probe; every other kind frees it."""

RelayCode = Literal[
    # local refusals and waits (relay.stripe.policy, outbox.rules' window problems)
    "timestamp_in_future",
    "timestamp_too_far_in_past",
    "cancel_window_expired",
    "dedup_window_expired",
    "retry_budget_exhausted",
    # rows put back without an answer (relay.pipeline)
    "shutdown",
    "relay_error",
    "stream_wait_expired",
    # the auth gate's holds (relay.stripe.auth_gate)
    "api_key_refused",
    "account_access_refused",
    # the outage breaker's hold (relay.stripe.outage)
    "stripe_outage",
    # the classification table's own codes (relay.stripe.classify)
    "connection_error",
    "conflict",
    "rate_limited",
    "idempotency_error",
    # an asynchronous error report without a code (relay.stripe.webhooks)
    "meter_error",
    # rows held because Stripe would drop them (relay.core.meters, relay.stripe.catalogue)
    "meter_missing",
    "meter_inactive",
    "meter_pre_aggregated",
    "meter_key_collision",
    "meter_conflict",
    "meter_checking",
]
"""Every code the relay itself writes on a row. Any other code on a row is Stripe's own
(`error.code` of an answer or of an error report): metrics may count those as `other`."""
RELAY_CODES: Final[frozenset[str]] = frozenset(get_args(RelayCode))

KEY_REFUSED: Final[RelayCode] = "api_key_refused"  # 401: the key itself, every account waits
ACCOUNT_REFUSED: Final[RelayCode] = "account_access_refused"  # 403: the key, for this account
AUTH_WAIT_CODES: Final[frozenset[str]] = frozenset({KEY_REFUSED, ACCOUNT_REFUSED})
STRIPE_OUTAGE: Final[RelayCode] = "stripe_outage"  # held while Stripe is out: one probe at a time
SHUTDOWN: Final[RelayCode] = "shutdown"
RELAY_ERROR: Final[RelayCode] = "relay_error"
STREAM_WAIT_EXPIRED: Final[RelayCode] = "stream_wait_expired"
TIMESTAMP_IN_FUTURE: Final[RelayCode] = "timestamp_in_future"
TIMESTAMP_TOO_FAR_IN_PAST: Final[RelayCode] = "timestamp_too_far_in_past"
CANCEL_WINDOW_EXPIRED: Final[RelayCode] = "cancel_window_expired"
DEDUP_WINDOW_EXPIRED: Final[RelayCode] = "dedup_window_expired"
RETRY_BUDGET_EXHAUSTED: Final[RelayCode] = "retry_budget_exhausted"

# classify.py's fallback when Stripe's error body has no code: the HTTP status.
_HTTP_STATUS_CODE = re.compile(r"http_[1-5][0-9][0-9]")


def is_relay_code(code: str | None) -> bool:
    """Whether the relay wrote this code (a known word or an `http_<status>` fallback), as
    opposed to a code Stripe sent, which can be anything."""
    if code is None:
        return False
    return code in RELAY_CODES or _HTTP_STATUS_CODE.fullmatch(code) is not None


# Codes `outbox_relay_outcomes_total{code}` carries as they are. Stripe's codes come from
# upstream (any string a server at the configured Stripe base answers), so any code outside this
# set is counted as `other`: the series stay bounded and no raw text reaches /metrics (the row
# and the log keep the exact code). Stripe's documented meter and request codes, the library's
# refusal codes (outbox/rules.py) and every code the relay writes (RelayCode, http_<status>).
STRIPE_CODES: Final[frozenset[str]] = frozenset(
    {
        "parameter_missing",
        "parameter_unknown",
        "parameter_invalid",
        "parameter_invalid_integer",
        "resource_missing",
        "resource_already_exists",
        "timestamp_too_far_in_past",
        "timestamp_in_future",
        "meter_event_invalid_value",
        "meter_event_value_too_many_digits",
        "meter_event_customer_not_found",
        "meter_event_no_customer_defined",
        "meter_event_value_not_found",
        "meter_event_dimension_count_too_high",
        "no_meter",
        "archived_meter",
        "meter_event_adjustment_window_expired",
        "rate_limit",
        "too_many_concurrent_requests",
        "lock_timeout",
        "idempotency_key_in_use",
        "billing_meter_event_session_expired",
        "too_many_events",
        "account_invalid",
    }
)
OTHER_CODE: Final = "other"


def metric_code(code: str | None) -> str:
    """A code as a metric label: the relay's and Stripe's known codes as they are, "" for none,
    anything else `other`."""
    if not code:
        return ""
    return code if code in STRIPE_CODES or is_relay_code(code) else OTHER_CODE
