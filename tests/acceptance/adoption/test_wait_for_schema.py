"""`run` beside a migration that finishes later (systemd Wants=, a Kubernetes Job): with
OUTBOX_WAIT_FOR_SCHEMA it waits, one log line per check, and starts once migrated; without,
or when the wait runs out, it exits 2 (configuration: the schema is missing)."""

import signal
import subprocess
from collections.abc import Iterator

from relay.emulator import Emulator, EmulatorConfig
from tests.acceptance.process.test_process import relay_env
from tests.support.adoption import CLI, run


def lines(process: subprocess.Popen[str]) -> Iterator[str]:
    assert process.stderr is not None
    yield from process.stderr


def test_run_waits_for_the_schema_then_starts(empty_database_url: str) -> None:
    url = empty_database_url
    with Emulator(EmulatorConfig()) as emulator:
        env = relay_env(url, emulator, OUTBOX_WAIT_FOR_SCHEMA="120")
        relay = subprocess.Popen(
            [*CLI, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            stderr = lines(relay)
            first = next(line for line in stderr if "waiting_for_schema" in line)
            assert "schema is at nothing" in first
            run([*CLI, "migrate"], url)
            assert any("http_listening" in line for line in stderr)
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.communicate(timeout=60)
        assert relay.returncode == 0


def test_run_gives_up_when_the_wait_runs_out(empty_database_url: str) -> None:
    with Emulator(EmulatorConfig()) as emulator:
        env = relay_env(empty_database_url, emulator, OUTBOX_WAIT_FOR_SCHEMA="0.5")
        out = subprocess.run([*CLI, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "run `outbox-relay migrate` first" in out.stderr
