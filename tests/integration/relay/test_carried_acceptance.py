"""A clean acceptance is carried on its row instead of an attempt-history row (migration
outbox_0019): the row's story (`inspect`, the console's row page) and every count of calls
(the console's last hour and its chart) tell the same as before, every other call keeps its
history row, and an older relay writing history rows beside a newer one is never counted twice."""

from typing import Any

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from outbox.sqlfile import for_psycopg, load
from relay.core.rows import Claimed, Outcome
from relay.db import migrate, operations
from relay.db.pool import QUERIES
from relay.db.store import ATTEMPT_WINDOW_CAP, FIRST_LANE, SyncStore, cancel_route
from tests.support.relay import insert_usage

PREVIOUS = load("tests.support", "previous_release.sql")
HISTORY_ROWS = "SELECT count(*) FROM meter_event_outbox_attempts"
CARRIED = "SELECT coalesce(sum(calls), 0) FROM meter_event_outbox_carried_calls"


def claim(db: psycopg.Connection, n: int = 1) -> list[Claimed]:
    store = SyncStore(db)
    walked = store.walk(FIRST_LANE, n, exclusive=False)
    return store.claim(walked.ids, fill=0, exclusive=False, relay_id="r-new", lease_seconds=30)


def accept(row: Claimed, request_id: str = "req_ok", status: int = 200) -> Outcome:
    return Outcome.answered(
        row, "accepted", request_id=request_id, latency_ms=12.5, http_status=status
    )


def one(db: psycopg.Connection, sql: str, params: Any = None) -> Any:
    return db.execute(sql, params).fetchone()[0]


def query(db: psycopg.Connection, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(for_psycopg(QUERIES[name]), params).fetchall()


def history(db: psycopg.Connection, identifier: str) -> list[dict[str, Any]]:
    found = operations.inspect(db, identifier)
    assert found is not None
    return [
        {k: a[k] for k in ("attempt", "key_generation", "action", "state", "http_status")}
        | {"request": a["stripe_request_id"], "relay": a["relay_id"], "code": a["code"]}
        for a in found["history"]
    ]


def test_a_clean_acceptance_is_carried_on_its_row_and_told_as_a_history_entry(
    database_url: str, db: psycopg.Connection
) -> None:
    insert_usage(database_url, 1)
    (row,) = claim(db)
    assert SyncStore(db).record_outcomes([accept(row)], "r-new") == {row.id}

    assert one(db, HISTORY_ROWS) == 0
    assert one(db, CARRIED) == 1
    carried = db.execute(
        "SELECT accepted_request_id, accepted_attempt, accepted_key_generation,"
        " accepted_latency_ms, accepted_by, stripe_request_id FROM meter_event_outbox"
    ).fetchone()
    assert carried == ("req_ok", 1, 0, 12.5, "r-new", "req_ok")
    found = operations.inspect(db, "u1")
    assert found is not None
    (entry,) = found["history"]
    assert entry["attempted_at"] == found["accepted_at"]
    assert entry["latency_ms"] == 12.5
    assert history(db, "u1") == [
        {
            "attempt": 1,
            "key_generation": 0,
            "action": "report",
            "state": "accepted",
            "http_status": 200,
            "request": "req_ok",
            "relay": "r-new",
            "code": None,
        }
    ]


def _duplicate(db: psycopg.Connection, row: Claimed) -> Outcome:
    return accept(row, "req_dup", status=400)  # "already exists": an earlier call landed


def _cancel_requested(db: psycopg.Connection, row: Claimed) -> Outcome:
    db.execute("UPDATE meter_event_outbox SET cancel_requested_at = now()")
    return accept(row)


@pytest.mark.parametrize("outcome", [_duplicate, _cancel_requested])
def test_an_acceptance_that_is_not_clean_keeps_its_history_row(
    database_url: str, db: psycopg.Connection, outcome: Any
) -> None:
    insert_usage(database_url, 1)
    (row,) = claim(db)
    written = outcome(db, row)
    status = written.http_status
    assert SyncStore(db).record_outcomes([written], "r-new") == {row.id}
    assert one(db, HISTORY_ROWS) == 1
    assert one(db, CARRIED) == 0
    assert one(db, "SELECT accepted_attempt FROM meter_event_outbox") is None
    # one entry, from the history row (a cancel requested meanwhile: the row's new state)
    assert [(h["action"], h["http_status"]) for h in history(db, "u1")] == [("report", status)]


def test_a_second_acceptance_after_a_rejection_and_retry_keeps_its_own_history_row(
    database_url: str, db: psycopg.Connection
) -> None:
    insert_usage(database_url, 1)
    (row,) = claim(db)
    SyncStore(db).record_outcomes([accept(row, "req_first")], "r-new")
    reject = {"identifiers": ["u1"], "account": None, "code": "meter_missing", "message": "-"}
    assert query(db, "reject", reject) == [{"identifier": "u1"}]
    operations.retry(db, identifier="u1", code=None, force=True, window_hours=20)
    (again,) = claim(db)
    SyncStore(db).record_outcomes([accept(again, "req_second")], "r-new")

    assert one(db, HISTORY_ROWS) == 1  # the second acceptance; the first stays carried
    assert one(db, CARRIED) == 1
    assert [(h["key_generation"], h["request"]) for h in history(db, "u1")] == [
        (0, "req_first"),
        (1, "req_second"),
    ]


def test_failures_keep_their_history_rows_before_the_carried_acceptance(
    database_url: str, db: psycopg.Connection
) -> None:
    insert_usage(database_url, 1)
    (row,) = claim(db)
    failed = Outcome.answered(
        row, "pending", code="http_500", http_status=500, request_id="req_500", new_key=1
    )
    SyncStore(db).record_outcomes([failed], "r-new")
    db.execute("UPDATE meter_event_outbox SET available_at = now()")
    (again,) = claim(db)
    SyncStore(db).record_outcomes([accept(again)], "r-new")
    assert [(h["attempt"], h["code"], h["state"]) for h in history(db, "u1")] == [
        (1, "http_500", "pending"),
        (2, None, "accepted"),
    ]
    assert one(db, HISTORY_ROWS) == 1


def _previous_release_outcomes(db: psycopg.Connection, batch: list[Outcome]) -> set[int]:
    """The outcome statement of the release before outbox_0019, as an older relay runs it. An
    older relay holds its rows the old way (outbox_0020 moved leases out of the row): `in_flight`
    with the lease token in the row, so the claims are turned into such leases first."""
    for outcome in batch:
        db.execute("DELETE FROM meter_event_outbox_leases WHERE outbox_id = %s", (outcome.row.id,))
        db.execute(
            "UPDATE meter_event_outbox SET state = 'in_flight', lease_token = %s,"
            " leased_by = 'r-old', available_at = now() + interval '30 seconds' WHERE id = %s",
            (outcome.row.lease_token, outcome.row.id),
        )
    sql = for_psycopg(PREVIOUS["record_outcomes"])
    return {i for (i,) in db.execute(sql, _previous_outcome_params(batch)).fetchall()}


def _previous_outcome_params(batch: list[Outcome]) -> dict[str, str]:
    """The older relay's parameters: every row and its whole decision as JSON documents."""
    decisions = [
        {
            "n": n,
            "state": o.state,
            "delay": o.delay,
            "counted": o.counted,
            "new_key": o.new_key,
            "code": o.code,
            "message": o.message,
            "request_id": o.request_id,
            "reached": o.reached_stripe,
            "may_have_counted": o.may_have_counted,
            **cancel_route(o.state, o.may_have_counted),
            "called": o.called,
            "action": o.row.action,
            "http_status": o.http_status,
            "latency_ms": o.latency_ms,
        }
        for n, o in enumerate(batch)
    ]
    rows = [
        {
            "id": o.row.id,
            "token": o.row.lease_token,
            "previous_first_attempt_at": o.row.previous_first_attempt_at,
            "key_generation": o.row.key_generation,
            "decision": n,
        }
        for n, o in enumerate(batch)
    ]
    return {
        "rows": orjson.dumps(rows).decode(),
        "decisions": orjson.dumps(decisions).decode(),
        "relay_id": "r-old",
    }


def test_an_older_relays_acceptances_and_a_newer_ones_are_each_counted_once(
    database_url: str, db: psycopg.Connection
) -> None:
    """Rolling upgrade: the older relay writes a history row per accepted call and never the
    carried columns; the newer carries its clean ones. The story of each row has one entry,
    and the last hour and the chart count three calls."""
    insert_usage(database_url, 3, customers=3)
    old_a, old_b, new = claim(db, 3)
    assert _previous_release_outcomes(db, [accept(old_a), accept(old_b)]) == {old_a.id, old_b.id}
    assert SyncStore(db).record_outcomes([accept(new)], "r-new") == {new.id}

    assert one(db, HISTORY_ROWS) == 2
    assert one(db, CARRIED) == 1
    for identifier in ("u1", "u2", "u3"):
        assert [h["state"] for h in history(db, identifier)] == ["accepted"]
    (hour,) = query(db, "attempts_last_hour", {"cap": ATTEMPT_WINDOW_CAP})
    assert (hour["calls"], hour["errors"], hour["capped"]) == (3, 0, False)
    minutes = query(db, "calls_per_minute", {"seconds": 3600, "exact": 20_000, "samples": 2500})
    assert sum(m["accepted"] for m in minutes) == 3
    assert sum(m["calls"] for m in minutes) == 3
    assert {m["stride"] for m in minutes} == {1}


def test_the_chart_counts_carried_calls_without_any_history(
    database_url: str, db: psycopg.Connection
) -> None:
    insert_usage(database_url, 4, customers=4)
    SyncStore(db).record_outcomes([accept(r) for r in claim(db, 4)], "r-new")
    assert one(db, HISTORY_ROWS) == 0
    (minute,) = query(db, "calls_per_minute", {"seconds": 600, "exact": 20_000, "samples": 2500})
    assert (minute["accepted"], minute["errors"], minute["calls"], minute["stride"]) == (
        4,
        0,
        4,
        1,
    )
    (hour,) = query(db, "attempts_last_hour", {"cap": ATTEMPT_WINDOW_CAP})
    assert (hour["calls"], hour["errors"]) == (4, 0)
    assert hour["since"] is not None


def test_downgrading_turns_carried_calls_into_history_rows(
    database_url: str, db: psycopg.Connection
) -> None:
    insert_usage(database_url, 1)
    (row,) = claim(db)
    SyncStore(db).record_outcomes([accept(row)], "r-new")
    db.commit()
    migrate.downgrade(database_url, "outbox_0017")
    try:
        found = db.execute(
            "SELECT a.attempt, a.key_generation, a.action, a.state, a.http_status,"
            " a.stripe_request_id, a.latency_ms, a.relay_id, a.attempted_at = o.accepted_at"
            " FROM meter_event_outbox_attempts a JOIN meter_event_outbox o ON o.id = a.outbox_id"
        ).fetchall()
        assert found == [(1, 0, "report", "accepted", 200, "req_ok", 12.5, "r-new", True)]
    finally:
        db.rollback()
        migrate.upgrade(database_url)


def test_two_outcome_batches_at_once_never_wait_on_the_carried_count(
    database_url: str, db: psycopg.Connection
) -> None:
    """A relay writes two outcome batches at once: each session counts in its own row, so the
    second never waits for the first's commit (lock_timeout: waiting would fail it)."""
    insert_usage(database_url, 2, customers=2)
    first, second = claim(db, 2)
    db.commit()
    with psycopg.connect(database_url) as a, psycopg.connect(database_url) as b:
        assert SyncStore(a).record_outcomes([accept(first)], "r-new") == {first.id}  # open
        b.execute("SET lock_timeout = '5s'")
        assert SyncStore(b).record_outcomes([accept(second)], "r-new") == {second.id}
        b.commit()
        a.commit()
    assert one(db, CARRIED) == 2
    assert one(db, "SELECT count(*) FROM meter_event_outbox_carried_calls") == 2
