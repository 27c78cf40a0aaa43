"""`outbox-relay emulator` / `python -m relay.emulator`: options and a real foreground run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest
import requests
from click.testing import CliRunner

from relay.emulator import EmulatorConfig
from relay.emulator import command as command_module
from relay.emulator.command import emulator, parse_meter

ROOT = Path(__file__).resolve().parents[3]


def test_parse_meter() -> None:
    meter = parse_meter("tokens:last:customer:n")
    assert (meter.event_name, meter.aggregation, meter.customer_key, meter.value_key) == (
        "tokens",
        "last",
        "customer",
        "n",
    )
    assert parse_meter("calls").aggregation == "sum"
    with pytest.raises(click.BadParameter):
        parse_meter("calls:median")


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[EmulatorConfig]:
    configs: list[EmulatorConfig] = []

    async def fake_serve(config: EmulatorConfig) -> None:
        configs.append(config)

    monkeypatch.setattr(command_module, "serve", fake_serve)
    return configs


def test_options_build_the_config(captured: list[EmulatorConfig]) -> None:
    result = CliRunner().invoke(
        emulator,
        [
            "--port",
            "0",
            "--meter",
            "a",
            "--meter",
            "b:count",
            "--customer",
            "cus_x",
            "--rate-limit",
            "0",
            "--rate-limit-test",
            "5",
            "--seed",
            "9",
            "--latency-ms",
            "3",
            "--error-rate",
            "0.1",
            "--concurrency-status",
            "429",
            "--unknown-cancel",
            "accept",
        ],
        env={"STRIPE_WEBHOOK_SECRET": "whsec_from_env"},
    )
    assert result.exit_code == 0, result.output
    [config] = captured
    assert [m.event_name for m in config.meters] == ["a", "b"]
    assert set(config.customers or ()) == {"cus_x"}
    assert (config.rate_limit_live, config.rate_limit_test) == (None, 5)
    assert config.webhook_secret == "whsec_from_env"
    assert config.concurrency_status == 429
    assert config.unknown_cancel == "accept"
    assert config.faults is not None and config.faults.rate_500 == 0.1
    assert config.seed == 9


def test_defaults(captured: list[EmulatorConfig]) -> None:
    result = CliRunner().invoke(emulator, [], env={"STRIPE_WEBHOOK_SECRET": ""})
    assert result.exit_code == 0, result.output
    [config] = captured
    assert config.port == command_module.DEFAULT_PORT
    assert [m.event_name for m in config.meters] == ["api_calls"]
    assert (config.rate_limit_live, config.rate_limit_test) == (1000, 25)
    assert config.faults is None


def test_runs_in_the_foreground_until_sigterm() -> None:
    secret = "whsec_do_not_print_me"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay.emulator",
            "--port",
            "0",
            "--webhook-url",
            "http://127.0.0.1:9/hook",
        ],
        cwd=ROOT,
        env={**os.environ, "STRIPE_WEBHOOK_SECRET": secret},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        base_url = line.rsplit(" ", 1)[-1].strip()
        assert requests.get(f"{base_url}/_emulator/health").json() == {"ok": True}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert secret not in line + output
