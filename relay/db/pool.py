"""The relay's psycopg pool and the named queries of relay/db/queries.sql (run by
relay/db/store.py).

Connections are autocommit: every statement is one short transaction, so the relay never
holds a transaction open while it talks to Stripe.
"""

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from psycopg import AsyncConnection, Connection, DataError, IsolationLevel
from psycopg.abc import Buffer
from psycopg.rows import TupleRow
from psycopg.types.datetime import TimestamptzLoader
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

# Server-side prepared statements (OUTBOX_DATABASE_PREPARE): "auto" keeps them on a direct
# connection (they save PostgreSQL a parse and plan per statement) and turns them off behind a
# pooler; "on" and "off" force either. A pooler in transaction mode hands each transaction to
# whichever server connection is free, so a statement psycopg prepared on one is missing (or,
# worse, a different statement of the same name) on the next: PgBouncer before 1.21 cannot
# keep them. The pooler is recognised by the backend pid: PgBouncer gives its clients a cancel
# key of its own, so the pid the connection was told at start is not the server's.
Prepare = Literal["auto", "on", "off"]
PID_SQL = "SELECT pg_backend_pid()"


async def _set_prepare(conn: AsyncConnection[TupleRow], prepare: Prepare) -> bool:
    """Prepares as `prepare` says; True when the connection is pooled (looked at unless "on")."""
    pooled = prepare != "on" and await _behind_pooler(conn)
    if prepare == "off" or pooled:
        conn.prepare_threshold = None
    return pooled


async def _behind_pooler(conn: AsyncConnection[TupleRow]) -> bool:
    row = await (await conn.execute(PID_SQL, prepare=False)).fetchone()
    return row is not None and row[0] != conn.info.backend_pid


def set_prepare_sync(conn: Connection[Any], prepare: Prepare = "auto") -> None:
    """`_set_prepare` for the operator commands' plain connections."""
    if prepare == "off":
        conn.prepare_threshold = None
    elif prepare == "auto":
        row = conn.execute(PID_SQL, prepare=False).fetchone()
        if row is not None and row[0] != conn.info.backend_pid:
            conn.prepare_threshold = None


class AnyTimestamptzLoader(TimestamptzLoader):
    """timestamptz values Python's datetime cannot hold, as its ends instead of an error.

    Nothing in the schema keeps available_at (or another timestamp an owner writes by hand)
    within years 1-9999: 'infinity', '-infinity' or a date BC loaded by psycopg's own loader
    fails the whole statement, so `inspect`, `list` or the console would fail on such a row.
    The operators' connections and the console's pool load them as datetime.max and
    datetime.min (UTC). The relay's own pool keeps psycopg's C loader: this one runs Python
    per value, and the claim's statements never return such a value.
    """

    def load(self, data: Buffer) -> datetime:
        try:
            return super().load(data)
        except DataError:
            text = bytes(data)
            if text.startswith(b"-") or text.endswith(b"BC"):
                return datetime.min.replace(tzinfo=UTC)
            return datetime.max.replace(tzinfo=UTC)


def load_any_timestamp(conn: Connection[Any] | AsyncConnection[Any]) -> None:
    """On `conn`, timestamptz values beyond datetime's years load as its ends (see above)."""
    conn.adapters.register_loader("timestamptz", AnyTimestamptzLoader)


def _configurer(
    prepare: Prepare, *statements: str, any_timestamp: bool = False
) -> Callable[[AsyncConnection[TupleRow]], Awaitable[None]]:
    """Autocommit (every statement its own short transaction), UTC (SET_UTC), prepares as
    `prepare` says, and orjson for the jsonb columns still read as jsonb (the console,
    `inspect`, webhooks); the hot claim reads the payload as text (relay/stripe/calls.py
    splices it). Then `statements` (session settings), in that order, on a direct connection
    only: behind a transaction pooler a SET lands on whichever server connection ran it, and
    stays there for the next client (PgBouncer restores only the parameters it tracks).
    `any_timestamp`: load every timestamptz, infinite ones included (AnyTimestamptzLoader)."""

    async def configure(conn: AsyncConnection[TupleRow]) -> None:
        await conn.set_autocommit(True)
        # Every transaction the relay opens (the claim's two statements) begins READ COMMITTED
        # whatever the database's or role's default: the lease statement must see the leases
        # committed before the claim locked its rows, so it needs a snapshot of its own, taken
        # after those locks (relay/db/queries.sql, `lease`). Sent with each BEGIN, so it also
        # holds behind a transaction pooler.
        await conn.set_isolation_level(IsolationLevel.READ_COMMITTED)
        await conn.execute(SET_UTC, prepare=False)
        pooled = await _set_prepare(conn, prepare)
        set_json_loads(orjson.loads, conn)
        if any_timestamp:
            load_any_timestamp(conn)
        for statement in () if pooled else statements:
            await conn.execute(statement, prepare=False)

    return configure


# The relay's statements are short and run thousands of times: compiling one with LLVM never
# pays. The planner's cost of the v2 claim's top-up grows with the backlog (it cannot know the
# ordered scan stops after :fill rows), so with a backlog of about 100,000 rows and a full
# top-up it passes jit_above_cost (100,000 by default) and each such claim spent about 100 ms
# compiling (bench.relay_throughput (e): 4 claims of 105, 448 ms, 4.5 us per row sent).
NO_JIT = "SET jit = off"


def make_pool(
    database_url: str, max_size: int = 8, prepare: Prepare = "auto"
) -> AsyncConnectionPool:
    """A pool of autocommit connections (not opened yet: `await pool.open()`).

    Eight by default: a walk, two claims, two outcome writes, upkeep, a webhook and a readiness
    probe can all run at once. No JIT on a direct connection (NO_JIT).
    """
    return _pool(database_url, max_size, _configurer(prepare, NO_JIT), "outbox-relay")


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
    prepare: Prepare = "auto",
) -> AsyncConnectionPool:
    """The console's and /metrics' own small pool, with a statement timeout (not opened yet)."""
    return _pool(
        database_url,
        max_size,
        _configurer(
            prepare, f"SET statement_timeout = {int(statement_timeout_ms)}", any_timestamp=True
        ),
        "outbox-relay-console",
        kwargs={"application_name": "outbox-relay-console"},
        timeout=5.0,
    )
