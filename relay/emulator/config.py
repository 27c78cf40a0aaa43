"""Configuration objects for the Stripe meter-events emulator.

Every Stripe behaviour docs/design.md (Stripe facts) leaves open is a knob here, so tests pin the
behaviour they depend on and the relay can be exercised against either answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from outbox import rules
from relay.emulator.faults import Faults

Aggregation = Literal["sum", "count", "last"]
EventTimeWindow = Literal["hour", "day"]
ConcurrencyStatus = Literal[409, 429]
UnknownCancel = Literal["error", "accept"]
MeterListFault = Literal["malformed", "truncated", "endless"]

DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Meter:
    """A billing meter: maps an `event_name` to a customer key, a value key and a formula.

    The id defaults to a readable, deterministic `mtr_<event_name>` so tests can address
    `/v1/billing/meters/{id}/event_summaries` without looking the id up first.
    """

    event_name: str
    id: str | None = None
    customer_key: str = DEFAULT_CUSTOMER_KEY
    value_key: str = DEFAULT_VALUE_KEY
    aggregation: Aggregation = "sum"
    # Pre-aggregated meters keep only the LAST event of each event-time window.
    event_time_window: EventTimeWindow | None = None
    active: bool = True
    display_name: str | None = None

    def __post_init__(self) -> None:
        if self.aggregation not in ("sum", "count", "last"):
            raise ValueError(f"unknown aggregation {self.aggregation!r}")
        if self.event_time_window not in (None, "hour", "day"):
            raise ValueError(f"unknown event_time_window {self.event_time_window!r}")
        if self.id is None:
            object.__setattr__(self, "id", "mtr_" + _ID_UNSAFE.sub("_", self.event_name))

    @property
    def meter_id(self) -> str:
        """The id as a plain `str` (never None after construction)."""
        if self.id is None:
            raise ValueError("a meter has an id once constructed")
        return self.id


METER_ERROR_EVENTS = (
    "v1.billing.meter.error_report_triggered",
    "v1.billing.meter.no_meter_found",
)


@dataclass(frozen=True)
class EventDestination:
    """A v2 event destination (`GET /v2/core/event_destinations`): where Stripe sends events.

    The default is what a correct relay setup has: an enabled webhook endpoint subscribed to
    the two meter error events, thin payloads, events of this account.
    """

    url: str | None = "https://relay.example/webhooks/stripe"
    type: Literal["webhook_endpoint", "amazon_eventbridge"] = "webhook_endpoint"
    status: Literal["enabled", "disabled"] = "enabled"
    enabled_events: tuple[str, ...] = METER_ERROR_EVENTS
    event_payload: Literal["thin", "snapshot"] = "thin"
    events_from: tuple[str, ...] = ("self",)
    id: str | None = None
    name: str = "outbox-relay"


def _default_meters() -> tuple[Meter, ...]:
    return (Meter("api_calls"),)


@dataclass
class EmulatorConfig:
    """All emulator options; every field has a default that mirrors Stripe where it is known."""

    host: str = "127.0.0.1"
    port: int = 0
    meters: tuple[Meter, ...] = field(default_factory=_default_meters)
    # None = any customer id starting with `cus_` is known; a set = exactly those customers.
    customers: Iterable[str] | None = None
    # None = any `sk_test_...` / `sk_live_...` key is valid; a set = only those keys.
    api_keys: Iterable[str] | None = None
    # Restricted keys without the meter read permission: 403 on the meter list, a meter and
    # the event destinations list (meter events still work).
    restricted_keys: Iterable[str] = ()
    # Bad answers of the meter list, for the relay's bad-input tests: "malformed" (a meter
    # without event name), "truncated" (has_more with no data), "endless" (the same page,
    # has_more, whatever the cursor).
    meter_list_fault: MeterListFault | None = None
    # None = one destination for `webhook_url` when it is set (see EventDestination).
    event_destinations: Iterable[EventDestination] | None = None
    # Connected accounts that revoked this platform's access: their requests get a 403.
    revoked_accounts: Iterable[str] = ()
    # The account that owns the API keys (requests without a `Stripe-Account` header).
    platform_account: str = "acct_emulator"

    webhook_url: str | None = None
    webhook_secret: str = "whsec_test_emulator"  # noqa: S105 (the emulator's default, public)
    # Extra secrets that also sign every delivery (extra `v1=` entries, as during rotation).
    webhook_additional_secrets: tuple[str, ...] = ()
    webhook_max_attempts: int = 5
    webhook_retry_base_delay: float = 0.05
    webhook_retry_max_delay: float = 2.0
    webhook_timeout: float = 5.0

    # Requests per second per (account, mode); None disables the limiter.
    rate_limit_live: int | None = 1000
    rate_limit_test: int | None = 25
    enforce_concurrency: bool = True
    # docs/design.md: v1's status for a (customer, meter) conflict is UNCERTAIN (409 or 429).
    concurrency_status: ConcurrencyStatus = 409

    identifier_window_seconds: float = 24 * 3600
    idempotency_ttl_seconds: float = 24 * 3600
    cancel_window_seconds: float = 24 * 3600
    # Stripe's timestamp window and value digits: the one definition in outbox.rules.
    timestamp_past_seconds: float = rules.MAX_PAST.total_seconds()
    timestamp_future_seconds: float = rules.MAX_FUTURE.total_seconds()
    session_ttl_seconds: float = 15 * 60
    max_stream_events: int = 100
    max_value_digits: int = rules.MAX_VALUE_DIGITS
    # docs/design.md: negative and decimal values are UNCERTAIN; rejected unless enabled.
    allow_negative_values: bool = False
    allow_decimal_values: bool = False
    # docs/design.md: cancelling an unknown identifier is UNCERTAIN.
    unknown_cancel: UnknownCancel = "error"

    error_report_delay: float = 0.2
    error_report_max_samples: int = 10
    # Events younger than this (emulator clock) are not yet visible in summaries.
    summaries_lag_seconds: float = 0.0
    # Each read adds up to this much lag per event, drawn afresh: summaries are eventually
    # consistent, so two reads a moment apart may disagree (the later one never shows less of
    # an event that was old enough for the earlier one, once lag + jitter has passed).
    summaries_jitter_seconds: float = 0.0

    seed: int = 0
    faults: Faults | None = None
    clock_offset_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.concurrency_status not in (409, 429):
            raise ValueError("concurrency_status must be 409 or 429")
        if self.unknown_cancel not in ("error", "accept"):
            raise ValueError("unknown_cancel must be 'error' or 'accept'")
        self.meters = tuple(self.meters)
