"""Stripe error bodies and the exception the handlers raise to produce them.

v1 bodies: `{"error": {"type", "code", "message", "param"}}`; v2 bodies:
`{"error": {"type", "code", "message"}}` where stripe-python maps v2 `type` values such as
`temporary_session_expired` to dedicated exception classes (see
`_APIRequestor.specific_v2_api_error`) and otherwise falls back to the v1 status mapping.

Codes Stripe does not document for a situation are chosen here once, as constants, so tests
and the relay can match on them. Each such choice is marked "(emulator choice)".
"""

from __future__ import annotations

from typing import Any

# Error types (the SDK dispatches on these together with the HTTP status).
INVALID_REQUEST = "invalid_request_error"
IDEMPOTENCY = "idempotency_error"
AUTHENTICATION = "authentication_error"
API_ERROR = "api_error"
TEMPORARY_SESSION_EXPIRED = "temporary_session_expired"

# Codes.
PARAMETER_MISSING = "parameter_missing"
PARAMETER_UNKNOWN = "parameter_unknown"
PARAMETER_INVALID = "parameter_invalid"  # (emulator choice) malformed / too long
PARAMETER_INVALID_INTEGER = "parameter_invalid_integer"
RESOURCE_MISSING = "resource_missing"
RESOURCE_ALREADY_EXISTS = "resource_already_exists"  # (emulator choice) duplicate identifier
TIMESTAMP_TOO_FAR_IN_PAST = "timestamp_too_far_in_past"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
INVALID_VALUE = "meter_event_invalid_value"
VALUE_TOO_MANY_DIGITS = "meter_event_value_too_many_digits"
CUSTOMER_NOT_FOUND = "meter_event_customer_not_found"
NO_CUSTOMER_DEFINED = "meter_event_no_customer_defined"
NO_METER = "no_meter"
ARCHIVED_METER = "archived_meter"
CANCEL_WINDOW_EXPIRED = "meter_event_adjustment_window_expired"  # (emulator choice)
TIME_NOT_ALIGNED = "invalid_time_alignment"  # (emulator choice) event summaries bounds
RATE_LIMIT = "rate_limit"
TOO_MANY_CONCURRENT = "too_many_concurrent_requests"
LOCK_TIMEOUT = "lock_timeout"
IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
SESSION_EXPIRED = "billing_meter_event_session_expired"
TOO_MANY_EVENTS = "too_many_events"  # (emulator choice) > 100 events in one stream request


class ApiError(Exception):
    """An API failure that becomes a Stripe error response.

    `executed` tells the idempotency layer whether the request got as far as executing:
    Stripe saves (and replays) the result only in that case, never for parameter validation
    failures or conflicts with a concurrently executing request.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
        executed: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.should_retry = should_retry
        self.executed = executed

    def body(self, *, v2: bool) -> dict[str, Any]:
        """The JSON error body in the v1 or v2 shape."""
        error: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if not v2:
            error["param"] = self.param
            if self.code:
                error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code}"
        return {"error": error}

    def headers(self) -> dict[str, str]:
        """Extra response headers (`Stripe-Should-Retry` where Stripe sends it)."""
        if self.should_retry is None:
            return {}
        return {"Stripe-Should-Retry": "true" if self.should_retry else "false"}


def invalid(message: str, *, code: str | None, param: str | None = None) -> ApiError:
    """A parameter validation failure (400, not saved under the idempotency key)."""
    return ApiError(400, message, code=code, param=param)


def missing(param: str) -> ApiError:
    return invalid(f"Missing required param: {param}.", code=PARAMETER_MISSING, param=param)


def authentication(message: str) -> ApiError:
    return ApiError(401, message, type_=AUTHENTICATION)


def rate_limited() -> ApiError:
    return ApiError(
        429,
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code=RATE_LIMIT,
    )


def server_error(status: int) -> ApiError:
    """An injected server-side failure.

    A 500 happens during execution, so it is saved under the idempotency key and carries
    `Stripe-Should-Retry: false` (a retry with the same key would only replay it). 502/503
    model failures in front of the API (load balancer, outage): nothing is saved.
    """
    if status == 500:
        return ApiError(
            500,
            "An unknown error occurred while processing your request.",
            type_=API_ERROR,
            should_retry=False,
            executed=True,
        )
    return ApiError(status, "The service is temporarily unavailable.", type_=API_ERROR)


def injected(status: int) -> ApiError:
    """The error body Stripe would send with `status`, for `fail_next(status=...)`.

    Shaped so stripe-python raises the same exception class as for the real thing.
    """
    if status >= 500:
        return server_error(status)
    if status == 429:
        return rate_limited()
    if status == 401:
        return authentication("Injected authentication failure.")
    if status == 403:
        return ApiError(403, "Injected permission failure.", type_="invalid_request_error")
    if status == 409:
        return ApiError(
            409,
            "This object cannot be accessed right now because another API request or Stripe "
            "process is currently accessing it.",
            code=LOCK_TIMEOUT,
            should_retry=True,
        )
    if status == 404:
        return ApiError(404, "Injected: no such resource.", code=RESOURCE_MISSING)
    return ApiError(status, "Injected request failure.", code=PARAMETER_INVALID)


def mask_key(key: str) -> str:
    """Show an API key the way Stripe does in error messages: prefix and last 4 only."""
    if len(key) <= 12:
        return "*" * len(key)
    prefix = key[:8]
    return f"{prefix}{'*' * (len(key) - 12)}{key[-4:]}"
