"""The wake-up hint and the cheap status view (invariant 9: the hot part stays small)."""

import re
from typing import get_args

import psycopg
import pytest

import outbox
from relay.core.vocabulary import STATES, Action
from tests.helpers import rows, scalar


def record(conn, identifier: str, notify: bool = True) -> None:
    outbox.record_usage(
        conn,
        event_name="api_calls",
        customer="cus_1",
        value=1,
        identifier=identifier,
        notify=notify,
    )


def test_commit_notifies_listener_and_rollback_does_not(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN meter_event_outbox")
        with psycopg.connect(database_url) as writer:
            record(writer, "rolled-back")
            writer.rollback()
            assert list(listener.notifies(timeout=0.2, stop_after=1)) == []
            record(writer, "committed")
            writer.commit()
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in got] == ["meter_event_outbox"]


def test_notify_false_sends_nothing(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN meter_event_outbox")
        with psycopg.connect(database_url, autocommit=True) as writer:
            record(writer, "quiet", notify=False)
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []


def test_wake_gate_coalesces_within_interval(db) -> None:
    db.execute("UPDATE meter_event_outbox_wake SET min_interval = '1 hour'")
    assert scalar(db, "SELECT outbox_wake()") is True
    assert scalar(db, "SELECT outbox_wake()") is False
    db.execute("UPDATE meter_event_outbox_wake SET min_interval = '0'")
    assert scalar(db, "SELECT outbox_wake()") is True


def test_wake_gate_never_waits_for_a_holder(database_url: str, db) -> None:
    """A writer holding the gate row must not block other writers' commits."""
    db.execute("UPDATE meter_event_outbox_wake SET min_interval = '0'")
    with psycopg.connect(database_url) as holder, psycopg.connect(database_url) as other:
        assert scalar(holder, "SELECT outbox_wake()") is True  # holds the row lock, uncommitted
        other.execute("SET lock_timeout = '2s'")
        assert scalar(other, "SELECT outbox_wake()") is False  # skipped, did not wait
        holder.rollback()


def test_status_view_counts_without_touching_history(db) -> None:
    for i in range(3):
        record(db, f"u{i}")
    db.execute(
        "UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()"
        " WHERE identifier IN ('u0', 'u1')"
    )
    db.execute("UPDATE meter_event_outbox SET state = 'cancelled' WHERE identifier = 'u1'")
    status = dict(rows(db, "SELECT state, n FROM meter_event_outbox_status"))
    assert status == {
        "pending": 1,
        "in_flight": 0,
        "accepted": 1,
        "failed": 0,
        "rejected": 0,
        "cancelled": 1,
    }
    db.execute("DELETE FROM meter_event_outbox WHERE state = 'accepted'")
    assert scalar(db, "SELECT n FROM meter_event_outbox_status WHERE state = 'accepted'") == 0


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM meter_event_outbox_status",
        "SELECT min(available_at) FROM meter_event_outbox WHERE state IN ('pending','in_flight')",
    ],
)
def test_status_queries_use_partial_indexes_not_history(query: str, db) -> None:
    # Many accepted rows (history), few pending: the plan must not scan the table.
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, state)"
        " SELECT 'h' || g, 'api_calls', 'cus_1', 1, 'accepted' FROM generate_series(1, 20000) g"
    )
    record(db, "fresh")
    db.execute("ANALYZE meter_event_outbox")
    plan = "\n".join(r[0] for r in rows(db, "EXPLAIN " + query))
    # The outbox table itself (the small, regularly folded count deltas may be scanned).
    assert not re.search(r"Seq Scan on meter_event_outbox\b(?!_)", plan), plan


def _check_values(db: psycopg.Connection, column: str) -> set[str]:
    """The values a CHECK (column IN (...)) constraint of the outbox table allows."""
    found = db.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'meter_event_outbox'::regclass AND contype = 'c'"
        " AND pg_get_constraintdef(oid) LIKE %s",
        (f"CHECK (({column} = ANY (ARRAY[%",),
    ).fetchone()
    assert found is not None, column
    return set(re.findall(r"'([a-z_]+)'::", found[0]))


def test_the_relays_states_and_actions_are_the_tables(db: psycopg.Connection) -> None:
    """relay.core.vocabulary spells what the CHECK constraints allow, no more, no less."""
    assert _check_values(db, "state") == set(STATES)
    assert _check_values(db, "action") == set(get_args(Action))
