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
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import psycopg
import pytest

from relay.core.config import Settings
from relay.core.rows import Claimed
from relay.db.pool import make_pool
from relay.db.store import Store
from relay.emulator import Faults, Latency
from relay.pipeline.executor import RelayState
from relay.pipeline.producer import CLOCK_SLACK, Capacity, Producer
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


class ProducerAlone:
    """A v2 producer on `store` with no sender and no completer (a claimed row's call never
    ends, so nothing else pokes it), polling every POLL seconds: `run_until_b` returns once
    row b1 is claimed, or times out (a stall)."""

    def __init__(self, store: Store, capacity: int) -> None:
        self.store = store
        self.sent: list[Claimed] = []
        self.got_b = asyncio.Event()
        self.state = RelayState()
        self.wakeup = Wakeup("postgresql://", listen=False)
        settings = Settings(
            stripe_api_mode="v2-stream", relay_id="r", lease_seconds=600, poll_interval=POLL
        )
        self.producer = Producer(
            settings,
            store,
            self.wakeup,
            Capacity(lambda: capacity, 100),
            self.state,
            send=self._send,
            hand_back=lambda outcome: None,
        )

    def _send(self, rows: list[Claimed]) -> None:
        self.sent.extend(rows)
        if any(r.identifier == "b1" for r in rows):
            self.got_b.set()

    async def run_until_b(self) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self.producer.run(stop))
        try:
            await asyncio.wait_for(self.got_b.wait(), 15)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)

    async def commit_b_with_its_hint(self, database_url: str) -> None:
        """Row b1 committed and its hint delivered (as the listener sets it); returns once the
        hint woke the producer's loop."""
        turned = self.state.last_loop
        _insert_quiet(database_url, "b1")
        self.wakeup.poke()
        for _ in range(500):
            if self.state.last_loop != turned:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the hint did not wake the producer")


@contextlib.asynccontextmanager
async def producer_alone(
    database_url: str, store: type[Store], capacity: int
) -> AsyncIterator[ProducerAlone]:
    pool = make_pool(database_url)
    await pool.open(wait=True)
    try:
        yield ProducerAlone(store(pool), capacity)
    finally:
        await pool.close()


async def test_producer_claims_a_row_committed_during_a_short_claim_without_a_poll(
    database_url: str,
) -> None:
    """The producer alone (no completer: the claimed row's call has not ended), no hint for
    the second row: the look after the short claim takes it, not the poll (30 s)."""
    insert_usage(database_url, 1, customer="cus_a", prefix="a")
    CommitDuringClaim.hooks = [lambda: _insert_quiet(database_url, "b1")]
    async with producer_alone(database_url, CommitDuringClaim, capacity=100) as alone:
        await alone.run_until_b()  # one claim at a time
    assert [r.identifier for r in alone.sent] == ["a1", "b1"]


async def test_a_row_behind_the_window_committed_during_a_short_claim_is_claimed_at_the_restart(
    database_url: str,
) -> None:
    """As above, but the second row's transaction began long before it committed (its
    available_at an hour back): the look after the short claim starts from the window and finds
    nothing, and no more traffic comes. The producer looks again when the top-up's restart is
    due (a second), not at the poll (30 s)."""
    insert_usage(database_url, 1, customer="cus_a", prefix="a")

    def commit_a_long_transactions_row() -> None:
        _insert_quiet(database_url, "b1")
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE meter_event_outbox SET available_at = now() - interval '1 hour'"
                " WHERE identifier = 'b1'"
            )

    CommitDuringClaim.hooks = [commit_a_long_transactions_row]
    async with producer_alone(database_url, CommitDuringClaim, capacity=100) as alone:
        await alone.run_until_b()
    assert [r.identifier for r in alone.sent] == ["a1", "b1"]


def _one_claim_at_a_time(database_url: str, emulator: Any, **overrides: Any) -> Settings:
    """A v2 relay whose one claim holds all its capacity, polling every POLL seconds, with a
    lease and a timeout that outlast Stripe's 12 s answers."""
    return make_settings(
        database_url,
        emulator,
        stripe_api_mode="v2-stream",
        poll_interval=POLL,
        concurrency=1,
        batch_size=100,
        request_timeout=30,
        lease_seconds=90,
        **overrides,
    )


@pytest.mark.parametrize("poll_only", [True, False], ids=["poll-only", "gate-skipped-hint"])
async def test_a_row_committed_during_a_claim_is_claimed_before_the_call_ends(
    database_url: str, emulator, poll_only: bool
) -> None:
    """A real v2 relay, Stripe answering in 12 s; a row (b1) is committed while the relay's
    claim of a1 runs, with no hint of its own: the relay is poll-only (PgBouncer transaction
    pooling), or it listens and b1's writer's NOTIFY was skipped by the gate (at most one per
    5 ms: "the relay re-checks shortly after every wake-up"). b1 is claimed by the look after
    that claim, not once a1's call ends (the completer's poke) or at the poll."""
    emulator.set_faults(Faults(latency=Latency.fixed(12000)))
    CommitDuringClaim.hooks = [lambda: _insert_quiet(database_url, "b1")]
    settings = _one_claim_at_a_time(database_url, emulator, poll_only=poll_only)
    async with running_relay(settings, store=CommitDuringClaim) as relay:
        producer = relay.relay.producer

        async def idle() -> bool:  # started (the meter read takes 12 s), first look found nothing
            return producer.state.started and not producer._walk

        await relay.until(idle, timeout=30)
        _insert_quiet(database_url, "a1")
        producer.wakeup.poke()  # a1's hint, or the poll

        async def b_claimed() -> bool:
            return _leased(database_url, "b1")

        await relay.until(b_claimed, timeout=9)


async def test_a_hint_that_arrives_while_the_only_claim_runs_is_not_lost(
    database_url: str, emulator
) -> None:
    """LISTEN, every hint delivered. A row (with its NOTIFY) is committed while the relay's
    claim runs; the hint wakes the producer during that claim, but the claim reserved the
    capacity (one claim at a time here; or MAX_CLAIMS were running), so that wake-up can claim
    nothing. It is not spent: the row is claimed when the claim ends, not after the first
    row's Stripe call (12 s) or at the poll."""
    emulator.set_faults(Faults(latency=Latency.fixed(12000)))
    settings = _one_claim_at_a_time(database_url, emulator)
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

        await relay.until(started, timeout=30)
        insert_usage(database_url, 1, customer="cus_a", prefix="a")

        async def b_claimed() -> bool:
            return _leased(database_url, "b1")

        await relay.until(b_claimed, timeout=9)


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
    async with producer_alone(database_url, TwoClaimsAtOnce, capacity=10_000) as alone:
        assert isinstance(alone.store, TwoClaimsAtOnce)

        async def commit_b_with_its_hint() -> None:
            assert len(alone.producer._claims) == 2
            await alone.commit_b_with_its_hint(database_url)

        alone.store.during = commit_b_with_its_hint
        await alone.run_until_b()
    assert len(alone.sent) == 41


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
    async with producer_alone(database_url, HintDuringFirstClaim, capacity=100) as alone:
        assert isinstance(alone.store, HintDuringFirstClaim)
        alone.store.during = lambda: alone.commit_b_with_its_hint(database_url)
        await alone.run_until_b()


class Timed(Store):
    """Each claim's start, end (monotonic) and rows taken; `took` is set by a claim that took
    rows, `looked` by the first claim that started after the second such claim ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims: list[tuple[float, float, int]] = []
        self.took = asyncio.Event()
        self.looked = asyncio.Event()

    def ends_with_rows(self) -> list[float]:
        return [end for _, end, rows in self.claims if rows]

    async def claim(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        rows = await super().claim(*args, **kwargs)
        self.claims.append((start, time.monotonic(), len(rows)))
        if rows:
            self.took.set()
        if len(ends := self.ends_with_rows()) >= 2 and start > ends[1]:
            self.looked.set()
        return rows


async def test_short_claims_in_a_row_owe_one_look_again_after_the_last(database_url: str) -> None:
    """A v2 relay that listens for hints, keeping up: two short claims, each woken by its row's
    hint, the second within `hint_recheck` of the first. One look again is owed, after the
    second (a claim sees every row committed before it starts); before, each short claim
    looked again, a second claim per hint that found nothing (bench.keep_up). With the top-up's
    restart a second away, the first claim after the second is that look, and it starts
    `hint_recheck` after the second claim ended, not after the first."""
    recheck = 0.5
    async with producer_alone(database_url, Timed, capacity=100) as alone:
        assert isinstance(alone.store, Timed)
        store = alone.store
        alone.wakeup.listens = True  # hints are delivered (here: the pokes below)
        alone.producer.settings = alone.producer.settings.model_copy(
            update={"hint_recheck": recheck}
        )
        stop = asyncio.Event()
        task = asyncio.create_task(alone.producer.run(stop))
        try:
            for n in (1, 2):
                store.took.clear()
                _insert_quiet(database_url, f"a{n}")
                alone.wakeup.poke()  # its hint
                await asyncio.wait_for(store.took.wait(), 10)
            await asyncio.wait_for(store.looked.wait(), 10)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
    first_end, second_end = store.ends_with_rows()[:2]
    look = min(start for start, _, _ in store.claims if start > second_end)
    assert [r.identifier for r in alone.sent] == ["a1", "a2"]
    assert second_end - first_end < recheck  # the second claim came before the first's look
    # (the timer may fire CLOCK_SLACK early; the second claim ended well over that after the first)
    assert look - second_end >= recheck - CLOCK_SLACK, (look - first_end, look - second_end)
