"""The relay as a real process: SIGKILL mid-call loses nothing and double-counts nothing;
SIGTERM exits 0; webhooks mark rejected rows; operator commands."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

import outbox
from relay.emulator import Emulator, EmulatorConfig, Faults, Latency
from tests.helpers import free_port
from tests.support.relay import TEST_KEY, insert_usage, row, states

CLI = [sys.executable, "-m", "relay.cli"]


def relay_env(database_url: str, emulator: Emulator, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OUTBOX_DATABASE_URL": database_url,
        "STRIPE_API_KEY": TEST_KEY,
        "OUTBOX_STRIPE_API_BASE": emulator.base_url,
        "OUTBOX_RATE_LIMIT": "1000",
        "OUTBOX_POLL_INTERVAL": "0.2",
        "OUTBOX_HTTP_PORT": str(free_port()),
        **extra,
    }


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, timeout: float = 60.0) -> None:
    """Poll an external condition (another process's effect) with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(condition)
        time.sleep(0.05)


def test_sigkill_mid_call_then_another_replica_counts_once(database_url: str) -> None:
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        emulator.set_faults(Faults(latency=Latency.fixed(3000)))
        insert_usage(database_url, 3, customers=3)
        env = relay_env(
            database_url, emulator, OUTBOX_LEASE_SECONDS="3", OUTBOX_REQUEST_TIMEOUT="1.5"
        )
        first = start(env)
        try:
            wait_for(lambda: emulator.stats()["in_flight"] >= 3)  # Stripe is processing them
        finally:
            first.kill()  # SIGKILL: no outcome is ever written by this process
            first.wait()
        assert states(database_url) == {"in_flight": 3}
        emulator.clear_faults()
        second = start(relay_env(database_url, emulator))
        try:
            wait_for(lambda: states(database_url) == {"accepted": 3})
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=20) == 0
        assert [emulator.counted(f"u{i}") for i in (1, 2, 3)] == [1, 1, 1]


def test_sigterm_exits_zero_and_logs_no_secrets(database_url: str) -> None:
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        insert_usage(database_url, 2, customers=2)
        env = relay_env(database_url, emulator, STRIPE_WEBHOOK_SECRET="whsec_supersecret")
        proc = start(env)
        wait_for(lambda: states(database_url) == {"accepted": 2})
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {"relay_started", "outcomes", "relay_stopped"} <= {e["event"] for e in events}
    assert TEST_KEY not in stderr and "whsec_supersecret" not in stderr


def signal_lines(stderr: str) -> list[tuple[str, str]]:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [(e["signal"], e["action"]) for e in events if e["event"] == "signal_received"]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
def test_sighup_and_sigquit_drain_like_sigterm(database_url: str, sig: signal.Signals) -> None:
    """Sent while calls are in flight: the relay drains (the calls end, their outcomes are
    written) and exits 0, leaving no row in flight for its lease to expire."""
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        emulator.set_faults(Faults(latency=Latency.fixed(1500)))
        insert_usage(database_url, 3, customers=3)
        proc = start(relay_env(database_url, emulator))
        try:
            wait_for(lambda: emulator.stats()["in_flight"] >= 3)
        finally:
            proc.send_signal(sig)
            _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "in_flight" not in states(database_url)
    assert signal_lines(stderr) == [(sig.name, "drain")]


def test_sigusr1_and_sigusr2_are_logged_and_ignored(database_url: str) -> None:
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        insert_usage(database_url, 1, prefix="before")
        proc = start(relay_env(database_url, emulator))
        try:
            wait_for(lambda: states(database_url) == {"accepted": 1})
            proc.send_signal(signal.SIGUSR1)
            proc.send_signal(signal.SIGUSR2)
            insert_usage(database_url, 1, prefix="after")  # still running: sent too
            wait_for(lambda: states(database_url) == {"accepted": 2})
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert sorted(signal_lines(stderr)) == [
        ("SIGTERM", "drain"),
        ("SIGUSR1", "ignored"),
        ("SIGUSR2", "ignored"),
    ]


async def test_error_report_webhook_marks_rows_rejected(database_url: str) -> None:
    """Invariant 3: 200 means accepted for processing; Stripe's later error report -> rejected."""
    from relay import daemon
    from relay.core.config import Settings

    port = free_port()
    secret = "whsec_relaytest"
    config = EmulatorConfig(
        rate_limit_test=None,
        customers={"cus_real"},
        webhook_secret=secret,
        webhook_url=f"http://127.0.0.1:{port}/webhooks/stripe",
        error_report_delay=0.05,
    )
    async with Emulator(config) as emulator:
        with psycopg.connect(database_url) as conn:
            for customer in ("cus_real", "cus_ghost"):
                outbox.record_usage(
                    conn,
                    event_name="api_calls",
                    customer=customer,
                    value=1,
                    identifier=f"id-{customer}",
                )
        settings = Settings(
            database_url=database_url,
            stripe_api_key=TEST_KEY,
            stripe_api_base=emulator.base_url,
            stripe_webhook_secret=secret,
            http_port=port,
            poll_interval=0.2,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.serve(settings, stop))
        try:
            await _until(lambda: row(database_url, "id-cus_ghost")["state"] == "rejected")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    ghost = row(database_url, "id-cus_ghost")
    assert ghost["last_error_code"] == "meter_event_customer_not_found"
    assert row(database_url, "id-cus_real")["state"] == "accepted"


async def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)


async def test_cancel_after_acceptance_sends_an_adjustment(database_url: str) -> None:
    from tests.support.relay import make_settings, running_relay

    async with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        insert_usage(database_url, 2, customers=1)
        settings = make_settings(database_url, emulator)
        async with running_relay(settings) as relay:
            await relay.until(lambda: _async(states(database_url) == {"accepted": 2}))
            with psycopg.connect(database_url) as conn:
                request = outbox.cancel_usage(conn, identifier="u1")
            assert (request.state, request.action) == ("pending", "cancel")
            await relay.until(lambda: _async(row(database_url, "u1")["state"] == "cancelled"))
        assert emulator.total("api_calls", "cus_1") == 1  # u2 only
        assert row(database_url, "u1")["cancelled_at"] is not None


async def _async(value: bool) -> bool:
    return value


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUTBOX_DATABASE_URL": database_url}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_status_inspect_retry_cancel_prune_commands(database_url: str, db) -> None:
    insert_usage(database_url, 3, customers=3)
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', attempts = 1, last_error_code = 'boom',"
        " first_attempt_at = now() - interval '21 hours' WHERE identifier = 'u1'"
    )
    db.execute(
        "UPDATE meter_event_outbox SET state = 'failed', attempts = 1, last_error_code = 'boom',"
        " first_attempt_at = now() WHERE identifier = 'u2'"
    )
    status = json.loads(run_cli(database_url, "status", "--json").stdout)
    assert status["counts"]["failed"] == 2 and status["counts"]["pending"] == 1
    assert status["failures_by_code"] == [{"state": "failed", "code": "boom", "count": 2}]
    assert status["relays"] == []  # none running
    inspected = json.loads(run_cli(database_url, "inspect", "u2", "--json").stdout)
    assert inspected["last_error_code"] == "boom" and inspected["attempts"] == 1
    assert run_cli(database_url, "inspect", "nope").returncode == 1

    retried = run_cli(database_url, "retry", "--code", "boom")
    assert retried.returncode == 3  # u1 refused: a resend could double-count
    assert "requeued 1" in retried.stdout and "u1" in retried.stderr
    assert row(database_url, "u2")["state"] == "pending"
    assert row(database_url, "u2")["key_generation"] == 1  # the old key may cache an error
    assert row(database_url, "u1")["state"] == "failed"
    assert run_cli(database_url, "retry", "u1", "--force").returncode == 0
    assert row(database_url, "u1")["state"] == "pending"

    assert "state=cancelled" in run_cli(database_url, "cancel", "u3").stdout
    db.execute(
        "UPDATE meter_event_outbox SET state = 'accepted', updated_at = now() - "
        "interval '40 days' WHERE identifier IN ('u1', 'u2')"
    )
    pruned = run_cli(database_url, "prune", "--older-than-days", "35", "--batch-size", "1", "--yes")
    assert "deleted 2" in pruned.stdout
    assert states(database_url) == {"cancelled": 1}


@pytest.mark.parametrize("args", [["run"], ["status"]])
def test_commands_explain_missing_configuration(args: list[str]) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("OUTBOX_DATABASE_URL", "STRIPE_API_KEY")
    }
    out = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "OUTBOX_DATABASE_URL" in out.stderr


def test_run_refuses_a_schema_older_than_the_relay(database_url: str) -> None:
    """The relay needs every table of its migrations (0002: the relays sharing the limit)."""
    from relay.db import migrate

    migrate.downgrade(database_url, "outbox_0001")
    with Emulator(EmulatorConfig()) as emulator:
        out = subprocess.run(
            [*CLI, "run"],
            env=relay_env(database_url, emulator),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2
    assert "schema is at outbox_0001" in out.stderr and "outbox-relay migrate" in out.stderr
    status = json.loads(run_cli(database_url, "status", "--json").stdout)
    assert status["relays"] is None  # unknown, not an error


def test_a_second_relay_with_the_same_id_exits_2_and_the_first_keeps_running(
    database_url: str,
) -> None:
    """Two processes with one relay id (invariant 13): the newcomer refuses to start with one
    line naming the id; the running relay keeps its share and goes on sending."""
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        first = start(relay_env(database_url, emulator, OUTBOX_RELAY_ID="replica-1"))
        try:
            wait_for(lambda: _live_relays(database_url) == ["replica-1"])
            second = subprocess.run(
                [*CLI, "run"],
                env=relay_env(database_url, emulator, OUTBOX_RELAY_ID="replica-1"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 2
            assert "another relay is running with OUTBOX_RELAY_ID='replica-1'" in second.stderr
            insert_usage(database_url, 2)
            wait_for(lambda: states(database_url) == {"accepted": 2})
            assert _live_relays(database_url) == ["replica-1"]
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0


def _live_relays(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [r for (r,) in conn.execute("SELECT relay_id FROM meter_event_outbox_relays")]
