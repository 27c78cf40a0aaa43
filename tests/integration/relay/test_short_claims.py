"""After a claim that came back short, rows committed while it ran are still claimed promptly.

A short claim took every due row *its snapshot* could lock after its top-up start. Rows
committed while it ran (after its snapshot) are not in it. A v2 relay that listens for hints
looks again `hint_recheck` after a short claim (not at once: that look found nothing), a
poll-only relay at once; a wake-up that came while the running claims left no room is not
spent. Without them such a row waited for the claimed rows' Stripe calls to end (the
completer's poke) or for the poll, when it had no hint of its own (poll-only, PgBouncer
transaction pooling, or a writer whose NOTIFY the 5 ms gate skipped) or its hint was spent.
"""

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg

from relay.core.config import Settings
from relay.core.rows import Claimed
from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Faults, Latency
from relay.pipeline.executor import RelayState
from relay.pipeline.producer import Capacity, Producer
from relay.pipeline.wakeup import Wakeup
from tests.support.relay import insert_usage, make_settings, running_relay

POLL = 30.0  # a stall shows as a timeout


def _insert_quiet(url: str, identifier: str, customer: str = "cus_b", **kw: Any) -> None:
    """A row whose writer sent no hint (poll-only, or its NOTIFY skipped by the gate)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', %s, 1, %s, notify => false)",
            (customer, identifier),
        )


def _leased(url: str, identifier: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM meter_event_outbox o JOIN meter_event_outbox_leases l"
            " ON l.outbox_id = o.id WHERE o.identifier = %s",
            (identifier,),
        ).fetchone() == (1,)


class CommitDuringClaim(Store):
    """After the first claim that leased rows (its snapshot is taken), `hook` runs once: as if
    a writer committed right then."""

    hooks: ClassVar[list[Callable[[], Any]]] = []  # set by each test

    async def claim(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        rows = await super().claim(*args, **kwargs)
        if rows and self.hooks:
            done = self.hooks.pop(0)()
            if done is not None:
                await done
        return rows


async def test_producer_claims_a_row_committed_during_a_short_claim_without_a_poll(
    database_url: str,
) -> None:
    """The producer alone (no completer: the claimed row's call has not ended), no hint for
    the second row: the look after the short claim takes it, not the poll (30 s)."""
    insert_usage(database_url, 1, customer="cus_a", prefix="a")
    pool = make_pool(database_url)
    await pool.open(wait=True)
    store = CommitDuringClaim(pool)
    CommitDuringClaim.hooks = [lambda: _insert_quiet(database_url, "b1")]
    got_b = asyncio.Event()
    sent: list[Claimed] = []

    def send(rows: list[Claimed]) -> None:
        sent.extend(rows)
        if any(r.identifier == "b1" for r in rows):
            got_b.set()

    settings = Settings(
        stripe_api_mode="v2-stream", relay_id="r", lease_seconds=600, poll_interval=POLL
    )
    producer = Producer(
        settings,
        store,
        Wakeup("postgresql://", listen=False),
        Capacity(lambda: 100, 100),  # one claim at a time
        RelayState(),
        send=send,
        hand_back=lambda outcome: None,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(producer.run(stop))
    try:
        await asyncio.wait_for(got_b.wait(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await pool.close()
    assert [r.identifier for r in sent] == ["a1", "b1"]


async def test_poll_only_relay_claims_a_row_committed_during_a_claim_before_the_call_ends(
    database_url: str, emulator
) -> None:
    """A real v2 relay in poll-only mode (PgBouncer transaction pooling), Stripe answering in
    8 s: a row committed while the relay's claim ran is claimed at once (the look after the
    claim), not once the first row's call ends (the completer's poke) or at the poll."""
    emulator.set_faults(Faults(latency=Latency.fixed(8000)))
    insert_usage(database_url, 1, customer="cus_a", prefix="a")
    CommitDuringClaim.hooks = [lambda: _insert_quiet(database_url, "b1")]
    settings = make_settings(
        database_url,
        emulator,
        stripe_api_mode="v2-stream",
        poll_only=True,
        poll_interval=POLL,
        concurrency=1,
        batch_size=100,
        request_timeout=20,
        lease_seconds=60,
    )
    async with running_relay(settings, store=CommitDuringClaim) as relay:

        async def started() -> bool:  # the meter catalogue's read also takes 8 s
            return relay.relay.producer.state.started

        await relay.until(started, timeout=20)

        async def b_claimed() -> bool:
            return _leased(database_url, "b1")

        await relay.until(b_claimed, timeout=4)


async def test_a_row_whose_hint_the_gate_skipped_is_claimed_before_the_call_ends(
    database_url: str, emulator
) -> None:
    """As above with LISTEN: the second writer's NOTIFY was skipped by the gate (at most one
    per 5 ms; "the relay re-checks shortly after every wake-up")."""
    emulator.set_faults(Faults(latency=Latency.fixed(8000)))
    CommitDuringClaim.hooks = [lambda: _insert_quiet(database_url, "b1")]
    settings = make_settings(
        database_url,
        emulator,
        stripe_api_mode="v2-stream",
        poll_interval=POLL,
        concurrency=1,
        batch_size=100,
        request_timeout=20,
        lease_seconds=60,
    )
    async with running_relay(settings, store=CommitDuringClaim) as relay:

        async def started() -> bool:
            return relay.relay.producer.state.started

        await relay.until(started, timeout=20)
        insert_usage(database_url, 1, customer="cus_a", prefix="a")  # with its NOTIFY

        async def b_claimed() -> bool:
            return _leased(database_url, "b1")

        await relay.until(b_claimed, timeout=6)


async def test_a_hint_that_arrives_while_the_only_claim_runs_is_not_lost(
    database_url: str, emulator
) -> None:
    """LISTEN, every hint delivered. A row (with its NOTIFY) is committed while the relay's
    claim runs; the hint wakes the producer during that claim, but the claim reserved the
    capacity (one claim at a time here; or MAX_CLAIMS were running), so that wake-up can claim
    nothing. It is not spent: the row is claimed when the claim ends, not after the first
    row's Stripe call (8 s) or at the poll."""
    emulator.set_faults(Faults(latency=Latency.fixed(8000)))
    settings = make_settings(
        database_url,
        emulator,
        stripe_api_mode="v2-stream",
        poll_interval=POLL,
        concurrency=1,
        batch_size=100,
        request_timeout=20,
        lease_seconds=60,
    )
    async with running_relay(settings, store=CommitDuringClaim) as relay:
        producer = relay.relay.producer

        async def commit_b_and_let_its_hint_land() -> None:
            turned = producer.state.last_loop
            insert_usage(database_url, 1, customer="cus_b", prefix="b")  # with its NOTIFY
            for _ in range(500):  # the producer woke on the hint and went round its loop
                if producer.state.last_loop != turned:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the hint did not wake the producer")

        CommitDuringClaim.hooks = [commit_b_and_let_its_hint_land]

        async def started() -> bool:
            return producer.state.started

        await relay.until(started, timeout=20)
        insert_usage(database_url, 1, customer="cus_a", prefix="a")

        async def b_claimed() -> bool:
            return _leased(database_url, "b1")

        await relay.until(b_claimed, timeout=6)


class TwoClaimsAtOnce(Store):
    """The first two claims each finish their statements, then wait for each other (both
    running at once, MAX_CLAIMS); `during` runs while both are held."""

    during: Callable[[], Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived = 0
        self.both = asyncio.Event()

    async def claim(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        rows = await super().claim(*args, **kwargs)
        self.arrived += 1
        if self.arrived == 2:
            assert self.during is not None
            await self.during()
            self.both.set()
        elif self.arrived == 1:
            await asyncio.wait_for(self.both.wait(), 10)
        return rows


async def test_a_hint_that_arrives_while_two_claims_run_is_not_lost(database_url: str) -> None:
    """Default pipelining (MAX_CLAIMS = 2, ample capacity), the walk on: a wake-up starts a
    walk-and-claim and, as its top-up was asked for, a second claim at once. A row committed
    while both run gets its hint; the producer wakes, cannot start a third claim, and waits
    again. Both claims come back short (40 rows of 100 reserved; the other found none); the row
    is still claimed before the poll (30 s) or the claimed rows' calls."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "SELECT outbox_record_usage('api_calls', 'cus_' || g, 1, 'a' || g)"
            " FROM generate_series(1, 40) g"
        )
    pool = make_pool(database_url)
    await pool.open(wait=True)
    store = TwoClaimsAtOnce(pool)
    got_b = asyncio.Event()
    sent: list[Claimed] = []

    def send(rows: list[Claimed]) -> None:
        sent.extend(rows)
        if any(r.identifier == "b1" for r in rows):
            got_b.set()

    settings = Settings(
        stripe_api_mode="v2-stream", relay_id="r", lease_seconds=600, poll_interval=POLL
    )
    wakeup = Wakeup("postgresql://", listen=False)
    state = RelayState()
    producer = Producer(
        settings,
        store,
        wakeup,
        Capacity(lambda: 10_000, 100),
        state,
        send=send,
        hand_back=lambda outcome: None,
    )

    async def commit_b_with_its_hint() -> None:
        assert len(producer._claims) == 2
        turned = state.last_loop
        _insert_quiet(database_url, "b1")
        wakeup.poke()  # its NOTIFY, as the listener sets it
        for _ in range(500):
            if state.last_loop != turned:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the hint did not wake the producer")

    store.during = commit_b_with_its_hint
    stop = asyncio.Event()
    task = asyncio.create_task(producer.run(stop))
    try:
        await asyncio.wait_for(got_b.wait(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await pool.close()
    assert len(sent) == 41


class HintDuringFirstClaim(Store):
    """`during` runs inside the first claim, after its statements, whatever it found."""

    during: Callable[[], Any] | None = None

    async def claim(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        rows = await super().claim(*args, **kwargs)
        during, self.during = self.during, None
        if during is not None:
            await during()
        return rows


async def test_a_hint_spent_during_a_claim_that_found_nothing_is_not_lost(
    database_url: str,
) -> None:
    """As above, but the running claim found no row (a claim that takes nothing never looked
    again). One claim at a time (the claim reserved the capacity): the hint wakes the producer,
    which cannot claim; it looks again when the claim ends instead of waiting for the poll."""
    pool = make_pool(database_url)
    await pool.open(wait=True)
    store = HintDuringFirstClaim(pool)
    got_b = asyncio.Event()

    def send(rows: list[Claimed]) -> None:
        if any(r.identifier == "b1" for r in rows):
            got_b.set()

    settings = Settings(
        stripe_api_mode="v2-stream", relay_id="r", lease_seconds=600, poll_interval=POLL
    )
    wakeup = Wakeup("postgresql://", listen=False)
    state = RelayState()
    producer = Producer(
        settings, store, wakeup, Capacity(lambda: 100, 100), state, send, lambda outcome: None
    )

    async def commit_b_with_its_hint() -> None:
        turned = state.last_loop
        _insert_quiet(database_url, "b1")
        wakeup.poke()  # its NOTIFY
        for _ in range(500):
            if state.last_loop != turned:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the hint did not wake the producer")

    store.during = commit_b_with_its_hint
    stop = asyncio.Event()
    task = asyncio.create_task(producer.run(stop))
    try:
        await asyncio.wait_for(got_b.wait(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await pool.close()
