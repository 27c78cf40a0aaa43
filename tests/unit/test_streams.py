"""The v2 stream queue with an injected clock and a gated rate limiter (no sockets): calls are
formed when their slot comes, full or after the linger, and a row that waited past its share
of the lease goes back unsent."""

import asyncio

from relay.core.rows import Claimed, Outcome
from relay.pipeline.streams import StreamBatcher
from relay.stripe.rate_limit import RateLimiter
from tests.unit.rows import claimed


class GatedLimiter(RateLimiter):
    """Grants a slot only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(10**6)
        self.gate = asyncio.Event()

    async def acquire(self) -> None:
        await self.gate.wait()


class Harness:
    def __init__(self, linger: float = 0.0, max_wait: float = 10.0) -> None:
        self.now = 0.0
        self.limiter = GatedLimiter()
        self.calls: list[list[str]] = []
        self.released: list[Outcome] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.batcher = StreamBatcher(
            self.limiter,
            linger=linger,
            max_wait=max_wait,
            send=self.send,
            record=self.released.append,
            spawn=lambda call: self.tasks.add(asyncio.create_task(call)),  # type: ignore[arg-type]
            clock=lambda: self.now,
        )

    async def send(self, rows: list[Claimed]) -> None:
        self.calls.append([r.identifier for r in rows])

    async def settle(self) -> None:
        """Run every call task to its end (the gate must be open)."""
        while pending := {t for t in self.tasks if not t.done()}:
            await asyncio.wait(pending)


def reports(first: int, n: int, account: str | None = None) -> list[Claimed]:
    return [
        claimed(id=i, identifier=f"u{i}", stripe_account=account) for i in range(first, first + n)
    ]


async def test_rows_arriving_while_a_call_waits_for_its_slot_join_that_call() -> None:
    h = Harness()
    for i in range(1, 31):  # a trickle: one row per claim
        h.batcher.add(reports(i, 1))
        await asyncio.sleep(0)
    h.limiter.gate.set()
    await h.settle()
    assert [len(c) for c in h.calls] == [30]


async def test_calls_carry_at_most_100_rows_of_one_account() -> None:
    h = Harness()
    h.batcher.add([*reports(1, 250), *reports(1000, 3, account="acct_1")])
    h.limiter.gate.set()
    await h.settle()
    assert sorted(len(c) for c in h.calls) == [3, 50, 100, 100]
    assert h.released == []


async def test_a_row_queued_past_max_wait_is_released_unsent_with_no_attempt_counted() -> None:
    h = Harness(max_wait=10.0)
    h.batcher.add(reports(1, 5))
    await asyncio.sleep(0)
    h.now = 10.5  # the slot came too late for these rows
    h.batcher.add(reports(6, 2))  # just claimed: still within their share of the lease
    h.limiter.gate.set()
    await h.settle()
    assert h.calls == [["u6", "u7"]]
    assert [(o.row.identifier, o.state, o.counted, o.new_key, o.called) for o in h.released] == [
        (f"u{i}", "pending", 0, 0, False) for i in range(1, 6)
    ]
    assert {o.code for o in h.released} == {"stream_wait_expired"}


async def test_queued_rows_go_back_unsent_at_shutdown() -> None:
    h = Harness()
    h.batcher.add(reports(1, 3))
    await asyncio.sleep(0)
    for task in h.tasks:
        task.cancel()
    await asyncio.gather(*h.tasks, return_exceptions=True)
    assert h.calls == []
    assert [(o.code, o.counted) for o in h.released] == [("shutdown", 0)] * 3
    assert h.batcher.queued() == 0
