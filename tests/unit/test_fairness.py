"""When a v2 claim walks the lanes first (relay.core.fairness)."""

from relay.core.fairness import walk_next


def test_a_full_top_up_may_have_left_a_backlog_so_the_next_claim_walks() -> None:
    assert walk_next(full=True, other_claims=False)


def test_a_short_top_up_left_nothing_waiting_so_the_next_claim_takes_the_due_rows() -> None:
    assert not walk_next(full=False, other_claims=False)


def test_a_short_top_up_beside_another_claim_says_nothing_of_the_backlog() -> None:
    assert walk_next(full=False, other_claims=True)
