"""Lanes and limits: one call in flight per (customer, meter), round robin over lanes, Stripe's
rate limit kept (shared by replicas)."""

import asyncio
from typing import ClassVar

import psycopg
import pytest

from relay.db import operations as ops
from relay.db.store import Store
from relay.emulator import Emulator, EmulatorConfig, Faults, Latency
from relay.stripe.rate_share import FENCED_RATE
from tests.support.relay import (
    accepted,
    claim,
    insert_usage,
    make_settings,
    max_concurrent_per_lane,
    row,
    running_relay,
    state_is,
)


def test_one_row_in_flight_per_lane_across_claims(database_url: str, db) -> None:
    insert_usage(database_url, 5, customer="cus_a", prefix="a")
    insert_usage(database_url, 5, customer="cus_b", prefix="b")
    got = claim(db, "relay-a", lease=30)
    assert sorted(r.customer for r in got) == ["cus_a", "cus_b"]
    assert claim(db, "relay-b", lease=30) == []  # both lanes busy


async def test_never_two_calls_in_flight_per_customer_meter(database_url: str, emulator):
    emulator.set_faults(Faults(latency=Latency.uniform(5, 20)))
    insert_usage(database_url, 60, customer="cus_hot", prefix="hot")
    insert_usage(database_url, 60, customers=30, prefix="many")
    settings = make_settings(database_url, emulator, concurrency=64, batch_size=50)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 120), timeout=60)
    assert max_concurrent_per_lane(emulator) == 1
    assert emulator.stats()["concurrency_conflicts"] == 0


async def test_rate_limit_respected_zero_429s(database_url: str) -> None:
    """Sandbox limit 25/s at the emulator; the relay's default for a test key is 25/s."""
    with Emulator(EmulatorConfig(rate_limit_test=25)) as emulator:
        insert_usage(database_url, 80, customers=80)
        settings = make_settings(database_url, emulator, rate_limit=None)
        assert settings.effective_rate_limit() == 25
        async with running_relay(settings) as relay:
            await relay.until(lambda: accepted(database_url, 80), timeout=30)
        assert emulator.stats()["status_429"] == 0


async def test_replicas_share_the_account_rate_limit(database_url: str) -> None:
    """Two relays on one database, sandbox limit 25/s at the emulator: each takes half, so
    together they stay within Stripe's limit (each at the full 25/s would draw 429s)."""
    with Emulator(EmulatorConfig(rate_limit_test=25)) as emulator:
        insert_usage(database_url, 100, customers=100)
        one = make_settings(database_url, emulator, rate_limit=None, relay_id="relay-a")
        two = make_settings(database_url, emulator, rate_limit=None, relay_id="relay-b")
        async with running_relay(one) as a, running_relay(two) as b:
            await a.until(lambda: accepted(database_url, 100), timeout=30)
            shares = (a.relay.limiter.ceiling, b.relay.limiter.ceiling)
            with ops.connect(database_url) as conn:
                running = [r["relay_id"] for r in ops.status(conn)["relays"]]
        assert running == ["relay-a", "relay-b"]
        assert emulator.stats()["status_429"] == 0
    assert shares == (12.5, 12.5)
    with psycopg.connect(database_url) as conn:  # both left: their shares are free again
        assert conn.execute("SELECT count(*) FROM meter_event_outbox_relays").fetchone() == (0,)


async def test_a_relay_that_cannot_count_the_others_fences_itself(database_url, emulator):
    """Unable to heartbeat, a relay is about to be counted out by the others (who then raise
    their shares): it drops to FENCED_RATE, and takes its share again once counted."""
    settings = make_settings(database_url, emulator, rate_limit=100)
    async with running_relay(settings) as running:
        await running.until(lambda: _counted(running))
        assert running.relay.limiter.ceiling == 100
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE meter_event_outbox_relays RENAME TO relays_away")
            await running.until(lambda: _ceiling_is(running, FENCED_RATE), timeout=15)
            conn.execute("ALTER TABLE relays_away RENAME TO meter_event_outbox_relays")
        await running.until(lambda: _ceiling_is(running, 100), timeout=15)


async def _counted(running) -> bool:
    return running.relay.share.live == 1


async def _ceiling_is(running, rate: float) -> bool:
    return running.relay.limiter.ceiling == rate


@pytest.mark.parametrize("mode", ["v1", "v2-stream"])
async def test_backlog_of_one_customer_does_not_starve_another(database_url, emulator, mode):
    """Invariant 7: 100k rows of cus_big queued; cus_small's fresh row overtakes the backlog.

    v2 stream has no per-lane limit, so without the lane walk its claims would be oldest first
    and the fresh row would wait for the whole backlog."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox (identifier, event_name, customer, value)"
            " SELECT 'big' || g, 'api_calls', 'cus_big', 1 FROM generate_series(1, 100000) g"
        )
    emulator.set_faults(Faults(latency=Latency.fixed(5)))
    settings = make_settings(database_url, emulator, concurrency=64, stripe_api_mode=mode)
    async with running_relay(settings) as relay:
        await relay.until(lambda: _accepted_at_least(database_url, 20))
        insert_usage(database_url, 1, customer="cus_small", prefix="fresh")
        await relay.until(lambda: state_is(database_url, "fresh1", "accepted"), timeout=10)
    overtaken = _overtaken(database_url)
    # Rows already claimed when it arrived may go first (at most a few claims' worth); oldest
    # first it would wait for the whole remaining backlog.
    assert overtaken < 20_000, overtaken


def _overtaken(url: str) -> int:
    """cus_big's rows accepted between fresh1's commit and its acceptance."""
    fresh = row(url, "fresh1")
    with psycopg.connect(url) as conn:
        (overtaken,) = conn.execute(
            "SELECT count(*) FROM meter_event_outbox WHERE customer = 'cus_big'"
            " AND accepted_at > %s AND accepted_at < %s",
            (fresh["created_at"], fresh["accepted_at"]),
        ).fetchone()
    return int(overtaken)


async def _accepted_at_least(url: str, n: int) -> bool:
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT n FROM meter_event_outbox_status WHERE state='accepted'")
        return got.fetchone()[0] >= n


async def test_lanes_behind_many_backing_off_lanes_are_reached(database_url, emulator, db):
    """Invariant 7 after an outage: 300 lanes in backoff sort before 10 due lanes."""
    db.execute(
        "INSERT INTO meter_event_outbox (identifier, event_name, customer, value, available_at)"
        " SELECT 'later' || g, 'api_calls', 'cus_a' || lpad(g::text, 4, '0'), 1,"
        " now() + interval '1 hour' FROM generate_series(1, 300) g"
    )
    insert_usage(database_url, 10, customer="cus_z", prefix="due", customers=10)
    settings = make_settings(database_url, emulator, batch_size=5, concurrency=5)
    async with running_relay(settings) as relay:
        await relay.until(lambda: accepted(database_url, 10), timeout=15)


class CountingStore(Store):
    """Counts the walks and the claims that took rows (class-wide: one relay per test)."""

    walks = 0
    claims = 0

    async def walk(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingStore.walks += 1
        return await super().walk(*args, **kwargs)

    async def claim(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        rows = await super().claim(*args, **kwargs)
        CountingStore.claims += bool(rows)
        return rows


async def _keep_up(database_url: str, relay, rounds: int, first: int = 0) -> None:
    """Usage arrives a few rows at a time and the relay sends each round before the next."""
    for n in range(first, first + rounds):
        insert_usage(database_url, 20, customer="cus_", prefix=f"r{n}_", customers=20)
        await relay.until(lambda n=n: accepted(database_url, 20 * (n + 1)), timeout=30)


async def test_a_v2_relay_that_keeps_up_takes_the_due_rows_without_walking(database_url, emulator):
    """No backlog, nothing to be fair about: each claim takes every due row (its top-up comes
    back short), so a v2 relay skips the walk's statement (relay.pipeline.producer)."""
    CountingStore.walks = CountingStore.claims = 0
    settings = make_settings(database_url, emulator, stripe_api_mode="v2-stream")
    async with running_relay(settings, store=CountingStore) as relay:
        await _keep_up(database_url, relay, rounds=10)
    # Walking, every claim would follow a walk. A few still run: at the start, and when a
    # short claim finished beside another one (which may have been why it came back short).
    assert CountingStore.claims >= 10
    assert CountingStore.walks <= CountingStore.claims // 2, CountingStore.walks


async def test_a_backlog_that_arrives_while_the_walk_is_off_does_not_starve_another(
    database_url, emulator
):
    """Invariant 7 from the cheaper state: the relay kept up without walking; then one
    customer's backlog arrives. The claim that takes its first rows comes back full, so the
    walk is back on and another customer's fresh row overtakes that backlog."""
    CountingStore.walks = CountingStore.claims = 0
    emulator.set_faults(Faults(latency=Latency.fixed(5)))
    settings = make_settings(database_url, emulator, stripe_api_mode="v2-stream", concurrency=16)
    async with running_relay(settings, store=CountingStore) as relay:
        await _keep_up(database_url, relay, rounds=3)
        walked_before = CountingStore.walks
        await _keep_up(database_url, relay, rounds=2, first=3)
        walked_while_keeping_up = CountingStore.walks - walked_before
        insert_usage(database_url, 20_000, customer="cus_big", prefix="big")
        await relay.until(lambda: _accepted_at_least(database_url, 120))
        insert_usage(database_url, 1, customer="cus_small", prefix="fresh")
        await relay.until(lambda: state_is(database_url, "fresh1", "accepted"))
    assert walked_while_keeping_up == 0  # the walk was off when the backlog arrived
    overtaken = _overtaken(database_url)
    # Oldest first, the fresh row would wait for most of the 20,000; walked, for the rows the
    # relay already held (up to 1,600 here) and a claim or two.
    assert overtaken < 10_000, overtaken


class InsertDuringTheFirstClaim(Store):
    """The first claim that takes rows commits 5 more rows before it returns; notes the order
    of claims that took rows and outcome writes (class-wide: one relay per test)."""

    url = ""
    events: ClassVar[list[str]] = []

    async def claim(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        rows = await super().claim(*args, **kwargs)
        if rows:
            self.events.append("claim")
            if self.events.count("claim") == 1:
                await asyncio.to_thread(insert_usage, self.url, 5, "cus_late", "late")
        return rows

    async def record_outcomes(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.events.append("outcomes")
        return await super().record_outcomes(*args, **kwargs)


async def test_a_poll_only_v2_relay_looks_again_after_a_short_claim(database_url, emulator):
    """Without hints, the rows committed while a claim ran are found by looking again right
    after it (a relay that listens is woken by their hint instead), not once the first rows'
    outcomes are written (Stripe takes a second here) or at the next poll (30 s)."""
    InsertDuringTheFirstClaim.url = database_url
    InsertDuringTheFirstClaim.events = []
    insert_usage(database_url, 5, customer="cus_a", prefix="first")
    emulator.set_faults(Faults(latency=Latency.fixed(1000)))
    settings = make_settings(
        database_url, emulator, stripe_api_mode="v2-stream", poll_only=True, poll_interval=30
    )
    async with running_relay(settings, store=InsertDuringTheFirstClaim) as relay:
        await relay.until(lambda: accepted(database_url, 10), timeout=20)
    assert InsertDuringTheFirstClaim.events[:3] == ["claim", "claim", "outcomes"]
