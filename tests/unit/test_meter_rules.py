"""The catalogue's pure rules (which rows go, with which keys, which are held) and the read
budget's pacing, on an injected clock."""

import pytest

from relay.core.config import parse_meter_keys
from relay.core.meters import MeterInfo
from relay.core.rows import Claimed, Outcome
from relay.stripe.catalogue import MIN_ON_DEMAND, MeterCatalogue
from relay.stripe.read_budget import ReadBudget, default_read_rate
from tests.unit.rows import claimed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def meter(name: str = "api_calls", **fields: object) -> MeterInfo:
    values: dict[str, object] = {
        "account": "",
        "meter_id": f"mtr_{name}",
        "event_name": name,
        "status": "active",
        "customer_key": "stripe_customer_id",
        "value_key": "value",
        "event_time_window": None,
        "formula": "sum",
    }
    values.update(fields)
    return MeterInfo(**values)  # type: ignore[arg-type]


def catalogue(*meters: MeterInfo, **kw: object) -> MeterCatalogue:
    found = MeterCatalogue(hold_seconds=300, clock=Clock(), **kw)  # type: ignore[arg-type]
    found.replace("", meters)
    return found


def held_code(result: Claimed | Outcome) -> str | None:
    return result.code if isinstance(result, Outcome) else None


def test_default_keys_pass_the_row_untouched() -> None:
    row = claimed()
    assert catalogue(meter()).check(row) is row


def test_custom_keys_rename_customer_and_value_and_keep_dimensions() -> None:
    row = claimed(payload={"stripe_customer_id": "cus_1", "value": "7", "region": "eu"})
    sent = catalogue(meter(customer_key="customer_id", value_key="tokens")).check(row)
    assert isinstance(sent, Claimed)
    assert sent.payload == {"customer_id": "cus_1", "tokens": "7", "region": "eu"}


@pytest.mark.parametrize(
    ("meters", "code", "delay"),
    [
        ((), "meter_missing", 300),
        ((meter(status="inactive"),), "meter_inactive", 300),
        ((meter(event_time_window="hour"),), "meter_pre_aggregated", 300),
        ((meter(), meter(meter_id="mtr_two")), "meter_conflict", 300),
    ],
)
def test_rows_stripe_would_drop_are_held_without_an_attempt(
    meters: tuple[MeterInfo, ...], code: str, delay: float
) -> None:
    outcome = catalogue(*meters).check(claimed())
    assert isinstance(outcome, Outcome)
    assert (outcome.state, outcome.code, outcome.counted, outcome.called) == (
        "pending",
        code,
        0,
        False,
    )
    assert outcome.delay == delay and outcome.kind == "unsent" and not outcome.reached_stripe


def test_dimension_named_like_a_meter_key_is_held_not_overwritten() -> None:
    row = claimed(payload={"stripe_customer_id": "cus_1", "value": "7", "tokens": "x"})
    found = catalogue(meter(value_key="tokens")).check(row)
    assert held_code(found) == "meter_key_collision"


def test_unread_account_waits_briefly_and_asks_for_a_read() -> None:
    asked: list[int] = []
    found = catalogue(on_request=lambda: asked.append(1))
    outcome = found.check(claimed(stripe_account="acct_new"))
    assert held_code(outcome) == "meter_checking"
    assert isinstance(outcome, Outcome) and outcome.delay < 5
    assert found.wanted == {"acct_new"} and asked == [1]


def test_unreadable_account_sends_as_before_and_override_names_keys() -> None:
    found = catalogue(overrides={"tokens": ("customer_id", "n")})
    found.read_failed("acct_x", "forbidden")
    row = claimed(stripe_account="acct_x")
    assert found.check(row) is row
    sent = found.check(claimed(stripe_account="acct_x", event_name="tokens"))
    assert isinstance(sent, Claimed) and set(sent.payload) == {"customer_id", "n"}


def test_on_demand_reads_are_debounced() -> None:
    asked: list[int] = []
    found = catalogue(on_request=lambda: asked.append(1))
    clock = found.clock
    assert isinstance(clock, Clock)
    for _ in range(50):
        found.check(claimed(event_name="unknown"))
    assert asked == [1]
    clock.now += MIN_ON_DEMAND
    found.check(claimed(event_name="unknown"))
    assert asked == [1, 1]


def test_cancels_are_never_held() -> None:
    row = claimed(action="cancel", event_name="unknown")
    assert catalogue().check(row) is row


def test_meter_keys_setting_parses_and_refuses_bad_entries() -> None:
    assert parse_meter_keys("a=c:v; b = x : y") == {"a": ("c", "v"), "b": ("x", "y")}
    for bad in ("a=c", "a=c:c", "=c:v", "a"):
        with pytest.raises(ValueError, match="event_name=customer_key:value_key"):
            parse_meter_keys(bad)


def test_read_budget_paces_and_a_share_stays_within_it() -> None:
    clock = Clock()
    budget = ReadBudget(10.0, clock=clock)
    waits = [budget.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    share = budget.share(0.1)  # 1 read/s at most, and also out of the whole budget's slots
    assert share.reserve() == pytest.approx(0.5)
    assert share.reserve() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        budget.share(0)


def test_default_read_rate_is_half_of_stripes_read_limit() -> None:
    assert default_read_rate("sk_live_x") == 50.0
    assert default_read_rate("rk_test_x") == 12.5
