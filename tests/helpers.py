"""Small helpers shared by tests (plain functions, no fixtures)."""

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
