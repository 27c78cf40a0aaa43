"""The two gauges of a Stripe that does not answer say the same thing: a gateway's 502/503/504
is no answer for `outbox_relay_stripe_reachable` as it is for the outage breaker, and every
replica following an open breaker reads unreachable too (it makes no calls of its own)."""

import pytest

from relay.core import metrics
from relay.core.meters import MeterInfo
from relay.pipeline.meter_refresh import MeterRefresh
from relay.stripe.catalogue import MeterCatalogue
from relay.stripe.meters import MeterReadError
from relay.stripe.outage import OutageBreaker
from relay.stripe.reachability import Reachability
from tests.unit.test_outage_breaker import GATEWAY, FakeStore

pytestmark = pytest.mark.unit


def gauge() -> float:
    return float(metrics.STRIPE_REACHABLE._value.get())


def test_a_gateway_answer_is_unreachable_but_the_way_out_works() -> None:
    reach = Reachability()
    reach.saw(503, "Service Unavailable")
    assert gauge() == 0  # Stripe's API did not answer: the same as the breaker's no_answer
    assert reach.reached  # the proxy, CA and network did: /readyz stays ready
    reach.saw(200, None)
    assert gauge() == 1


async def test_the_relay_that_opens_the_breaker_reads_unreachable() -> None:
    reach = Reachability(reached=True)
    breaker = OutageBreaker(
        FakeStore(), "r1", threshold=3, interval=2, cap=30, lease_seconds=60, reachability=reach
    )
    for call in range(3):
        reach.saw(GATEWAY.http_status, GATEWAY.message)
        await breaker.settle(call, GATEWAY)
    assert breaker.open and metrics.STRIPE_OUTAGE._value.get() == 1
    assert gauge() == 0


async def test_a_replica_following_an_open_breaker_reads_unreachable() -> None:
    store = FakeStore()
    reach = Reachability(reached=True)
    follower = OutageBreaker(
        store, "r2", threshold=3, interval=2, cap=30, lease_seconds=60,
        reachability=reach,
    )  # fmt: skip
    store.state, store.interval = "open", 2.0  # another replica opened it
    await follower.sync()
    assert follower.open and gauge() == 0
    store.state = "closed"
    await follower.sync()
    assert not follower.open and gauge() == 1


class NoteStore:
    """The one statement a failed meter read writes."""

    async def note_meter_read(self, account: str, outcome: str, detail: str) -> None:
        return None


async def test_a_meter_read_answered_by_a_gateway_reads_unreachable() -> None:
    async def fetch(account: str) -> list[MeterInfo]:
        raise MeterReadError("failed", "Service Unavailable", 503)

    reach = Reachability(reached=True)
    refresh = MeterRefresh(
        NoteStore(),  # type: ignore[arg-type]
        MeterCatalogue(60),
        fetch,
        60,
        reachability=reach,
    )
    await refresh._read("")
    assert gauge() == 0
