"""Asynchronous error reports from Stripe: mark the events it names as `rejected`.

Stripe validates meter events after answering 200, then sends thin events
(`v1.billing.meter.error_report_triggered`, `v1.billing.meter.no_meter_found`) whose full body,
fetched from /v2/core/events/{id}, lists SAMPLES of failed events by `request.identifier`.
Stripe's reference calls that field "the request idempotency key", leaving open whether it is
the event identifier or the idempotency key (docs/design.md, Stripe facts); the relay makes the
two equal (generation 0) and strips its generation suffix otherwise, so either reading finds
the row.

Verifying and parsing a delivery are pure functions (no database, no network) so they are
tested with an injected clock. Every delivery that is signed but cannot be used is a
`BadDelivery` (HTTP 400): it is the sender's problem, not an outage of ours, and must not show
up as a 5xx in alerts.
"""

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
import structlog

from relay.db.queries import NoMeterParams
from relay.db.store import Store

METER_ERROR_TYPES = frozenset(
    {"v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"}
)
_KEY_SUFFIX = re.compile(r"#g\d+$")
# Stripe's libraries accept a signature up to 5 minutes old. A timestamp further ahead than
# that is refused too: a signature made "in the future" would stay replayable for longer.
TOLERANCE_SECONDS = 300
log = structlog.get_logger("relay.webhooks")
# OUTBOX_SUMMARY_SETTLE_SECONDS' default, for callers without settings (`reconcile`).
DEFAULT_SETTLE_SECONDS = 1800.0
SKEW = timedelta(minutes=5)  # clock skew between Stripe and the database, each side


class BadDelivery(ValueError):
    """A delivery the relay refuses with 400; `reason` labels the metric and the log line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class Notification:
    """The part of a thin event the relay needs before fetching the full event."""

    id: str
    type: str


def parse_signature_header(header: str | None) -> tuple[int, list[str]]:
    """`t=<unix seconds>,v1=<hex>[,v1=<hex>...]` -> (timestamp, v1 signatures). Several v1
    entries appear while a secret is being rolled; other schemes (v0) and non-ASCII values (no
    hex digest) are ignored."""
    if not header:
        raise BadDelivery("bad_signature", "no Stripe-Signature header")
    timestamp, signatures = None, []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value and value.isascii():
            # compare_digest raises on non-ASCII text: such a value is no signature of ours.
            signatures.append(value)
    if timestamp is None or not signatures:
        raise BadDelivery("bad_signature", "Stripe-Signature has no timestamp or no v1 signature")
    return timestamp, signatures


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str,
    now: float,
    tolerance: float = TOLERANCE_SECONDS,
) -> None:
    """Raise BadDelivery unless one v1 signature is HMAC-SHA256(secret, "<t>.<body>") and the
    timestamp is within `tolerance` of `now`, in either direction."""
    timestamp, signatures = parse_signature_header(header)
    expected = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, given) for given in signatures):
        raise BadDelivery("bad_signature", "no signature matches the webhook secret")
    if abs(now - timestamp) > tolerance:
        when = "in the future" if timestamp > now else "too old"
        raise BadDelivery("stale_signature", f"signature timestamp {timestamp} is {when}")


def parse_notification(body: bytes) -> Notification:
    """The thin event's id and type; BadDelivery for anything else (not JSON, not an object,
    missing or non-string fields)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadDelivery("malformed", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadDelivery("malformed", "the body is not a JSON object")
    event_id, event_type = data.get("id"), data.get("type")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
        raise BadDelivery("malformed", "the event has no string id and type")
    return Notification(event_id, event_type)


def key_fallbacks(samples: list[str], matched: list[str]) -> list[str]:
    """Samples no row matched as an identifier, read as idempotency keys instead: the
    identifier with the `#gN` suffix removed. A sample that is itself unchanged by the strip
    was already tried and is left out, so an identifier ending in `#g1` never names another
    row."""
    keys = {_KEY_SUFFIX.sub("", s) for s in samples if s not in matched} - set(samples)
    return sorted(keys)


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


NO_METER_FOUND = "v1.billing.meter.no_meter_found"
# Error codes that say the meter, not the fact, is wrong: the catalogue is out of date.
METER_PROBLEM_CODES = frozenset({"no_meter", "archived_meter", "meter_event_no_customer_defined"})


def event_account(event: dict[str, Any]) -> str | None:
    """The connected account an event belongs to (its `context`), None for the platform.

    Identifiers are unique per account only, so every row match keys on this: a connected
    account must not be able to mark another account's rows by naming their identifiers.
    Anything but an `acct_` string is not an account a row can hold, and is refused.
    """
    context = event.get("context")
    if context is None:
        return None
    if not (isinstance(context, str) and context.startswith("acct_")):
        raise BadDelivery("malformed", "the event's context is not an account id")
    return context


async def apply_event(
    store: Store, event: Any, settle_seconds: float = DEFAULT_SETTLE_SECONDS
) -> list[str]:
    """Mark the rows a full meter error event names as rejected; returns their identifiers.

    Only rows of the event's own account that Stripe can have counted are marked (the `reject`
    query says which states). Each sample is matched as the event identifier first; only if no
    row has it, as one of our idempotency keys (generation suffix `#gN` stripped). An identifier
    that happens to end in `#g1` is therefore never confused with another row.

    A report counts more failures than it names (`error_count` above its samples): the rest
    is found by comparison (`unlisted`), within the same account.
    """
    body = event if isinstance(event, dict) else event.to_dict()
    account = event_account(body)
    marked: list[str] = []
    for code, (samples, message) in rejected_identifiers(body.get("data") or {}).items():
        hit = await store.reject(samples, account, code, message[:500])
        keys = key_fallbacks(samples, hit)
        if keys:
            hit += await store.reject(keys, account, code, message[:500])
        marked += hit
    marked += await unlisted(store, body, account, settle_seconds)
    return marked


def unlisted_failures(event_data: dict[str, Any]) -> list[tuple[str, int, list[str]]]:
    """(code, error_count, sample identifiers) of each error type whose count is larger than
    the identifiers it names: Stripe lists only samples."""
    found = []
    reason = event_data.get("reason") or {}
    for error_type in reason.get("error_types") or []:
        count = error_type.get("error_count")
        samples = [
            ident
            for sample in error_type.get("sample_errors") or []
            if (ident := ((sample.get("request") or {}).get("identifier")) or "")
        ]
        if isinstance(count, int) and count > len(samples):
            found.append((error_type.get("code") or "meter_error", count, samples))
    return found


def report_window(event_data: dict[str, Any]) -> tuple[datetime, datetime, datetime] | None:
    """The report's validation window widened to whole hours, with a skew margin each side
    (Stripe's clock against the database's): (since, until, validation end). None when the
    report carries no readable window: nothing is inferred without one."""
    try:
        start = datetime.fromisoformat(str(event_data["validation_start"]))
        end = datetime.fromisoformat(str(event_data["validation_end"]))
    except (KeyError, ValueError):
        return None
    if start.tzinfo is None or end.tzinfo is None or end < start:
        return None
    since = (start - SKEW).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    ceil = (end + SKEW).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    until = ceil if ceil == end + SKEW else ceil + timedelta(hours=1)
    return since, until, end


def _at(event_data: dict[str, Any], key: str) -> datetime:
    """A window bound report_window already read."""
    return datetime.fromisoformat(str(event_data[key]))


async def unlisted(
    store: Store, body: dict[str, Any], account: str | None, settle_seconds: float
) -> list[str]:
    """Failures a report counted without naming them. A `no_meter_found` report has no meter
    to compare with: the account's accepted rows of the event names its samples carry,
    received in its window, are rejected (inferred) while the catalogue has no active meter
    for the name. Any other report schedules a comparison of its meter's groups with rows
    accepted in its window, once the summaries settled (relay/pipeline/confirmation.py).
    Returns the rows rejected here."""
    data = body.get("data") or {}
    failures = unlisted_failures(data)
    window = report_window(data) if failures else None
    if window is None:
        return []
    since, until, end = window
    report_id = str(body.get("id") or "")[:255]
    marked: list[str] = []
    for code, count, samples in failures:
        if body.get("type") == NO_METER_FOUND:
            message = f"inferred: no active meter for the event name (error report {report_id})"
            # Rows are rejected outright here, so the window is not widened to whole hours
            # (that is for summaries): rows accepted earlier that hour, while a meter still
            # had the name, were counted. The skew margin stays.
            params: NoMeterParams = {
                "account": account,
                "samples": samples,
                "since": _at(data, "validation_start") - SKEW,
                "until": end + SKEW,
                "code": code,
                "message": message,
                "report_id": report_id,
            }
            marked += await store.reject_without_meter(params)
            continue
        meter_id = str((body.get("related_object") or {}).get("id") or "")
        groups = await store.schedule_comparisons(
            {
                "account": account,
                "meter_id": meter_id,
                "samples": samples,
                "since": since,
                "until": until,
                "validation_end": end,
                "settle_seconds": settle_seconds,
                "report_id": report_id,
                "code": code,
            }
        )
        log.info(
            "comparison_scheduled",
            report=report_id,
            stripe_account=account,
            code=code,
            unlisted=count - len(samples),
            groups=groups,
        )
    return marked


async def handle_delivery(
    client: stripe.StripeClient,
    secret: str,
    store: Store,
    body: bytes,
    signature: str | None,
    now: float | None = None,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
) -> dict[str, Any]:
    """Verify, fetch and apply one delivery. Raises BadDelivery for what deserves a 400."""
    verify_signature(body, signature, secret, time.time() if now is None else now)
    thin = parse_notification(body)
    if thin.type not in METER_ERROR_TYPES:
        return {"ignored": thin.type}
    try:
        notification = client.parse_event_notification_without_verification(body)
    except Exception as err:  # valid JSON the SDK cannot read is still the sender's problem
        raise BadDelivery("malformed", f"unreadable event ({type(err).__name__})") from None
    event = await notification.fetch_event_async()
    marked = await apply_event(store, event, settle_seconds)
    data = event.get("data") if isinstance(event, dict) else event.to_dict().get("data")
    codes = set(rejected_identifiers(data or {}))
    log.warning(
        "error_report_applied",
        event_id=notification.id,
        type=notification.type,
        rejected=len(marked),
        identifiers=marked[:20],
    )
    return {
        "event": notification.id,
        "rejected": marked,
        # The meter catalogue reads this account's meters again at once (relay.stripe.catalogue)
        "meter_problem": thin.type == NO_METER_FOUND or bool(codes & METER_PROBLEM_CODES),
        "account": getattr(notification, "context", None) or "",
    }
