"""Operator tasks behind `status`, `inspect`, `retry`, `cancel` and `prune`.

Each is a few short statements from relay/queries.sql on a plain psycopg connection; none
counts history (the status view reads maintained counters and the small partial indexes).
"""

from datetime import UTC, datetime
from typing import Any

import psycopg

import outbox
from outbox.dburl import psycopg_url
from outbox.sqlfile import for_psycopg
from relay.db import QUERIES
from relay.share import LIVE_S


def _fetch(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None) -> list:
    cur = conn.execute(for_psycopg(QUERIES[name]), params or {})
    return cur.fetchall() if cur.description else []


def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(psycopg_url(database_url), autocommit=True)


def status(conn: psycopg.Connection) -> dict[str, Any]:
    """Counts per state, age of the oldest due row, failures by code, live relays."""
    counts = {state: n for state, n, _ in _fetch(conn, "status_counts")}
    try:
        relays = _fetch(conn, "live_relays", {"stale_seconds": LIVE_S})
    except psycopg.errors.UndefinedTable:  # schema before 0002: `migrate` adds the table
        relays = None
    (oldest_due,) = _fetch(conn, "oldest_due")[0]
    now = datetime.now(UTC)
    return {
        "counts": counts,
        "oldest_due_age_seconds": (now - oldest_due).total_seconds() if oldest_due else 0.0,
        "failures_by_code": [
            {"state": state, "code": code, "count": n}
            for state, code, n in _fetch(conn, "failures_by_code")
        ],
        "relays": None
        if relays is None
        else [
            {"relay_id": relay_id, "started_at": started.isoformat()}
            for relay_id, started, _ in relays
        ],
    }


def inspect(conn: psycopg.Connection, identifier: str) -> dict[str, Any] | None:
    """Everything known about one usage fact (invariant 8), or None."""
    cur = conn.execute(for_psycopg(QUERIES["inspect"]), {"identifier": identifier})
    values = cur.fetchone()
    if values is None:
        return None
    return dict(zip([c.name for c in cur.description or []], values, strict=True))


def retry(
    conn: psycopg.Connection,
    *,
    identifier: str | None,
    code: str | None,
    force: bool,
    window_hours: float,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Requeue failed/rejected rows; returns (requeued, refused-as-unsafe)."""
    params = {
        "identifier": identifier,
        "code": code,
        "force": force,
        "window_seconds": window_hours * 3600,
    }
    refused = (
        []
        if force
        else [
            {"identifier": i, "state": st, "code": c, "first_attempt_at": f}
            for i, st, c, f in _fetch(conn, "retry_refused", params)
        ]
    )
    requeued = [r[0] for r in _fetch(conn, "retry", params)]
    return requeued, refused


def cancel(conn: psycopg.Connection, identifier: str) -> outbox.CancelRequest:
    """The operator's cancel: the same path applications use (outbox.cancel_usage)."""
    result = outbox.cancel_usage(conn, identifier=identifier)
    assert isinstance(result, outbox.CancelRequest)
    return result


def prune(
    conn: psycopg.Connection,
    *,
    older_than_days: float,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> int:
    """Delete accepted/cancelled rows older than the retention, in bounded batches."""
    total = batches = 0
    while max_batches is None or batches < max_batches:
        deleted = len(
            _fetch(
                conn, "prune", {"age_seconds": older_than_days * 86400, "batch_size": batch_size}
            )
        )
        total += deleted
        batches += 1
        if deleted < batch_size:
            break
    return total
