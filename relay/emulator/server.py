"""HTTP layer: routes, auth, and the request pipeline in Stripe's order.

Per API request:
  auth -> faults in front of the API (outage, 502/503, 429 burst, reset) -> rate limit
  -> parse -> one-call-per-(customer, meter) -> idempotency -> latency -> execute
  (or injected 500) -> save under the idempotency key -> respond (or drop the connection).

Rate limiting and the concurrency check come before idempotency, as at Stripe, so a 429 or
409 from them leaves no saved response. Every response carries a `Request-Id`.
No middleware and no `request.post()`: the pipeline is one coroutine per request, which
keeps the v1 hot path well above 2,000 requests/s on one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Literal

from aiohttp import web

from relay.emulator import errors
from relay.emulator.api import Call, Result, StripeApi
from relay.emulator.errors import ApiError
from relay.emulator.faults import FaultDecision
from relay.emulator.idempotency import MAX_KEY_LENGTH, IdempotencyRecord, StoredResponse
from relay.emulator.limits import Slot
from relay.emulator.state import EmulatorState
from relay.emulator.wire import (
    JSON_CONTENT_TYPE,
    bearer_credential,
    dumps,
    key_mode,
    new_id,
    parse_form,
    parse_query,
)

log = logging.getLogger(__name__)

Auth = Literal["secret", "session"]
Body = Literal["form", "json", "query"]
Handler = Callable[[Call], Result]
Outcome = tuple[web.StreamResponse, str]


@dataclass(frozen=True)
class Route:
    """One Stripe endpoint and how the pipeline treats it."""

    method: str
    path: str
    handler: Handler
    auth: Auth = "secret"
    body: Body = "query"
    v2: bool = False
    rate_limited: bool = False
    concurrency_key: Callable[[Call], Slot | None] | None = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def idempotent(self) -> bool:
        return self.method == "POST"


def stripe_routes(api: StripeApi) -> list[Route]:
    return [
        Route(
            "POST",
            "/v1/billing/meter_events",
            api.create_meter_event,
            body="form",
            rate_limited=True,
            concurrency_key=api.meter_event_concurrency_key,
        ),
        Route(
            "POST",
            "/v1/billing/meter_event_adjustments",
            api.create_adjustment,
            body="form",
            rate_limited=True,
        ),
        Route("GET", "/v1/billing/meters", api.list_meters),
        Route("GET", "/v1/billing/meters/{id}", api.retrieve_meter),
        Route("POST", "/v1/billing/meters/{id}/deactivate", api.deactivate_meter, body="form"),
        Route("POST", "/v1/billing/meters/{id}/reactivate", api.reactivate_meter, body="form"),
        Route("GET", "/v2/core/event_destinations", api.list_event_destinations, v2=True),
        Route("GET", "/v1/billing/meters/{id}/event_summaries", api.event_summaries),
        Route("POST", "/v2/billing/meter_event_session", api.create_session, body="json", v2=True),
        Route(
            "POST",
            "/v2/billing/meter_event_stream",
            api.stream_events,
            auth="session",
            body="json",
            v2=True,
        ),
        Route("GET", "/v2/core/events", api.list_events, v2=True),
        Route("GET", "/v2/core/events/{id}", api.retrieve_event, v2=True),
    ]


class Pipeline:
    """Runs every API request through auth, faults, limits, idempotency and the handler."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.lock = state.lock

    def bind(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.dispatch(request, route)

        return handle

    async def dispatch(self, request: web.Request, route: Route) -> web.StreamResponse:
        call = Call(new_id("req"), request.match_info)
        with self.lock:
            self.state.stats_counters.begin()
        outcome = "500"
        try:
            response, outcome = await self._run(request, route, call)
            if self.state.clock.offset:  # Stripe's Date header is Stripe's clock
                response.headers["Date"] = formatdate(self.state.clock.now(), usegmt=True)
            return response
        finally:
            with self.lock:
                self.state.stats_counters.end(route.label, outcome)

    async def _run(self, request: web.Request, route: Route, call: Call) -> Outcome:
        try:
            self._authenticate(request, route, call)
        except ApiError as exc:
            return error_response(call, exc, v2=route.v2)
        with self.lock:
            decision, latency = self.state.faults.decide(request.path)
        if decision is not None and decision.stage == "pre":
            return self._pre_fault(request, route, call, decision)
        if route.rate_limited:
            with self.lock:
                allowed = self.state.limiter.allow(call.account, call.livemode)
            if not allowed:
                return error_response(call, errors.rate_limited(), v2=route.v2)
        try:
            await self._parse(request, route, call)
        except ApiError as exc:
            return error_response(call, exc, v2=route.v2)
        return await self._guarded(request, route, call, decision, latency)

    async def _guarded(
        self,
        request: web.Request,
        route: Route,
        call: Call,
        decision: FaultDecision | None,
        latency: float,
    ) -> Outcome:
        """Hold the (customer, meter) slot for the whole execution, then maybe drop."""
        key = route.concurrency_key(call) if route.concurrency_key else None
        if key is not None:
            with self.lock:
                acquired = self.state.guard.try_acquire(key)
            if not acquired:
                return error_response(call, self._conflict(), v2=route.v2)
        try:
            response, outcome = await self._execute(request, route, call, decision, latency)
        finally:
            if key is not None:
                with self.lock:
                    self.state.guard.release(key)
        if decision is not None and decision.stage == "post":
            cut_connection(request, reset=False)
            return response, "dropped"
        return response, outcome

    def _conflict(self) -> ApiError:
        return ApiError(
            self.state.config.concurrency_status,
            "Too many concurrent requests for this customer and meter: only one meter event "
            "call per customer and meter may be in flight at a time.",
            code=errors.TOO_MANY_CONCURRENT,
            should_retry=True,
        )

    async def _execute(
        self,
        request: web.Request,
        route: Route,
        call: Call,
        decision: FaultDecision | None,
        latency: float,
    ) -> Outcome:
        record: IdempotencyRecord | None = None
        scope = (call.account, call.livemode)
        key = call.idempotency_key
        if route.idempotent and key is not None:
            with self.lock:
                claim, record = self.state.idempotency.begin(
                    scope, key, (route.label, call.fingerprint)
                )
            if claim != "new":
                return self._idempotency_answer(call, route, claim, record)
        try:
            await self._delay(request.path, latency)
            status, body, headers, executed = self._invoke(route, call, decision)
        except BaseException:
            if record is not None and key is not None:
                with self.lock:
                    self.state.idempotency.abandon(scope, key, record)
            raise
        if record is not None and key is not None:
            with self.lock:
                if executed:
                    stored = StoredResponse(status, body, tuple(headers.items()), call.request_id)
                    self.state.idempotency.complete(record, stored)
                else:
                    self.state.idempotency.abandon(scope, key, record)
        return respond(call, status, body, headers), str(status)

    async def _delay(self, path: str, latency: float) -> None:
        """Injected processing time: latency, then any gate holding this path."""
        if latency > 0:
            await asyncio.sleep(latency)
        with self.lock:
            gate = self.state.faults.gate_for(path)
        if gate is not None:
            await gate.pass_through()

    def _invoke(
        self, route: Route, call: Call, decision: FaultDecision | None
    ) -> tuple[int, bytes, dict[str, str], bool]:
        """Run the handler: (status, body, extra headers, whether execution began)."""
        try:
            if decision is not None and decision.stage == "exec":
                raise errors.injected(decision.status)
            with self.lock:
                status, payload = route.handler(call)
            return status, dumps(payload), {}, True
        except ApiError as exc:
            return exc.status, dumps(exc.body(v2=route.v2)), exc.headers(), exc.executed
        except Exception:
            log.exception("emulator handler failed for %s", route.label)
            failure = errors.server_error(500)
            return failure.status, dumps(failure.body(v2=route.v2)), failure.headers(), True

    def _idempotency_answer(
        self, call: Call, route: Route, claim: str, record: IdempotencyRecord
    ) -> Outcome:
        if claim == "replay" and record.response is not None:
            return replay(call, record.response), str(record.response.status)
        if claim == "mismatch":
            exc = ApiError(
                400,
                f"Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{call.idempotency_key}' if "
                "you meant to execute a different request.",
                type_=errors.IDEMPOTENCY,
            )
        else:
            exc = ApiError(
                409,
                "There is currently another in-progress request using this Idempotency-Key "
                "(probably because of a timeout). Please try again later.",
                code=errors.IDEMPOTENCY_KEY_IN_USE,
                should_retry=True,
            )
        return error_response(call, exc, v2=route.v2)

    def _pre_fault(
        self, request: web.Request, route: Route, call: Call, decision: FaultDecision
    ) -> Outcome:
        if decision.kind == "reset":
            cut_connection(request, reset=True)
            return web.Response(status=500), "reset"
        if decision.kind == "429":
            return error_response(call, errors.rate_limited(), v2=route.v2)
        return error_response(call, errors.injected(decision.status), v2=route.v2)

    # --- auth and parsing -------------------------------------------------------------

    def _authenticate(self, request: web.Request, route: Route, call: Call) -> None:
        credential = bearer_credential(request.headers.get("Authorization"))
        if route.auth == "session":
            self._authenticate_session(call, credential)
            return
        if credential is None:
            raise errors.authentication(
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY')."
            )
        livemode = key_mode(credential)
        allowed = self.state.api_keys
        if livemode is None or (allowed is not None and credential not in allowed):
            raise errors.authentication(f"Invalid API Key provided: {errors.mask_key(credential)}")
        call.api_key = credential
        call.livemode = livemode
        headers = request.headers
        call.account = (
            headers.get("Stripe-Account")
            or headers.get("Stripe-Context")
            or self.state.config.platform_account
        )
        if call.account in self.state.revoked_accounts:
            raise ApiError(
                403,
                f"The provided key does not have access to account '{call.account}' (or that "
                "account does not exist). Application access may have been revoked.",
                type_="invalid_request_error",
                code="account_invalid",
            )

    def _authenticate_session(self, call: Call, token: str | None) -> None:
        with self.lock:
            session = self.state.sessions.lookup(token) if token else None
            expired = session is not None and self.state.sessions.is_expired(session)
        if session is None:
            raise errors.authentication("Invalid or missing meter event session token.")
        if expired:
            raise ApiError(
                401,
                "The meter event session has expired; create a new session and resend.",
                type_=errors.TEMPORARY_SESSION_EXPIRED,
                code=errors.SESSION_EXPIRED,
            )
        call.session = session
        call.account = session.account
        call.livemode = session.livemode

    async def _parse(self, request: web.Request, route: Route, call: Call) -> None:
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            if len(key) > MAX_KEY_LENGTH:
                raise errors.invalid(
                    f"Idempotency keys can be at most {MAX_KEY_LENGTH} characters.",
                    code=errors.PARAMETER_INVALID,
                    param="Idempotency-Key",
                )
            call.idempotency_key = key
        if route.body == "form":
            call.params, call.fingerprint = parse_form(await request.read())
        elif route.body == "json":
            call.params, call.fingerprint = _parse_json(await request.read())
        else:
            call.params = parse_query(request.query_string)


def _parse_json(body: bytes) -> tuple[dict[str, Any], str]:
    if not body.strip():
        return {}, "{}"
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise errors.invalid(
            "Invalid JSON body.", code=errors.PARAMETER_INVALID, param=None
        ) from None
    if not isinstance(params, dict):
        raise errors.invalid("The JSON body must be an object.", code=errors.PARAMETER_INVALID)
    return params, json.dumps(params, sort_keys=True)


# --- responses -------------------------------------------------------------------------


def base_headers(call: Call) -> dict[str, str]:
    headers = {"Request-Id": call.request_id, "Content-Type": JSON_CONTENT_TYPE}
    if call.idempotency_key is not None:
        headers["Idempotency-Key"] = call.idempotency_key
    return headers


def respond(call: Call, status: int, body: bytes, extra: dict[str, str]) -> web.Response:
    headers = base_headers(call)
    if extra:
        headers.update(extra)
    return web.Response(body=body, status=status, headers=headers)


def error_response(call: Call, exc: ApiError, *, v2: bool) -> Outcome:
    body = dumps(exc.body(v2=v2))
    return respond(call, exc.status, body, exc.headers()), str(exc.status)


def replay(call: Call, stored: StoredResponse) -> web.Response:
    """The saved response, byte for byte, marked as a replay like Stripe does."""
    headers = base_headers(call)
    headers.update(stored.headers)
    headers["Idempotent-Replayed"] = "true"
    headers["Original-Request"] = stored.request_id
    return web.Response(body=stored.body, status=stored.status, headers=headers)


def cut_connection(request: web.Request, *, reset: bool) -> None:
    """Close the client's connection without an answer (RST if `reset`, else FIN)."""
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def not_found(request: web.Request) -> web.StreamResponse:
    """Stripe's JSON 404 for unknown URLs (aiohttp's default is plain text)."""
    call = Call(new_id("req"), {})
    exc = ApiError(
        404,
        f"Unrecognized request URL ({request.method}: {request.path}).",
        code=errors.RESOURCE_MISSING,
    )
    response, _ = error_response(call, exc, v2=request.path.startswith("/v2"))
    return response
