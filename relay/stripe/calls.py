"""The two hot Stripe calls on relay/stripe/transport.py's keep-alive client:
`POST /v1/billing/meter_events` and `POST /v2/billing/meter_event_stream`. Nothing else:
sessions, adjustments, probes and webhook event fetches stay on the stripe SDK (on aiohttp).

Why: the SDK spends most of a v1 call's CPU around the HTTP request (header assembly, its
generic form encoder, log formatting, parsing the answer into StripeObjects the relay never
reads), enough to cap v1 on one core near Stripe's live limit (docs/benchmarks.md). These calls
need none of it, nor aiohttp's per-request machinery (see relay/stripe/transport.py).

The requests are the SDK's, byte for byte (tests/integration/relay/test_wire_compat.py compares
them):
same method, path, body encoding and headers: Authorization, Idempotency-Key (v1: the row's
key; v2: a fresh random key per call, as the SDK sends on every POST), Stripe-Version (the
SDK's pinned version), Stripe-Account when set, Content-Type, User-Agent and
X-Stripe-Client-User-Agent (the SDK's values, `"httplib": "aiohttp"` included), and aiohttp's
own Accept and Accept-Encoding. The constant ones are encoded once per Wire. Not sent:
X-Stripe-Client-Telemetry, the SDK's optional report of the previous call's duration, which
is analytics only and would be shared mutable state across concurrent calls.

Answers come back as `classify.Answer`, the view the one classification table reads.
"""

import json
import os
import platform
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

import orjson
import stripe

from relay.core.rows import Claimed
from relay.stripe import transport as http1
from relay.stripe.classify import Answer
from relay.stripe.egress import failure

if TYPE_CHECKING:
    from stripe.params.v2.billing import MeterEventStreamCreateParamsEvent

V1_METER_EVENTS = "/v1/billing/meter_events"
V2_METER_EVENT_STREAM = "/v2/billing/meter_event_stream"


def form_body(row: Claimed) -> bytes:
    """The v1 meter event as the SDK form-encodes it: nested keys as `payload[k]`, brackets
    left unescaped, everything else `quote_plus`'d as UTF-8, in the SDK's field order."""
    parts = [f"event_name={_q(row.event_name)}"]
    parts.extend(f"payload%5B{_q(k)}%5D={_q(v)}" for k, v in row.payload.items())
    parts.append(f"identifier={_q(row.identifier)}")
    parts.append(f"timestamp={int(row.occurred_at.timestamp())}")
    return "&".join(parts).replace("%5B", "[").replace("%5D", "]").encode()


def _q(value: object) -> str:
    return quote_plus(str(value))


def stream_event(row: Claimed) -> "MeterEventStreamCreateParamsEvent":
    """One v2 event: RFC 3339 timestamp in UTC with milliseconds and a Z (typed as the SDK's
    own event, which its stream call takes when OUTBOX_STRIPE_CLIENT=sdk)."""
    return {
        "event_name": row.event_name,
        "payload": row.payload,
        "identifier": row.identifier,
        "timestamp": rfc3339_ms(row.occurred_at),
    }


def rfc3339_ms(when: datetime) -> str:
    """`2026-03-04T12:36:07.891Z` (milliseconds truncated, as `isoformat` does). Formatted
    from the fields: `astimezone().isoformat()` cost twice as much, once per event."""
    if when.utcoffset():
        when = when.astimezone(UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031  # faster than an f-string
        when.year,
        when.month,
        when.day,
        when.hour,
        when.minute,
        when.second,
        when.microsecond // 1000,
    )


def stream_body(rows: Iterable[Claimed]) -> bytes:
    """The v2 stream request as the SDK serialises it (`json.dumps` defaults, ASCII).

    Spliced from pieces already in that form instead of building dicts for `json.dumps`
    (a per-event cost on the hot path): the payload as PostgreSQL prints the jsonb, identifiers
    and event names quoted as they are. Each piece is used only when it is plain printable
    ASCII, where PostgreSQL's text form and `json.dumps` agree byte for byte (same separators,
    same escapes of quote and backslash); anything else goes through `json.dumps`.
    """
    return ('{"events": [' + ", ".join([_event_json(row) for row in rows]) + "]}").encode()


def _event_json(row: Claimed) -> str:
    return '{"event_name": %s, "payload": %s, "identifier": %s, "timestamp": "%s"}' % (  # noqa: UP031
        _json_string(row.event_name),
        _json_payload(row.payload_json),
        _json_string(row.identifier),
        rfc3339_ms(row.occurred_at),
    )


def _json_string(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'
    return json.dumps(text)


def _json_payload(text: str) -> str:
    """PostgreSQL prints non-ASCII and DEL raw where `json.dumps` escapes them."""
    if text.isascii() and text.isprintable():
        return text
    return json.dumps(orjson.loads(text))


def client_headers(api_mode: str) -> dict[str, str]:
    """User-Agent and X-Stripe-Client-User-Agent with the SDK's values (`api_mode` v1 or v2).

    The SDK's persisted telemetry id is included when its telemetry is on, as it does."""
    agent: dict[str, str] = {
        "bindings_version": stripe.VERSION,
        "lang": "python",
        "httplib": "aiohttp",
    }
    telemetry_id = _telemetry_id() if stripe.enable_telemetry else None
    if telemetry_id is not None:
        agent["telemetry_id"] = telemetry_id
    agent["lang_version"] = platform.python_version()
    if stripe.enable_telemetry:
        agent["platform"] = platform.platform()
    return {
        "X-Stripe-Client-User-Agent": json.dumps(agent),
        "User-Agent": f"Stripe/{api_mode} PythonBindings/{stripe.VERSION}",
    }


def _telemetry_id() -> str | None:
    try:
        from stripe._telemetry_id import get_telemetry_id
    except ImportError:  # an SDK without one sends none
        return None
    return get_telemetry_id()


def answer_of_response(status: int, request_id: str | None, body: bytes) -> Answer:
    """The table's view of an HTTP answer: a 2xx is accepted; otherwise the `error` object
    of the body (type, code, message), read as the SDK reads it."""
    if 200 <= status < 300:
        return Answer(status, request_id=request_id)
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    if not isinstance(error, dict):
        text = body[:200].decode("utf-8", "replace")
        return Answer(status, None, None, f"HTTP {status}: {text}"[:500], request_id)
    message = error.get("message") or f"HTTP {status}"
    return Answer(status, error.get("type"), error.get("code"), message[:500], request_id)


def answer_of_failure(err: BaseException) -> Answer:
    """No HTTP answer (timeout, refused, reset): the table's connection-error row."""
    return Answer(None, message=failure(err))


class Wire:
    """Sends the two hot calls on the lean client's keep-alive pools."""

    def __init__(
        self,
        http: http1.Client,
        api_key: str,
        api_base: str | None = None,
        timeout: float = 10.0,
        on_date: Callable[[str | None], None] | None = None,
    ) -> None:
        base = api_base.rstrip("/") if api_base else None
        self._http = http
        self._timeout = timeout
        self._on_date = on_date
        version = {"Stripe-Version": stripe.api_version}
        self._v1 = http1.Endpoint(
            "POST",
            (base or stripe.DEFAULT_API_BASE) + V1_METER_EVENTS,
            {
                **client_headers("v1"),
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/x-www-form-urlencoded",
                **version,
            },
        )
        self._v2 = http1.Endpoint(
            "POST",
            (base or stripe.DEFAULT_METER_EVENTS_API_BASE) + V2_METER_EVENT_STREAM,
            {**client_headers("v2"), "Content-Type": "application/json", **version},
        )

    async def meter_event(self, row: Claimed) -> Answer:
        """`POST /v1/billing/meter_events` for one row, under the row's idempotency key."""
        headers = {"Idempotency-Key": row.idempotency_key}
        if row.stripe_account:
            headers["Stripe-Account"] = row.stripe_account
        return await self._post(self._v1, headers, form_body(row))

    async def meter_event_stream(self, token: str, rows: list[Claimed]) -> Answer:
        """`POST /v2/billing/meter_event_stream` with a session token (it names the account)."""
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": _random_key()}
        return await self._post(self._v2, headers, stream_body(rows))

    async def _post(self, endpoint: http1.Endpoint, headers: dict[str, str], body: bytes) -> Answer:
        try:
            response = await self._http.send(endpoint, headers, body, self._timeout)
        except (TimeoutError, OSError, http1.ResponseError) as err:
            return answer_of_failure(err)
        if self._on_date is not None:  # Stripe's clock (relay.core.clock)
            self._on_date(response.headers.get("date"))
        request_id = response.headers.get("request-id")
        return answer_of_response(response.status, request_id, response.body)


def _random_key() -> str:
    """A UUID-shaped random key, the shape the SDK sends on POSTs without one."""
    raw = os.urandom(16).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
