"""`outbox-relay reconcile`: pull meter error events from Stripe, for deliveries we missed.

Webhooks can be lost (endpoint down longer than Stripe's redelivery); listing recent
`v1.billing.meter.*` error events and applying them again is idempotent.
"""

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import stripe
from stripe.params.v2.core import EventListParams
from stripe.v2 import ListObject
from stripe.v2.core import Event

from relay.db.store import Store
from relay.stripe.webhooks import METER_ERROR_TYPES, apply_event


async def reconcile(client: stripe.StripeClient, store: Store, since: timedelta) -> dict[str, Any]:
    """Apply every meter error event created within `since`; returns a summary."""
    created = (datetime.now(UTC) - since).isoformat().replace("+00:00", "Z")
    params: EventListParams = {
        "types": sorted(METER_ERROR_TYPES),
        "created": {"gte": created},
        "limit": 100,
    }
    page = await client.v2.core.events.list_async(params)
    events = rejected = 0
    while True:
        for event in page.data:
            events += 1
            rejected += len(await apply_event(store, event))
        next_url = getattr(page, "next_page_url", None)
        if not next_url:
            break
        raw = await client.raw_request_async("get", next_url)  # pragma: no cover - paging
        # deserialize is typed as returning the base StripeObject; a list URL answers a list.
        page = cast("ListObject[Event]", client.deserialize(raw, api_mode="V2"))
    return {"events": events, "rejected": rejected}
