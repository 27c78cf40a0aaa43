"""The relay's shared words, spelled once: row states, row actions, and the codes that several
floors read.

States and actions are `Literal` types, not enums: the values are the strings the table's CHECK
constraints hold and psycopg returns, so a row read from the database is already typed, and the
hot path compares plain strings. mypy checks every spelling against these lists.
"""

from typing import Final, Literal, get_args

State = Literal["pending", "in_flight", "accepted", "failed", "rejected", "cancelled"]
STATES: Final[tuple[State, ...]] = get_args(State)
UNSENT_STATES: Final[frozenset[State]] = frozenset({"pending", "in_flight"})

Action = Literal["report", "cancel"]  # a row reports a fact, or cancels one reported earlier

KEY_REFUSED: Final = "api_key_refused"  # 401: the API key itself is refused, every account waits
ACCOUNT_REFUSED: Final = "account_access_refused"  # 403: the key may not act for this account
AUTH_WAIT_CODES: Final = frozenset({KEY_REFUSED, ACCOUNT_REFUSED})

# Error codes a metric may carry as a label. Codes come from upstream (any string a server at
# the configured Stripe base answers), so `outbox_relay_outcomes_total{code}` counts any other
# code as `other`: the series stay bounded and no raw text reaches /metrics. The row and the
# log keep the exact code. Stripe's documented meter codes, the classification table's own
# codes (relay/stripe/classify.py), the local refusals (outbox/rules.py, relay/stripe/policy.py)
# and the relay's own; `http_NNN` codes (a status without a body code) are bounded by HTTP.
OTHER_CODE: Final = "other"
METRIC_CODES: Final = frozenset(
    {
        # Stripe, synchronous answers and asynchronous error reports
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
        # the classification table's codes
        "conflict",
        "rate_limited",
        "connection_error",
        "idempotency_error",
        # local refusals and the relay's own
        KEY_REFUSED,
        ACCOUNT_REFUSED,
        "dedup_window_expired",
        "retry_budget_exhausted",
        "relay_error",
        "shutdown",
        "invalid_text",
        "invalid_account",
        "invalid_number",
        "not_whole",
        "negative",
        "too_many_digits",
        "invalid_character",
        "invalid_type",
        "empty_key",
        "reserved_key",
        "too_large",
        "too_deep",
        "not_json",
    }
)
