"""The relay's psycopg pool and the named queries of relay/db/queries.sql (run by
relay/db/store.py).

Connections are autocommit: every statement is one short transaction, so the relay never
holds a transaction open while it talks to Stripe.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from outbox.dburl import psycopg_url
from outbox.sqlfile import load

QUERIES = load("relay.db", "queries.sql")


# Timestamps arrive in UTC whatever the server's TimeZone: psycopg then loads them with
# datetime.timezone.utc, about three times cheaper than with a named zone (the claim returns
# five per row), and they compare and subtract faster afterwards. PgBouncer keeps the setting
# per client (TimeZone is one of the parameters it tracks).
SET_UTC = "SET TIME ZONE 'UTC'"


async def _configure(conn: AsyncConnection[TupleRow]) -> None:
    """Autocommit (every statement its own short transaction), UTC (SET_UTC) and orjson for
    the jsonb columns still read as jsonb (the console, `inspect`, webhooks); the hot claim
    reads the payload as text (relay/stripe/calls.py splices it)."""
    await conn.set_autocommit(True)
    await conn.execute(SET_UTC)
    set_json_loads(orjson.loads, conn)


def make_pool(database_url: str, max_size: int = 8) -> AsyncConnectionPool:
    """A pool of autocommit connections (not opened yet: `await pool.open()`).

    Eight by default: a walk, two claims, two outcome writes, upkeep, a webhook and a readiness
    probe can all run at once.
    """
    return _pool(database_url, max_size, _configure, "outbox-relay")


def _pool(
    database_url: str,
    max_size: int,
    configure: Callable[[AsyncConnection[TupleRow]], Awaitable[None]],
    name: str,
    **options: Any,
) -> AsyncConnectionPool:
    """Not opened yet: `await pool.open()` (inside the event loop that will use it)."""
    return AsyncConnectionPool(
        psycopg_url(database_url),
        min_size=1,
        max_size=max_size,
        configure=configure,
        open=False,
        name=name,
        **options,
    )


# The console and /metrics read through a pool of their own: however many people load the
# console, or however slow one of its statements gets on a large table, the relay's pool (claims,
# outcome writes, /readyz) keeps its connections. Each statement is cut off after this long.
READER_POOL_SIZE = 2
READER_STATEMENT_TIMEOUT_MS = 2000


def make_reader_pool(
    database_url: str,
    max_size: int = READER_POOL_SIZE,
    statement_timeout_ms: int = READER_STATEMENT_TIMEOUT_MS,
) -> AsyncConnectionPool:
    """The console's and /metrics' own small pool, with a statement timeout (not opened yet)."""

    async def configure(conn: AsyncConnection[TupleRow]) -> None:
        await _configure(conn)
        await conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")

    return _pool(
        database_url,
        max_size,
        configure,
        "outbox-relay-console",
        kwargs={"application_name": "outbox-relay-console"},
        timeout=5.0,
    )
