"""Read an account's meters from Stripe: `GET /v1/billing/meters`, every page, active and
inactive, through the SDK (a cold read, not a hot call), each page paced by the read budget.

An answer the relay cannot trust (an object without an event name or keys, a page that
promises more and brings nothing, a cursor that repeats, more pages than any account has) is
refused whole: the caller keeps the last known catalogue. A partial catalogue would hold the
rows of the meters it lacks; a misread one could send rows with the wrong keys.
"""

from collections.abc import Mapping
from typing import Any

import aiohttp
import stripe

from relay.core.meters import DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, MeterInfo
from relay.stripe.classify import error_message
from relay.stripe.egress import failure
from relay.stripe.read_budget import ReadBudget

PAGE_SIZE = 100  # Stripe's maximum
# 200 pages of 100: far more meters than an account has (Stripe caps live meters in the low
# thousands); past this the answer is treated as endless.
MAX_PAGES = 200


class MeterReadError(Exception):
    """The meters could not be read; `outcome` is 'forbidden' (a key that may not read them),
    'refused' (the key itself is refused: 401) or 'failed' (an outage or an answer we refuse)."""

    def __init__(self, outcome: str, detail: str, http_status: int | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.http_status = http_status


async def fetch_meters(
    client: stripe.StripeClient,
    account: str,
    budget: ReadBudget,
    max_pages: int = MAX_PAGES,
) -> list[MeterInfo]:
    """Every meter of `account` ('' is the platform), or MeterReadError."""
    options: stripe.RequestOptions = {"stripe_account": account} if account else {}
    meters: list[MeterInfo] = []
    seen_cursors: set[str] = set()
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    for _ in range(max_pages):
        await budget.acquire()
        page = await _page(client, params, options, budget)
        data = page.get("data")
        if not isinstance(data, list):
            raise MeterReadError("failed", "the meter list answer has no data list")
        meters += [parse_meter(account, item) for item in data]
        if not page.get("has_more"):
            return meters
        cursor = meters[-1].meter_id if data else None
        if cursor is None or cursor in seen_cursors:
            raise MeterReadError("failed", "the meter list answer pages without moving on")
        seen_cursors.add(cursor)
        params = {"limit": PAGE_SIZE, "starting_after": cursor}
    raise MeterReadError("failed", f"the meter list has more than {max_pages} pages")


async def _page(
    client: stripe.StripeClient,
    params: dict[str, Any],
    options: stripe.RequestOptions,
    budget: ReadBudget,
) -> Mapping[str, Any]:
    try:
        page = await client.v1.billing.meters.list_async(params, options)  # type: ignore[arg-type]
    except stripe.AuthenticationError as err:
        raise MeterReadError("refused", error_message(err), 401) from None
    except stripe.PermissionError as err:
        raise MeterReadError("forbidden", error_message(err), 403) from None
    except stripe.RateLimitError as err:
        budget.on_rate_limited()
        raise MeterReadError("failed", error_message(err), 429) from None
    except stripe.APIConnectionError as err:
        raise MeterReadError("failed", f"no answer: {failure(err)}") from None
    except stripe.StripeError as err:
        status = getattr(err, "http_status", None)
        raise MeterReadError("failed", error_message(err), status) from None
    except (TimeoutError, OSError, aiohttp.ClientError) as err:
        raise MeterReadError("failed", f"no answer: {failure(err)}") from None
    # StripeObject is not a Mapping in stripe-python 16: read the answer as plain JSON data.
    data = page.to_dict() if isinstance(page, stripe.StripeObject) else page
    if not isinstance(data, Mapping):
        raise MeterReadError("failed", "the meter list answer is not an object")
    return data


def parse_meter(account: str, item: object) -> MeterInfo:
    """One meter object; MeterReadError when a field the relay needs is missing or wrong."""
    if not isinstance(item, Mapping):
        raise MeterReadError("failed", "a meter in the list is not an object")
    meter_id, event_name = item.get("id"), item.get("event_name")
    if not _text(meter_id, 255) or not _text(event_name):
        raise MeterReadError("failed", "a meter in the list has no id or event name")
    status = item.get("status")
    if status not in ("active", "inactive"):
        raise MeterReadError("failed", f"meter {meter_id} has an unknown status")
    customer_key = _key(item.get("customer_mapping"), DEFAULT_CUSTOMER_KEY)
    value_key = _key(item.get("value_settings"), DEFAULT_VALUE_KEY)
    if customer_key is None or value_key is None:
        raise MeterReadError("failed", f"meter {meter_id} has an unreadable payload key")
    window = item.get("event_time_window")
    if window not in (None, "hour", "day"):
        raise MeterReadError("failed", f"meter {meter_id} has an unknown event_time_window")
    aggregation = item.get("default_aggregation")
    formula = aggregation.get("formula") if isinstance(aggregation, Mapping) else None
    return MeterInfo(
        account,
        str(meter_id),
        str(event_name),
        str(status),
        customer_key,
        value_key,
        window,
        str(formula) if _text(formula) else "unknown",
    )


def _text(value: object, limit: int = 100) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit


def _key(setting: object, default: str) -> str | None:
    """A payload key setting: absent means Stripe's default; present must be a short text."""
    if setting is None:
        return default
    if not isinstance(setting, Mapping):
        return None
    key = setting.get("event_payload_key", default)
    return key if _text(key) else None
