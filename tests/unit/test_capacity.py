"""The producer's capacity: rows chosen or held, and how many to claim next."""

from relay.core.config import Settings
from relay.pipeline.producer import Capacity, capacity_limit


def test_an_idle_relay_claims_a_full_batch() -> None:
    assert Capacity(lambda: 400, batch_size=100).wanted() == 100


def test_never_more_than_is_free() -> None:
    capacity = Capacity(lambda: 10, batch_size=100)
    assert capacity.wanted() == 10
    capacity.reserve(10)
    assert capacity.wanted() == 0


def test_a_busy_relay_waits_until_a_quarter_is_free() -> None:
    capacity = Capacity(lambda: 400, batch_size=1000)
    capacity.reserve(400)
    capacity.settle(400, 400)
    capacity.release(99)
    assert capacity.wanted() == 0  # 99 free: claims stay large and rare
    capacity.release(1)
    assert capacity.wanted() == 100


def test_a_claim_moves_rows_from_reserved_to_held_and_outcomes_release_them() -> None:
    capacity = Capacity(lambda: 100, batch_size=50)
    capacity.reserve(50)
    capacity.settle(50, 30)  # 20 of the chosen rows were taken by another relay
    assert (capacity.reserved, capacity.held) == (0, 30)
    capacity.release(30)
    assert (capacity.reserved, capacity.held) == (0, 0)


def test_the_limit_is_read_at_each_decision() -> None:
    limit = [100]
    capacity = Capacity(lambda: limit[0], batch_size=100)
    assert capacity.wanted() == 100
    limit[0] = 8  # the rate share went down
    assert capacity.wanted() == 8


def test_limit_is_the_concurrency_bounded_by_what_the_rate_sends_within_a_third_lease() -> None:
    v1 = Settings(concurrency=400, lease_seconds=30)
    assert capacity_limit(v1, rate=1000.0, ceiling=1000.0) == 400
    assert capacity_limit(v1, rate=2.0, ceiling=2.0) == 21  # 2/s x 10 s + 1
    stream = Settings(concurrency=4, lease_seconds=30, stripe_api_mode="v2-stream")
    assert capacity_limit(stream, rate=1000.0, ceiling=1000.0) == 400  # 100 rows per call
