"""A private PostgreSQL cluster for the chaos run.

The run crashes and restarts its database on purpose, so it must never use a server anyone
else relies on: it creates its own cluster (Debian's `pg_createcluster`, trust auth, a free
port, started by hand), and removes it at the end, on failure and on Ctrl-C too.
"""

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg

from bench.common import free_port

PG_ROOT = Path("/usr/lib/postgresql")
# Three relays (8 connections each), the writers, the harness and a restarted relay that
# overlaps its killed predecessor's connections for a moment; and room for a few prepared
# transactions (the crash test of the tallies holds one across the crash).
SERVER_OPTIONS = ("max_connections=200", "shared_buffers=128MB", "max_prepared_transactions=8")


class PrivateCluster:
    """One `pg_createcluster` cluster owned by this process (named after its pid)."""

    def __init__(self, version: str, name: str, port: int) -> None:
        self.version = version
        self.name = name
        self.port = port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            ["pg_ctlcluster", self.version, self.name, *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        self._ctl("start")

    def crash_stop(self) -> None:
        """SIGQUIT-style immediate stop: no checkpoint, crash recovery on the next start."""
        self._ctl("stop", "-m", "immediate")

    def restart_fast(self) -> None:
        """Fast restart: open sessions are terminated, then a clean shutdown and start."""
        self._ctl("restart", "-m", "fast")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop(self) -> None:
        subprocess.run(
            ["pg_dropcluster", "--stop", self.version, self.name],
            check=False,
            capture_output=True,
            timeout=120,
        )


def newest_version() -> str:
    versions = sorted((p.name for p in PG_ROOT.iterdir() if p.name.isdigit()), key=int)
    if not versions:
        raise SystemExit(f"no PostgreSQL server under {PG_ROOT}: install postgresql")
    return versions[-1]


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started cluster on a free port, removed when the block exits (however it exits)."""
    if shutil.which("pg_createcluster") is None:
        raise SystemExit("pg_createcluster not found: install postgresql-common (Debian/Ubuntu)")
    cluster = PrivateCluster(newest_version(), f"chaos_{os.getpid()}", free_port())
    create = ["pg_createcluster", cluster.version, cluster.name, "-p", str(cluster.port)]
    options = [arg for option in SERVER_OPTIONS for arg in ("-o", option)]
    try:
        try:
            subprocess.run(
                [*create, "--start-conf=manual", *options, "--", "-A", "trust"],
                check=True,
                capture_output=True,
                timeout=300,
            )
            cluster.start()
        except subprocess.CalledProcessError as exc:
            why = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise SystemExit(
                f"could not create a private PostgreSQL cluster ({why[-1] if why else exc}); "
                "run as root or the postgres user"
            ) from None
        yield cluster
    finally:
        cluster.drop()
