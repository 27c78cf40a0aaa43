"""Operator tasks behind `status`, `inspect`, `retry`, `cancel` and `prune`.

Each is a few short statements from relay/queries.sql on a plain psycopg connection; none
counts history (the status view reads maintained counters and the small partial indexes).
"""

from datetime import UTC, datetime
from typing import Any

import psycopg

import outbox
from outbox.dburl import psycopg_url
from relay.store import SyncStore

# Relays seen within this many seconds hold a share (the relay's OUTBOX_RELAY_STALE_AFTER).
LIVE_SECONDS = 5.0


def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(psycopg_url(database_url), autocommit=True)


def status(conn: psycopg.Connection, stale_seconds: float = LIVE_SECONDS) -> dict[str, Any]:
    """Counts per state, age of the oldest due row, failures by code, why pending rows wait
    (by code and account), live relays."""
    store = SyncStore(conn)
    counts = {c.state: c.n for c in store.status_counts()}
    relays: list[Any] | None
    try:
        relays = store.live_relays(stale_seconds)
    except psycopg.errors.UndefinedTable:  # schema before 0002: `migrate` adds the table
        relays = None
    oldest_due = store.oldest_due()
    now = datetime.now(UTC)
    return {
        "counts": counts,
        "oldest_due_age_seconds": (now - oldest_due).total_seconds() if oldest_due else 0.0,
        "failures_by_code": [
            {"state": f.state, "code": f.code, "count": f.n} for f in store.failures_by_code()
        ],
        "waiting": [
            {"code": w.code, "stripe_account": w.stripe_account, "count": w.n}
            for w in store.waiting_by_code()
        ],
        "relays": None
        if relays is None
        else [{"relay_id": r.relay_id, "started_at": r.started_at.isoformat()} for r in relays],
    }


def inspect(conn: psycopg.Connection, identifier: str) -> dict[str, Any] | None:
    """Everything known about one usage fact, or None."""
    return SyncStore(conn).inspect(identifier)


def retry(
    conn: psycopg.Connection,
    *,
    identifier: str | None,
    code: str | None,
    force: bool,
    window_hours: float,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Requeue failed/rejected rows; returns (requeued, refused-as-unsafe)."""
    store = SyncStore(conn)
    refused = (
        []
        if force
        else [
            {
                "identifier": r.identifier,
                "state": r.state,
                "code": r.code,
                "first_attempt_at": r.first_attempt_at,
            }
            for r in store.retry_refused(
                identifier=identifier, code=code, window_hours=window_hours
            )
        ]
    )
    requeued = store.retry(identifier=identifier, code=code, force=force, window_hours=window_hours)
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
    store = SyncStore(conn)
    total = batches = 0
    while max_batches is None or batches < max_batches:
        deleted = store.prune(age_seconds=older_than_days * 86400, batch_size=batch_size)
        total += deleted
        batches += 1
        if deleted < batch_size:
            break
    return total
