"""When a v2 claim walks the lanes first (relay.core.fairness)."""

from relay.core.fairness import walk_next


def test_oldest_rows_of_many_lanes_need_no_walk() -> None:
    assert not walk_next([(f"cus_{i}", "api_calls") for i in range(1000)])


def test_one_lanes_backlog_in_the_oldest_rows_turns_the_walk_on() -> None:
    lanes = [("cus_big", "api_calls")] * 990 + [(f"cus_{i}", "api_calls") for i in range(10)]
    assert walk_next(lanes)


def test_a_few_lanes_backlogs_turn_the_walk_on_too() -> None:
    assert walk_next([(f"cus_{i % 10}", "api_calls") for i in range(1000)])


def test_lanes_are_customer_and_meter() -> None:
    assert not walk_next([("cus_1", f"meter_{i}") for i in range(3)])
    assert walk_next([("cus_1", "api_calls")] * 3)


def test_two_rows_per_lane_on_average_is_still_spread() -> None:
    assert not walk_next([(f"cus_{i % 500}", "api_calls") for i in range(1000)])
    assert walk_next([(f"cus_{i % 333}", "api_calls") for i in range(1000)])


def test_nothing_taken_says_take_the_oldest_next() -> None:
    assert not walk_next([])
