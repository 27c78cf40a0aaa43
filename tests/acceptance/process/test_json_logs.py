"""Every line the relay writes is one JSON object, including what libraries log through the
standard `logging` module: alembic's migration context at startup, psycopg_pool discarding
connections the server closed, and the tracebacks of the relay's own failures."""

import psycopg

from relay.emulator import Emulator
from tests.acceptance.process.test_http import emulator, get, start_limited, stop, until_ready
from tests.acceptance.process.test_process import relay_env

__all__ = ["emulator"]  # the fixture


async def test_library_lines_and_tracebacks_are_json_lines(
    database_url: str, pg_admin_url: str, emulator: Emulator
) -> None:
    env = relay_env(database_url, emulator, OUTBOX_LOG_LEVEL="DEBUG")
    base = f"http://127.0.0.1:{env['OUTBOX_HTTP_PORT']}"
    relay = start_limited(env)
    try:
        await until_ready(base, relay)
        name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(  # the database server drops every connection of the relay
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        for _ in range(5):  # each probe takes a pool connection; dead ones are discarded
            await get(base, "/readyz")
        await until_ready(base, relay)
    finally:
        lines = stop(relay)  # parses every line as JSON
    loggers = {line.get("logger") for line in lines}
    assert {"alembic.runtime.migration", "psycopg.pool"} <= loggers, loggers
