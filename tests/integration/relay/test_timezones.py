"""The relay reads and groups time in UTC whatever the server's TimeZone setting: Stripe's
hourly summaries are UTC hours, and psycopg loads UTC timestamps (datetime.timezone.utc)
about three times faster than timestamps of a named zone."""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from outbox.dburl import psycopg_url
from relay.db import operations as ops
from relay.db.pool import make_pool
from relay.db.store import SyncStore

FAR_ZONE = "Asia/Kolkata"  # UTC+05:30: its hours are not UTC hours


@pytest.fixture
def far_zone_url(database_url: str) -> str:
    """The test database with a half-hour-offset default TimeZone, as a server may have."""
    with psycopg.connect(psycopg_url(database_url), autocommit=True) as conn:
        (name,) = conn.execute("SELECT current_database()").fetchone() or ("",)
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone = '{FAR_ZONE}'")
    return database_url


def test_drift_groups_by_utc_hour_on_a_server_in_another_zone(far_zone_url: str) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    with psycopg.connect(psycopg_url(far_zone_url), autocommit=True) as conn:  # no SET here
        assert conn.execute("SHOW timezone").fetchone() == (FAR_ZONE,)
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, occurred_at)"
            " VALUES ('late-in-the-hour', 'api_calls', 'cus_tz', 3, %s)",
            (hour + timedelta(minutes=45),),
        )
        conn.execute("UPDATE meter_event_outbox SET state = 'accepted', accepted_at = now()")
        groups = SyncStore(conn).drift_ours(hour - timedelta(hours=1), hour + timedelta(hours=2))
    assert [(g.hour, g.events) for g in groups] == [(hour, 1)]


def test_cli_connections_load_timestamps_in_utc(far_zone_url: str) -> None:
    with ops.connect(far_zone_url) as conn:
        (now,) = conn.execute("SELECT now()").fetchone() or (None,)
    assert now is not None and now.tzinfo is UTC


async def test_relay_pool_loads_timestamps_in_utc(far_zone_url: str) -> None:
    pool = make_pool(far_zone_url, max_size=1)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT now()")
            (now,) = await cur.fetchone() or (None,)
    finally:
        await pool.close()
    assert now is not None and now.tzinfo is UTC
