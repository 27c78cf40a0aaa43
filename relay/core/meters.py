"""A Stripe meter as the relay keeps it, and the codes of rows held because of their meter.

Shared by the catalogue (relay/stripe/catalogue.py), the store and the operator surfaces, so
it sits on the bottom floor.
"""

from datetime import datetime
from typing import Final, NamedTuple

from relay.core.vocabulary import RelayCode

DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"

# Codes of rows held (pending, no attempt used, no call) because Stripe would drop their
# events. Our own codes, never Stripe's (`no_meter`, `archived_meter`), so an operator can
# tell our hold from Stripe's verdict.
METER_MISSING: Final[RelayCode] = "meter_missing"
METER_INACTIVE: Final[RelayCode] = "meter_inactive"
METER_PRE_AGGREGATED: Final[RelayCode] = "meter_pre_aggregated"
METER_KEY_COLLISION: Final[RelayCode] = "meter_key_collision"
METER_CONFLICT: Final[RelayCode] = "meter_conflict"
METER_CHECKING: Final[RelayCode] = "meter_checking"
HELD_CODES: Final[tuple[RelayCode, ...]] = (
    METER_MISSING,
    METER_INACTIVE,
    METER_PRE_AGGREGATED,
    METER_KEY_COLLISION,
    METER_CONFLICT,
    METER_CHECKING,
)

# What to do about each hold: `status`, `inspect`, the console and the log say it.
WHAT_TO_DO: Final[dict[str, str]] = {
    METER_MISSING: "create a meter for this event name in Stripe (or fix the event name); "
    "held rows flow within one refresh after it exists",
    METER_INACTIVE: "reactivate the meter in Stripe; held rows flow within one refresh",
    METER_PRE_AGGREGATED: "the meter keeps only the last event of each time window, so "
    "sending each fact would under-bill: use a meter without event_time_window, or cancel",
    METER_KEY_COLLISION: "a dimension has the name of the meter's customer or value key: "
    "rename the dimension (cancel and record anew) or change the meter",
    METER_CONFLICT: "two active meters claim this event name: deactivate one in Stripe",
    METER_CHECKING: "the relay is reading this account's meters; rows flow in a moment",
}


class MeterInfo(NamedTuple):
    """One meter of one account (`account` '' is the platform)."""

    account: str
    meter_id: str
    event_name: str
    status: str  # 'active' | 'inactive'
    customer_key: str
    value_key: str
    event_time_window: str | None  # None: raw events; 'hour' | 'day': pre-aggregated
    formula: str  # 'sum' | 'count' | 'last' (or a formula this relay does not know)
    fetched_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


class MeterRead(NamedTuple):
    """The last read of one account's meters (see meter_event_outbox_meter_reads)."""

    account: str
    outcome: str  # 'ok' | 'forbidden' | 'failed'
    detail: str | None
    read_at: datetime
    ok_at: datetime | None
