"""Small helpers shared by tests (plain functions, no fixtures)."""

import socket
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
