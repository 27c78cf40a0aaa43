"""The tallies through the relay's own statements: they stay equal to a live count of the rows
through every route an outcome takes (accepted, back to pending with a code, failed, refused,
held for a meter), beside concurrent writers, cancels, rejections and folds, and beside a relay
of an earlier release.

They are kept by the table's update trigger, which reads each row version as it really was.
An outcome cannot count its own rows from what it knew when it claimed them (the row's code,
kept with the lease: an experiment, not landed): a lease outlives a change of its row's code
when a relay of an earlier release claims the row the old way after the lease expired, and
when a webhook's rejection races the claim and an operator then forces a retry while the
call is out. The last two tests are those cases (a hostile review found them)."""

import contextlib
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

import outbox
from outbox.sqlfile import for_psycopg
from relay.core.rows import Claimed, Outcome
from relay.db.pool import QUERIES
from relay.db.store import FIRST_LANE, SyncStore
from tests.acceptance.process.test_process import wait_for
from tests.helpers import rows, run_concurrently, scalar
from tests.integration.relay.test_carried_acceptance import (
    PREVIOUS,
    _previous_outcome_params,
    _previous_release_outcomes,
)
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
    """A rolling upgrade: a relay of an earlier release writes its outcomes beside this one's,
    and a lease it left to expire is taken over; every row is counted once."""
    insert_usage(database_url, 6, customers=2)
    db.execute("UPDATE meter_event_outbox SET last_error_code = 'rate_limited' WHERE id <= 3")
    older = claim(db, 3, relay_id="r-old")
    assert _previous_release_outcomes(db, [settle(r, 0) for r in older[:2]]) == {
        r.id for r in older[:2]
    }
    assert_exact(db)
    # The older relay's third lease expired.
    db.execute("UPDATE meter_event_outbox_leases SET leased_until = now() - interval '1 second'")
    db.execute("UPDATE meter_event_outbox SET available_at = now() WHERE state = 'pending'")
    newer = claim(db, 6)
    assert older[2].id in {r.id for r in newer}
    assert len(SyncStore(db).record_outcomes([settle(r, 0) for r in newer], "r-new")) == 4
    assert_exact(db)
    assert keyed(rows(db, TALLY))[("accepted", "", "", "")] == 6


REJECTED: list[tuple[int]] = []
CANCELS: list[outbox.CancelRequest] = []


WRITTEN: dict[int, int] = {}  # writer -> how many facts it has committed
PROGRESS = threading.Condition()


def _writer(w: int) -> Callable[[psycopg.Connection, int], None]:
    def step(conn: psycopg.Connection, i: int) -> None:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', %s, 1, %s, stripe_account => %s)",
            (f"cus_{i % 5}", f"w{w}-{i}", "acct_x" if i % 2 else None),
        )
        with PROGRESS:
            WRITTEN[w] = i + 1
            PROGRESS.notify_all()

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
    """Cancels facts the writers recorded a while ago, once written: a canceller that ran
    ahead of the writers cancelled nothing (seen once in CI on a loaded machine)."""
    writer, n = i % 3, i // 2
    with PROGRESS:
        assert PROGRESS.wait_for(lambda: WRITTEN.get(writer, 0) > n, timeout=60)
    with contextlib.suppress(outbox.UnknownIdentifier), conn.transaction():
        CANCELS.append(outbox.cancel_usage(conn, identifier=f"w{writer}-{n}"))


def test_tallies_stay_exact_under_the_relays_outcomes_and_everything_beside_them(
    database_url: str, db: psycopg.Connection
) -> None:
    steps: list[tuple[int, Callable[[psycopg.Connection, int], None]]] = [
        (150, _writer(w)) for w in range(3)
    ]
    steps += [(60, _relay("r-1")), (60, _relay("r-2")), (120, _canceller)]
    steps += [(120, lambda c, i: c.execute("SELECT outbox_fold_counts()"))]
    REJECTED.clear()
    CANCELS.clear()
    WRITTEN.clear()
    assert not run_concurrently(database_url, steps)
    settled = dict(rows(db, "SELECT state, count(*) FROM meter_event_outbox GROUP BY 1"))
    assert {"accepted", "failed"} <= set(settled)
    assert REJECTED
    # every route was taken: retries and holds (pending with a code), and cancels
    assert scalar(db, "SELECT count(DISTINCT code) FROM meter_event_outbox_attempts") >= 3
    assert CANCELS
    assert_exact(db)


def _old_claim(db: psycopg.Connection, row: Claimed) -> Claimed:
    """A relay of an earlier release (before outbox_0020, whose claim the table's
    meter_event_outbox_old_claim trigger still serves) claims the row the old way: `in_flight`
    with its lease token in the row. The trigger lets it through when the row's lease in the
    lease table has expired."""
    token = uuid.uuid4()
    updated = db.execute(
        "UPDATE meter_event_outbox SET state = 'in_flight', lease_token = %s,"
        " leased_by = 'r-old', available_at = now() + interval '30 seconds'"
        " WHERE id = %s AND state = 'pending' RETURNING id",
        (token, row.id),
    ).fetchall()
    assert updated == [(row.id,)]
    return row._replace(lease_token=token)


def test_a_late_outcome_after_an_earlier_releases_claim_and_outcome_is_counted_once(
    database_url: str, db: psycopg.Connection
) -> None:
    """A relay of this release leases a row held for its meter (code meter_inactive) and its
    call outlives the lease. A relay of an earlier release (before outbox_0020, whose claim the
    old_claim trigger lets through once the lease has expired) claims the row and records an
    outcome: pending again, another code (rate_limited). Nothing deletes the first lease, so
    the late outcome still wins its compare-and-set and finds the row pending: the row leaves
    rate_limited, not the code it had when the lease was taken."""
    insert_usage(database_url, 1)
    db.execute("UPDATE meter_event_outbox SET last_error_code = 'meter_inactive' WHERE id = 1")
    (row,) = claim(db, 1, relay_id="r-new")
    # N's call outlives its lease (lease_seconds passed, nobody took it over yet).
    db.execute("UPDATE meter_event_outbox_leases SET leased_until = now() - interval '1 second'")
    old = _old_claim(db, row)
    retry = Outcome.answered(old, "pending", code="rate_limited", delay=0, http_status=429)
    sql = for_psycopg(PREVIOUS["record_outcomes"])
    assert [i for (i,) in db.execute(sql, _previous_outcome_params([retry])).fetchall()] == [1]
    assert_exact(db)  # the trigger counted the earlier release's outcome

    late = Outcome.answered(row, "accepted", request_id="req_late", http_status=200)
    assert SyncStore(db).record_outcomes([late], "r-new") == {1}
    assert keyed(rows(db, TALLY)) == keyed(rows(db, REAL))


def test_a_webhook_rejection_racing_a_claim_then_a_forced_retry_is_counted_once(
    database_url: str, db: psycopg.Connection
) -> None:
    """Only this release's statements. A row recorded before a failover (below the lease
    watermark: `possibly sent`) is held for its meter (meter_inactive). A webhook's error report
    names it while a relay claims it: the report's snapshot predates the claim's lease, so it
    deletes no lease, waits for the claim's row lock, then rejects the row through
    meter_event_outbox_possibly_sent() (the fold drops such orphaned leases later). The lease
    survives while the row's code becomes the report's. An operator forces a retry (pending
    again, with the report's code) while the call is still out, and the relay's outcome wins
    its compare-and-set: the row leaves the report's code, not meter_inactive."""
    insert_usage(database_url, 1)
    db.execute("UPDATE meter_event_outbox SET last_error_code = 'meter_inactive' WHERE id = 1")
    db.execute("UPDATE meter_event_outbox_lease_watermark SET possibly_sent_below = 1")
    reject = for_psycopg(QUERIES["reject"])
    rejected: list[object] = []

    def webhook() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            params = {"identifiers": ["u1"], "account": None, "code": "late", "message": "x"}
            rejected.extend(conn.execute(reject, params).fetchall())

    with psycopg.connect(database_url) as relay:
        with relay.transaction():
            (row,) = claim(relay, 1, relay_id="r-new")
            thread = threading.Thread(target=webhook)
            thread.start()
            blocked = (
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            )
            pid = relay.info.backend_pid
            wait_for(lambda: scalar(db, blocked, pid), timeout=10)  # the report waits on the claim
        thread.join()
        assert rejected == [("u1",)]
        assert rows(db, "SELECT state, last_error_code FROM meter_event_outbox") == [
            ("rejected", "late")
        ]
        assert rows(db, "SELECT outbox_id FROM meter_event_outbox_leases") == [(1,)]  # survived
        assert_exact(db)
        store = SyncStore(db)
        retried = store.retry(identifier="u1", code=None, force=True, window_hours=24)
        assert [r.identifier for r in retried] == ["u1"]
        assert_exact(db)
        accepted = Outcome.answered(row, "accepted", request_id="req", http_status=200)
        assert SyncStore(relay).record_outcomes([accepted], "r-new") == {1}
        relay.commit()
    assert keyed(rows(db, TALLY)) == keyed(rows(db, REAL))
