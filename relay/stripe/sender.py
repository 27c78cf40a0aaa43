"""Calls to Stripe: meter events (v1 and the v2 stream) and cancellations.

The two hot calls (a v1 meter event, a v2 stream batch) go through the lean client in
relay/stripe/calls.py by default (`OUTBOX_STRIPE_CLIENT=lean`), on its own keep-alive client
(relay/stripe/transport.py); `sdk` sends them through the stripe SDK like everything else (sessions,
adjustments, probes), to compare the two.

The SDK's own retries are off (`max_network_retries=0`): the relay owns retries, because only
it knows when the idempotency key must stay the same and when it must move on. The SDK runs on
aiohttp: its default async client (httpx) cannot reach Stripe's 1,000 calls/s. Both clients
verify TLS with one SSL context and are bounded by the same `max_connections`.
"""

import asyncio
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import aiohttp
import stripe
from stripe._base_address import BaseAddresses  # the type StripeClient's signature names
from stripe.params.billing import MeterEventAdjustmentCreateParams, MeterEventCreateParams

from relay.core.clock import Clocks, host_clock
from relay.core.rows import Claimed
from relay.stripe import transport as http1
from relay.stripe.calls import Wire, answer_of_failure, stream_event
from relay.stripe.classify import Answer, Classified, Verdict, classify, classify_error
from relay.stripe.egress import Egress
from relay.stripe.reachability import Reachability


def base_addresses(api_base: str | None) -> BaseAddresses:
    """`OUTBOX_STRIPE_API_BASE` points every Stripe host (meter events too) at one base URL."""
    if not api_base:
        return {}
    base = api_base.rstrip("/")
    return {"api": base, "meter_events": base, "files": base, "connect": base}


class StripeSender:
    """Sends one claimed row to Stripe and classifies the answer."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        timeout: float = 10.0,
        max_connections: int = 100,
        client: str = "lean",
        clocks: Clocks | None = None,
        egress: Egress | None = None,
    ) -> None:
        # aiohttp's default pool holds 100 connections: at 150 ms per call that alone caps the
        # relay at ~660 calls/s, so the pools are sized to the relay's concurrency. Must be
        # created inside the running event loop. Both clients leave by `egress` (proxy, CAs).
        egress = egress or Egress.from_environment()
        ssl_context = egress.ssl_context()
        connector = aiohttp.TCPConnector(limit=max_connections, ssl=ssl_context)
        self._session_http = aiohttp.ClientSession(
            connector=connector, trace_configs=_date_trace(clocks)
        )
        self._http = stripe.AIOHTTPClient(
            timeout=timeout,
            session=self._session_http,
            proxy=egress.aiohttp_proxy(api_base or stripe.DEFAULT_API_BASE),
        )
        self.client = stripe.StripeClient(
            api_key,
            base_addresses=base_addresses(api_base),
            max_network_retries=0,
            http_client=self._http,
        )
        self._lean = (
            http1.Client(max_connections, ssl_context, egress.proxy_for)
            if client == "lean"
            else None
        )
        on_date = clocks.observe_date if clocks else None
        self._wire = Wire(self._lean, api_key, api_base, timeout, on_date) if self._lean else None
        self._now = clocks.now if clocks else host_clock  # Stripe's clock: session expiry
        # One meter event session per (connected) account: token and its renewal time.
        self._sessions: dict[str | None, tuple[str, datetime]] = {}
        self._session_lock = asyncio.Lock()
        self.reachability = Reachability()

    async def send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
        """Report up to 100 rows in one v2 meter event stream request (`_send_stream`)."""
        result = await self._send_stream(rows)
        self.reachability.saw(result[0].http_status, result[0].message)
        return result

    async def send(self, row: Claimed) -> tuple[Classified, float]:
        """Report (or cancel) one row; returns the classified result and latency in ms."""
        result = await self._send(row)
        self.reachability.saw(result[0].http_status, result[0].message)
        return result

    async def _send_stream(self, rows: list[Claimed]) -> tuple[Classified, float]:
        """Report up to 100 rows in one v2 meter event stream request.

        Validation is asynchronous in v2 (errors come back as error reports), so a 200 accepts
        the whole batch. Identifiers dedup retries, so no idempotency key is needed; an expired
        session token is renewed and the batch resent once.
        """
        started = time.perf_counter()
        if self._wire is None:
            return await self._send_stream_sdk(rows), _ms(started)
        stale: str | None = None
        for attempt in range(2):
            try:
                token = await self._session(rows[0].stripe_account, stale)
            except stripe.StripeError as err:
                return classify_error(err), _ms(started)
            except (TimeoutError, OSError, aiohttp.ClientError) as err:
                return classify(answer_of_failure(err)), _ms(started)
            answer = await self._wire.meter_event_stream(token, rows)
            if answer.error_type != "temporary_session_expired" or attempt:
                return classify(answer), _ms(started)
            stale = token
        raise AssertionError("unreachable")

    async def _send_stream_sdk(self, rows: list[Claimed]) -> Classified:
        events = [stream_event(row) for row in rows]
        stale: str | None = None
        for attempt in range(2):
            try:
                token = await self._session(rows[0].stripe_account, stale)
                await self.client.v2.billing.meter_event_stream.create_async(
                    {"events": events},
                    {"api_key": token},
                )
                return Classified(Verdict.ACCEPTED)
            except stripe.TemporarySessionExpiredError as err:
                stale = token
                if attempt:
                    return classify_error(err)
            except stripe.StripeError as err:
                return classify_error(err)
            except (TimeoutError, OSError, aiohttp.ClientError) as err:
                return classify(answer_of_failure(err))
        raise AssertionError("unreachable")

    async def _session(self, account: str | None, stale: str | None) -> str:
        """The account's meter event session token, renewed a minute before it expires
        (tokens live 15 min) or when a call found `stale` expired. One renewal serves every
        concurrent caller."""
        async with self._session_lock:
            token, renew_at = self._sessions.get(account, (None, None))
            if token is None or token == stale or renew_at is None or self._now() > renew_at:
                options: stripe.RequestOptions = {"stripe_account": account} if account else {}
                session = await self.client.v2.billing.meter_event_session.create_async(
                    options=options
                )
                token = session.authentication_token
                expires: str | datetime = session.expires_at
                if isinstance(expires, str):
                    expires = datetime.fromisoformat(expires.replace("Z", "+00:00"))
                self._sessions[account] = (token, expires - timedelta(minutes=1))
            return token

    async def _send(self, row: Claimed) -> tuple[Classified, float]:
        started = time.perf_counter()
        if self._wire is not None and row.action == "report":
            answer: Answer = await self._wire.meter_event(row)
            return classify(answer), _ms(started)
        try:
            if row.action == "cancel":
                response = await self._cancel(row)
            else:
                response = await self._report(row)
        except stripe.APIConnectionError as err:  # no answer: say why (the SDK's cause)
            return classify(answer_of_failure(err)), _ms(started)
        except stripe.StripeError as err:
            return classify_error(err, cancel=row.action == "cancel"), _ms(started)
        except (TimeoutError, OSError, aiohttp.ClientError) as err:  # not wrapped by the SDK
            return classify(answer_of_failure(err)), _ms(started)
        request_id = response.last_response.request_id if response.last_response else None
        return Classified(Verdict.ACCEPTED, request_id=request_id, http_status=200), _ms(started)

    async def _report(self, row: Claimed) -> stripe.StripeObject:
        params: MeterEventCreateParams = {
            "event_name": row.event_name,
            "payload": row.payload,
            "identifier": row.identifier,
            "timestamp": int(row.occurred_at.timestamp()),
        }
        return await self.client.v1.billing.meter_events.create_async(
            params,
            self._options(row),
        )

    async def _cancel(self, row: Claimed) -> stripe.StripeObject:
        params: MeterEventAdjustmentCreateParams = {
            "event_name": row.event_name,
            "type": "cancel",
            "cancel": {"identifier": row.identifier},
        }
        return await self.client.v1.billing.meter_event_adjustments.create_async(
            params,
            self._options(row),
        )

    @staticmethod
    def _options(row: Claimed) -> stripe.RequestOptions:
        options: stripe.RequestOptions = {"idempotency_key": row.idempotency_key}
        if row.stripe_account:
            options["stripe_account"] = row.stripe_account
        return options

    async def close(self) -> None:
        """Close the SDK's aiohttp session (it warns about an unclosed session otherwise) and
        the lean client's connections."""
        await self._session_http.close()
        if self._lean is not None:
            await self._lean.close()


def _date_trace(clocks: Clocks | None) -> list[aiohttp.TraceConfig]:
    """The SDK's answers pass their `Date` header (Stripe's clock) to `clocks`: every SDK
    call, whatever its outcome, through one hook on the session."""
    if clocks is None:
        return []
    on_date = clocks.observe_date

    async def answered(
        _: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        on_date(params.response.headers.get("Date"))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(answered)
    return [trace]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
