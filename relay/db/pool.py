"""The relay's psycopg pool and the named queries of relay/db/queries.sql (run by
relay/db/store.py).

Connections are autocommit: every statement is one short transaction, so the relay never
holds a transaction open while it talks to Stripe.
"""

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
    return AsyncConnectionPool(
        psycopg_url(database_url),
        min_size=1,
        max_size=max_size,
        configure=_configure,
        open=False,
        name="outbox-relay",
    )
