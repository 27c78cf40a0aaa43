"""Plain helpers for the emulator tests (their fixtures: tests/integration/emulator/conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import stripe
from aiohttp import web

from relay.emulator import Emulator

API_KEY = "sk_test_emulator_suite"
LIVE_KEY = "sk_live_emulator_suite"


def make_client(emu: Emulator, api_key: str = API_KEY, **kwargs: Any) -> stripe.StripeClient:
    """A StripeClient pointed at the emulator for every base address, no SDK retries."""
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": emu.base_url, "meter_events": emu.base_url},
        max_network_retries=0,
        **kwargs,
    )


def meter_event(
    identifier: str | None = None,
    *,
    customer: str = "cus_1",
    value: str = "1",
    event_name: str = "api_calls",
    timestamp: int | None = None,
) -> dict[str, Any]:
    """Params for `client.v1.billing.meter_events.create`."""
    params: dict[str, Any] = {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": value},
    }
    if identifier is not None:
        params["identifier"] = identifier
    if timestamp is not None:
        params["timestamp"] = timestamp
    return params


def stream_event(
    identifier: str, *, customer: str = "cus_1", value: str = "1", event_name: str = "api_calls"
) -> dict[str, Any]:
    """One event for `client.v2.billing.meter_event_stream.create`."""
    return {
        "event_name": event_name,
        "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": value},
    }


class Receiver:
    """A webhook endpoint: records deliveries; can fail the first N on purpose."""

    def __init__(self) -> None:
        self.deliveries: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
        self.fail_first = 0
        self.received = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received += 1
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500, text="receiver down")
        await self.deliveries.put((body, request.headers.get("Stripe-Signature", "")))
        return web.Response(text="ok")

    async def next(self, timeout: float = 5.0) -> tuple[bytes, str]:
        """The next successful delivery (body, Stripe-Signature)."""
        return await asyncio.wait_for(self.deliveries.get(), timeout)
