"""The outage breaker: two relays during a 503 outage make a bounded number of calls (a few
before the breaker opens, then one probe at a time on a doubling schedule), no row fails or
uses an attempt on a held-back call, and every row is accepted once Stripe answers again."""

import asyncio
import contextlib
import json

import psycopg
import pytest

from relay.db import operations as ops
from relay.db import outage as outage_text
from relay.db.pool import make_pool
from relay.db.store import Store, SyncStore
from relay.stripe.classify import for_answer
from relay.stripe.outage import OutageBreaker
from tests.support.relay import accepted, insert_usage, make_settings, running_relay, states

THRESHOLD = 5
CONCURRENCY = 8
PROBE, PROBE_CAP = 0.3, 1.2
OUTAGE_SECONDS = 8.0
ROWS = 200
EVENTS = {"v1": "/v1/billing/meter_events", "v2-stream": "POST /v2/billing/meter_event_stream"}


def probe_bound(base: float, cap: float, seconds: float) -> int:
    """The most probes that can fail within `seconds`: the k-th probe waits for the sum of the
    first k intervals of the schedule (base, doubling, capped), counted from the opening."""
    probes, elapsed, interval = 0, 0.0, base
    while elapsed + interval <= seconds:
        elapsed += interval
        probes += 1
        interval = min(cap, interval * 2)
    return probes


def outage(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as conn:
        return SyncStore(conn).outage_state()


def test_the_probe_bound_follows_the_schedule():
    assert probe_bound(0.3, 1.2, 8.0) == 7  # 0.3 0.6 1.2 1.2 1.2 1.2 1.2 (6.9 s)
    assert probe_bound(2, 30, 150) == 8  # 2 4 8 16 30 30 30 (120 s), the defaults


@pytest.mark.parametrize("mode", ["v1", "v2-stream"])
async def test_two_relays_probe_one_at_a_time_through_an_outage(database_url, emulator, mode):
    insert_usage(database_url, ROWS, customers=50)
    emulator.start_outage(OUTAGE_SECONDS, mode="503")
    relays = [
        make_settings(
            database_url,
            emulator,
            relay_id=name,
            stripe_api_mode=mode,
            rate_limit=200,
            concurrency=CONCURRENCY,
            outage_threshold=THRESHOLD,
            outage_probe_interval=PROBE,
            outage_probe_max_interval=PROBE_CAP,
        )
        for name in ("relay-a", "relay-b")
    ]
    async with contextlib.AsyncExitStack() as stack:
        a, _ = [await stack.enter_async_context(running_relay(s)) for s in relays]
        await a.until(lambda: _is(database_url, "open"), timeout=30)
        seen = outage(database_url)
        assert seen is not None and seen.last_status == 503 and seen.failed_calls >= THRESHOLD
        # Every replica's status reads the one state (and says so in a line).
        with psycopg.connect(database_url, autocommit=True) as conn:
            line = outage_text.line(ops.status(conn)["outage"])
        assert line is not None and "503" in line and "rows wait, none fail" in line
        await a.until(lambda: accepted(database_url, ROWS), timeout=60)
    # Before opening each relay sends at most THRESHOLD calls in a row plus what it had in
    # flight; then only probes, one at a time, on the schedule.
    bound = 2 * (THRESHOLD + CONCURRENCY) + probe_bound(PROBE, PROBE_CAP, OUTAGE_SECONDS)
    failed_calls = emulator.requests(EVENTS[mode], 503)
    assert failed_calls <= bound, (failed_calls, bound)
    assert states(database_url) == {"accepted": ROWS}
    closed = outage(database_url)
    assert closed is not None and closed.state == "closed" and closed.closed_by is not None
    assert closed.failed_calls <= closed.calls
    with psycopg.connect(database_url) as conn:
        attempts = conn.execute("SELECT max(attempts) FROM meter_event_outbox").fetchone()
    assert attempts == (1,)  # held-back and gateway-refused calls used no attempt


async def _is(database_url: str, state: str) -> bool:
    seen = outage(database_url)
    return seen is not None and seen.state == state


async def test_replicas_take_the_probe_one_at_a_time(database_url):
    """The probe's lease is one row in the database: of replicas that all find the probe due
    at once (a millisecond after opening), one sends it; its failure doubles the interval for
    all; an answer closes it for all."""
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        store = Store(pool)
        breakers = [
            OutageBreaker(
                store, f"relay-{i}", threshold=1, interval=0.001, cap=60.0, lease_seconds=30
            )
            for i in range(4)
        ]
        await breakers[0].settle(1, for_answer("unavailable", http_status=503))
        for b in breakers[1:]:
            await b.sync()
        assert all(b.open for b in breakers)
        waits = await asyncio.gather(*(b.admit(10 + i) for i, b in enumerate(breakers)))
        probes = [i for i, wait in enumerate(waits) if wait is None]
        assert len(probes) == 1, waits
        prober = breakers[probes[0]]
        await prober.settle(10 + probes[0], for_answer("unavailable", http_status=503))
        shared = outage(database_url)
        assert shared is not None and shared.probes == 1 and shared.probe_holder is None
        assert shared.probe_interval == 0.002  # the next probe waits twice as long
        await prober.settle(99, for_answer("ok", http_status=200))  # a late answer closes it
        for b in breakers:
            await b.sync()
        assert not any(b.open for b in breakers)
    finally:
        await pool.close()


def test_status_says_it_first_and_in_json(database_url):
    """`status` prints the shared state's line first (the console's banner text) and
    `status --json` carries the state."""
    from click.testing import CliRunner

    from relay.cli.commands import main

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE meter_event_outbox_outage SET state = 'open', last_status = 503,"
            " since = date_trunc('minute', now()) - interval '4 minutes', opened_at = now(),"
            " calls = 200, failed_calls = 194, probe_interval = 8,"
            " probe_at = now() + interval '8 seconds'"
        )
        (since,) = conn.execute(
            "SELECT to_char(since AT TIME ZONE 'UTC', 'HH24:MI') FROM meter_event_outbox_outage"
        ).fetchone()
    env = {"OUTBOX_DATABASE_URL": database_url, "COLUMNS": "200"}
    text = CliRunner().invoke(main, ["status"], env=env)
    assert text.exit_code == 0, text.output
    first = text.stdout.splitlines()[0]
    assert first == f"Stripe answers 503 for 97% of calls since {since} UTC; rows wait, none fail"
    data = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).stdout)
    assert data["outage"]["state"] == "open"
    assert (data["outage"]["calls"], data["outage"]["failed_calls"]) == (200, 194)
