"""Helpers for the console and /metrics tests: the relay's real HTTP app on a free port, and a
database seeded through the same statements the relay and applications use (the `emulator`
fixture comes from tests/support/relay.py)."""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from aiohttp import web

from relay.core.config import Settings
from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Emulator
from relay.pipeline.supervisor import Relay
from relay.pipeline.wakeup import Wakeup
from relay.server.http_server import make_app
from relay.stripe.sender import StripeSender
from tests.support.relay import insert_usage, make_settings

TOKEN = "console-test-token-0123456789abcdef"


@dataclass
class Served:
    """A relay's HTTP app listening on 127.0.0.1 (the relay itself runs only if started)."""

    url: str
    relay: Relay
    settings: Settings
    app: web.Application


@contextlib.asynccontextmanager
async def listening(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free port of 127.0.0.1; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def served(database_url: str, emulator: Emulator, **overrides: Any) -> AsyncIterator[Served]:
    """The app make_app builds for `outbox-relay run`, bound to a relay that is not running
    (pages then show exactly what a test seeded)."""
    settings = make_settings(database_url, emulator, http_port=0, **overrides)
    pool = make_pool(settings.database_url)
    await pool.open(wait=True)
    sender = StripeSender(settings.api_key() or "", settings.stripe_api_base, 5, 4)
    relay = Relay(settings, Store(pool), sender, Wakeup(database_url, listen=False))
    try:
        app = make_app(relay, Store(pool), sender.client, None)
        async with listening(app) as url:
            yield Served(url, relay, settings, app)
    finally:
        await sender.close()
        await pool.close()


@dataclass(frozen=True)
class Seeded:
    failed: list[str]
    rejected: list[str]
    retrying: list[str]
    accepted: list[str]
    fresh: list[str]  # pending, never sent


def seed(database_url: str) -> Seeded:
    """30 facts for 3 customers moved to every state by UPDATEs (the maintained counters see
    them as they see the relay's writes), three attempts for the first failed row, two live
    relays."""
    ids = insert_usage(database_url, 30, customer="cus_", customers=3)
    accepted, failed, rejected, retrying = ids[:10], ids[10:13], ids[13:15], ids[15:19]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'accepted', attempts = 1, accepted_at = now(),"
            " first_attempt_at = now(), stripe_request_id = 'req_' || id, updated_at = now()"
            " WHERE identifier = ANY(%s)",
            (accepted,),
        )
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'failed', attempts = 3,"
            " last_error_code = 'http_503', last_error_message = 'Service Unavailable',"
            " created_at = now() - interval '2 minutes',"
            " occurred_at = now() - interval '3 minutes',"
            " first_attempt_at = now() - interval '90 seconds', updated_at = now()"
            " WHERE identifier = ANY(%s)",
            (failed,),
        )
        conn.execute(
            "UPDATE meter_event_outbox SET state = 'rejected', attempts = 1,"
            " last_error_code = 'meter_event_customer_not_found',"
            " last_error_message = 'No such customer <b>x</b>', updated_at = now()"
            " WHERE identifier = ANY(%s)",
            (rejected,),
        )
        conn.execute(
            "UPDATE meter_event_outbox SET attempts = 2, last_error_code = 'rate_limited',"
            " available_at = now() + interval '38 seconds', first_attempt_at = now(),"
            " created_at = now() - interval '55 seconds',"
            " occurred_at = now() - interval '70 seconds'"
            " WHERE identifier = ANY(%s)",
            (retrying,),
        )
        conn.execute(
            "INSERT INTO meter_event_outbox_attempts (outbox_id, attempted_at, attempt,"
            " key_generation, action, state, http_status, code, message, stripe_request_id,"
            " latency_ms, relay_id)"
            " SELECT id, now() - (4 - g) * interval '30 seconds', g, 0, 'report',"
            " CASE WHEN g = 3 THEN 'failed' ELSE 'pending' END, 503, 'http_503',"
            " 'Service Unavailable', 'req_fail_' || g, 120.5 + g, 'relay-a'"
            " FROM meter_event_outbox, generate_series(1, 3) g WHERE identifier = %s",
            (failed[0],),
        )
        conn.execute(
            "INSERT INTO meter_event_outbox_relays (relay_id) VALUES ('relay-a'), ('relay-b')"
        )
    return Seeded(failed, rejected, retrying, accepted, ids[19:])


def db_counts(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM meter_event_outbox GROUP BY 1"))
