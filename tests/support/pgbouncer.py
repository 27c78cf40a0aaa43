"""Debian's PgBouncer (/usr/sbin/pgbouncer) in front of the test PostgreSQL, on a free port.

`bouncer(admin_url, pool_mode)` starts one with a generated configuration (every database name
goes to the test server, as its user: `auth_type = any`) and yields a `Bouncer` that rewrites a
test database's URL to go through it. A small server pool makes clients share server
connections, as a busy deployment does. Tests skip when the binary is missing, unless CI=true
(then they fail: .ci/run installs it). The benchmark bench/pgbouncer_throughput.py uses it too.
"""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from outbox.dburl import psycopg_url

BINARY = "pgbouncer"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def binary() -> str:
    """The pgbouncer executable; skips (or fails with CI=true) when it is not installed."""
    found = shutil.which(BINARY, path=SEARCH_PATH)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but pgbouncer is missing: .ci/run installs it (apt pgbouncer)")
        pytest.skip("pgbouncer not installed (apt-get install pgbouncer); CI runs these tests")
    return found


@dataclass(frozen=True)
class Bouncer:
    port: int
    pool_mode: str

    def url(self, database_url: str) -> str:
        """`database_url`'s database, reached through this PgBouncer."""
        dbname = conninfo_to_dict(psycopg_url(database_url))["dbname"]
        return f"postgresql://outbox@127.0.0.1:{self.port}/{dbname}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(admin_url: str, port: int, pool_mode: str, pool_size: int) -> str:
    server = conninfo_to_dict(psycopg_url(admin_url))
    target = " ".join(
        f"{key}={server[key]}" for key in ("host", "port", "user", "password") if server.get(key)
    )
    return "\n".join(
        [
            "[databases]",
            f"* = {target}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = any",
            f"pool_mode = {pool_mode}",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 500",
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ]
    )


def _as_user() -> list[str]:
    """PgBouncer refuses to run as root: as root it runs as the postgres user."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["-u", name]
    return []


@contextlib.contextmanager
def bouncer(admin_url: str, pool_mode: str, pool_size: int | None = None) -> Iterator[Bouncer]:
    """A PgBouncer in `pool_mode` (transaction or session), stopped on exit.

    Transaction pooling gets 3 server connections per database (the relay's 8-connection pool
    then shares them); session pooling one per client it may hold at once.
    """
    exe = binary()
    host = str(conninfo_to_dict(psycopg_url(admin_url)).get("host", ""))
    if os.geteuid() == 0 and host.startswith("/"):
        # As root, PgBouncer runs as another user, who cannot enter the embedded server's
        # private socket directory. .ci/run's second pass (a TCP server) runs these tests.
        pytest.skip("PgBouncer cannot reach a root-only Unix socket; run against a TCP server")
    size = pool_size or (3 if pool_mode == "transaction" else 40)
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 (PgBouncer, run as another user, reads its config)
        ini = Path(tmp) / "pgbouncer.ini"
        port = _free_port()
        ini.write_text(_config(admin_url, port, pool_mode, size))
        ini.chmod(0o644)
        proc = subprocess.Popen(
            [exe, *_as_user(), str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _await_listening(proc)
            yield Bouncer(port, pool_mode)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _await_listening(proc: "subprocess.Popen[str]") -> None:
    """Read PgBouncer's log until it says it listens (or it exits: its last lines raised)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "listening on" in line:
            # Keep draining the log so PgBouncer never blocks on a full pipe.
            _drain(proc)
            return
    raise RuntimeError("pgbouncer did not start: " + "".join(seen[-5:]))


def _drain(proc: "subprocess.Popen[str]") -> None:
    """Read the rest of the log in a thread (it ends at EOF, when PgBouncer exits)."""
    stream = proc.stderr
    assert stream is not None
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
