"""The console's shared overview reading, shared pages, pace and per-client cap: pure rules,
injected clock, builds held on events."""

import asyncio

import pytest

from relay.server.console.shared import Busy, ClientLimit, Pacer, Page, SharedPages, SharedReading


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_viewers_share_one_reading_for_the_ttl() -> None:
    clock = Clock()
    shared: SharedReading[int] = SharedReading(ttl=3.0, clock=clock)
    loads = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal loads
        loads += 1
        await gate.wait()  # the first load is slow: the others must wait for it, not start theirs
        return loads

    viewers = [asyncio.create_task(shared.get(load)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*viewers) == [1] * 20 and loads == 1
    clock.now += 2.9
    assert await shared.get(load) == 1
    clock.now += 0.1
    assert await shared.get(load) == 2


def test_a_client_at_its_cap_is_refused_until_a_request_ends() -> None:
    limit = ClientLimit(cap=2)
    assert limit.enter("a") and limit.enter("a") and not limit.enter("a")
    assert limit.enter("b")
    limit.leave("a")
    assert limit.enter("a")


async def test_a_page_is_built_once_for_its_concurrent_viewers_and_once_per_ttl() -> None:
    clock = Clock()
    pages = SharedPages(ttl=3.0, clock=clock)
    builds = 0
    gate = asyncio.Event()

    async def build() -> Page:
        nonlocal builds
        builds += 1
        await gate.wait()
        return Page(f"page {builds}", 200)

    viewers = [asyncio.create_task(pages.get("k", build)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    answers = await asyncio.gather(*viewers)
    assert builds == 1 and [built for _, built in answers].count(True) == 1
    assert {page.body for page, _ in answers} == {"page 1"}
    clock.now += 2.9
    assert (await pages.get("k", build))[0].body == "page 1"
    clock.now += 0.1
    assert (await pages.get("k", build))[0].body == "page 2"
    pages.forget()  # an action changed rows: read again now
    assert (await pages.get("k", build))[0].body == "page 3"


async def test_at_most_building_pages_are_built_at_once_the_next_waits_for_a_slot() -> None:
    pages = SharedPages(building=2, wait=3600)
    running, most = 0, 0
    gates = {key: asyncio.Event() for key in "abc"}

    def build_of(key: str):
        async def build() -> Page:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await gates[key].wait()
            running -= 1
            return Page(key, 200)

        return build

    tasks = {key: asyncio.create_task(pages.get(key, build_of(key))) for key in "abc"}
    for _ in range(5):
        await asyncio.sleep(0)
    assert running == 2 and not tasks["c"].done()  # c waits for a slot
    gates["a"].set()
    assert (await tasks["a"])[0].body == "a"
    for _ in range(5):
        await asyncio.sleep(0)
    assert running == 2  # b, and c in a's slot
    gates["b"].set()
    gates["c"].set()
    assert [(await tasks[k])[0].body for k in "bc"] == ["b", "c"] and most == 2


async def test_a_request_finding_no_slot_in_time_is_busy_and_so_are_its_waiters() -> None:
    pages = SharedPages(building=1, wait=0)
    gate = asyncio.Event()

    async def slow() -> Page:
        await gate.wait()
        return Page("slow", 200)

    holder = asyncio.create_task(pages.get("a", slow))
    await asyncio.sleep(0)
    late = [asyncio.create_task(pages.get("b", slow)) for _ in range(3)]
    results = await asyncio.gather(*late, return_exceptions=True)
    assert all(isinstance(r, Busy) for r in results)
    gate.set()
    assert (await holder)[0].body == "slow"


def test_requests_are_paced_over_all_clients_and_refused_past_the_wait() -> None:
    clock = Clock()
    pacer = Pacer(rate=20, wait=5, clock=clock)
    turns = [pacer.turn() for _ in range(101)]
    assert turns[0] == 0 and turns[1] == pytest.approx(0.05) and turns[100] == pytest.approx(5.0)
    assert pacer.turn() is None  # its turn would be more than 5 s away
    clock.now += 1.0
    assert pacer.turn() == pytest.approx(5.0 - 1.0 + 0.05)
