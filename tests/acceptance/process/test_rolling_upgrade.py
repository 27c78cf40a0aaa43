"""Rolling upgrade: a relay of the previous release (leases in the row, `in_flight`) beside this
release's relay (leases in the UNLOGGED lease table, migration outbox_0020) on one database.
Neither sends a row the other holds, and neither loses one: the previous release's claim skips
rows with a live lease (a BEFORE UPDATE trigger), this release's claim skips `in_flight` rows
with a live deadline and takes over expired ones."""

import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay.emulator import Emulator, EmulatorConfig, Faults, Latency
from tests.acceptance.process.test_process import relay_env, wait_for
from tests.helpers import free_port
from tests.support.relay import insert_usage, states

# The release before the lease moved out of the row (main when outbox_0020 was written).
PREVIOUS_RELEASE = "bf51269"
REPO = Path(__file__).resolve().parents[3]
V1_PATH = "POST /v1/billing/meter_events"


@pytest.fixture(scope="module")
def previous_release() -> Iterator[Path]:
    """The previous release's packages, extracted from this repository's history."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git history for the previous release")
    with tempfile.TemporaryDirectory(prefix="outbox-previous-") as tmp:
        archive = Path(tmp) / "previous.tar"
        subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "archive",
                "-o",
                str(archive),
                PREVIOUS_RELEASE,
                "relay",
                "outbox",
                "alembic",
            ],
            check=True,
        )
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


def start_relay(tree: Path, env: dict[str, str], relay_id: str) -> subprocess.Popen[str]:
    """`outbox-relay run` from `tree`'s packages (its own PYTHONPATH and working directory)."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "run"],
        env={
            **env,
            "PYTHONPATH": str(tree),
            "OUTBOX_RELAY_ID": relay_id,
            "OUTBOX_HTTP_PORT": str(free_port()),
        },
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    return stderr


def lane_conflicts_as_429() -> EmulatorConfig:
    """A (customer, meter) conflict answers 429, so a 409 means only one thing: a second call
    under an idempotency key whose first call is still executing (one row sent twice at once)."""
    return EmulatorConfig(rate_limit_test=None, concurrency_status=429)


def test_previous_and_new_relay_share_a_backlog_without_sending_a_row_twice(
    database_url: str, previous_release: Path
) -> None:
    n = 400
    with Emulator(lane_conflicts_as_429()) as emulator:
        emulator.set_faults(Faults(latency=Latency.fixed(150)))  # a backlog for both
        identifiers = insert_usage(database_url, n, customers=20)
        # Each relay holds a few lanes (v1: one call per lane), so neither takes them all.
        env = relay_env(database_url, emulator, OUTBOX_CONCURRENCY="5")
        old = start_relay(previous_release, env, "relay-previous")
        wait_for(lambda: emulator.stats()["in_flight"] > 0)  # the previous release is sending
        new = start_relay(REPO, env, "relay-new")
        try:
            wait_for(lambda: states(database_url) == {"accepted": n}, timeout=120)
        finally:
            stop(old), stop(new)
        assert [i for i in identifiers if emulator.counted(i) != 1] == []
        assert emulator.requests(V1_PATH, 409) == 0  # no row was ever sent twice at once
        assert emulator.requests(V1_PATH, 200) == n  # nor twice one after the other
    with psycopg.connect(database_url) as conn:
        senders = dict(
            conn.execute("SELECT leased_by, count(*) FROM meter_event_outbox GROUP BY 1")
        )
    assert set(senders) == {"relay-previous", "relay-new"}, senders  # both took part


@pytest.mark.parametrize("dies", ["previous", "new"])
def test_a_dead_relays_rows_are_taken_over_by_the_other_release(
    database_url: str, previous_release: Path, dies: str
) -> None:
    """The relay holding the calls is killed mid-call (SIGKILL: no outcome written); the other
    release takes its rows over once their leases expire, and each is counted once."""
    trees = {"previous": previous_release, "new": REPO}
    survivor = "new" if dies == "previous" else "previous"
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        emulator.set_faults(Faults(latency=Latency.fixed(3000)))
        identifiers = insert_usage(database_url, 3, customers=3)
        env = relay_env(
            database_url, emulator, OUTBOX_LEASE_SECONDS="3", OUTBOX_REQUEST_TIMEOUT="1.5"
        )
        doomed = start_relay(trees[dies], env, f"relay-{dies}")
        try:
            wait_for(lambda: emulator.stats()["in_flight"] >= 3)
        finally:
            doomed.kill()
            doomed.wait()
        assert states(database_url) == {"in_flight": 3}
        emulator.clear_faults()
        other = start_relay(trees[survivor], env, f"relay-{survivor}")
        try:
            wait_for(lambda: states(database_url) == {"accepted": 3}, timeout=60)
        finally:
            stop(other)
        assert [emulator.counted(i) for i in identifiers] == [1, 1, 1]
