"""The lean client (relay/stripe/calls.py) sends what the stripe SDK sends, and its answers
classify the
same: both senders run against one real local HTTP server that records every request and
replays a scripted answer.

Headers compared: everything either side sends except Host (the port), Content-Length (follows
from the body, which is compared), X-Stripe-Client-Telemetry (the SDK's optional report of
its previous call's duration; the lean client does not send it, see relay/stripe/calls.py), and
on v2 the Idempotency-Key's value: the SDK sends a fresh random key on every POST, so only its
shape can match.
"""

import json
import random
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import psycopg
import pytest
from aiohttp import web

from relay.core.clock import STRIPE, Clocks
from relay.core.rows import Claimed
from relay.stripe.calls import stream_body, stream_event
from relay.stripe.classify import Classified
from relay.stripe.sender import StripeSender

IGNORED = {"host", "content-length", "x-stripe-client-telemetry"}
RANDOM_KEY = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SESSION = {
    "id": "mes_1",
    "object": "v2.billing.meter_event_session",
    "authentication_token": "mes_tok_compat",
    "created": "2026-01-01T00:00:00.000Z",
    "expires_at": "2099-01-01T00:00:00.000Z",
    "livemode": False,
}


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """Records each request; answers meter calls with `answers` in turn (then a 200)."""

    requests: list[Captured] = field(default_factory=list)
    answers: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/v2/billing/meter_event_session":
            return web.json_response(SESSION)
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(Captured(request.method, request.path, headers, await request.read()))
        status, body, extra = self.answers.pop(0) if self.answers else (200, "{}", {})
        return web.Response(
            status=status,
            text=body,
            content_type="application/json",
            headers={"Request-Id": "req_compat", **extra},
        )


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield rec, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def claimed(
    identifier: str,
    payload: dict[str, str],
    occurred_at: datetime,
    account: str | None = None,
    generation: int = 0,
) -> Claimed:
    now = datetime.now(UTC)
    return Claimed(
        id=1,
        lease_token=uuid.uuid4(),
        identifier=identifier,
        event_name="api_calls",
        customer=payload.get("stripe_customer_id", "cus_1"),
        payload_json=json.dumps(payload, ensure_ascii=False),  # as PostgreSQL prints jsonb
        occurred_at=occurred_at,
        stripe_account=account,
        action="report",
        attempts=0,
        key_generation=generation,
        previous_first_attempt_at=None,
        first_attempt_at=now,
        accepted_at=None,
        created_at=now,
    )


ROWS = [
    claimed(
        "plain-1", {"stripe_customer_id": "cus_1", "value": "1"}, datetime(2026, 1, 2, tzinfo=UTC)
    ),
    claimed(
        "ünï code/id 1+2=3&x[0]",
        {
            "stripe_customer_id": "cus_é",
            "value": "12345678901234567890",
            "région 🎉": "a&b=c+d/é 🎉 %5B [x] ~*'()",
        },
        datetime(2026, 3, 4, 5, 6, 7, 891_234, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        account="acct_1Connected",
    ),
    claimed(
        "gen-2",
        {"value": "-3.5", "stripe_customer_id": "cus_2", "empty": ""},
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        account=None,
        generation=2,
    ),
    claimed(  # pieces the v2 body cannot splice as they are: quote, backslash, DEL, control
        'q"uo\\te',
        {"stripe_customer_id": "cus_4", "value": "1", "k\x7f": 'tab\tnl\n"\\\x01'},
        datetime(2026, 6, 1, tzinfo=UTC),
    ),
    claimed(
        "gen-1-acct",
        {"stripe_customer_id": "cus_3", "value": "0"},
        datetime(2026, 6, 1, 0, 0, 0, 500, tzinfo=UTC),
        account="acct_2",
        generation=1,
    ),
]


async def send_all(base: str, client: str, rows: list[Claimed], stream: bool) -> list[Classified]:
    sender = StripeSender("sk_test_compat_key", base, timeout=5.0, client=client)
    try:
        if stream:
            return [(await sender.send_stream([row]))[0] for row in rows]
        return [(await sender.send(row))[0] for row in rows]
    finally:
        await sender.close()


def comparable(request: Captured, v2: bool) -> tuple[str, str, dict[str, str], Any]:
    headers = {k: v for k, v in request.headers.items() if k not in IGNORED}
    if v2:
        assert RANDOM_KEY.match(headers.pop("idempotency-key"))
        return request.method, request.path, headers, json.loads(request.body)
    return request.method, request.path, headers, request.body


async def requests_of_both(rec: Recorder, base: str, stream: bool) -> list[Captured]:
    """The requests the SDK sent for ROWS, after checking the lean client sent the same ones:
    every compared header, and the body byte for byte."""
    await send_all(base, "sdk", ROWS, stream=stream)
    sdk = rec.requests[:]
    rec.requests.clear()
    await send_all(base, "lean", ROWS, stream=stream)
    assert len(sdk) == len(rec.requests) == len(ROWS)
    for by_sdk, by_lean in zip(sdk, rec.requests, strict=True):
        assert comparable(by_lean, v2=stream) == comparable(by_sdk, v2=stream)
        assert by_lean.body == by_sdk.body  # v2: json.dumps of the same events
    return sdk


async def test_v1_requests_are_the_sdks(recorder: tuple[Recorder, str]) -> None:
    sdk = await requests_of_both(*recorder, stream=False)
    assert sdk[1].headers["stripe-account"] == "acct_1Connected"
    assert "stripe-account" not in sdk[0].headers
    assert sdk[2].headers["idempotency-key"] == "gen-2#g2"


async def test_v2_stream_requests_are_the_sdks(recorder: tuple[Recorder, str]) -> None:
    sdk = await requests_of_both(*recorder, stream=True)
    event = json.loads(sdk[1].body)["events"][0]
    assert event["timestamp"] == "2026-03-04T12:36:07.891Z"


def error(status: int, type_: str, message: str, code: str | None = None) -> tuple[int, str, dict]:
    body: dict[str, Any] = {"type": type_, "message": message}
    if code:
        body["code"] = code
    return status, json.dumps({"error": body}), {}


ANSWERS = [
    (200, "{}", {}),
    error(400, "invalid_request_error", "An event already exists with identifier plain-1."),
    error(400, "idempotency_error", "Keys for idempotent requests can only be used with the same"),
    error(400, "invalid_request_error", "Too many requests", code="rate_limit"),
    error(400, "invalid_request_error", "No such customer: cus_1", code="resource_missing"),
    error(404, "invalid_request_error", "Unrecognized request URL"),
    error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****"),
    error(403, "invalid_request_error", "The provided key does not have access", code="forbidden"),
    error(409, "idempotency_error", "There is currently another in-progress request"),
    error(409, "invalid_request_error", "Concurrent calls", code="lock_timeout"),
    error(429, "invalid_request_error", "Too many requests", code="rate_limit"),
    error(500, "api_error", "Something went wrong on Stripe's end"),
    (503, json.dumps({"error": {"message": "busy"}}), {"Retry-After": "1"}),
    (502, "<html>bad gateway</html>", {}),
    (500, json.dumps({"no_error": True}), {}),
]


@pytest.mark.parametrize("answer", ANSWERS, ids=[f"{a[0]}-{i}" for i, a in enumerate(ANSWERS)])
@pytest.mark.parametrize("stream", [False, True], ids=["v1", "v2"])
async def test_answers_classify_the_same(
    recorder: tuple[Recorder, str], answer: tuple[int, str, dict[str, str]], stream: bool
) -> None:
    rec, base = recorder
    rec.answers = [answer]
    (by_sdk,) = await send_all(base, "sdk", ROWS[:1], stream)
    rec.answers = [answer]
    (by_lean,) = await send_all(base, "lean", ROWS[:1], stream)
    assert (by_lean.verdict, by_lean.code) == (by_sdk.verdict, by_sdk.code)
    if answer[1].startswith('{"error"'):  # Stripe's message, not a client's wording of garbage
        assert by_lean.message == by_sdk.message
    if answer[1].startswith('{"error"') or (answer[0] == 200 and not stream):
        # The SDK drops the request id of an unreadable answer, and keeps none on a v2 success.
        assert by_lean.request_id == by_sdk.request_id == "req_compat"


@pytest.mark.parametrize("twice", [False, True], ids=["renewed", "expired-again"])
async def test_expired_session_renews_the_same(recorder: tuple[Recorder, str], twice: bool) -> None:
    rec, base = recorder
    expired = error(401, "temporary_session_expired", "Session expired", "session_expired")
    results = []
    for client in ("sdk", "lean"):
        rec.requests.clear()
        rec.answers = [expired, expired] if twice else [expired]
        results.append(await send_all(base, client, ROWS[:1], stream=True))
        assert len(rec.requests) == 2  # resent once with a renewed token
    (by_sdk,), (by_lean,) = results
    assert (by_lean.verdict, by_lean.code, by_lean.message) == (
        by_sdk.verdict,
        by_sdk.code,
        by_sdk.message,
    )


async def test_no_answer_classifies_the_same() -> None:
    """Nothing listens on the port: both are connection errors, retried with the same key."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    (by_sdk,) = await send_all(base, "sdk", ROWS[:1], stream=False)
    (by_lean,) = await send_all(base, "lean", ROWS[:1], stream=False)
    assert (by_lean.verdict, by_lean.code) == (by_sdk.verdict, by_sdk.code)


TRICKY = ["a", "Z", "0", " ", '"', "\\", "/", "\x7f", "\x01", "\n", "\t", "é", "😀", "\u2028", "<"]


def test_stream_body_spliced_from_postgresql_text_is_json_dumps(db: psycopg.Connection) -> None:
    """The v2 body splices the payload as PostgreSQL prints the jsonb (relay/stripe/calls.py): for
    every payload the table can hold, it must be what `json.dumps` writes for the SDK."""
    rnd = random.Random(7)

    def text(n: int) -> str:
        return "".join(rnd.choice(TRICKY) for _ in range(rnd.randint(0, n)))

    printable = [chr(c) for c in range(0x20, 0x7F)]
    for _ in range(300):
        payload = {text(6) or "k": text(10) for _ in range(rnd.randint(0, 4))}
        (printed,) = db.execute("SELECT CAST(%s AS jsonb)::text", [json.dumps(payload)]).fetchone()
        identifier = "".join(rnd.choice(printable) for _ in range(12))
        row = claimed(identifier, {}, datetime(2026, 1, 1, tzinfo=UTC))._replace(
            payload_json=printed, event_name=identifier[::-1]
        )
        sdk = json.dumps({"events": [stream_event(row)]}).encode()
        assert stream_body([row]) == sdk


@pytest.mark.parametrize("stream", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("client", ["lean", "sdk"])
async def test_both_clients_read_stripes_clock_from_the_date_header(
    recorder: tuple[Recorder, str], client: str, stream: bool
) -> None:
    """Stripe's clock two minutes ahead of this host's: the Date of a meter event answer, by
    whichever client sent it, moves the relay's clock (relay/core/clock.py)."""
    rec, base = recorder
    ahead = timedelta(minutes=2)
    date = format_datetime(datetime.now(UTC) + ahead, usegmt=True)
    rec.answers = [(200, "{}", {"Date": date})]
    clocks = Clocks(timedelta(seconds=60))
    sender = StripeSender("sk_test_compat_key", base, timeout=5.0, client=client, clocks=clocks)
    try:
        if stream:
            await sender.send_stream([ROWS[0]])
        else:
            await sender.send(ROWS[0])
    finally:
        await sender.close()
    offset = clocks.offset(STRIPE)
    assert offset is not None and abs(offset - ahead) < timedelta(seconds=2), offset
