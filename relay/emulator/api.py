"""The Stripe endpoints: meter events, adjustments, v2 sessions and stream, events, meters.

Handlers are synchronous functions of an authenticated, parsed `Call`; they run under the
state lock and either return `(status, body)` or raise `ApiError`. Transport concerns (auth,
faults, rate limits, idempotency, latency) live in `server.py`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Hashable
from typing import Any
from urllib.parse import urlencode

from outbox import rules
from relay.emulator import errors
from relay.emulator.clock import parse_rfc3339
from relay.emulator.config import DEFAULT_CUSTOMER_KEY, EventDestination, Meter
from relay.emulator.errors import ApiError
from relay.emulator.ledger import LedgerEvent, Number, Source
from relay.emulator.limits import Slot
from relay.emulator.sessions import MeterEventSession
from relay.emulator.state import EmulatorState
from relay.emulator.summaries import check_bounds, summarize
from relay.emulator.validation import EventProblem, check_timestamp, deferred_problem, parse_value
from relay.emulator.wire import indexed_list, new_id

Result = tuple[int, Any]
MAX_NAME_LENGTH = rules.EVENT_NAME_MAX_LENGTH
METER_EVENT_PARAMS = frozenset({"event_name", "payload", "identifier", "timestamp", "expand"})
ADJUSTMENT_PARAMS = frozenset({"event_name", "type", "cancel", "expand"})


class Call:
    """One authenticated request, as the handlers see it."""

    __slots__ = (
        "account",
        "api_key",
        "fingerprint",
        "idempotency_key",
        "livemode",
        "match_info",
        "params",
        "request_id",
        "session",
    )

    def __init__(self, request_id: str, match_info: dict[str, str]) -> None:
        self.request_id = request_id
        self.match_info = match_info
        self.api_key: str | None = None
        self.account = ""
        self.livemode = False
        self.params: dict[str, Any] = {}
        self.fingerprint: Hashable = ()
        self.idempotency_key: str | None = None
        self.session: MeterEventSession | None = None


class StripeApi:
    """Endpoint logic over the shared `EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.config = state.config
        self._rng = random.Random(state.config.seed)  # noqa: S311 (summaries jitter, seeded)

    # --- v1 meter events -------------------------------------------------------------

    def meter_event_concurrency_key(self, call: Call) -> Slot | None:
        """(account, meter, customer): Stripe allows one call at a time per pair."""
        event_name = call.params.get("event_name")
        payload = call.params.get("payload")
        if not isinstance(event_name, str) or not isinstance(payload, dict):
            return None
        meter = self.state.meter_for(event_name, call.account)
        customer = payload.get(meter.customer_key if meter else DEFAULT_CUSTOMER_KEY)
        if not customer:
            return None
        return (call.account, meter.meter_id if meter else event_name, customer)

    def create_meter_event(self, call: Call) -> Result:
        params = call.params
        _reject_unknown(params, METER_EVENT_PARAMS)
        event_name = _required_name(params, "event_name")
        payload = params.get("payload")
        if not isinstance(payload, dict) or not payload:
            raise errors.missing("payload")
        identifier = _optional_name(params, "identifier") or str(uuid.uuid4())
        now = self.state.clock.now()
        timestamp = self._v1_timestamp(params.get("timestamp"), now)
        meter = self.state.meter_for(event_name, call.account)
        value = self._v1_value(meter, payload)
        self._reject_duplicate(call.account, identifier, now)
        self._record(call, event_name, identifier, payload, value, timestamp, now, "v1")
        return 200, {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": event_name,
            "identifier": identifier,
            "livemode": call.livemode,
            "payload": payload,
            "timestamp": timestamp,
        }

    def _v1_timestamp(self, raw: object, now: float) -> int:
        if raw is None or raw == "":
            return int(now)
        if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
            raise errors.invalid(
                "Invalid integer: timestamp.",
                code=errors.PARAMETER_INVALID_INTEGER,
                param="timestamp",
            )
        timestamp = int(raw)
        try:
            check_timestamp(timestamp, now, self.config)
        except EventProblem as problem:
            raise errors.invalid(problem.message, code=problem.code, param="timestamp") from None
        return timestamp

    def _v1_value(self, meter: Meter | None, payload: dict[str, Any]) -> Number:
        """Validate the value synchronously when the meter says where it is."""
        if meter is None or meter.aggregation == "count" or meter.value_key not in payload:
            return _lenient_value(payload.get(meter.value_key if meter else "value"))
        param = f"payload[{meter.value_key}]"
        try:
            return parse_value(payload[meter.value_key], self.config, param)
        except EventProblem as problem:
            raise errors.invalid(problem.message, code=problem.code, param=param) from None

    def _reject_duplicate(self, account: str, identifier: str, now: float) -> None:
        if self._is_duplicate(account, identifier, now):
            raise ApiError(
                400,
                f"An event already exists with identifier {identifier}.",
                code=errors.RESOURCE_ALREADY_EXISTS,
                param="identifier",
                should_retry=False,
                executed=True,
            )

    def _is_duplicate(self, account: str, identifier: str, now: float) -> bool:
        existing = self.state.ledger.latest(account, identifier)
        return (
            existing is not None
            and now - existing.received_at < self.config.identifier_window_seconds
        )

    def _record(
        self,
        call: Call,
        event_name: str,
        identifier: str,
        payload: dict[str, Any],
        value: Number,
        timestamp: int,
        now: float,
        source: Source,
        problem: EventProblem | None = None,
    ) -> None:
        """Put an accepted event in the ledger; failures are kept apart and reported later."""
        meter = self.state.meter_for(event_name, call.account)
        problem = problem or deferred_problem(meter, event_name, payload, self.state.customers)
        customer = payload.get(meter.customer_key if meter else DEFAULT_CUSTOMER_KEY)
        event = LedgerEvent(
            account=call.account,
            livemode=call.livemode,
            event_name=event_name,
            identifier=identifier,
            customer=customer,
            value=1 if meter is not None and meter.aggregation == "count" else value,
            timestamp=timestamp,
            received_at=now,
            payload=dict(payload),
            source=source,
            meter_id=meter.meter_id if meter else None,
            status="rejected" if problem else "accepted",
            error_code=problem.code if problem else None,
        )
        self.state.ledger.record(event)
        if problem is not None:
            self.state.reporter.record(call.account, call.livemode, meter, problem, identifier)

    # --- v1 adjustments --------------------------------------------------------------

    def create_adjustment(self, call: Call) -> Result:
        params = call.params
        _reject_unknown(params, ADJUSTMENT_PARAMS)
        event_name = _required_name(params, "event_name")
        kind = params.get("type") or "cancel"
        if kind != "cancel":
            raise errors.invalid(
                "Invalid type: must be cancel.", code=errors.PARAMETER_INVALID, param="type"
            )
        cancel = params.get("cancel")
        identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
        if not identifier:
            raise errors.missing("cancel[identifier]")
        self._cancel(call.account, event_name, identifier)
        return 200, {
            "id": new_id("mtrevtadj"),
            "object": "billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "event_name": event_name,
            "livemode": call.livemode,
            "status": "pending",
            "type": "cancel",
        }

    def _cancel(self, account: str, event_name: str, identifier: str) -> None:
        """Cancel within 24 h of receipt; unknown identifiers follow `unknown_cancel`.

        An unknown identifier is UNCERTAIN at Stripe. With "error" it is a 400
        `resource_missing` that is NOT saved under the idempotency key, so a relay that
        cancels before its event landed can retry with the same key.
        """
        now = self.state.clock.now()
        event = self.state.ledger.latest(account, identifier)
        if event is None or event.event_name != event_name:
            if self.config.unknown_cancel == "accept":
                return
            raise errors.invalid(
                f"No meter event with identifier {identifier} was found for {event_name}.",
                code=errors.RESOURCE_MISSING,
                param="cancel[identifier]",
            )
        if now - event.received_at > self.config.cancel_window_seconds:
            raise ApiError(
                400,
                f"Meter event {identifier} can no longer be cancelled: events can only be "
                "cancelled within 24 hours of being received.",
                code=errors.CANCEL_WINDOW_EXPIRED,
                param="cancel[identifier]",
                should_retry=False,
                executed=True,
            )
        if not event.cancelled:
            event.cancelled = True
            event.cancelled_at = now

    # --- v2 sessions and stream ------------------------------------------------------

    def create_session(self, call: Call) -> Result:
        session = self.state.sessions.create(call.account, call.livemode)
        return 200, session.as_object()

    def stream_events(self, call: Call) -> Result:
        """Accept up to 100 events; everything past their shape is validated asynchronously."""
        events = call.params.get("events")
        if not isinstance(events, list) or not events:
            raise errors.missing("events")
        if len(events) > self.config.max_stream_events:
            raise errors.invalid(
                f"Too many events: at most {self.config.max_stream_events} per request.",
                code=errors.TOO_MANY_EVENTS,
                param="events",
            )
        shaped = [_shape_stream_event(i, raw) for i, raw in enumerate(events)]
        now = self.state.clock.now()
        for event_name, identifier, payload, timestamp in shaped:
            self._stream_one(
                call, event_name, identifier or str(uuid.uuid4()), payload, timestamp, now
            )
        return 200, {}

    def _stream_one(
        self,
        call: Call,
        event_name: str,
        identifier: str,
        payload: dict[str, str],
        timestamp: float | None,
        now: float,
    ) -> None:
        if self._is_duplicate(call.account, identifier, now):
            # Stripe ignores a repeated identifier on the stream: no error, no second count.
            self.state.stream_duplicates_ignored += 1
            return
        when = now if timestamp is None else timestamp
        meter = self.state.meter_for(event_name, call.account)
        problem: EventProblem | None = None
        value: Number = 0
        try:
            check_timestamp(when, now, self.config)
            if meter is not None and meter.aggregation != "count" and meter.value_key in payload:
                value = parse_value(payload[meter.value_key], self.config)
        except EventProblem as found:
            problem = found
        self._record(
            call, event_name, identifier, payload, value, int(when), now, "v2_stream", problem
        )

    # --- v2 events -------------------------------------------------------------------

    def retrieve_event(self, call: Call) -> Result:
        event_id = call.match_info["id"]
        event = self.state.events.get(event_id, call.account)
        if event is None:
            raise _not_found(f"No such event: '{event_id}'", "id")
        return 200, event

    def list_events(self, call: Call) -> Result:
        params = call.params
        limit = _limit(params.get("limit"), default=20)
        offset = _int_param(params.get("page") or "0", "page")
        types = [t for t in indexed_list(params.get("types")) if isinstance(t, str)]
        found = self.state.events.list(call.account, types=types, object_id=params.get("object_id"))
        page = found[offset : offset + limit]
        next_url = None
        if offset + limit < len(found):
            next_url = _events_page_url(params, offset + limit)
        return 200, {"data": page, "next_page_url": next_url, "previous_page_url": None}

    # --- v1 meters and summaries -----------------------------------------------------

    def list_meters(self, call: Call) -> Result:
        """Newest first, cursor paging (`limit` 1..100, default 10), `status` filter."""
        self._require_read(call, "rak_billing_meter_read")
        status = call.params.get("status")
        if status not in (None, "", "active", "inactive"):
            raise errors.invalid(
                "Invalid status: must be one of active or inactive.",
                code=errors.PARAMETER_INVALID,
                param="status",
            )
        meters = [
            m
            for m in reversed(self.state.meters(call.account))
            if not status or (m.active == (status == "active"))
        ]
        data = [self._meter_object(m, call.livemode) for m in meters]
        page, has_more = _paginate(data, call.params)
        page, has_more = _meter_list_fault(self.state.meter_list_fault, data, page, has_more)
        return 200, {
            "object": "list",
            "data": page,
            "has_more": has_more,
            "url": "/v1/billing/meters",
        }

    def deactivate_meter(self, call: Call) -> Result:
        return self._set_meter_active(call, False)

    def reactivate_meter(self, call: Call) -> Result:
        return self._set_meter_active(call, True)

    def _set_meter_active(self, call: Call, active: bool) -> Result:
        meter = self._meter_or_404(call)
        self.state.set_meter_active(meter.meter_id, active, call.account)
        return self.retrieve_meter(call)

    def list_event_destinations(self, call: Call) -> Result:
        self._require_read(call, "rak_event_destination_read")
        data = [self._destination_object(d, i) for i, d in enumerate(self.state.destinations())]
        return 200, {"data": data, "next_page_url": None, "previous_page_url": None}

    def _destination_object(self, destination: EventDestination, index: int) -> dict[str, Any]:
        webhook = None
        if destination.type == "webhook_endpoint":
            webhook = {"signing_secret": None, "url": destination.url}
        return {
            "id": destination.id or f"ed_emulator{index}",
            "object": "v2.core.event_destination",
            "name": destination.name,
            "type": destination.type,
            "status": destination.status,
            "enabled_events": list(destination.enabled_events),
            "event_payload": destination.event_payload,
            "events_from": list(destination.events_from),
            "snapshot_api_version": None,
            "webhook_endpoint": webhook,
            "created": "2026-01-01T00:00:00.000Z",
            "livemode": False,
        }

    def _require_read(self, call: Call, permission: str) -> None:
        """A restricted key without the read permission: Stripe's 403 (never the key)."""
        if call.api_key in self.state.restricted_keys:
            raise ApiError(
                403,
                f"The provided key '{errors.mask_key(call.api_key or '')}' does not have the "
                f"required permissions for this endpoint on account '{call.account}'. Having "
                f"the '{permission}' permission would allow this request to continue.",
                type_="invalid_request_error",
            )

    def retrieve_meter(self, call: Call) -> Result:
        self._require_read(call, "rak_billing_meter_read")
        return 200, self._meter_object(self._meter_or_404(call), call.livemode)

    def event_summaries(self, call: Call) -> Result:
        meter = self._meter_or_404(call)
        params = call.params
        customer = params.get("customer")
        if not customer:
            raise errors.missing("customer")
        start = _int_param(params.get("start_time"), "start_time")
        end = _int_param(params.get("end_time"), "end_time")
        grouping = params.get("value_grouping_window") or None
        check_bounds(start, end, grouping)
        visible_before = self.state.clock.now() - self.config.summaries_lag_seconds
        jitter = self.config.summaries_jitter_seconds
        events = [
            e
            for e in self.state.ledger.series(call.account, meter.event_name, customer)
            if e.received_at <= visible_before - (self._rng.random() * jitter if jitter else 0)
        ]
        summaries = summarize(events, meter, customer, start, end, grouping, call.livemode)
        page, has_more = _paginate(summaries, params)
        return 200, {
            "object": "list",
            "data": page,
            "has_more": has_more,
            "url": f"/v1/billing/meters/{meter.id}/event_summaries",
        }

    def _meter_or_404(self, call: Call) -> Meter:
        meter_id = call.match_info["id"]
        meter = self.state.meter_by_id(meter_id, call.account)
        if meter is None:
            raise _not_found(f"No such billing meter: '{meter_id}'", "id")
        return meter

    def _meter_object(self, meter: Meter, livemode: bool) -> dict[str, Any]:
        created = self.state.started_at
        return {
            "id": meter.id,
            "object": "billing.meter",
            "created": created,
            "customer_mapping": {"event_payload_key": meter.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": meter.aggregation},
            "display_name": meter.display_name or meter.event_name,
            "event_name": meter.event_name,
            "event_time_window": meter.event_time_window,
            "livemode": livemode,
            "status": "active" if meter.active else "inactive",
            "status_transitions": {
                "deactivated_at": None if meter.active else self.state.clock.now_int()
            },
            "updated": created,
            "value_settings": {"event_payload_key": meter.value_key},
        }


# --- parameter helpers ---------------------------------------------------------------


def _meter_list_fault(
    fault: str | None, data: list[Any], page: list[Any], has_more: bool
) -> tuple[list[Any], bool]:
    """A bad answer on purpose (EmulatorConfig.meter_list_fault); else the page as is."""
    if fault == "malformed":
        return [{"id": "mtr_broken", "object": "billing.meter"}, *page], has_more
    if fault == "truncated":
        return [], True
    if fault == "endless":
        return data[:1], True
    return page, has_more


def _required_name(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise errors.missing(name)
    _check_length(value, name)
    return value


def _optional_name(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise errors.invalid(f"Invalid string: {name}.", code=errors.PARAMETER_INVALID, param=name)
    _check_length(value, name)
    return value


def _reject_unknown(params: dict[str, Any], allowed: frozenset[str]) -> None:
    """Stripe refuses parameters it does not know; so does the emulator (catches typos)."""
    for name in params:
        if name not in allowed:
            raise errors.invalid(
                f"Received unknown parameter: {name}", code=errors.PARAMETER_UNKNOWN, param=name
            )


def _check_length(value: str, name: str) -> None:
    if len(value) > MAX_NAME_LENGTH:
        raise errors.invalid(
            f"{name} must be at most {MAX_NAME_LENGTH} characters.",
            code=errors.PARAMETER_INVALID,
            param=name,
        )


def _lenient_value(raw: object) -> Number:
    """Best-effort value for events that will be rejected asynchronously anyway."""
    try:
        return int(raw) if isinstance(raw, str) else 0
    except ValueError:
        return 0


def _int_param(raw: object, name: str) -> int:
    if raw is None or raw == "":
        raise errors.missing(name)
    if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
        raise errors.invalid(
            f"Invalid integer: {name}.", code=errors.PARAMETER_INVALID_INTEGER, param=name
        )
    return int(raw)


def _limit(raw: object, default: int) -> int:
    if raw is None:
        return default
    limit = _int_param(raw, "limit")
    if not 1 <= limit <= 100:
        raise errors.invalid(
            "limit must be between 1 and 100.", code=errors.PARAMETER_INVALID, param="limit"
        )
    return limit


def _paginate(items: list[dict[str, Any]], params: dict[str, Any]) -> tuple[list[Any], bool]:
    """Stripe v1 cursor pagination over `items` (already in list order)."""
    limit = _limit(params.get("limit"), default=10)
    ids = [item["id"] for item in items]
    after, before = params.get("starting_after"), params.get("ending_before")
    if after in ids:
        items = items[ids.index(after) + 1 :]
    elif before in ids:
        items = items[: ids.index(before)]
        return items[-limit:], len(items) > limit
    return items[:limit], len(items) > limit


def _events_page_url(params: dict[str, Any], offset: int) -> str:
    query: list[tuple[str, str]] = [("page", str(offset))]
    if params.get("limit"):
        query.append(("limit", str(params["limit"])))
    if params.get("object_id"):
        query.append(("object_id", str(params["object_id"])))
    for i, t in enumerate(indexed_list(params.get("types"))):
        query.append((f"types[{i}]", str(t)))
    return "/v2/core/events?" + urlencode(query)


def _not_found(message: str, param: str) -> ApiError:
    return ApiError(404, message, code=errors.RESOURCE_MISSING, param=param)


def _shape_stream_event(
    index: int, raw: object
) -> tuple[str, str | None, dict[str, str], float | None]:
    """Check one stream event's SHAPE (a request-level 400 if it cannot be read at all).

    Emulator choice: Stripe validates stream events asynchronously (docs/design.md); an
    event whose fields have the wrong JSON types cannot even be queued, so that is a 400.
    Everything semantic (meter, customer, value, timestamp window) is reported later.
    """
    where = f"events[{index}]"
    if not isinstance(raw, dict):
        raise errors.invalid(
            f"{where} must be an object.", code=errors.PARAMETER_INVALID, param=where
        )
    event_name = raw.get("event_name")
    if not isinstance(event_name, str) or not event_name:
        raise errors.missing(f"{where}.event_name")
    payload = raw.get("payload")
    if not isinstance(payload, dict) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in payload.values()
    ):
        raise errors.invalid(
            f"{where}.payload must be a map of strings.",
            code=errors.PARAMETER_INVALID,
            param=f"{where}.payload",
        )
    identifier = raw.get("identifier")
    if identifier is not None and (
        not isinstance(identifier, str) or len(identifier) > rules.IDENTIFIER_MAX_LENGTH
    ):
        raise errors.invalid(
            f"{where}.identifier is invalid.",
            code=errors.PARAMETER_INVALID,
            param=f"{where}.identifier",
        )
    timestamp = raw.get("timestamp")
    parsed: float | None = None
    if timestamp is not None:
        try:
            parsed = parse_rfc3339(timestamp)
        except (TypeError, ValueError):
            raise errors.invalid(
                f"{where}.timestamp must be an RFC 3339 timestamp.",
                code=errors.PARAMETER_INVALID,
                param=f"{where}.timestamp",
            ) from None
    return event_name, identifier or None, {k: str(v) for k, v in payload.items()}, parsed
