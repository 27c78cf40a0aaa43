"""A crash of PostgreSQL while calls are in flight: the UNLOGGED lease table (migration
outbox_0020) comes back empty, the rows are pending, they are claimed again and replay with the
same idempotency key; the first holder's late outcomes find no lease and write nothing. Nothing
is lost, nothing is counted twice. On a private cluster (killed with `immediate`: no
checkpoint, crash recovery on start)."""

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from bench.chaos_cluster import PrivateCluster, private_cluster
from relay.emulator import Emulator, EmulatorConfig
from tests.acceptance.process.test_process import relay_env, start, wait_for
from tests.support.relay import insert_usage, states

CLI = [sys.executable, "-m", "relay.cli"]


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    if shutil.which("pg_createcluster") is None:
        pytest.skip("needs pg_createcluster (postgresql-common) for a private cluster")
    with private_cluster() as made:
        yield made


def lease_tokens(url: str) -> set[tuple[int, str]]:
    """The live leases, each as (row, token): one claim's leases share a token."""
    with psycopg.connect(url) as conn:
        return {
            (i, str(t))
            for (i, t) in conn.execute(
                "SELECT outbox_id, lease_token FROM meter_event_outbox_leases"
            )
        }


def watermark(url: str) -> int:
    """Rows with an id up to this may have been sent when the leases were lost (0: never)."""
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT possibly_sent_below FROM meter_event_outbox_lease_watermark")
        return int((found.fetchone() or (0,))[0])


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def test_a_postgres_crash_with_live_leases_loses_nothing_and_counts_nothing_twice(
    cluster: PrivateCluster,
) -> None:
    url = cluster.create_database("crash")
    with Emulator(EmulatorConfig(rate_limit_test=None)) as emulator:
        env = relay_env(  # the lease never expires in the test; the fold runs often
            url, emulator, OUTBOX_LEASE_SECONDS="60", OUTBOX_UPKEEP_INTERVAL="0.5"
        )
        subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=120)
        gate = emulator.hold("/v1/billing/meter_events", count=3)  # the first calls wait
        identifiers = insert_usage(url, 3, customers=3)
        relay = start(env)
        try:
            gate.wait_arrived(3, timeout=60)  # leased, the calls at Stripe
            held = lease_tokens(url)
            with psycopg.connect(url) as conn:
                held_ids = [
                    i for (i,) in conn.execute("SELECT outbox_id FROM meter_event_outbox_leases")
                ]
            assert len(held) == 3 and states(url) == {"in_flight": 3}
            assert watermark(url) == 0  # the leases were never lost
            cluster.crash_stop()
            cluster.start()
            wait_for(lambda: answers(url))
            # Crash recovery empties the lease table: the rows were pending all along, so the
            # relay claims them again (new tokens) and replays them under the same keys.
            assert not held & lease_tokens(url)
            # The marker went with them: the relay's fold notices it and raises the logged
            # watermark over every row, so a cancel waits for the replay's outcome.
            wait_for(lambda: answers(url) and watermark(url) >= max(held_ids), timeout=60)
            gate.release()  # the first calls land; their outcomes find no lease
            wait_for(lambda: answers(url) and states(url) == {"accepted": 3}, timeout=90)
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.communicate(timeout=30)
        assert [emulator.counted(i) for i in identifiers] == [1, 1, 1]


def test_a_postgres_crash_empties_the_tally_deltas_and_the_next_fold_recounts(
    cluster: PrivateCluster,
) -> None:
    """outbox_0032: the tally deltas are UNLOGGED. Facts recorded and not yet folded when
    PostgreSQL crashes leave no delta after crash recovery, and neither does the marker; the
    next fold sees the marker gone and recounts every tally from the outbox. A transaction
    prepared before the crash (two-phase commit) survives it without its delta: the recount
    waits until it is committed, or its row would never be counted."""
    from relay.db import migrate

    url = cluster.create_database("tallies")
    migrate.upgrade(url)
    record = "SELECT outbox_record_usage('api_calls', %s, 1, %s, notify => false)"
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(30):  # folded: in the logged tallies
            conn.execute(record, (f"cus_{i % 3}", f"a{i}"))
        conn.execute("SELECT outbox_fold_counts()")
        for i in range(20):  # only deltas when PostgreSQL dies
            conn.execute(record, (f"cus_{i % 3}", f"b{i}"))
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()"
            " WHERE identifier LIKE 'a1%'"
        )
        conn.execute("BEGIN")
        conn.execute(record, ("cus_2pc", "prepared"))
        conn.execute("PREPARE TRANSACTION 'outbox_tally_test'")
        conn.execute("CHECKPOINT")  # a checkpoint does not write an UNLOGGED table's pages
    cluster.crash_stop()
    cluster.start()
    wait_for(lambda: answers(url))
    count_sql = "SELECT count(*) FROM {}"
    status = "SELECT state, n FROM meter_event_outbox_status WHERE n > 0 ORDER BY state"
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("meter_event_outbox_tally_deltas", "meter_event_outbox_tally_epoch"):
            assert conn.execute(count_sql.format(table)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM meter_event_outbox").fetchone() == (50,)
        assert conn.execute(status).fetchall() == [("pending", 30)]  # as last folded
        conn.execute("SELECT outbox_fold_counts()")  # waits for the prepared transaction
        assert conn.execute(status).fetchall() == [("pending", 30)]
        conn.execute("COMMIT PREPARED 'outbox_tally_test'")
        conn.execute("SELECT outbox_fold_counts()")
        assert conn.execute(status).fetchall() == [("accepted", 11), ("pending", 40)]
        unsent = (
            "SELECT customer, n FROM meter_event_outbox_tallies WHERE state = '' ORDER BY customer"
        )
        real = (
            "SELECT customer, count(*) FROM meter_event_outbox WHERE state = 'pending'"
            " GROUP BY customer ORDER BY customer"
        )
        assert conn.execute(unsent).fetchall() == conn.execute(real).fetchall()
        marker = "SELECT lost_noticed_at FROM meter_event_outbox_tally_epoch"
        assert conn.execute(marker).fetchall() == [(None,)]  # whole again
