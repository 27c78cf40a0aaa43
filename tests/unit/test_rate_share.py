"""The rate share against an in-memory store and an injected clock: fencing, joining, leaving."""

import asyncio
import uuid

import pytest

from relay.db.store import Beat
from relay.stripe.rate_limit import RateLimiter
from relay.stripe.rate_share import FENCED_RATE, DuplicateRelayId, RateShare


class FakeStore:
    """The two queries the share runs: counts come from a script, failures on demand."""

    def __init__(self, *counts: int) -> None:
        self.counts = list(counts)
        self.down = False
        self.beats: list[tuple[str, float]] = []
        self.left: list[str] = []
        self.owners: dict[str, uuid.UUID] = {}  # relay_id -> process token (never stale here)
        self.refused = asyncio.Event()  # a heartbeat found the database away

    async def heartbeat(self, relay_id: str, token: uuid.UUID, stale_seconds: float) -> Beat:
        if self.down:
            self.refused.set()
            raise ConnectionError("database away")
        self.beats.append((relay_id, stale_seconds))
        owner = self.owners.setdefault(relay_id, token)
        return Beat(self.counts.pop(0) if len(self.counts) > 1 else self.counts[0], owner == token)

    async def leave(self, relay_id: str, token: uuid.UUID) -> None:
        if self.down:
            raise ConnectionError("database away")
        self.left.append(relay_id)


def share(store: FakeStore, clock: list[float], rate: float = 100.0) -> RateShare:
    return RateShare(
        store,
        RateLimiter(rate),
        "relay-a",
        rate,
        interval=0.001,
        stale_after=5.0,
        clock=lambda: clock[0],
    )


async def test_alone_it_takes_the_whole_limit_after_joining() -> None:
    store, clock = FakeStore(1), [0.0]
    rate_share = share(store, clock)
    await rate_share.join(asyncio.Event())
    assert (rate_share.live, rate_share.limiter.ceiling) == (1, 100.0)
    assert store.beats[0] == ("relay-a", 5.0)


async def test_a_share_goes_down_at_once_and_up_only_when_two_counts_agree() -> None:
    store, clock = FakeStore(2, 4, 2, 2), [0.0]
    rate_share = share(store, clock)
    assert await rate_share.beat() == 2
    assert rate_share.limiter.ceiling == 50.0
    await rate_share.beat()  # 4 relays: down at once
    assert rate_share.limiter.ceiling == 25.0
    await rate_share.beat()  # 2 again, but the previous count said 4
    assert rate_share.limiter.ceiling == 25.0
    await rate_share.beat()  # two counts of 2 agree
    assert rate_share.limiter.ceiling == 50.0


async def test_a_relay_that_cannot_heartbeat_fences_itself_before_the_others_count_it_out():
    store, clock = FakeStore(2), [100.0]
    rate_share = share(store, clock)
    await rate_share.beat()
    store.down = True
    clock[0] += 2.0  # within the stale time less one interval: keep the share
    assert await rate_share.beat() == 0
    assert rate_share.limiter.ceiling == 50.0
    clock[0] += 3.0  # the others are about to count it out
    await rate_share.beat()
    assert rate_share.limiter.ceiling == FENCED_RATE
    store.down = False
    await rate_share.beat()
    assert rate_share.limiter.ceiling == 50.0


async def test_a_relay_starts_fenced_until_it_has_counted() -> None:
    store, clock = FakeStore(1), [0.0]
    store.down = True
    rate_share = share(store, clock)
    stop = asyncio.Event()
    joining = asyncio.create_task(rate_share.join(stop))
    await store.refused.wait()  # the first heartbeat failed: the relay has not counted yet
    assert rate_share.limiter.ceiling == FENCED_RATE
    store.down = False
    await joining
    assert rate_share.limiter.ceiling == 100.0


async def test_joining_others_counts_again_after_two_heartbeats() -> None:
    store, clock = FakeStore(3, 3, 3), [0.0]
    rate_share = share(store, clock, rate=90.0)
    await rate_share.join(asyncio.Event())
    assert len(store.beats) == 2 and rate_share.limiter.ceiling == 30.0


async def test_leaving_gives_the_share_back_and_never_raises() -> None:
    store, clock = FakeStore(1), [0.0]
    rate_share = share(store, clock)
    await rate_share.leave()
    assert store.left == ["relay-a"]
    store.down = True
    await rate_share.leave()  # the row goes stale on its own


async def test_a_second_process_with_the_same_relay_id_refuses_to_start() -> None:
    """Two processes with one relay id (invariant 4): the running relay keeps its row and its
    share; the newcomer is refused (fenced, and it gives back nothing of the other's)."""
    store, clock = FakeStore(1), [0.0]
    first = share(store, clock)
    await first.join(asyncio.Event())
    second = share(store, clock)

    def ticking() -> float:  # the first keeps its row live while the second waits it out
        clock[0] += 1.0
        return clock[0]

    second._clock = ticking
    with pytest.raises(DuplicateRelayId, match="OUTBOX_RELAY_ID='relay-a'"):
        await second.join(asyncio.Event())
    assert clock[0] > 5.0  # refused only after the stale time
    assert second.limiter.ceiling == FENCED_RATE
    assert await first.beat() == 1
