"""The processes of a chaos run: the Stripe emulator (steered over its admin HTTP API) and
the relay replicas (killed and restarted on purpose).

Every process is started by this module and stopped by it in a `finally`; nothing here
outlives the run.
"""

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import free_port, wait_port

API_KEY = "sk_live_chaos"  # live mode: Stripe's 1,000 calls/s, and the relay's default
STOP_TIMEOUT_S = 30.0
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit)\b")


def outbox_relay(*args: str) -> list[str]:
    """The `outbox-relay` command line, run by this interpreter."""
    return [sys.executable, "-m", "relay.cli", *args]


def _stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class EmulatorAdmin:
    """The emulator's `/_emulator/*` endpoints (loopback, no auth)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_emulator/{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def set_faults(self, faults: dict[str, Any]) -> None:
        self.call("POST", "faults", faults)

    def fail_next(self, n: int, kind: str, path: str) -> None:
        self.call("POST", "fail_next", {"n": n, "kind": kind, "path": path})

    def start_outage(self, seconds: float) -> None:
        self.call("POST", "outage", {"duration_s": seconds, "mode": "503"})

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "stats")

    def ledger(self) -> dict[str, Any]:
        return self.call("GET", "ledger")


@contextlib.contextmanager
def emulator(log_dir: Path, seed: int, rate_limit: int) -> Iterator[EmulatorAdmin]:
    """`outbox-relay emulator` on a free port with Stripe's live rate limit."""
    port = free_port()
    args = ["emulator", "--port", str(port), "--seed", str(seed)]
    args += ["--rate-limit-live", str(rate_limit)]
    with open(log_dir / "emulator.log", "ab") as log:
        proc = subprocess.Popen(
            outbox_relay(*args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_port(port, timeout=60)
        yield EmulatorAdmin(f"http://127.0.0.1:{port}")
    finally:
        _stop(proc)


@dataclass
class Replicas:
    """N `outbox-relay run` processes; each kill is followed by a restart under a new id."""

    database_url: str
    api_base: str
    mode: str
    log_dir: Path
    env: dict[str, str]
    count: int = 3
    rng: random.Random = field(default_factory=random.Random)
    procs: list[subprocess.Popen | None] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    generation: int = 0
    kills: int = 0
    unexpected_exits: list[str] = field(default_factory=list)

    def start_all(self) -> None:
        self.procs = [None] * self.count
        self.ids = [""] * self.count
        for slot in range(self.count):
            self.start(slot)

    def start(self, slot: int) -> None:
        self.generation += 1
        relay_id = f"chaos-{self.mode}-r{slot}-{self.generation}"
        self.ids[slot] = relay_id
        env = {
            **os.environ,
            "OUTBOX_DATABASE_URL": self.database_url,
            "OUTBOX_STRIPE_API_BASE": self.api_base,
            "OUTBOX_STRIPE_API_MODE": self.mode,
            "STRIPE_API_KEY": API_KEY,
            "OUTBOX_RELAY_ID": relay_id,
            "OUTBOX_HTTP_PORT": str(free_port()),
            "OUTBOX_LOG_LEVEL": "WARNING",
            **self.env,
        }
        with open(self.log_dir / f"{relay_id}.log", "ab") as log:
            self.procs[slot] = subprocess.Popen(
                outbox_relay("run"),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_random(self) -> int | None:
        """SIGKILL one running replica; returns its slot (to restart it later)."""
        running = [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]
        if not running:
            return None
        slot = self.rng.choice(running)
        proc = self.procs[slot]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.procs[slot] = None
        self.kills += 1
        return slot

    def revive_killed(self) -> None:
        """Restart the first killed slot, under a new relay id."""
        for slot, proc in enumerate(self.procs):
            if proc is None:
                self.start(slot)
                return

    def revive_exited(self) -> None:
        """Restart a replica that exited by itself (it should not: that is a finding)."""
        for slot, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                relay_id = self.ids[slot]
                last = _last_line(self.log_dir / f"{relay_id}.log")
                self.unexpected_exits.append(f"{relay_id} exit {proc.returncode}: {last}")
                self.start(slot)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            if proc is not None:
                _stop(proc, max(0.1, deadline - time.monotonic()))
        self.procs = [None] * self.count


def _last_line(path: Path, limit: int = 200) -> str:
    """Why a replica exited: the last exception line of its log (else its last line)."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "?"
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    chosen = errors[-1] if errors else lines[-1] if lines else "(no output)"
    return chosen[:limit]
