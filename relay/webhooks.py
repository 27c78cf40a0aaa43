"""Asynchronous error reports from Stripe: mark the events it names as `rejected`.

Stripe validates meter events after answering 200, then sends thin events
(`v1.billing.meter.error_report_triggered`, `v1.billing.meter.no_meter_found`) whose full body,
fetched from /v2/core/events/{id}, lists SAMPLES of failed events by `request.identifier`.
STRIPE_NOTES marks it UNCERTAIN whether that is the event identifier or the idempotency key;
the relay makes the two equal (generation 0) and strips its generation suffix otherwise, so
either reading finds the row.
"""

import re
from typing import Any

import stripe
import structlog

from relay.store import Store

METER_ERROR_TYPES = frozenset(
    {"v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"}
)
_KEY_SUFFIX = re.compile(r"#g\d+$")
log = structlog.get_logger("relay.webhooks")


def rejected_identifiers(event_data: dict[str, Any]) -> dict[str, tuple[list[str], str]]:
    """{error code: ([sample identifiers as sent], sample message)} from an error report."""
    found: dict[str, tuple[list[str], str]] = {}
    reason = event_data.get("reason") or {}
    for error_type in reason.get("error_types") or []:
        code = error_type.get("code") or "meter_error"
        identifiers: list[str] = []
        message = ""
        for sample in error_type.get("sample_errors") or []:
            ident = ((sample.get("request") or {}).get("identifier")) or ""
            if ident:
                identifiers.append(ident)
            message = message or sample.get("error_message") or ""
        if identifiers:
            found[code] = (identifiers, message or event_data.get("developer_message_summary", ""))
    return found


async def apply_event(store: Store, event: Any) -> list[str]:
    """Mark the rows a full meter error event names as rejected; returns their identifiers.

    Each sample is matched as the event identifier first; only if no row has it, as one of our
    idempotency keys (generation suffix `#gN` stripped). An identifier that happens to end in
    `#g1` is therefore never confused with another row.
    """
    data = event.get("data") if isinstance(event, dict) else event.to_dict().get("data")
    marked: list[str] = []
    for code, (samples, message) in rejected_identifiers(data or {}).items():
        hit = await store.reject(samples, code, message[:500])
        keys = {_KEY_SUFFIX.sub("", s) for s in samples if s not in hit} - set(samples)
        if keys:
            hit += await store.reject(sorted(keys), code, message[:500])
        marked += hit
    return marked


async def handle_delivery(
    client: stripe.StripeClient, secret: str, store: Store, body: bytes, signature: str | None
) -> dict[str, Any]:
    """Verify, fetch and apply one delivery. Raises stripe.SignatureVerificationError."""
    notification = client.parse_event_notification(body, signature, secret)
    if notification.type not in METER_ERROR_TYPES:
        return {"ignored": notification.type}
    event = await notification.fetch_event_async()
    marked = await apply_event(store, event)
    log.warning(
        "error_report_applied",
        event_id=notification.id,
        type=notification.type,
        rejected=len(marked),
        identifiers=marked[:20],
    )
    return {"event": notification.id, "rejected": marked}
