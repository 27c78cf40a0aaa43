"""The demo's table of the outbox: its rows add up to the outbox's rows."""

from relay.cli.demo import _state_rows


def test_confirmation_is_shown_as_a_part_of_the_accepted_rows() -> None:
    counts = {
        "pending": 0,
        "accepted": 979,
        "rejected": 1,
        "cancelled": 1,
        "confirmed": 4,
        "awaiting_confirmation": 975,
    }
    rows = dict(_state_rows(counts))
    assert list(rows) == ["pending", "accepted", "rejected", "cancelled"]
    assert rows["accepted"] == "979 (4 confirmed, 975 awaiting confirmation)"
