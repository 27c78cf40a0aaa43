"""Small helpers shared by tests (plain functions, no fixtures)."""

import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg


def rows(conn: psycopg.Connection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def scalar(conn: psycopg.Connection, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def outbox_count(conn: psycopg.Connection, identifier: str | None = None) -> int:
    if identifier is None:
        return scalar(conn, "SELECT count(*) FROM meter_event_outbox")
    return scalar(conn, "SELECT count(*) FROM meter_event_outbox WHERE identifier = %s", identifier)


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_concurrently(
    database_url: str, steps: list[tuple[int, Callable[[psycopg.Connection, int], None]]]
) -> list[BaseException]:
    """Each (n, step) on its own thread and autocommit connection, step(conn, 0..n-1); waits
    for all and returns what any of them raised (a test asserts there is nothing)."""
    errors: list[BaseException] = []

    def repeat(n: int, step: Callable[[psycopg.Connection, int], None]) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                for i in range(n):
                    step(conn, i)
        except BaseException as err:  # returned to the test, which asserts none happened
            errors.append(err)

    threads = [threading.Thread(target=repeat, args=(n, step)) for n, step in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
