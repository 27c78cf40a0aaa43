"""The relay through PgBouncer in transaction and session pooling: every row sent once, no
database error. In transaction pooling each statement may run on another server connection,
so a statement prepared on one is missing (or another one's) on the next: the relay turns its
server-side prepares off when it finds a pooler between itself and PostgreSQL."""

import psycopg
from structlog.testing import capture_logs

from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Emulator
from tests.integration.relay.test_doctor import doctor
from tests.support.pgbouncer import Bouncer
from tests.support.relay import accepted, insert_usage, make_settings, running_relay, states

ROWS = 400


async def test_relay_sends_every_row_once_through_pgbouncer(
    database_url: str, emulator: Emulator, pgbouncer: Bouncer
) -> None:
    ids = insert_usage(database_url, ROWS, customers=40)
    settings = make_settings(
        pgbouncer.url(database_url),
        emulator,
        # LISTEN needs a session of its own: transaction pooling only has the poll timer.
        poll_only=pgbouncer.pool_mode == "transaction",
        poll_interval=0.1,
    )
    with capture_logs() as logs:
        async with running_relay(settings) as relay:
            await relay.until(lambda: accepted(database_url, ROWS), timeout=60)
    troubles = [e for e in logs if e["log_level"] in ("warning", "error", "critical")]
    assert troubles == []
    assert states(database_url) == {"accepted": ROWS}
    assert all(emulator.counted(i) == 1 for i in ids)
    with psycopg.connect(database_url) as conn:
        (errors,) = conn.execute(
            "SELECT count(*) FROM meter_event_outbox WHERE attempts <> 1"
        ).fetchone() or (None,)
    assert errors == 0


async def test_prepares_off_behind_pgbouncer_on_when_direct(
    database_url: str, pgbouncer: Bouncer
) -> None:
    for url, threshold in ((pgbouncer.url(database_url), None), (database_url, 5)):
        pool = make_pool(url, max_size=1)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                assert conn.prepare_threshold == threshold
            assert await Store(pool).ping()
        finally:
            await pool.close()


async def test_forced_prepares_setting(database_url: str) -> None:
    for prepare, threshold in (("off", None), ("on", 5)):
        pool = make_pool(database_url, max_size=1, prepare=prepare)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                assert conn.prepare_threshold == threshold
        finally:
            await pool.close()


def test_doctor_says_the_database_is_reached_through_a_pooler(
    database_url: str, emulator: Emulator, pgbouncer: Bouncer
) -> None:
    result = doctor(pgbouncer.url(database_url), emulator)
    assert "database: reachable through a pooler" in result.output, result.output
    assert "database: reachable through a pooler" not in doctor(database_url, emulator).output
