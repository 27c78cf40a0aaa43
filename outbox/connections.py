"""Run the library's queries on whatever connection the application already holds.

The application's transaction is the point of the outbox, so we never open our own: SQLAlchemy
sessions and connections (sync and async) go through `text()`, psycopg 3 connections and
cursors (and DB-API wrappers such as Django's cursor) through `execute()` directly. Operations
are written once, as generators that yield queries and receive rows, and driven here by a sync
or an async runner, so the logic is not written twice.
"""

import sys
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from outbox.errors import UnsupportedConnection
from outbox.sqlfile import for_psycopg

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Query:
    """One statement with `:name` parameters."""

    sql: str
    params: dict[str, Any]


Steps = Generator[Query, list[tuple[Any, ...]], T]


def _kind(conn: Any) -> str:
    """What `conn` is, cached per type: this runs on every record_usage call."""
    kind = _KINDS.get(type(conn))
    if kind is None:
        kind = _KINDS[type(conn)] = _classify(conn)
    return kind


_KINDS: dict[type, str] = {}


def _classify(conn: Any) -> str:
    """Which driver `conn` belongs to, asking only modules already imported.

    An object of a driver's type means the caller imported that driver's module, so a module
    not yet imported cannot be the answer and is never imported here: importing what the
    caller did not use costs time and can fail (`sqlalchemy.ext.asyncio` raises ImportError
    where greenlet is missing, which would fail a plain psycopg or sync SQLAlchemy caller's
    transaction).
    """
    if _is(conn, "sqlalchemy.orm", "Session") or _is(conn, "sqlalchemy.engine", "Connection"):
        return "sa"
    if _is(conn, "sqlalchemy.ext.asyncio", "AsyncSession", "AsyncConnection"):
        return "sa_async"
    if _is(conn, "psycopg", "Connection"):
        return "psycopg"
    if _is(conn, "psycopg", "AsyncConnection", "AsyncCursor"):
        return "psycopg_async"
    if _is(conn, "psycopg", "Cursor") or _is_dbapi(conn):
        return "dbapi"
    return "unsupported"


def _is(conn: Any, module: str, *names: str) -> bool:
    """`isinstance(conn, module.name)` for any of `names`, False if `module` is not imported
    (or is only partly: a failed import can leave a module without its names)."""
    loaded = sys.modules.get(module)
    types = tuple(t for t in (getattr(loaded, name, None) for name in names) if t is not None)
    return bool(types) and isinstance(conn, types)


def run(conn: Any, steps: Steps[T]) -> T | Awaitable[T]:
    """Drive `steps` on `conn`: returns the result, or an awaitable for async connections."""
    match _kind(conn):
        case "psycopg":  # the common case, kept short: one execute on the connection
            return _drive(
                steps, lambda q: _psycopg_rows(conn.execute(for_psycopg(q.sql), q.params))
            )
        case "sa":
            return _drive(steps, lambda q: _sa_rows(conn.execute(_text(q.sql), q.params)))
        case "sa_async":
            return _drive_async(steps, conn, _run_sa_async)
        case "psycopg_async":
            return _drive_async(steps, conn, _run_psycopg_async)
        case "dbapi":
            return _drive(steps, lambda q: _run_dbapi(conn, q))
    raise UnsupportedConnection(
        f"expected a SQLAlchemy Session/Connection (sync or async) or a psycopg 3 "
        f"connection/cursor, got {type(conn).__name__}"
    )


def _psycopg_rows(cursor: Any) -> list[tuple[Any, ...]]:
    return cursor.fetchall() if cursor.description else []


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def _sa_rows(result: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in result] if result.returns_rows else []


def _is_dbapi(conn: Any) -> bool:
    return callable(getattr(conn, "execute", None)) or callable(getattr(conn, "cursor", None))


def _run_dbapi(conn: Any, query: Query) -> list[tuple[Any, ...]]:
    """A psycopg connection/cursor or a DB-API cursor wrapper (Django's) with pyformat style."""
    if hasattr(conn, "fetchall"):
        conn.execute(for_psycopg(query.sql), query.params)
        return list(conn.fetchall()) if conn.description else []
    if callable(getattr(conn, "cursor", None)):
        with conn.cursor() as cur:
            cur.execute(for_psycopg(query.sql), query.params)
            return list(cur.fetchall()) if cur.description else []
    raise UnsupportedConnection(f"{type(conn).__name__} has no cursor")


async def _run_sa_async(conn: Any, query: Query) -> list[tuple[Any, ...]]:
    return _sa_rows(await conn.execute(_text(query.sql), query.params))


async def _run_psycopg_async(conn: Any, query: Query) -> list[tuple[Any, ...]]:
    import psycopg

    if isinstance(conn, psycopg.AsyncCursor):
        await conn.execute(for_psycopg(query.sql), query.params)
        return list(await conn.fetchall()) if conn.description else []
    async with conn.cursor() as cur:
        await cur.execute(for_psycopg(query.sql), query.params)
        return list(await cur.fetchall()) if cur.description else []


def _drive(steps: Steps[T], execute: Any) -> T:
    try:
        query = next(steps)
        while True:
            query = steps.send(execute(query))
    except StopIteration as done:
        result: T = done.value  # the generator's return value (StopIteration is untyped)
        return result


async def _drive_async(steps: Steps[T], conn: Any, execute: Any) -> T:
    try:
        query = next(steps)
        while True:
            query = steps.send(await execute(conn, query))
    except StopIteration as done:
        result: T = done.value  # the generator's return value (StopIteration is untyped)
        return result
