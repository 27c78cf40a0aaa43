"""Stripe reached the way real deployments reach it: only through an HTTP CONNECT proxy, and
over TLS signed by a CA that is not in the stripe package's bundle (a TLS-inspecting egress).
Here "Stripe" is the emulator behind a TLS front whose certificate a test CA (trustme) signed,
and the proxy counts its tunnels, so a test sees which way each client went."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from relay.core import metrics
from relay.emulator import Emulator
from relay.server.http_server import make_app
from tests.integration.relay.test_doctor import doctor
from tests.support.console import listening
from tests.support.egress import Egress, egress
from tests.support.relay import (
    RunningRelay,
    accepted,
    insert_usage,
    make_settings,
    running_relay,
)

CLIENTS = ("lean", "sdk")


@pytest.fixture
def way_out(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Egress]:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    with egress(emulator.base_url, tmp_path) as running:
        yield running


def _settings(database_url: str, emulator: Emulator, way: Egress, **overrides: Any) -> Any:
    values: dict[str, Any] = {"stripe_api_base": way.front.base_url, "request_timeout": 2}
    values.update(overrides)
    return make_settings(database_url, emulator, **values)


async def _send_all(settings: Any, database_url: str, emulator: Emulator, n: int = 12) -> None:
    ids = insert_usage(database_url, n, customers=3)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, n))
        assert relay.relay.reachability.reached
    assert all(emulator.counted(i) == 1 for i in ids)


@pytest.mark.parametrize("client", CLIENTS)
async def test_both_clients_go_through_the_proxy_and_trust_the_added_ca(
    database_url: str, emulator: Emulator, way_out: Egress, client: str
) -> None:
    settings = _settings(
        database_url,
        emulator,
        way_out,
        stripe_client=client,
        stripe_proxy=way_out.proxy.url,
        stripe_ca_file=way_out.ca_file,
    )
    await _send_all(settings, database_url, emulator)
    assert way_out.proxy.connects >= 1
    assert set(way_out.proxy.targets) == {f"localhost:{way_out.front.port}"}


async def test_https_proxy_from_the_environment_with_credentials(
    database_url: str, emulator: Emulator, way_out: Egress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", way_out.proxy.url.replace("//", "//relay:s3cret@"))
    settings = _settings(database_url, emulator, way_out, stripe_ca_file=way_out.ca_file)
    await _send_all(settings, database_url, emulator)
    assert way_out.proxy.connects >= 1
    # Basic base64("relay:s3cret"), from both clients
    assert set(way_out.proxy.authorizations) == {"Basic cmVsYXk6czNjcmV0"}


@pytest.mark.parametrize("client", CLIENTS)
async def test_no_proxy_bypasses_the_proxy(
    database_url: str,
    emulator: Emulator,
    way_out: Egress,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", way_out.proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    settings = _settings(
        database_url, emulator, way_out, stripe_client=client, stripe_ca_file=way_out.ca_file
    )
    await _send_all(settings, database_url, emulator)
    assert way_out.proxy.connects == 0


async def test_ssl_cert_file_is_trusted(
    database_url: str, emulator: Emulator, way_out: Egress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(way_out.ca_file))
    await _send_all(_settings(database_url, emulator, way_out), database_url, emulator)


async def test_replace_mode_with_the_right_ca(
    database_url: str, emulator: Emulator, way_out: Egress
) -> None:
    settings = _settings(
        database_url, emulator, way_out, stripe_ca_file=way_out.ca_file, stripe_ca_mode="replace"
    )
    await _send_all(settings, database_url, emulator)


async def _readyz(relay: RunningRelay) -> tuple[int, Any]:
    """/readyz of the app `run` serves, bound to this relay."""
    sender: Any = relay.relay.sender
    app = make_app(relay.relay, relay.relay.store, sender.client, None)
    async with (
        listening(app) as url,
        aiohttp.ClientSession() as session,
        session.get(f"{url}/readyz") as response,
    ):
        return response.status, await response.json()


async def _unreachable_line(relay: RunningRelay, logs: list[dict[str, Any]]) -> dict[str, Any]:
    async def seen() -> bool:
        return any(e["event"] == "stripe_unreachable" for e in logs)

    await relay.until(seen)
    (line,) = [e for e in logs if e["event"] == "stripe_unreachable"]
    return line


@pytest.mark.parametrize(
    ("ca", "refuse", "says"),
    [
        ("other", False, "Stripe's TLS certificate is not trusted"),
        ("none", False, "Stripe's TLS certificate is not trusted"),
        ("right", True, "the proxy refused or failed the tunnel to Stripe"),
    ],
)
@pytest.mark.parametrize("client", CLIENTS)
async def test_unreachable_before_first_contact_is_one_line_and_not_ready(
    database_url: str,
    emulator: Emulator,
    way_out: Egress,
    client: str,
    ca: str,
    refuse: bool,
    says: str,
) -> None:
    way_out.proxy.refuse = refuse
    ca_file = {"other": way_out.other_ca_file, "none": None, "right": way_out.ca_file}[ca]
    settings = _settings(
        database_url,
        emulator,
        way_out,
        stripe_client=client,
        stripe_proxy=way_out.proxy.url,
        stripe_ca_file=ca_file,
        stripe_ca_mode="replace" if ca == "other" else "add",
    )
    insert_usage(database_url, 3)
    with capture_logs() as logs:
        async with running_relay(settings) as relay:
            line = await _unreachable_line(relay, logs)
            status, body = await _readyz(relay)
    assert line["error"].startswith(("no answer: " + says, says)), line
    assert "\n" not in line["error"] and line["ready"] is False
    assert status == 503 and body["stripe_reached"] is False
    assert metrics.STRIPE_REACHABLE._value.get() == 0
    assert emulator.counted("u1") == 0


async def test_an_outage_after_first_contact_keeps_the_relay_ready(
    database_url: str, emulator: Emulator, way_out: Egress
) -> None:
    settings = _settings(
        database_url,
        emulator,
        way_out,
        stripe_proxy=way_out.proxy.url,
        stripe_ca_file=way_out.ca_file,
        request_timeout=1,
    )
    insert_usage(database_url, 2, prefix="a")
    with capture_logs() as logs:
        async with running_relay(settings) as relay:
            await relay.until(lambda: accepted(database_url, 2))
            # Stripe gone: new tunnels refused, pooled connections dropped.
            way_out.proxy.refuse = True
            sender: Any = relay.relay.sender
            await sender.close()
            insert_usage(database_url, 1, prefix="b")
            await _unreachable_line(relay, logs)
            status, body = await _readyz(relay)
    assert status == 200 and body["stripe_reached"] is True
    assert metrics.STRIPE_REACHABLE._value.get() == 0
    line = next(e for e in logs if e["event"] == "stripe_unreachable")
    assert line["ready"] is True


def test_doctor_reports_the_way_out_and_goes_through_it(
    database_url: str, emulator: Emulator, way_out: Egress
) -> None:
    env = {
        "OUTBOX_STRIPE_API_BASE": way_out.front.base_url,
        "OUTBOX_STRIPE_PROXY": way_out.proxy.url.replace("//", "//relay:s3cret@"),
        "OUTBOX_STRIPE_CA_FILE": str(way_out.ca_file),
    }
    result = doctor(database_url, emulator, **env)
    assert f"stripe egress: proxy: {way_out.proxy.url} (from OUTBOX_STRIPE_PROXY)" in result.output
    assert f"OUTBOX_STRIPE_CA_FILE={way_out.ca_file}" in result.output
    assert "accepted (test mode, secret key)" in result.output
    assert "s3cret" not in result.output and way_out.proxy.connects >= 1

    env["OUTBOX_STRIPE_CA_FILE"] = str(way_out.other_ca_file)
    env["OUTBOX_STRIPE_CA_MODE"] = "replace"
    result = doctor(database_url, emulator, **env)
    (line,) = [ln for ln in result.output.splitlines() if "stripe key" in ln]
    assert "Stripe's TLS certificate is not trusted" in line, result.output

    env["OUTBOX_STRIPE_CA_FILE"] = str(way_out.ca_file.with_name("missing.pem"))
    result = doctor(database_url, emulator, **env)
    assert result.exit_code == 3
    assert "PROBLEM         stripe egress: OUTBOX_STRIPE_CA_FILE: cannot use it" in result.output
