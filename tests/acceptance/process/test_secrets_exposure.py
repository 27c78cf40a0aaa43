"""Secrets stay out of `ps` and core dumps: a password given as a flag is warned about (never
echoed), and `run` makes itself non-dumpable with no core file limit."""

import resource
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from tests.acceptance.process.test_process import CLI, relay_env, wait_for
from tests.integration.relay.test_operator_commands import cli

PASSWORD = "hunter2-Secret"


def test_a_password_in_a_flag_is_warned_about_an_env_url_is_not(database_url: str) -> None:
    parts = urllib.parse.urlsplit(database_url)  # also the embedded server's `postgres:@/db?host=`
    user, _, host = parts.netloc.rpartition("@")
    with_password = urllib.parse.urlunsplit(
        parts._replace(netloc=f"{user.partition(':')[0]}:{PASSWORD}@{host}")
    )
    flagged = cli(database_url, "status", "--database-url", with_password)
    assert flagged.returncode == 0, flagged.stderr
    assert "warning: --database-url holds a password" in flagged.stderr
    assert PASSWORD not in flagged.stdout + flagged.stderr
    from_env = cli(with_password, "status")
    assert from_env.returncode == 0 and "warning" not in from_env.stderr
    no_password = cli(database_url, "status", "--database-url", database_url)
    assert "warning" not in no_password.stderr


def test_the_hardening_call_makes_a_process_non_dumpable() -> None:
    probe = (
        "import ctypes, resource; from relay.core.hardening import no_core_dumps;"
        "print(no_core_dumps(), ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),"
        " resource.getrlimit(resource.RLIMIT_CORE))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "0", "(0,", "0)"]


def _core_limit(pid: int) -> list[str]:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    (line,) = [x for x in limits if x.startswith("Max core file size")]
    return line.split()[4:6]


def _healthy(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _cores_allowed() -> None:
    """The relay starts where core files are on (as on a host with a crash collector)."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def test_run_has_no_core_dumps(database_url: str, emulator) -> None:
    env = relay_env(database_url, emulator)
    relay = subprocess.Popen(
        [*CLI, "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_cores_allowed,
    )
    try:
        wait_for(lambda: relay.poll() is not None or _healthy(env["OUTBOX_HTTP_PORT"]))
        assert relay.poll() is None, relay.communicate()
        assert _core_limit(relay.pid) == ["0", "0"]  # set before any secret was read
    finally:
        relay.terminate()
        relay.communicate(timeout=60)
