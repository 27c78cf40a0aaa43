"""One clock, the database's (corrected by Stripe's): the relay process runs with its clock ten
minutes ahead or behind (libfaketime), the database and the emulator on the real time. No row
the database accepted fails, no fresh row waits longer than the margin, with either client;
the skew is one log line per clock and a gauge.

Skipped when libfaketime is missing (Debian package `faketime`), except under CI=true, where
that is a failure: the test is the only proof of the invariant against a real process clock.
"""

import json
import os
import signal
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from relay.emulator import Emulator, EmulatorConfig
from tests.acceptance.process.test_process import relay_env, start, wait_for
from tests.support.relay import states

LIBFAKETIME = (
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/faketime/libfaketime.so.1"),
)
MARGIN = timedelta(seconds=60)  # OUTBOX_CLOCK_MARGIN's default
ROWS = 20


def libfaketime() -> Path:
    found = next((path for path in LIBFAKETIME if path.exists()), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("libfaketime is missing: apt-get install faketime")
        pytest.skip("libfaketime is missing (Debian package faketime)")
    return found


def record(database_url: str, prefix: str, age: str) -> None:
    """ROWS facts whose timestamp is `age` before the database's now (inside its window)."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', 'cus_' || g, 1, %s || g,"
            " occurred_at => statement_timestamp() - %s::interval) FROM generate_series(1, %s) g",
            (prefix, age, ROWS),
        )


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def settled(database_url: str) -> bool:
    return not {"pending", "in_flight"} & states(database_url).keys()


@pytest.mark.parametrize("client", ["lean", "sdk"])
@pytest.mark.parametrize("skew", ["+10m", "-10m"])
def test_a_relay_clock_ten_minutes_off_fails_nothing_and_delays_nothing(
    database_url: str, skew: str, client: str
) -> None:
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        env = relay_env(
            database_url,
            emulator,
            LD_PRELOAD=str(libfaketime()),
            FAKETIME=skew,
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            OUTBOX_STRIPE_CLIENT=client,
        )
        base = f"http://127.0.0.1:{env['OUTBOX_HTTP_PORT']}"
        proc = start(env)
        try:
            wait_for(lambda: get(f"{base}/readyz")[0] == 200, timeout=60)
            # 34 d 23 h 55 m old: inside the database's window by 5 minutes (the bug: failed
            # without a call on a host 10 minutes ahead); fresh ones (the bug: held ~6 minutes
            # as "in the future" on a host 10 minutes behind).
            record(database_url, "old", "839 hours 55 minutes")
            record(database_url, "fresh", "0 seconds")
            wait_for(lambda: settled(database_url), timeout=60)
            _, exposed = get(f"{base}/metrics")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert states(database_url) == {"accepted": 2 * ROWS}
        counted = [emulator.counted(f"{prefix}{g}") for prefix in ("old", "fresh")
                   for g in range(1, ROWS + 1)]  # fmt: skip
        assert counted == [1] * 2 * ROWS
    with psycopg.connect(database_url) as conn:
        (slowest,) = conn.execute(
            "SELECT max(accepted_at - created_at) FROM meter_event_outbox"
            " WHERE identifier LIKE 'fresh%%'"
        ).fetchone()  # type: ignore[misc]
    assert slowest <= MARGIN, slowest
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    skewed = sorted(e["clock"] for e in events if e["event"] == "clock_skew")
    assert skewed == ["database", "stripe"], skewed  # once each: the host is the odd one out
    sign = -1 if skew.startswith("+") else 1
    for clock in ("database", "stripe"):
        line = next(
            line
            for line in exposed.splitlines()
            if line.startswith(f'outbox_relay_clock_offset_seconds{{clock="{clock}"}}')
        )
        offset = float(line.split()[-1])
        assert abs(offset - sign * 600) < 30, line
