"""Invariant 7 against backlogs of every shape, for a v2 relay that skips the lane walk while it
keeps up (relay.pipeline.producer): a backlog, however its rows are spread over lanes, customers or
meters, is walked from the second claim after it builds up.

These tests drive the real Producer against the real claim statements, one claim at a time
(each claim awaited before the next starts, as a relay whose capacity allows one claim at a
time does), with no sender: a claimed row keeps its lease (600 s), so it is out of the walk and
the top-up from then on. No timing is involved: the sequence of claims is deterministic.

Invariant 7 (docs/design.md): one tenant's backlog cannot starve another tenant's fresh usage.
"""

import asyncio
from typing import Any

import psycopg

from relay.core.config import Settings
from relay.core.rows import Claimed
from relay.db.pool import make_pool
from relay.db.store import Store
from relay.pipeline.executor import RelayState
from relay.pipeline.producer import Capacity, Producer
from relay.pipeline.wakeup import Wakeup
from tests.support.relay import insert_usage

BATCH = 100


class Harness:
    """One v2 producer; `step` runs one walk-and-claim and waits for its claim."""

    def __init__(self, producer: Producer, sent: list[Claimed]) -> None:
        self.producer = producer
        self.sent = sent
        self.claims: list[list[Claimed]] = []
        self.walks = 0

    async def step(self, wanted: int = BATCH) -> list[Claimed]:
        walking = self.producer._walk
        before = len(self.sent)
        await self.producer._walk_and_claim(wanted)
        while self.producer._claims:
            await asyncio.wait(set(self.producer._claims))
        self.walks += walking
        got = self.sent[before:]
        self.claims.append(got)
        return got

    async def until_claimed(self, identifier: str, limit: int = 500) -> int:
        """Steps until `identifier` is claimed; returns how many claims that took."""
        for n in range(1, limit + 1):
            got = await self.step()
            if any(r.identifier == identifier for r in got):
                return n
            if not got and not self.producer._claims:
                # nothing claimed: a real relay would wait for a hint and claim again
                continue
        raise AssertionError(f"{identifier} not claimed in {limit} claims")

    def claimed_of(self, customer: str) -> int:
        return sum(1 for r in self.sent if r.customer == customer)

    async def overtaking_a_fresh_row(self, url: str) -> int:
        """cus_small commits a fresh row: how many of cus_big's rows are claimed before it."""
        before = self.claimed_of("cus_big")
        insert_usage(url, 1, customer="cus_small", prefix="fresh")
        await self.until_claimed("fresh1")
        return self.claimed_of("cus_big") - before


class _Pool:
    def __init__(self, url: str, relay_id: str = "r") -> None:
        self.url = url
        self.relay_id = relay_id

    async def __aenter__(self) -> Harness:
        self.pool = make_pool(self.url)
        await self.pool.open(wait=True)
        return make_harness(Store(self.pool), self.relay_id)

    async def __aexit__(self, *exc: Any) -> None:
        await self.pool.close()


def make_harness(store: Store, relay_id: str = "r") -> Harness:
    settings = Settings(stripe_api_mode="v2-stream", relay_id=relay_id, lease_seconds=600)
    sent: list[Claimed] = []
    producer = Producer(
        settings,
        store,
        Wakeup("postgresql://", listen=False),
        Capacity(lambda: 1_000_000, BATCH),
        RelayState(),
        send=sent.extend,
        hand_back=lambda outcome: None,
    )
    return Harness(producer, sent)


def producer_of(url: str, relay_id: str = "r") -> _Pool:
    return _Pool(url, relay_id)


def insert_interleaved(url: str, n: int, big_share: int, others: int, prefix: str = "b") -> None:
    """n rows in one statement (one available_at, ids in order): of every 5 consecutive rows,
    `big_share` are cus_big's, the rest cycle over `others` other customers (cus_o<k>), as a
    backlog that built up while Stripe or the relay was down and one large tenant sent
    `big_share`/5 of all usage."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('api_calls',"
            " CASE WHEN g %% 5 < %s THEN 'cus_big' ELSE 'cus_o' || (g %% %s) END,"
            " 1, %s || g) FROM generate_series(1, %s) g",
            (big_share, others, prefix, n),
        )


async def test_one_tenants_interleaved_backlog_does_not_hold_back_a_fresh_row(
    database_url: str,
) -> None:
    """One tenant sent 40% of the rows of a backlog, the other 60% came from many customers,
    interleaved in time (an outage backlog), and it arrives while the relay is idle (the walk
    off). Every batch of the oldest rows holds ~40 of cus_big's rows over ~61 lanes, so a rule
    that looked at how the oldest rows spread over lanes kept the walk off and cus_small's
    fresh row waited behind the whole backlog. The first claim comes back full: the walk is on
    and the fresh row's lane is reached within a pass."""
    async with producer_of(database_url) as relay:
        await relay.step()  # an idle relay: its claim found nothing, so the walk is off
        assert not relay.producer._walk
        insert_interleaved(database_url, 2500, big_share=2, others=200)
        await relay.step()
        await relay.step()
        overtaken = await relay.overtaking_a_fresh_row(database_url)
    # With the walk: cus_big gets one row per pass over ~120 lanes (and whatever a top-up
    # takes), a handful at most. Oldest first: all of its remaining ~960 rows.
    assert overtaken < 100, overtaken


async def test_many_tenants_interleaved_backlogs_do_not_hold_back_a_fresh_row(
    database_url: str,
) -> None:
    """60 customers with 100 rows each, sent round robin (or: rows held for a meter that did
    not exist, released together when it was created, in the order they were recorded): any
    100 consecutive rows hold 60 lanes, which says nothing of how deep each lane is. Oldest
    first, a new customer's fresh row would wait behind all 6,000 rows; walked, it goes in the
    next claim (61 lanes, fewer than one batch)."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', 'cus_t' || (g % 60), 1, 'b' || g)"
            " FROM generate_series(1, 6000) g"
        )
    async with producer_of(database_url) as relay:
        await relay.step()  # walks: 60 heads and a full top-up of 40 rows: the walk stays on
        insert_usage(database_url, 1, customer="cus_new", prefix="fresh")
        claims = await relay.until_claimed("fresh1")
    assert claims <= 2, f"the fresh row went in claim {claims} after it arrived"


async def test_one_customers_backlog_over_many_meters_does_not_hold_back_a_fresh_row(
    database_url: str,
) -> None:
    """A lane is (customer, meter): one customer whose backlog is spread over 60 meters (every
    request reported to several meters, or one meter per feature) fills the oldest rows with
    60 lanes. Oldest first, that single tenant's 6,000 rows would all go before another
    customer's fresh row; walked, the 61 lanes fit in one claim."""
    async with producer_of(database_url) as relay:
        await relay.step()  # an idle relay: its claim found nothing, so the walk is off
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "SELECT outbox_record_usage('m' || (g % 60), 'cus_big', 1, 'b' || g)"
                " FROM generate_series(1, 6000) g"
            )
        await relay.step()
        overtaken = await relay.overtaking_a_fresh_row(database_url)
    assert overtaken < 200, overtaken


async def test_a_running_relay_sends_a_fresh_row_before_one_tenants_interleaved_backlog(
    database_url: str, emulator
) -> None:
    """The first test through a real relay (run loop, two claims at once, v2 stream calls to
    the emulator). The relay is idle (its last claim found nothing: walk off) when a backlog
    arrives in which cus_big sent 2 of every 5 rows and 200 other customers the rest; then
    cus_small's fresh row. Oldest first, it would go after all 4,000 of cus_big's rows."""
    from tests.support.relay import make_settings, row, running_relay, state_is

    settings = make_settings(
        database_url, emulator, stripe_api_mode="v2-stream", batch_size=100, concurrency=2
    )
    async with running_relay(settings) as relay:
        producer = relay.relay.producer

        async def idle_and_walk_off() -> bool:
            return producer.state.started and not producer._walk

        await relay.until(idle_and_walk_off, timeout=15)
        insert_interleaved(database_url, 10_000, big_share=2, others=200)
        insert_usage(database_url, 1, customer="cus_small", prefix="fresh")
        await relay.until(lambda: state_is(database_url, "fresh1", "accepted"), timeout=60)
    fresh = row(database_url, "fresh1")
    with psycopg.connect(database_url) as conn:
        (before,) = conn.execute(
            "SELECT count(*) FROM meter_event_outbox WHERE customer = 'cus_big'"
            " AND accepted_at < %s",
            (fresh["accepted_at"],),
        ).fetchone()
    # With the walk the fresh row is claimed within a pass over ~120 lanes and queued behind
    # at most the 200 rows the relay holds: a few hundred of cus_big's rows at most.
    assert before < 1000, before


async def test_rows_released_from_a_meter_hold_do_not_hold_back_a_fresh_row(
    database_url: str,
) -> None:
    """How such a backlog arises without an outage: 60 customers' rows held for a meter that
    did not exist yet (pending, `meter_missing`, not due), recorded round robin; the meter is
    created and `release_held` makes all 6,000 due at once, while the relay is idle (the walk
    off). Another customer's fresh row, recorded after the release, goes within two claims."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('new_meter', 'cus_t' || (g % 60), 1, 'h' || g)"
            " FROM generate_series(1, 6000) g"
        )
        conn.execute(
            "UPDATE meter_event_outbox SET available_at = 'infinity',"
            " last_error_code = 'meter_missing' WHERE event_name = 'new_meter'"
        )
    async with producer_of(database_url) as relay:
        await relay.step()  # idle: nothing due (the held rows are not), the walk is off
        assert await relay.producer.store.release_held("", "new_meter") == 6000
        await relay.step()
        insert_usage(database_url, 1, customer="cus_new", prefix="fresh")
        claims = await relay.until_claimed("fresh1")
    assert claims <= 2, f"the fresh row went in claim {claims} after it arrived"


async def test_a_row_left_behind_the_top_up_cursor_is_reached_by_the_walk(
    database_url: str,
) -> None:
    """A row left behind the top-up's cursor (here: cus_small's row, claimed by a relay that
    died; its lease expires after this relay's cursor passed it) is taken by the walk's next
    pass over its lane (docs/design.md, the top-up's cursor). A relay that stopped walking
    during a backlog would leave it to the top-up's restart, up to 32 claims later."""
    insert_usage(database_url, 1, customer="cus_small", prefix="dead")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO meter_event_outbox_leases (outbox_id, lease_token, leased_by,"
            " leased_until, first_claimed_at, customer, event_name, stripe_account, action)"
            " SELECT id, gen_random_uuid(), 'dead-relay', now() + interval '1 hour', now(),"
            " customer, event_name, stripe_account, action FROM meter_event_outbox"
        )
    with psycopg.connect(database_url) as conn:  # many customers' usage after it
        conn.execute(
            "SELECT outbox_record_usage('api_calls', 'cus_o' || (g % 200), 1, 's' || g)"
            " FROM generate_series(1, 8000) g"
        )
    async with producer_of(database_url) as relay:
        await relay.step()  # the walk, then a full top-up: the walk stays on
        await relay.step()
        with psycopg.connect(database_url) as conn:  # the dead relay's lease expires
            conn.execute(
                "UPDATE meter_event_outbox_leases SET leased_until = now()"
                " - interval '1 second' WHERE leased_by = 'dead-relay'"
            )
        claims = await relay.until_claimed("dead1")
    # The walk passes 201 lanes in three claims.
    assert claims <= 3, f"the expired row went in claim {claims}"


class FailingStore(Store):
    """`fail_next` claims raise a database error (connection lost, statement timeout...)."""

    fail_next = 0

    async def claim(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.fail_next:
            self.fail_next -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return await super().claim(*args, **kwargs)


async def test_a_failed_claim_leaves_the_walk_on_during_one_tenants_backlog(
    database_url: str,
) -> None:
    """A claim that fails with a database error took no rows, which says nothing of the
    backlog: the walk stays on, and a fresh row goes in the claim after it arrives (not one
    claim later, behind 100 more of cus_big's rows)."""
    insert_usage(database_url, 3000, customer="cus_big", prefix="big")
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        store = FailingStore(pool)
        relay = make_harness(store)
        await relay.step()  # walk: cus_big's head, then 99 of its rows: walk stays on
        store.fail_next = 1
        await relay.step()  # the database error
        insert_usage(database_url, 1, customer="cus_small", prefix="fresh")
        claims = await relay.until_claimed("fresh1")
    finally:
        await pool.close()
    assert claims == 1, f"the fresh row went in claim {claims} after it arrived"
