"""Fixtures for the emulator suite: emulators (thread and in-loop), SDK clients, a receiver.

No database is needed; every emulator binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import stripe
from aiohttp import web

from relay.emulator import Emulator, EmulatorConfig
from tests.support.emulator import Receiver, make_client


def _config(**overrides: Any) -> EmulatorConfig:
    # Rate limits off unless a test is about them: the sandbox default (25/s) would make
    # unrelated tests depend on timing.
    overrides.setdefault("rate_limit_test", None)
    overrides.setdefault("rate_limit_live", None)
    return EmulatorConfig(**overrides)


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    """Start emulators in background threads with config overrides; all stopped after."""
    started: list[Emulator] = []

    def factory(**overrides: Any) -> Emulator:
        emu = Emulator(_config(**overrides)).start()
        started.append(emu)
        return emu

    yield factory
    for emu in started:
        emu.stop()


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator()


@pytest.fixture
def client(emu: Emulator) -> stripe.StripeClient:
    return make_client(emu)


@pytest.fixture
async def loop_emu() -> AsyncIterator[Emulator]:
    """An emulator serving from the test's own event loop (start_async)."""
    emu = Emulator(_config())
    await emu.start_async()
    yield emu
    await emu.stop_async()


@pytest.fixture(params=["aiohttp", "httpx"])
async def async_client(request: pytest.FixtureRequest, emu: Emulator) -> AsyncIterator[Any]:
    """The SDK's async twins over aiohttp and over httpx (the SDK's default async client)."""
    if request.param == "httpx":
        pytest.importorskip("httpx", reason="stripe's async extra (httpx) is not installed")
    http: Any = stripe.AIOHTTPClient() if request.param == "aiohttp" else stripe.HTTPXClient()
    yield make_client(emu, http_client=http)
    await http.close_async()
    if request.param == "httpx":
        http.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks"
    yield recv
    await runner.cleanup()
