"""record_usage / cancel_usage on every supported connection kind, inside the caller's
transaction: rollback leaves nothing, commit leaves one row, replay is a no-op, a conflicting
fact raises and writes nothing (and leaves the caller's transaction usable)."""

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import outbox
from outbox.dburl import sqlalchemy_url
from tests.helpers import outbox_count, rows

SYNC_KINDS = ["sa_session", "sa_connection", "psycopg_connection", "psycopg_cursor"]
ASYNC_KINDS = ["sa_async_session", "sa_async_connection", "psycopg_async", "psycopg_async_cursor"]


@contextlib.contextmanager
def sync_tx(kind: str, url: str, commit: bool) -> Iterator[Any]:
    """A transaction on a connection of `kind`, committed or rolled back at the end."""
    if kind.startswith("sa_"):
        engine = create_engine(sqlalchemy_url(url))
        try:
            if kind == "sa_session":
                with Session(engine) as session:
                    session.begin()
                    yield session
                    session.commit() if commit else session.rollback()
            else:
                with engine.connect() as conn:
                    tx = conn.begin()
                    yield conn
                    tx.commit() if commit else tx.rollback()
        finally:
            engine.dispose()
        return
    with psycopg.connect(url) as conn:
        if kind == "psycopg_cursor":
            with conn.cursor() as cur:
                yield cur
        else:
            yield conn
        conn.commit() if commit else conn.rollback()


@contextlib.asynccontextmanager
async def async_tx(kind: str, url: str, commit: bool) -> AsyncIterator[Any]:
    if kind.startswith("sa_"):
        engine = create_async_engine(sqlalchemy_url(url))
        try:
            if kind == "sa_async_session":
                async with AsyncSession(engine) as session:
                    await session.begin()
                    yield session
                    await (session.commit() if commit else session.rollback())
            else:
                async with engine.connect() as conn:
                    tx = await conn.begin()
                    yield conn
                    await (tx.commit() if commit else tx.rollback())
        finally:
            await engine.dispose()
        return
    async with await psycopg.AsyncConnection.connect(url) as conn:
        if kind == "psycopg_async_cursor":
            async with conn.cursor() as cur:
                yield cur
        else:
            yield conn
        await (conn.commit() if commit else conn.rollback())


def usage(identifier: str = "req-1", **overrides: Any) -> dict[str, Any]:
    fact = {"event_name": "api_calls", "customer": "cus_123", "value": 3, "identifier": identifier}
    fact.update(overrides)
    return fact


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_commit_writes_one_row_rollback_none(kind: str, database_url: str, db) -> None:
    with sync_tx(kind, database_url, commit=False) as conn:
        outbox.record_usage(conn, **usage("rolled-back"))
    with sync_tx(kind, database_url, commit=True) as conn:
        recorded = outbox.record_usage(conn, **usage("committed"))
    assert recorded.created
    assert outbox_count(db, "rolled-back") == 0
    assert rows(db, "SELECT identifier, state, value, o.payload FROM meter_event_outbox o") == [
        ("committed", "pending", Decimal(3), {"stripe_customer_id": "cus_123", "value": "3"})
    ]


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_replay_is_noop_and_conflict_writes_nothing(kind: str, database_url: str, db) -> None:
    with sync_tx(kind, database_url, commit=True) as conn:
        first = outbox.record_usage(conn, **usage(dimensions={"region": "eu"}))
    with sync_tx(kind, database_url, commit=True) as conn:
        replay = outbox.record_usage(conn, **usage(dimensions={"region": "eu"}))
        with pytest.raises(outbox.IdentifierConflict) as conflict:
            outbox.record_usage(conn, **usage(value=4, dimensions={"region": "eu"}))
        # The caller's transaction is still usable after the conflict.
        outbox.record_usage(conn, **usage("other"))
    assert replay == outbox.RecordedUsage(id=first.id, identifier="req-1", created=False)
    assert conflict.value.differences == ["value"]
    assert rows(db, "SELECT identifier, value FROM meter_event_outbox ORDER BY id") == [
        ("req-1", Decimal(3)),
        ("other", Decimal(3)),
    ]


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_connections(kind: str, database_url: str, db) -> None:
    async with async_tx(kind, database_url, commit=False) as conn:
        await outbox.record_usage(conn, **usage("rolled-back"))
    async with async_tx(kind, database_url, commit=True) as conn:
        first = await outbox.record_usage(conn, **usage())
        replay = await outbox.record_usage(conn, **usage())
        with pytest.raises(outbox.IdentifierConflict):
            await outbox.record_usage(conn, **usage(customer="cus_other"))
        cancel = await outbox.cancel_usage(conn, identifier="req-1")
    assert first.created and not replay.created and replay.id == first.id
    assert cancel.state == "cancelled"
    assert rows(db, "SELECT identifier, state FROM meter_event_outbox") == [("req-1", "cancelled")]


def test_timestamp_is_the_usage_time_and_replay_without_timestamp_matches(
    database_url: str, db
) -> None:
    from datetime import UTC, datetime, timedelta

    when = datetime.now(UTC) - timedelta(days=2)
    with psycopg.connect(database_url) as conn:
        outbox.record_usage(conn, **usage(timestamp=when, metadata={"request_id": "r-9"}))
        assert not outbox.record_usage(conn, **usage()).created
        with pytest.raises(outbox.IdentifierConflict):
            outbox.record_usage(conn, **usage(timestamp=when + timedelta(seconds=1)))
    assert rows(db, "SELECT occurred_at, metadata FROM meter_event_outbox") == [
        (when, {"request_id": "r-9"})
    ]


def test_unsupported_connection_is_a_clear_error() -> None:
    with pytest.raises(outbox.UnsupportedConnection, match="SQLAlchemy"):
        outbox.record_usage(object(), **usage())


SENT = "attempts=1, first_attempt_at=now()"


def _set(sql: str) -> Callable[[psycopg.Connection], None]:
    return lambda conn: conn.execute(sql)


@pytest.mark.parametrize(
    ("setup", "state", "action"),
    [
        (_set("SELECT 1"), "cancelled", "report"),  # never attempted: cancelled locally
        (_set(f"UPDATE meter_event_outbox SET state='accepted', {SENT}"), "pending", "cancel"),
        # Outcome unknown: the report is resolved first (same key), then cancelled (invariant 10).
        (_set(f"UPDATE meter_event_outbox SET {SENT}"), "pending", "report"),
        # Operator retry resets attempts, but the first attempt may have landed: resolve first.
        (_set("UPDATE meter_event_outbox SET first_attempt_at=now()"), "pending", "report"),
        # Failed, but a call may have counted it: an adjustment, with a fresh budget.
        (_set(f"UPDATE meter_event_outbox SET state='failed', {SENT}"), "pending", "cancel"),
        (_set(f"UPDATE meter_event_outbox SET state='rejected', {SENT}"), "cancelled", "report"),
        (
            _set(
                f"UPDATE meter_event_outbox SET state='in_flight', {SENT},"
                " lease_token=gen_random_uuid()"
            ),
            "in_flight",
            "report",
        ),
    ],
    ids=[
        "never-sent",
        "accepted",
        "unknown-outcome",
        "retried",
        "failed-maybe-counted",
        "rejected",
        "in-flight",
    ],
)
def test_cancel_usage_routes_by_what_stripe_may_have_counted(
    setup: Callable[[psycopg.Connection], None], state: str, action: str, database_url: str, db
) -> None:
    with psycopg.connect(database_url) as conn:
        outbox.record_usage(conn, **usage())
    setup(db)
    with psycopg.connect(database_url) as conn:
        result = outbox.cancel_usage(conn, identifier="req-1")
    assert (result.state, result.action) == (state, action)
    assert rows(
        db, "SELECT state, action, cancel_requested_at IS NOT NULL FROM meter_event_outbox"
    ) == [(state, action, True)]


def test_cancel_unknown_identifier_raises(database_url: str) -> None:
    with psycopg.connect(database_url) as conn, pytest.raises(outbox.UnknownIdentifier):
        outbox.cancel_usage(conn, identifier="nope")


def test_sqlalchemy_session_sees_its_own_write(database_url: str) -> None:
    """The write happens on the session's own connection, inside its transaction."""
    engine = create_engine(sqlalchemy_url(database_url))
    with Session(engine) as session, session.begin():
        outbox.record_usage(session, **usage())
        seen = session.execute(text("SELECT count(*) FROM meter_event_outbox")).scalar_one()
    engine.dispose()
    assert seen == 1


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_window_refusal_on_every_connection_kind(kind: str, database_url: str, db) -> None:
    """The database's window verdict comes back as InvalidUsage on every driver path, and the
    caller's transaction goes on (invariant 11)."""
    from datetime import UTC, datetime, timedelta

    with sync_tx(kind, database_url, commit=True) as conn:
        with pytest.raises(outbox.InvalidUsage) as err:
            outbox.record_usage(conn, **usage(timestamp=datetime.now(UTC) + timedelta(hours=1)))
        outbox.record_usage(conn, **usage("after"))
    assert (err.value.field, err.value.code) == ("timestamp", "timestamp_in_future")
    assert rows(db, "SELECT identifier FROM meter_event_outbox") == [("after",)]
