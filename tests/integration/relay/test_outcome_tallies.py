"""The relay's outcome writes the tally deltas of its own rows, in the same statement, and the
table's update trigger skips that statement (migration outbox_0031): the tallies stay equal to a
live count of the rows through every route an outcome takes (accepted, back to pending with a
code, failed, refused, held for a meter), beside concurrent writers, cancels, rejections and
folds, beside an older relay whose outcomes the trigger still counts, and for any update that
follows an outcome in the same transaction."""

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg

import outbox
from relay.core.rows import Claimed, Outcome
from relay.db import migrate
from relay.db.store import FIRST_LANE, SyncStore
from tests.helpers import rows, scalar
from tests.integration.relay.test_carried_acceptance import _previous_release_outcomes
from tests.integration.relay.test_status_tallies import REAL, TALLY
from tests.support.relay import insert_usage


def keyed(found: list[tuple[Any, ...]]) -> dict[tuple[str, str, str, str], int]:
    return {(s, c, a, u): n for s, c, a, u, n in found if n}


def assert_exact(db: psycopg.Connection) -> None:
    """The tallies (folded or not) are a live count of the rows, and so after a fold."""
    real = keyed(rows(db, REAL))
    assert keyed(rows(db, TALLY)) == real
    db.execute("SELECT outbox_fold_counts()")
    assert keyed(rows(db, TALLY)) == real


def claim(conn: psycopg.Connection, n: int, relay_id: str = "r-new") -> list[Claimed]:
    store = SyncStore(conn)
    walked = store.walk(FIRST_LANE, n, exclusive=False)
    return store.claim(
        walked.ids, fill=n, exclusive=False, relay_id=relay_id, lease_seconds=30, one_walk=True
    )


def settle(row: Claimed, how: int) -> Outcome:
    """Each route of an outcome, by `how`: accepted; back to pending with a code (a retry, or
    held for its meter); failed; refused without a call."""
    route = how % 5
    if route == 0:
        return Outcome.answered(row, "accepted", request_id="req", http_status=200)
    if route == 1:
        return Outcome.answered(row, "pending", code="rate_limited", delay=0, http_status=429)
    if route == 2:
        return Outcome.answered(row, "pending", code="meter_inactive", delay=0, http_status=400)
    if route == 3:
        return Outcome.answered(row, "failed", code="http_400", http_status=400)
    return Outcome.refused(row, "invalid_payload", "refused here")


def test_an_update_after_an_outcome_in_the_same_transaction_is_counted(
    database_url: str, db: psycopg.Connection
) -> None:
    """The outcome's word to the trigger ends with its statement: an update that follows in the
    same transaction (here an operator's rejection of one row, then a retry of another) is
    counted by the trigger as any other."""
    insert_usage(database_url, 6, customers=3)
    with psycopg.connect(database_url) as conn:
        batch = [settle(r, 0 if r.id % 2 else 3) for r in claim(conn, 6)]
        conn.commit()
        SyncStore(conn).record_outcomes(batch, "r-new")
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'rejected', last_error_code = 'late'"
            " WHERE id = (SELECT min(id) FROM meter_event_outbox WHERE state = 'accepted')"
        )
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'pending', available_at = now()"
            " WHERE id = (SELECT min(id) FROM meter_event_outbox WHERE state = 'failed')"
        )
        conn.commit()
    assert_exact(db)
    assert keyed(rows(db, TALLY))[("rejected", "late", "", "")] == 1


def test_a_lease_keeps_the_code_its_row_had_when_claimed(
    database_url: str, db: psycopg.Connection
) -> None:
    """What the outcome counts as the row's code before it: read under the claim's row lock."""
    insert_usage(database_url, 2)
    db.execute("UPDATE meter_event_outbox SET last_error_code = 'rate_limited' WHERE id = 1")
    claim(db, 2)
    leases = "SELECT outbox_id, last_error_code FROM meter_event_outbox_leases ORDER BY 1"
    assert rows(db, leases) == [(1, "rate_limited"), (2, None)]


def test_a_row_keeps_exact_tallies_through_retries_holds_and_its_acceptance(
    database_url: str, db: psycopg.Connection
) -> None:
    """Each row goes round every route, its code changing at each outcome (the old one is what
    its lease kept), until it is accepted, failed or refused."""
    insert_usage(database_url, 10, customers=3)
    for step in range(6):
        claimed = claim(db, 10)
        if not claimed:
            break
        SyncStore(db).record_outcomes([settle(r, r.id + step) for r in claimed], "r-new")
        assert_exact(db)
        db.execute("UPDATE meter_event_outbox SET available_at = now() WHERE state = 'pending'")
    assert scalar(db, "SELECT count(*) FROM meter_event_outbox WHERE state = 'pending'") < 10


def test_an_older_relays_lease_and_outcome_are_counted_once(
    database_url: str, db: psycopg.Connection
) -> None:
    """A rolling upgrade: a relay of an earlier release leases without the code and writes
    outcomes that do not say they counted themselves (the trigger counts them); a lease it left
    to expire is taken over with the row's code."""
    insert_usage(database_url, 6, customers=2)
    db.execute("UPDATE meter_event_outbox SET last_error_code = 'rate_limited' WHERE id <= 3")
    older = claim(db, 3, relay_id="r-old")
    assert _previous_release_outcomes(db, [settle(r, 0) for r in older[:2]]) == {
        r.id for r in older[:2]
    }
    assert_exact(db)
    # The older relay's third lease: no code in it, and expired.
    db.execute(
        "UPDATE meter_event_outbox_leases SET last_error_code = NULL,"
        " leased_until = now() - interval '1 second'"
    )
    db.execute("UPDATE meter_event_outbox SET available_at = now() WHERE state = 'pending'")
    newer = claim(db, 6)
    assert older[2].id in {r.id for r in newer}
    assert len(SyncStore(db).record_outcomes([settle(r, 0) for r in newer], "r-new")) == 4
    assert_exact(db)
    assert keyed(rows(db, TALLY))[("accepted", "", "", "")] == 6


ERRORS: list[BaseException] = []
REJECTED: list[tuple[int]] = []


def _repeat(database_url: str, n: int, step: Callable[[psycopg.Connection, int], None]) -> None:
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for i in range(n):
                step(conn, i)
    except BaseException as err:  # the test asserts none happened
        ERRORS.append(err)


def _writer(w: int) -> Callable[[psycopg.Connection, int], None]:
    def step(conn: psycopg.Connection, i: int) -> None:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', %s, 1, %s, stripe_account => %s)",
            (f"cus_{i % 5}", f"w{w}-{i}", "acct_x" if i % 2 else None),
        )

    return step


def _relay(name: str) -> Callable[[psycopg.Connection, int], None]:
    def step(conn: psycopg.Connection, i: int) -> None:
        claimed = claim(conn, 8, relay_id=name)
        if claimed:
            SyncStore(conn).record_outcomes([settle(r, r.id + i) for r in claimed], name)
        if i % 4 == 0:  # a webhook's rejection of a row Stripe accepted
            REJECTED.extend(
                conn.execute(
                    "UPDATE meter_event_outbox SET state = 'rejected', last_error_code = 'late'"
                    " WHERE id = (SELECT max(id) FROM meter_event_outbox WHERE state = 'accepted')"
                    " RETURNING id"
                ).fetchall()
            )

    return step


def _canceller(conn: psycopg.Connection, i: int) -> None:
    """Cancels facts the writers recorded a while ago (one not written yet is skipped)."""
    with contextlib.suppress(outbox.UnknownIdentifier), conn.transaction():
        outbox.cancel_usage(conn, identifier=f"w{i % 3}-{i // 2}")


def test_tallies_stay_exact_under_the_relays_outcomes_and_everything_beside_them(
    database_url: str, db: psycopg.Connection
) -> None:
    steps: list[tuple[int, Callable[[psycopg.Connection, int], None]]] = [
        (150, _writer(w)) for w in range(3)
    ]
    steps += [(60, _relay("r-1")), (60, _relay("r-2")), (120, _canceller)]
    steps += [(120, lambda c, i: c.execute("SELECT outbox_fold_counts()"))]
    ERRORS.clear()
    REJECTED.clear()
    threads = [threading.Thread(target=_repeat, args=(database_url, n, s)) for n, s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not ERRORS
    settled = dict(rows(db, "SELECT state, count(*) FROM meter_event_outbox GROUP BY 1"))
    assert {"accepted", "failed"} <= set(settled)
    assert REJECTED
    # every route was taken: retries and holds (pending with a code), and cancels
    assert scalar(db, "SELECT count(DISTINCT code) FROM meter_event_outbox_attempts") >= 3
    cancels = "SELECT count(*) FROM meter_event_outbox WHERE cancel_requested_at IS NOT NULL"
    assert scalar(db, cancels) > 0
    assert_exact(db)


def test_the_migration_goes_down_and_up_with_the_tallies_exact(
    database_url: str, db: psycopg.Connection
) -> None:
    """Down, the trigger counts every update again and leases forget the code; up again, the
    relay's outcomes count themselves."""
    insert_usage(database_url, 6, customers=2)
    SyncStore(db).record_outcomes([settle(r, r.id) for r in claim(db, 3)], "r-new")
    migrate.downgrade(database_url, "outbox_0030")
    column = (
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'meter_event_outbox_leases'::regclass"
        " AND attname = 'last_error_code'"
    )
    assert scalar(db, column) == 0
    db.execute("UPDATE meter_event_outbox SET state = 'failed', last_error_code = 'x' WHERE id = 6")
    assert_exact(db)
    migrate.upgrade(database_url)
    db.execute("UPDATE meter_event_outbox SET available_at = now() WHERE state = 'pending'")
    SyncStore(db).record_outcomes([settle(r, 0) for r in claim(db, 6)], "r-new")
    assert_exact(db)
