"""Hostile review of the UNLOGGED lease (migration outbox_0020): what the lease table must keep
true that the `in_flight` row used to, against cancels, webhook rejections and racing relays."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import outbox
from relay.core.rows import Outcome
from relay.core.vocabulary import STRIPE_OUTAGE
from relay.db import queries
from relay.db.store import SyncStore, lease_params
from tests.acceptance.process.test_process import wait_for
from tests.support.relay import claim, expire_leases, fold, insert_usage, row, running_relay


def write(conn: psycopg.Connection, outcomes: list[Outcome]) -> set[int]:
    return SyncStore(conn).record_outcomes(outcomes, "relay-a")


def reject(conn: psycopg.Connection, *identifiers: str) -> list[str]:
    """Stripe's error report names these rows (invalid customer): the identifiers `reject` took."""
    params: queries.RejectParams = {
        "identifiers": list(identifiers),
        "account": None,
        "code": "invalid_customer",
        "message": "no such customer",
    }
    return SyncStore(conn).all(queries.REJECT(params))


def test_a_repeated_cancel_of_a_report_in_flight_still_waits_for_its_outcome(
    database_url: str, db
) -> None:
    """An application that calls cancel_usage twice (a retried request) while the first report
    is in flight: the second call must not cancel the row on the spot, or Stripe counts a fact
    the outbox says was cancelled (invariant 10)."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    # Stripe took the report: the cancel is now sent as an adjustment.
    assert write(db, [Outcome(row=claimed, state="accepted")]) == {claimed.id}
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")


def test_a_cancel_after_the_lease_ran_out_waits_for_the_report_s_outcome(
    database_url: str, db
) -> None:
    """A relay died (or is slow) after its call: its lease has expired but nobody took it over
    yet. The report may have landed, so a cancel is only stamped, as it was for an `in_flight`
    row whose deadline had passed; the relay that takes the lease over resolves the report."""
    insert_usage(database_url, 1)
    claim(db, "relay-a", lease=30)
    expire_leases(db)
    outbox.cancel_usage(db, identifier="u1")
    assert row(database_url, "u1")["state"] != "cancelled"
    (taken,) = claim(db, "relay-b", lease=30)
    assert write(db, [Outcome(row=taken, state="accepted")]) == {taken.id}
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")


def test_a_webhook_rejection_after_the_lease_ran_out_is_kept(database_url: str, db) -> None:
    """Stripe's asynchronous error report names a row whose relay died after its call landed
    (lease expired, not yet taken over): the row is rejected, as an `in_flight` row past its
    deadline was, and the relay that would have replayed it leaves it alone."""
    insert_usage(database_url, 1)
    claim(db, "relay-a", lease=30)
    expire_leases(db)
    assert reject(db, "u1") == ["u1"]
    assert row(database_url, "u1")["state"] == "rejected"
    assert claim(db, "relay-b", lease=30) == []


def test_a_webhook_rejection_of_a_report_in_flight_with_a_cancel_requested(
    database_url: str, db
) -> None:
    """The cancel trigger now fires on every update of a pending row with a cancel request: a
    rejection (which drops the lease in the same statement) must still go through."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    assert reject(db, "u1") == ["u1"]
    assert write(db, [Outcome(row=claimed, state="accepted")]) == set()
    assert row(database_url, "u1")["state"] == "rejected"


def test_a_taken_over_lease_keeps_the_dead_relay_s_first_claim_when_the_new_holder_sends_nothing(
    database_url: str, db
) -> None:
    """relay-a died after its call (it may have landed); relay-b takes the lease over and gives
    the row back without a call (the outage breaker holds). The carried first claim is the dedup
    clock of relay-a's call (invariant 6) and says Stripe may have counted it: it must reach the
    row, or a cancel now cancels on the spot what Stripe counted (invariant 10). (The claim used
    to write first_attempt_at into the row, and an unsent outcome restored the pre-claim value,
    which relay-a's claim had set.)"""
    insert_usage(database_url, 1)
    (first,) = claim(db, "relay-a", lease=30)
    expire_leases(db)
    (taken,) = claim(db, "relay-b", lease=30)
    assert taken.first_attempt_at is not None
    held = Outcome.unsent(taken, STRIPE_OUTAGE, "held", delay=0.0)
    assert SyncStore(db).record_outcomes([held], "relay-b") == {first.id}
    assert row(database_url, "u1")["first_attempt_at"] == taken.first_attempt_at
    assert outbox.cancel_usage(db, identifier="u1").state == "pending"
    assert row(database_url, "u1")["action"] == "report"  # resolved first, same key


def crash(db: psycopg.Connection) -> None:
    """What crash recovery (or a failover to a standby) does to the UNLOGGED tables: empties
    them, the leases and the marker that says they were not lost."""
    db.execute("TRUNCATE meter_event_outbox_leases, meter_event_outbox_lease_epoch")


def watermark(db: psycopg.Connection) -> int:
    found = db.execute("SELECT possibly_sent_below FROM meter_event_outbox_lease_watermark")
    return int((found.fetchone() or (0,))[0])


def marked(db: psycopg.Connection) -> bool:
    found = db.execute("SELECT count(*) FROM meter_event_outbox_lease_epoch").fetchone()
    return bool(found and found[0] == 1)


@pytest.mark.parametrize("noticed", [False, True], ids=["before-a-fold", "after-a-fold"])
def test_a_cancel_after_a_crash_emptied_the_lease_table_waits_for_the_report_s_outcome(
    database_url: str, db, noticed: bool
) -> None:
    """The first call of a row is at Stripe when PostgreSQL crashes: crash recovery resets the
    UNLOGGED lease table and the marker beside it. The row is pending with no first_attempt_at,
    exactly as if it was never sent; but the marker is gone (or, once a relay noticed, the row
    lies under the logged watermark), so a cancel is only stamped and the report is resolved
    first (same key), as for the `in_flight` row of the previous release (invariant 10)."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    crash(db)
    if noticed:
        fold(db)
    outbox.cancel_usage(db, identifier="u1")
    assert write(db, [Outcome(row=claimed, state="accepted")]) == set()  # lease gone
    assert row(database_url, "u1")["state"] != "cancelled"  # Stripe counted it
    (again,) = claim(db, "relay-b", lease=30)  # replayed under the same key
    assert write(db, [Outcome(row=again, state="accepted")]) == {again.id}
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")


def test_the_relay_notices_the_crash_and_raises_the_watermark(database_url: str, db) -> None:
    """The fold re-creates the marker and raises the watermark to max(id) in one transaction;
    a second fold, or one whose marker is there, changes nothing; the watermark never falls."""
    insert_usage(database_url, 3)
    top = db.execute("SELECT max(id) FROM meter_event_outbox").fetchone()
    assert top is not None
    crash(db)
    assert not marked(db)
    fold(db)
    assert marked(db) and watermark(db) == top[0]
    db.execute(
        "UPDATE meter_event_outbox_lease_watermark SET possibly_sent_below = %s", (top[0] + 100,)
    )
    crash(db)
    fold(db)
    assert marked(db) and watermark(db) == top[0] + 100  # greatest wins
    insert_usage(database_url, 1, prefix="w")
    fold(db)
    assert watermark(db) == top[0] + 100


async def test_a_running_relay_re_creates_the_marker(database_url: str, db, settings) -> None:
    """The relay's upkeep turn does it (no operator step after a crash or a failover)."""
    insert_usage(database_url, 2)
    top = db.execute("SELECT max(id) FROM meter_event_outbox").fetchone()
    assert top is not None
    crash(db)

    async def noticed() -> bool:
        return marked(db)

    async with running_relay(settings) as relay:
        await relay.until(noticed, timeout=30)
    assert watermark(db) >= top[0]


def test_a_cancel_of_a_row_above_the_watermark_with_no_lease_is_at_once(
    database_url: str, db
) -> None:
    """No regression: a row recorded after the reset was noticed, never claimed, is cancelled
    on the spot; one under the watermark is only stamped (one extra, idempotent call)."""
    insert_usage(database_url, 1)
    crash(db)
    fold(db)
    insert_usage(database_url, 1, prefix="v")
    assert outbox.cancel_usage(db, identifier="v1").state == "cancelled"
    assert row(database_url, "v1")["state"] == "cancelled"
    assert outbox.cancel_usage(db, identifier="u1").state == "pending"
    assert row(database_url, "u1")["cancel_requested_at"] is not None


def test_a_webhook_rejection_of_a_row_under_the_watermark_is_applied(database_url: str, db) -> None:
    """Stripe's error report names a row whose first call landed just before the crash: it has
    no lease any more, but lies under the watermark, so it is rejected (not replayed); a
    row above the watermark that was never sent is left alone."""
    insert_usage(database_url, 1)
    claim(db, "relay-a", lease=30)
    crash(db)
    fold(db)
    insert_usage(database_url, 1, prefix="v")
    assert reject(db, "u1", "v1") == ["u1"]
    assert row(database_url, "u1")["state"] == "rejected"
    assert row(database_url, "v1")["state"] == "pending"


def _blocked(db: psycopg.Connection, conn: psycopg.Connection) -> bool:
    found = db.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", (conn.info.backend_pid,))
    return bool((found.fetchone() or (False,))[0])


def _never_waiting(database_url: str) -> psycopg.Connection:
    """relay-b's session: its claim must never wait for a lock, so a wait fails the test (after
    lock_timeout) instead of hanging it."""
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute("SET lock_timeout = '10s'")
    return conn


def _takeover(conn: psycopg.Connection, ids: list[int]) -> list[Any]:
    return SyncStore(conn).claim(
        ids, fill=0, exclusive=True, relay_id="relay-b", lease_seconds=30, one_walk=True
    )


def test_a_takeover_skips_a_lease_its_old_holder_s_late_outcome_is_deleting(
    database_url: str, db
) -> None:
    """The outcome deletes the lease, then updates the row; the claim locks the row, then leases
    it. relay-a's late outcome (rows 2 and 1) has deleted its expired lease of row 1 and waits
    for row 2 when relay-b takes row 1 over: relay-b must not wait for that lease while it
    holds row 1 (they used to deadlock, and PostgreSQL aborted one). relay-b leaves row 1 out,
    at once; relay-a's outcome is written, and nothing is left to take over."""
    insert_usage(database_url, 2, customers=2)
    one, two = claim(db, "relay-a", lease=30)
    expire_leases(db)
    a = psycopg.connect(database_url, autocommit=True)
    b = _never_waiting(database_url)
    blocker = psycopg.connect(database_url)  # holds row 2 so that relay-a's outcome stops there
    blocker.execute("SELECT 1 FROM meter_event_outbox WHERE id = %s FOR UPDATE", (two.id,))
    late = [Outcome(row=two, state="accepted"), Outcome(row=one, state="accepted")]
    with ThreadPoolExecutor(1) as pool, a, b, blocker:
        written = pool.submit(SyncStore(a).record_outcomes, late, "relay-a")
        wait_for(lambda: _blocked(db, a), timeout=10)  # row 1's lease deleted, waits for row 2
        assert _takeover(b, [one.id]) == []  # returns without waiting: nothing to wait for
        blocker.rollback()
        assert written.result(timeout=30) == {one.id, two.id}
    assert row(database_url, one.identifier)["state"] == "accepted"
    assert row(database_url, two.identifier)["state"] == "accepted"


def test_a_takeover_skips_a_lease_a_webhook_s_rejection_is_deleting(database_url: str, db) -> None:
    """A webhook's `reject` deletes the leases of the rows it names, then updates them, as an
    outcome does: a takeover of one of them leaves it out at once instead of waiting for the
    lease while it holds the row (which deadlocked too), and the rejection is applied."""
    insert_usage(database_url, 2, customers=2)
    one, two = claim(db, "relay-a", lease=30)
    expire_leases(db)
    a = psycopg.connect(database_url, autocommit=True)
    b = _never_waiting(database_url)
    blocker = psycopg.connect(database_url)  # holds row 2 so that the rejection stops there
    blocker.execute("SELECT 1 FROM meter_event_outbox WHERE id = %s FOR UPDATE", (two.id,))
    with ThreadPoolExecutor(1) as pool, a, b, blocker:
        rejected = pool.submit(reject, a, one.identifier, two.identifier)
        wait_for(lambda: _blocked(db, a), timeout=10)  # both leases deleted, waits for row 2
        assert _takeover(b, [one.id]) == []
        blocker.rollback()
        assert sorted(rejected.result(timeout=30)) == sorted([one.identifier, two.identifier])
    assert row(database_url, one.identifier)["state"] == "rejected"


def test_a_late_outcome_waits_for_a_takeover_and_then_writes_nothing(database_url: str, db) -> None:
    """The other order: relay-b has taken row 1's expired lease over (its claim not committed
    yet) when relay-a's late outcome comes. The outcome waits for the claim, never the other
    way round, then finds a lease with another token and writes nothing to row 1: relay-b
    replays it under the same key, with relay-a's first claim."""
    insert_usage(database_url, 2, customers=2)
    one, two = claim(db, "relay-a", lease=30)
    expire_leases(db)
    a = psycopg.connect(database_url, autocommit=True)
    b = psycopg.connect(database_url, autocommit=True)
    late = [Outcome(row=two, state="accepted"), Outcome(row=one, state="accepted")]
    with ThreadPoolExecutor(1) as pool, a, b:
        with b.transaction():  # relay-b's claim, held open until the outcome waits for it
            (held,) = _takeover(b, [one.id])
            written = pool.submit(SyncStore(a).record_outcomes, late, "relay-a")
            wait_for(lambda: _blocked(db, a), timeout=10)
        assert written.result(timeout=30) == {two.id}
    first = row(database_url, one.identifier)
    assert (first["state"], first["leased_by"]) == ("in_flight", "relay-b")
    assert (held.key_generation, held.first_attempt_at) == (0, one.first_attempt_at)


def test_a_claim_whose_snapshot_missed_a_lease_leaves_the_row_to_its_holder(
    database_url: str, db
) -> None:
    """The normal path (two relays, or one relay's two claims at once, walking the same heads):
    relay-b's claim statement began before relay-a's claim of row 1 committed and locked row 1
    after it (relay-a's lock is gone at its commit), so it took the row without seeing relay-a's
    lease. relay-a's outcome then deletes that lease and waits for the row. Leasing in that
    same snapshot, relay-b waited for the lease: a deadlock. The lease is read by a second
    statement, with a snapshot taken after the row lock: here, relay-b holding row 1 (as its
    first statement left it) sees relay-a's lease and leaves row 1 out, without waiting."""
    insert_usage(database_url, 1)
    (one,) = claim(db, "relay-a", lease=30)
    a = psycopg.connect(database_url, autocommit=True)
    b = _never_waiting(database_url)
    with ThreadPoolExecutor(1) as pool, a, b:
        with b.transaction():
            # relay-b's first statement as the late snapshot left it: row 1 locked
            b.execute("SELECT 1 FROM meter_event_outbox WHERE id = %s FOR UPDATE", (one.id,))
            outcome = [Outcome(row=one, state="accepted")]
            written = pool.submit(SyncStore(a).record_outcomes, outcome, "relay-a")
            wait_for(lambda: _blocked(db, a), timeout=10)  # the lease deleted, waits for row 1
            how: queries.ClaimHow = {
                "fill": 0,
                "exclusive": True,
                "relay_id": "b",
                "lease_seconds": 30,
            }
            assert SyncStore(b).all(queries.LEASE(lease_params([one.id], how))) == []
        assert written.result(timeout=30) == {one.id}
    assert row(database_url, one.identifier)["state"] == "accepted"


# The previous release's claim (outbox_0017), its final statement: the row itself is leased.
PREVIOUS_CLAIM = (
    "UPDATE meter_event_outbox SET state = 'in_flight', lease_token = gen_random_uuid(),"
    " leased_by = 'relay-old', available_at = now() + interval '30 seconds',"
    " first_attempt_at = coalesce(first_attempt_at, now()), updated_at = now()"
    " WHERE id = %s AND state IN ('pending', 'in_flight') AND available_at <= now()"
    " RETURNING lease_token"
)


def test_the_previous_release_takes_over_an_expired_lease_of_a_row_with_a_cancel_requested(
    database_url: str, db
) -> None:
    """A relay of the previous release takes over this release's expired lease of a report
    whose cancel was requested while it was in flight: its claim makes the row `in_flight`
    (the cancel trigger leaves a claim alone), so this release's relays keep off it until its
    deadline, and the old relay's outcome turns the report into its cancel."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    expire_leases(db)
    assert db.execute(PREVIOUS_CLAIM, (claimed.id,)).fetchone() is not None
    r = row(database_url, "u1")
    assert (r["state"], r["leased_by"]) == ("in_flight", "relay-old")
    assert claim(db, "relay-b", lease=30) == []


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_cancel_in_a_snapshot_transaction_waits_for_a_report_claimed_after_its_snapshot(
    database_url: str, db, isolation: str
) -> None:
    """The application's REPEATABLE READ (or SERIALIZABLE) transaction took its snapshot before
    the claim committed. The claim only locks the row (the lease is in the lease table), so the
    cancel's update meets no concurrent update; with outbox_0020's trigger (EXISTS on the lease
    table, read with that snapshot) the row was cancelled on the spot while its report was at
    Stripe, and the report's outcome then wrote nothing (invariant 10). The trigger probes the
    lease key now (outbox_0024): the cancel fails to serialize, as it did when the lease was in
    the row, and the application's retry sees the report in flight."""
    insert_usage(database_url, 1)
    with psycopg.connect(database_url) as app:
        app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        app.execute("SELECT count(*) FROM meter_event_outbox").fetchone()  # the snapshot
        (claimed,) = claim(db, "relay-a", lease=30)
        with pytest.raises(psycopg.errors.SerializationFailure):
            outbox.cancel_usage(app, identifier="u1")
        app.rollback()
        app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        assert outbox.cancel_usage(app, identifier="u1").state == "in_flight"
        app.commit()
    assert write(db, [Outcome(row=claimed, state="accepted")]) == {claimed.id}
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")


def test_a_cancel_probe_leaves_no_lease_behind(database_url: str, db) -> None:
    """With no lease, the cancel trigger's probe of the lease key is deleted in the same
    statement: the row is cancelled on the spot and no claim ever meets a lease for it."""
    insert_usage(database_url, 1)
    assert outbox.cancel_usage(db, identifier="u1").state == "cancelled"
    db.commit()
    (leases,) = db.execute("SELECT count(*) FROM meter_event_outbox_leases").fetchone()
    assert leases == 0


def test_the_relay_s_own_outcome_of_a_report_whose_cancel_was_requested_runs_no_cancel_probe(
    database_url: str, db
) -> None:
    """The cancel trigger keeps a cancel from finishing a row whose report is in flight. The
    relay's outcome of such a report deleted the lease itself (it is the report's outcome):
    nothing to keep, and the trigger's probe of the lease key (an insert and a delete per row)
    was a cost of every cancelled row's outcome. It is still routed: a pending cancellation."""
    insert_usage(database_url, 1)
    (claimed,) = claim(db, "relay-a", lease=30)
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    with db.transaction():
        db.execute("SET LOCAL track_functions = 'pl'")
        assert write(db, [Outcome(row=claimed, state="accepted")]) == {claimed.id}
        (calls,) = db.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
            " WHERE funcname = 'meter_event_outbox_leased_cancel'"
        ).fetchone() or (0,)
    assert calls == 0
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")


def test_a_repeated_cancel_racing_the_claim_of_a_report_never_sent_waits_for_its_outcome(
    database_url: str, db
) -> None:
    """The cancel trigger fires on a row whose cancel was requested before, too: a report
    released unsent (nothing reached Stripe, first_attempt_at still NULL) keeps its request
    and goes out again. A repeated cancel_usage whose snapshot predates that claim would cancel
    it on the spot while the report is at Stripe (invariant 10): it fails to serialize."""
    insert_usage(database_url, 1)
    (first,) = claim(db, "relay-a", lease=30)
    assert outbox.cancel_usage(db, identifier="u1").state == "in_flight"
    released = Outcome(row=first, state="pending", counted=0, reached=False)
    assert write(db, [released]) == {first.id}
    assert row(database_url, "u1")["first_attempt_at"] is None
    with psycopg.connect(database_url) as app:
        app.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        app.execute("SELECT count(*) FROM meter_event_outbox").fetchone()  # the snapshot
        (second,) = claim(db, "relay-b", lease=30)
        with pytest.raises(psycopg.errors.SerializationFailure):
            outbox.cancel_usage(app, identifier="u1")
    assert write(db, [Outcome(row=second, state="accepted")]) == {second.id}
    r = row(database_url, "u1")
    assert (r["state"], r["action"]) == ("pending", "cancel")
