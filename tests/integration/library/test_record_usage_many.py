"""record_usage_many on every connection kind: one result per fact (created or replayed), all or
nothing, every refused fact listed in one BatchRefused, the caller's transaction usable after."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import outbox
from tests.helpers import rows, scalar
from tests.integration.library.test_record_usage import (
    ASYNC_KINDS,
    SYNC_KINDS,
    async_tx,
    sync_tx,
    usage,
)


def batch(*identifiers: str, **overrides: Any) -> list[dict[str, Any]]:
    return [usage(identifier, **overrides) for identifier in identifiers]


def refusals(error: outbox.BatchRefused) -> list[tuple[int, str, str]]:
    return [(r.index, r.field, r.code) for r in error.refusals]


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_batch_created_then_replayed(kind: str, database_url: str, db) -> None:
    with sync_tx(kind, database_url, commit=False) as conn:
        outbox.record_usage_many(conn, batch("rolled-back"))
    with sync_tx(kind, database_url, commit=True) as conn:
        first = outbox.record_usage_many(conn, batch("a", "b", dimensions={"region": "eu"}))
    with sync_tx(kind, database_url, commit=True) as conn:
        again = outbox.record_usage_many(conn, batch("b", "c", dimensions={"region": "eu"}))
    assert [(r.identifier, r.created) for r in first] == [("a", True), ("b", True)]
    assert [(r.identifier, r.created) for r in again] == [("b", False), ("c", True)]
    assert again[0].id == first[1].id
    assert rows(db, "SELECT identifier, o.payload FROM meter_event_outbox o ORDER BY id") == [
        (name, {"stripe_customer_id": "cus_123", "value": "3", "region": "eu"})
        for name in ("a", "b", "c")
    ]


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_batch(kind: str, database_url: str, db) -> None:
    async with async_tx(kind, database_url, commit=True) as conn:
        first = await outbox.record_usage_many(conn, batch("a", "b"))
        with pytest.raises(outbox.BatchRefused) as refused:
            await outbox.record_usage_many(conn, [usage("c"), usage("a", value=9)])
        replay = await outbox.record_usage_many(conn, batch("b"))
    assert [r.created for r in first] == [True, True]
    assert refusals(refused.value) == [(1, "identifier", "identifier_conflict")]
    assert replay == [outbox.RecordedUsage(first[1].id, "b", False)]
    assert rows(db, "SELECT identifier FROM meter_event_outbox ORDER BY id") == [("a",), ("b",)]


def test_every_invalid_fact_is_listed_and_nothing_is_sent(database_url: str, db) -> None:
    facts = [
        usage("ok"),
        usage("float", value=1.5),
        usage("ok-2"),
        usage("bad customer", customer="has space"),
        {"event_name": "api_calls", "customer": "cus_1", "identifier": "no-value"},
        {**usage("typo"), "dimension": {}},
    ]
    with psycopg.connect(database_url) as conn:
        with pytest.raises(outbox.BatchRefused) as refused:
            outbox.record_usage_many(conn, facts)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert refusals(refused.value) == [
        (1, "value", "invalid_type"),
        (3, "customer", "invalid_customer"),
        (4, "value", "missing"),
        (5, "dimension", "unknown_field"),
    ]
    assert scalar(db, "SELECT count(*) FROM meter_event_outbox") == 0


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_database_refusals_write_nothing_and_leave_the_transaction_usable(
    kind: str, database_url: str, db
) -> None:
    """The window (judged by the database's clock) and conflicts with stored rows refuse the
    whole batch inside one statement that raises nothing."""
    with sync_tx(kind, database_url, commit=True) as conn:
        outbox.record_usage(conn, **usage("stored"))
    old = datetime.now(UTC) - timedelta(days=36)
    facts = [usage("new-1"), usage("stored", value=4), usage("old", timestamp=old), usage("new-2")]
    with sync_tx(kind, database_url, commit=True) as conn:
        with pytest.raises(outbox.BatchRefused) as refused:
            outbox.record_usage_many(conn, facts)
        usable = outbox.record_usage_many(conn, batch("after"))
    assert refusals(refused.value) == [
        (1, "identifier", "identifier_conflict"),
        (2, "timestamp", "timestamp_too_far_in_past"),
    ]
    assert "different value" in refused.value.refusals[0].message
    assert usable[0].created
    assert rows(db, "SELECT identifier FROM meter_event_outbox ORDER BY id") == [
        ("stored",),
        ("after",),
    ]


def test_repeated_identifier_in_one_batch(database_url: str, db) -> None:
    with psycopg.connect(database_url) as conn:
        same = outbox.record_usage_many(conn, [usage("x"), usage("y"), usage("x")])
        with pytest.raises(outbox.BatchRefused) as refused:
            outbox.record_usage_many(conn, [usage("z"), usage("z", customer="cus_other")])
        conn.commit()
    assert [(r.identifier, r.created) for r in same] == [("x", True), ("y", True), ("x", False)]
    assert same[2].id == same[0].id
    assert refusals(refused.value) == [(1, "identifier", "identifier_conflict")]
    assert rows(db, "SELECT identifier FROM meter_event_outbox ORDER BY id") == [("x",), ("y",)]


def test_empty_batch(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert outbox.record_usage_many(conn, []) == []


def test_concurrent_conflict_undoes_the_whole_batch(database_url: str, db) -> None:
    """Another transaction holds an uncommitted row under one of the batch's identifiers: the
    batch's insert waits for it, then finds it committed with different content. The batch's
    own inserts are undone and the caller's transaction stays usable."""
    other = psycopg.connect(database_url)
    outbox.record_usage(other, **usage("contested", value=7))
    outcome: dict[str, Any] = {}

    def write_batch() -> None:
        with psycopg.connect(database_url) as conn:
            try:
                outbox.record_usage_many(conn, batch("mine-1", "contested", "mine-2"))
            except outbox.BatchRefused as exc:
                outcome["refused"] = refusals(exc)
            outcome["after"] = outbox.record_usage_many(conn, batch("after"))[0].created
            conn.commit()

    writer = threading.Thread(target=write_batch)
    writer.start()
    _await_lock_wait(db)
    other.commit()
    other.close()
    writer.join()
    assert outcome == {"refused": [(1, "identifier", "identifier_conflict")], "after": True}
    assert rows(db, "SELECT identifier, value FROM meter_event_outbox ORDER BY id") == [
        ("contested", Decimal(7)),
        ("after", Decimal(3)),
    ]


def test_concurrent_replay_is_a_replay(database_url: str, db) -> None:
    other = psycopg.connect(database_url)
    theirs = outbox.record_usage(other, **usage("contested"))
    result: list[outbox.RecordedUsage] = []

    def write_batch() -> None:
        with psycopg.connect(database_url) as conn:
            result.extend(outbox.record_usage_many(conn, batch("mine", "contested")))
            conn.commit()

    writer = threading.Thread(target=write_batch)
    writer.start()
    _await_lock_wait(db)
    other.commit()
    other.close()
    writer.join()
    assert [(r.identifier, r.created) for r in result] == [("mine", True), ("contested", False)]
    assert result[1].id == theirs.id


def _await_lock_wait(db: psycopg.Connection) -> None:
    """Until a backend waits on a lock (the batch's insert waiting for the other transaction);
    LISTEN-free polling of pg_stat_activity, bounded by the test timeout."""
    while not scalar(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'",
    ):
        db.execute("SELECT pg_sleep(0.01)")
