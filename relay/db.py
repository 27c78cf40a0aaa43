"""Thin async database layer: a psycopg pool and the named queries of relay/queries.sql.

Every call here is one short statement in its own transaction (autocommit): the relay never
holds a transaction open while it talks to Stripe (invariant 2).
"""

from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from outbox.dburl import psycopg_url
from outbox.sqlfile import for_psycopg, load

QUERIES = load("relay", "queries.sql")
# Statements whose best plan depends on the parameters: a prepared statement's generic plan
# must guess the size of `claim`'s batch and top-up, and a guess of a thousand rows turned its
# final join into a scan of the whole table. Planned afresh each time (about a millisecond).
PLANNED_EACH_TIME = frozenset({"claim"})


async def _configure(conn: AsyncConnection[TupleRow]) -> None:
    """Autocommit (every statement its own short transaction) and orjson for jsonb columns
    (every claimed row carries its payload: the json module was a visible share of the CPU)."""
    await conn.set_autocommit(True)
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


class Database:
    """Runs named queries; one statement, one implicit transaction."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def fetch(self, name: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            prepare = name not in PLANNED_EACH_TIME
            cur = await conn.execute(for_psycopg(QUERIES[name]), params or {}, prepare=prepare)
            return await cur.fetchall() if cur.description else []

    async def ping(self) -> bool:
        """Readiness: can we run a statement right now?"""
        try:
            async with self.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
            return True
        except Exception:
            return False
