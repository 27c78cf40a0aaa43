"""The claim's transaction begins READ COMMITTED whatever the database's default: its lease
statement needs a snapshot of its own, taken after the claim's row locks, to see the lease of a
relay that held the row just before (the lease is a plain INSERT for a row no lease of which it
sees). Under a snapshot isolation default both statements would share the claim's snapshot,
taken before its locks: the lease of a relay that committed in between is invisible, and the
INSERT fails on the lease table's primary key (found by a hostile review; before the plain
INSERT, ON CONFLICT raised a serialization failure there instead).

The race is made deterministic with PostgreSQL's lock queue: the second claim takes its
snapshot when its statement starts, then queues for its lock on the lease table behind an
ACCESS EXCLUSIVE request that itself queues behind the first relay's open claim."""

import threading
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel

from relay.db.pool import make_pool
from relay.db.store import FIRST_LANE, SyncStore
from tests.acceptance.process.test_process import wait_for
from tests.helpers import scalar
from tests.support.relay import insert_usage

DEFAULTS = ["repeatable read", "serializable"]


def _waiting_on_a_lock(db: psycopg.Connection, pid: int) -> bool:
    return bool(scalar(db, "SELECT count(*) > 0 FROM pg_locks WHERE pid = %s AND NOT granted", pid))


@pytest.mark.parametrize("default", DEFAULTS)
async def test_the_relays_transactions_begin_read_committed_whatever_the_default(
    database_url: str, db: psycopg.Connection, default: str
) -> None:
    db.execute(f"ALTER DATABASE {db.info.dbname} SET default_transaction_isolation = '{default}'")
    pool = make_pool(database_url, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            assert await (await conn.execute("SHOW transaction_isolation")).fetchone() == (
                default,
            )  # a single statement runs in the session's default
            async with conn.transaction():
                found = await (await conn.execute("SHOW transaction_isolation")).fetchone()
                assert found == ("read committed",)
    finally:
        await pool.close()


@pytest.mark.parametrize("default", DEFAULTS)
def test_a_claim_racing_a_committed_lease_leaves_the_row_to_its_holder(
    database_url: str, db: psycopg.Connection, default: str
) -> None:
    """Relay A claims the only head and keeps its transaction open; relay B walks (A's lease is
    not committed: the head looks free) and claims; A commits while B's claim waits. B's
    connection begins its transactions READ COMMITTED, as the relay's pool does (the test
    above), on a database defaulting to `default`: B's lease statement sees A's lease and
    leaves the row, without an error."""
    insert_usage(database_url, 1)
    db.execute(f"ALTER DATABASE {db.info.dbname} SET default_transaction_isolation = '{default}'")
    how: Any = {"fill": 0, "exclusive": True, "lease_seconds": 30, "one_walk": True}
    with (
        psycopg.connect(database_url) as a,
        psycopg.connect(database_url) as locker,
        psycopg.connect(database_url, autocommit=True) as b,
    ):
        b.isolation_level = IsolationLevel.READ_COMMITTED  # as pool._configurer sets it
        walked_a = SyncStore(a).walk(FIRST_LANE, 10, exclusive=True)
        a.commit()
        a.execute("SELECT 1")  # an open transaction: claim()'s own is a savepoint inside it
        (leased_a,) = SyncStore(a).claim(walked_a.ids, relay_id="relay-a", **how)
        walked_b = SyncStore(b).walk(FIRST_LANE, 10, exclusive=True)
        assert walked_b.ids == [leased_a.id]
        queued = threading.Thread(
            target=locker.execute,
            args=("LOCK TABLE meter_event_outbox_leases IN ACCESS EXCLUSIVE MODE",),
        )
        queued.start()
        wait_for(lambda: _waiting_on_a_lock(db, locker.info.backend_pid), timeout=10)
        outcome: list[Any] = []

        def relay_b() -> None:
            try:
                outcome.append(SyncStore(b).claim(walked_b.ids, relay_id="relay-b", **how))
            except BaseException as err:  # the test asserts none happened
                outcome.append(err)

        claiming = threading.Thread(target=relay_b)
        claiming.start()
        wait_for(lambda: _waiting_on_a_lock(db, b.info.backend_pid), timeout=10)
        a.commit()  # A's lease is committed, its row lock released
        queued.join()
        locker.rollback()
        claiming.join(timeout=30)
        assert not claiming.is_alive()
    assert outcome == [[]]  # B leased nothing, and raised nothing
    assert scalar(db, "SELECT leased_by FROM meter_event_outbox_leases") == "relay-a"
