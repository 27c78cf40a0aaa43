"""The console's shared overview reading and per-client cap: pure rules, injected clock."""

import asyncio

from relay.server.console.shared import ClientLimit, SharedReading


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
