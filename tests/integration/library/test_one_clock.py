"""One clock (invariant 11): the timestamp window is judged on the database's clock, at the
instant of the insert (statement_timestamp(), stored as created_at and used by the CHECK).

Before, Python judged against the application's clock and the CHECK against created_at = the
transaction's start: a transaction open long enough, or an application clock ahead of the
database's, turned valid input into a raw CheckViolation that aborted the caller's transaction.
A transaction is aged here by one short pg_sleep: the rule only needs its age to exceed the
margin left at the window's edge, so the minutes of the reports scale down to a second.
"""

from datetime import datetime, timedelta

import psycopg
import pytest

import outbox
from outbox import rules
from tests.helpers import rows, scalar

AGE = 1.0  # seconds the application transaction has been open
EDGE = timedelta(seconds=AGE / 2)  # distance to the window's edge, less than the age


def usage(identifier: str, timestamp: datetime | None) -> dict:
    return {
        "event_name": "api_calls",
        "customer": "cus_1",
        "value": 1,
        "identifier": identifier,
        "timestamp": timestamp,
    }


def db_clock(conn: psycopg.Connection) -> datetime:
    return scalar(conn, "SELECT clock_timestamp()")


def aged_transaction(url: str) -> psycopg.Connection:
    """A connection in a transaction that started AGE seconds ago (now() is old)."""
    conn = psycopg.connect(url)
    conn.execute("SELECT pg_sleep(%s)", (AGE,))
    return conn


def test_long_transaction_accepts_a_timestamp_near_the_future_edge(database_url: str, db) -> None:
    """Open 20 s, then timestamp = now + 4 min 50 s (scaled: open 1 s, edge 0.5 s away)."""
    with aged_transaction(database_url) as conn:
        when = db_clock(conn) + rules.MAX_FUTURE - EDGE
        recorded = outbox.record_usage(conn, **usage("edge", when))
        conn.commit()
    assert recorded.created
    assert rows(db, "SELECT occurred_at FROM meter_event_outbox") == [(when,)]


def test_long_transaction_judges_against_the_statement_not_its_start(database_url: str, db) -> None:
    """Open 5 min 10 s, then timestamp = now: the reference is the insert's instant.

    Scaled: the row's created_at (the CHECK's reference) is the statement's time, later than
    the transaction's start by its age, and occurred_at = now is accepted.
    """
    with aged_transaction(database_url) as conn:
        started = scalar(conn, "SELECT now()")
        when = db_clock(conn)
        outbox.record_usage(conn, **usage("now", when))
        outbox.record_usage(conn, **usage("default", None))
        conn.commit()
    got = rows(db, "SELECT identifier, created_at, occurred_at FROM meter_event_outbox ORDER BY id")
    assert [r[0] for r in got] == ["now", "default"]
    for _, created_at, _ in got:
        assert created_at - started >= timedelta(seconds=AGE)
    assert got[1][1] == got[1][2]  # no timestamp: the usage happened at the insert's instant


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (rules.MAX_FUTURE + EDGE, "timestamp_in_future"),
        (-rules.MAX_PAST - EDGE, "timestamp_too_far_in_past"),
    ],
    ids=["future", "past"],
)
def test_refused_window_leaves_the_transaction_usable(
    offset: timedelta, code: str, database_url: str, db
) -> None:
    """App/DB clock skew: a timestamp the app's clock finds fine but the database's does not.

    The database's verdict comes back as InvalidUsage, nothing is written, and the caller's
    transaction goes on (before: CheckViolation, transaction aborted).
    """
    with aged_transaction(database_url) as conn:
        conn.execute("CREATE TEMP TABLE business (n int)")
        conn.execute("INSERT INTO business VALUES (1)")
        with pytest.raises(outbox.InvalidUsage) as err:
            outbox.record_usage(conn, **usage("skewed", db_clock(conn) + offset))
        outbox.record_usage(conn, **usage("after", None))
        assert scalar(conn, "SELECT n FROM business") == 1
        conn.commit()
    assert (err.value.field, err.value.code) == ("timestamp", code)
    assert rows(db, "SELECT identifier FROM meter_event_outbox") == [("after",)]


async def test_async_connections_get_the_same_verdict(database_url: str) -> None:
    """The refusal code travels through the async driver path too."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        now = (await (await conn.execute("SELECT clock_timestamp()")).fetchone())[0]
        with pytest.raises(outbox.InvalidUsage) as err:
            await outbox.record_usage(conn, **usage("a", now + timedelta(hours=1)))
        await outbox.record_usage(conn, **usage("b", None))  # still usable
    assert err.value.code == "timestamp_in_future"
