"""The oldest unsent fact without an index entry per fresh fact (migration outbox_0021): a row
due since it was recorded (available_at = created_at) is found through the due index, a row
whose available_at moved (backoff, a held meter, a retry, an earlier release's lease) through
the index of moved rows by age. The answer must be the oldest unsent row's, whichever kind it
is, and the read must stay a couple of probes with thousands of moved rows due before it."""

import json
from datetime import datetime
from typing import Any

import psycopg
import pytest

from outbox.sqlfile import for_psycopg
from relay.db.pool import QUERIES
from tests.support.relay import insert_usage

TRUTH = "SELECT min(created_at) FROM meter_event_outbox WHERE state IN ('pending', 'in_flight')"


def _oldest(db: psycopg.Connection) -> datetime | None:
    row = db.execute(for_psycopg(QUERIES["oldest_unsent"])).fetchone()
    assert row is not None
    return row[0]


def _truth(db: psycopg.Connection) -> datetime | None:
    return db.execute(TRUTH).fetchone()[0]


def test_a_recorded_fact_is_due_from_the_instant_it_is_recorded(
    database_url: str, db: psycopg.Connection
) -> None:
    insert_usage(database_url, 3)
    assert db.execute(
        "SELECT count(*) FROM meter_event_outbox WHERE available_at = created_at"
    ).fetchone() == (3,)


@pytest.mark.parametrize(
    "move",
    [
        # a retry's backoff: moved later than recorded
        "available_at = now() + interval '1 hour'",
        # due before it was recorded (an update whose transaction began before the insert)
        "available_at = created_at - interval '1 minute'",
        # recorded earlier than the fresh rows and due again now (a `retry`)
        "created_at = created_at - interval '2 hours',"
        " occurred_at = occurred_at - interval '2 hours', available_at = now()",
    ],
)
def test_the_oldest_unsent_fact_is_the_oldest_whichever_index_holds_it(
    database_url: str, db: psycopg.Connection, move: str
) -> None:
    assert _oldest(db) is None
    insert_usage(database_url, 5, prefix="a")
    assert _oldest(db) == _truth(db)
    insert_usage(database_url, 5, prefix="b")
    db.execute(f"UPDATE meter_event_outbox SET {move} WHERE identifier IN ('a1', 'b2')")
    assert _oldest(db) == _truth(db)
    db.execute("UPDATE meter_event_outbox SET state = 'accepted' WHERE identifier LIKE 'a%'")
    assert _oldest(db) == _truth(db)
    db.execute("UPDATE meter_event_outbox SET state = 'accepted'")
    assert _oldest(db) is None


def _rows_read(plan: dict[str, Any]) -> int:
    here = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
    here += plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
    return max([here, *(_rows_read(p) for p in plan.get("Plans", []))])


def test_the_oldest_unsent_fact_is_two_probes_behind_thousands_of_moved_due_rows(
    database_url: str, db: psycopg.Connection
) -> None:
    """Moved rows due before the oldest fresh one (a `retry --all` of old rows, or rows whose
    backoff has passed) sort first in the due index: the fresh walk must not step over them."""
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, created_at,"
        " occurred_at, available_at) SELECT 'm' || g, 'api_calls', 'cus_' || (g % 50), 1,"
        " now() - interval '3 hours', now() - interval '3 hours', now() - interval '2 hours'"
        " FROM generate_series(1, 5000) g"
    )
    insert_usage(database_url, 5000, prefix="f", customers=50)
    db.execute("ANALYZE meter_event_outbox")
    for moved_state in ("pending", "accepted"):  # moved rows older, then none left
        db.execute(
            "UPDATE meter_event_outbox SET state = %s WHERE identifier LIKE 'm%%'", (moved_state,)
        )
        sql = "EXPLAIN (ANALYZE, FORMAT JSON) " + for_psycopg(QUERIES["oldest_unsent"])
        (plan,) = db.execute(sql).fetchone()
        plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
        assert _oldest(db) == _truth(db)
        assert _rows_read(plan["Plan"]) <= 2, json.dumps(plan, indent=1)
