"""Where the tests get PostgreSQL from, and cheap per-test databases.

Order: OUTBOX_TEST_DATABASE_URL if set; else a throwaway container through testcontainers when
a Docker engine answers; else the embedded server from the `pgserver` wheel, so a machine with
only Python runs the suite. Each test gets a fresh database cloned from a migrated template
(CREATE DATABASE ... TEMPLATE), which costs milliseconds instead of a migration run.
"""

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from outbox.dburl import psycopg_url


def admin_execute(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE need that)."""
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def server() -> Iterator[tuple[str, str]]:
    """Yield (admin URL, description) of a PostgreSQL server for this test session."""
    env_url = os.environ.get("OUTBOX_TEST_DATABASE_URL", "").strip()
    if env_url:
        yield env_url, "OUTBOX_TEST_DATABASE_URL"
        return
    if os.environ.get("OUTBOX_TEST_NO_DOCKER") != "1" and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url(), "testcontainers postgres:16"
        return
    with _embedded_server() as url:
        yield url, "embedded pgserver"


# pgserver waits 10 s for `pg_ctl start`; on a loaded 2-core machine (two xdist workers, CI
# beside other work) the start itself can take longer, which failed a whole worker's tests.
PG_CTL_TIMEOUT = 120


@contextlib.contextmanager
def _embedded_server() -> Iterator[str]:
    """One embedded server per test run: xdist workers share it (pgserver counts the processes
    holding a data directory and stops the server with the last one), so a run starts one
    server, not one per worker."""
    import pgserver
    import pgserver.postgres_server as pg_module

    strict_pg_ctl = pg_module.pg_ctl

    def patient_pg_ctl(args: list[str], **kwargs: object) -> str:
        if "timeout" in kwargs:
            kwargs["timeout"] = PG_CTL_TIMEOUT
        result: str = strict_pg_ctl(args, **kwargs)
        return result

    pg_module.pg_ctl = patient_pg_ctl
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        with tempfile.TemporaryDirectory(prefix="outbox-pg-") as datadir:
            pg = pgserver.get_server(datadir, cleanup_mode="stop")
            try:
                yield pg.get_uri()
            finally:
                pg.cleanup()
        return
    shared = Path(tempfile.gettempdir()) / f"outbox-pg-{run_id}"
    shared.mkdir(exist_ok=True)
    pg = pgserver.get_server(shared, cleanup_mode="delete")  # the last worker removes it
    try:
        yield pg.get_uri()
    finally:
        pg.cleanup()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
