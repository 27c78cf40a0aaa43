"""The relay's HTTP server against hostile clients, as a real process with a small file limit
(systemd's default soft limit is 1,024; the unit may set no LimitNOFILE): slow connections
cannot take /healthz and /readyz down, slow headers and bodies time out, signed but unusable
webhooks answer 400, a dropped connection is one JSON log line."""

import asyncio
import json
import resource
import signal
import subprocess
import time

import aiohttp
import pytest

from relay.emulator import Emulator, EmulatorConfig
from relay.emulator.webhooks import signature_header
from tests.acceptance.process.test_process import CLI, relay_env

SECRET = "whsec_edgetest"
FILES = 256  # the relay's own limit, soft and hard: it cannot raise it


def _small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


def start_limited(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_small_file_limit,
    )


async def get(base: str, path: str) -> int:
    timeout = aiohttp.ClientTimeout(total=30)  # a deadline for a hung server, not a measure
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(base + path) as r:
        return r.status


async def until_ready(base: str, relay: subprocess.Popen[str]) -> None:
    for _ in range(400):
        assert relay.poll() is None, relay.communicate()
        try:
            if await get(base, "/readyz") == 200:
                return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError("relay never became ready")


async def until_metric(port: int, sample: str) -> None:
    """Wait for the relay to report `sample` on /metrics (its own record of an event)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for _ in range(400):
            async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                if sample in await answer.text():
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(sample)


async def slow_client(
    port: int, request: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


def stop(relay: subprocess.Popen[str]) -> list[dict[str, object]]:
    """SIGTERM, exit 0, and every line it wrote parsed as JSON."""
    relay.send_signal(signal.SIGTERM)
    out, err = relay.communicate(timeout=60)
    assert relay.returncode == 0, err
    return [json.loads(line) for line in (out + err).splitlines()]


@pytest.fixture
async def emulator():
    async with Emulator(EmulatorConfig(rate_limit_test=None)) as running:
        yield running


async def test_probes_answer_while_slow_clients_hold_connections(
    database_url: str, emulator: Emulator
) -> None:
    env = relay_env(database_url, emulator, OUTBOX_HTTP_READ_TIMEOUT="1")
    port = int(env["OUTBOX_HTTP_PORT"])
    base = f"http://127.0.0.1:{port}"
    relay = start_limited(env)
    slow = []
    try:
        await until_ready(base, relay)
        for _ in range(300):  # more connections than the relay has files
            slow.append(await slow_client(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"))
        assert await get(base, "/healthz") == 200
        assert await get(base, "/readyz") == 200
        # Slow headers time out: every slow client still open is closed by the server.
        for reader, _ in slow:
            assert await asyncio.wait_for(reader.read(), 30) == b""
    finally:
        for _, writer in slow:
            writer.close()
        lines = stop(relay)
    assert any(line["event"] == "http_listening" for line in lines)
    assert not [line for line in lines if "exception" in line]


async def test_a_slow_body_times_out_and_a_dropped_one_is_one_log_line(
    database_url: str, emulator: Emulator
) -> None:
    env = relay_env(
        database_url, emulator, OUTBOX_HTTP_READ_TIMEOUT="1", STRIPE_WEBHOOK_SECRET=SECRET
    )
    port = int(env["OUTBOX_HTTP_PORT"])
    relay = start_limited(env)
    try:
        await until_ready(f"http://127.0.0.1:{port}", relay)
        head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        reader, writer = await slow_client(port, head)
        answer = await asyncio.wait_for(reader.read(), 30)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        writer.close()
        _, dropped = await slow_client(port, head)
        dropped.transport.abort()  # gone mid-body
        await until_metric(port, "outbox_relay_http_disconnected_total 1.0")
    finally:
        lines = stop(relay)
    events = [line["event"] for line in lines]
    assert events.count("webhook_body_too_slow") == 1
    assert events.count("http_client_disconnected") == 1
    assert not [line for line in lines if "exception" in line]


async def test_signed_but_unusable_webhooks_answer_400(
    database_url: str, emulator: Emulator
) -> None:
    env = relay_env(database_url, emulator, STRIPE_WEBHOOK_SECRET=SECRET)
    base = f"http://127.0.0.1:{env['OUTBOX_HTTP_PORT']}"
    relay = start_limited(env)
    thin = json.dumps({"id": "evt_1", "type": "v1.billing.meter.error_report_triggered"})
    now = int(time.time())
    deliveries = {
        "not json": ("{not json", now),
        "not an object": ("[1, 2]", now),
        "no type": (json.dumps({"id": "evt_1"}), now),
        "a day ahead": (thin, now + 86_400),
        "a day old": (thin, now - 86_400),
    }
    statuses = {}
    try:
        await until_ready(base, relay)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for name, (body, signed_at) in deliveries.items():
                headers = {"Stripe-Signature": signature_header(body, [SECRET], signed_at)}
                async with session.post(
                    base + "/webhooks/stripe", data=body.encode(), headers=headers
                ) as answer:
                    statuses[name] = answer.status
            # A v1 value that is not ASCII (sent as raw UTF-8 bytes) is a bad signature, not a 500.
            headers = {"Stripe-Signature": f"t={now},v1=\u00e9\u00e9"}
            async with session.post(
                base + "/webhooks/stripe", data=thin.encode(), headers=headers
            ) as answer:
                statuses["non-ascii v1"] = answer.status
    finally:
        lines = stop(relay)
    assert statuses == dict.fromkeys([*deliveries, "non-ascii v1"], 400)
    refused = [line["reason"] for line in lines if line["event"] == "webhook_refused"]
    assert sorted(refused) == ["bad_signature"] + ["malformed"] * 3 + ["stale_signature"] * 2
