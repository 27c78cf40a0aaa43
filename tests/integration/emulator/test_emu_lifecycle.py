"""Starting, stopping and resetting the emulator in both modes."""

from __future__ import annotations

import time

import pytest
import requests
import stripe
from aiohttp import ClientSession

from relay.emulator import Emulator, EmulatorConfig, Faults
from tests.support.emulator import make_client, meter_event, stream_event


def test_context_manager_binds_loopback_and_stops() -> None:
    with Emulator(rate_limit_test=None) as emu:
        assert emu.base_url == f"http://127.0.0.1:{emu.port}"
        make_client(emu).v1.billing.meter_events.create(meter_event("c1"))
        url = emu.base_url
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_emulator/health")


def test_defaults_match_the_brief() -> None:
    config = EmulatorConfig()
    assert [(m.id, m.event_name, m.aggregation) for m in config.meters] == [
        ("mtr_api_calls", "api_calls", "sum")
    ]
    assert (config.webhook_url, config.webhook_secret) == (None, "whsec_test_emulator")
    assert (config.rate_limit_live, config.rate_limit_test, config.seed) == (1000, 25, 0)
    assert (config.concurrency_status, config.unknown_cancel) == (409, "error")


def test_config_and_overrides_are_exclusive() -> None:
    with pytest.raises(TypeError):
        Emulator(EmulatorConfig(), seed=1)


def test_cannot_start_twice(emu: Emulator) -> None:
    with pytest.raises(RuntimeError):
        emu.start()


async def test_async_context_manager() -> None:
    async with (
        Emulator(rate_limit_test=None) as emu,
        ClientSession() as http,
        http.get(f"{emu.base_url}/_emulator/health") as got,
    ):
        assert await got.json() == {"ok": True}


def test_reset_returns_to_the_configured_start(emu: Emulator, client: stripe.StripeClient) -> None:
    token = client.v2.billing.meter_event_session.create().authentication_token
    client.v1.billing.meter_events.create(meter_event("r1", customer="nobody"))
    emu.advance_clock(3600)
    emu.set_faults(Faults(rate_500=1.0))

    emu.reset()

    assert emu.ledger().events == [] and emu.ledger().rejected == []
    assert emu.stats()["total_requests"] == 0
    assert emu.stats()["error_reports_pending"] == 0
    assert emu.flush_error_reports() == []
    assert abs(emu.now() - time.time()) < 5
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_stream.create(
            {"events": [stream_event("x")]}, {"api_key": token}
        )
    client.v1.billing.meter_events.create(meter_event("r1"))
    assert emu.counted("r1") == 1
