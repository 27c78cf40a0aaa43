"""Meters and event summaries: bounds, alignment, grouping windows, aggregation formulas."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import stripe

from relay.emulator import Emulator, Meter
from tests.support.emulator import make_client, meter_event

HOUR = 3600
DAY = 86400


def _day_start(emu: Emulator) -> int:
    """Midnight UTC of yesterday on the emulator clock (so 'now' is well inside the range)."""
    now = int(emu.now())
    return now - now % DAY - DAY


def _send(client: stripe.StripeClient, identifier: str, value: str, at: int, **kw: str) -> None:
    client.v1.billing.meter_events.create(meter_event(identifier, value=value, timestamp=at, **kw))


def test_summary_for_a_range(emu: Emulator, client: stripe.StripeClient) -> None:
    start = _day_start(emu)
    _send(client, "a", "3", start + 10)
    _send(client, "b", "4", start + HOUR + 5)
    _send(client, "c", "100", start - 60)  # before the range
    _send(client, "d", "9", start + 20, customer="cus_2")  # other customer

    summaries = client.v1.billing.meters.event_summaries.list(
        "mtr_api_calls", {"customer": "cus_1", "start_time": start, "end_time": start + DAY}
    )

    [summary] = summaries.data
    assert summary.object == "billing.meter_event_summary"
    assert summary.aggregated_value == 7
    assert (summary.start_time, summary.end_time) == (start, start + DAY)
    assert summary.meter == "mtr_api_calls"


def test_end_time_is_exclusive_and_cancellations_apply(
    emu: Emulator, client: stripe.StripeClient
) -> None:
    start = _day_start(emu)
    _send(client, "a", "3", start)
    _send(client, "b", "4", start + HOUR)
    _send(client, "c", "5", start + 30)
    client.v1.billing.meter_event_adjustments.create(
        {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "c"}}
    )
    [summary] = client.v1.billing.meters.event_summaries.list(
        "mtr_api_calls", {"customer": "cus_1", "start_time": start, "end_time": start + HOUR}
    ).data
    assert summary.aggregated_value == 3


def test_hour_grouping(emu: Emulator, client: stripe.StripeClient) -> None:
    start = _day_start(emu)
    _send(client, "a", "1", start + 5)
    _send(client, "b", "2", start + 60)
    _send(client, "c", "4", start + 3 * HOUR + 1)

    page = client.v1.billing.meters.event_summaries.list(
        "mtr_api_calls",
        {
            "customer": "cus_1",
            "start_time": start,
            "end_time": start + DAY,
            "value_grouping_window": "hour",
        },
    )
    assert [(s.start_time - start, s.end_time - start, s.aggregated_value) for s in page.data] == [
        (3 * HOUR, 4 * HOUR, 4),
        (0, HOUR, 3),
    ]


def test_day_grouping_paginates(emu: Emulator, client: stripe.StripeClient) -> None:
    start = _day_start(emu) - 10 * DAY
    for d in range(11):
        _send(client, f"d{d}", "1", start + d * DAY + 7)
    params = {
        "customer": "cus_1",
        "start_time": start,
        "end_time": start + 12 * DAY,
        "value_grouping_window": "day",
        "limit": 4,
    }
    first = client.v1.billing.meters.event_summaries.list("mtr_api_calls", params)
    assert len(first.data) == 4 and first.has_more
    every = list(first.auto_paging_iter())
    assert len(every) == 11
    assert len({s.id for s in every}) == 11


@pytest.mark.parametrize(
    ("start_offset", "end_offset", "window", "param"),
    [
        (30, DAY, None, "start_time"),
        (0, DAY + 1, None, "end_time"),
        (60, DAY, "hour", "start_time"),
        (0, HOUR * 5, "day", "end_time"),
    ],
)
def test_misaligned_bounds_are_400(
    emu: Emulator,
    client: stripe.StripeClient,
    start_offset: int,
    end_offset: int,
    window: str | None,
    param: str,
) -> None:
    start = _day_start(emu)
    params = {
        "customer": "cus_1",
        "start_time": start + start_offset,
        "end_time": start + end_offset,
    }
    if window:
        params["value_grouping_window"] = window
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meters.event_summaries.list("mtr_api_calls", params)
    assert (info.value.code, info.value.param) == ("invalid_time_alignment", param)


def test_unknown_meter_is_404(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meters.event_summaries.list(
            "mtr_nope", {"customer": "cus_1", "start_time": 0, "end_time": 60}
        )
    assert info.value.http_status == 404


def test_count_and_last_meters(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(
        meters=(
            Meter("calls", aggregation="count"),
            Meter("seats", aggregation="last", customer_key="customer", value_key="n"),
        )
    )
    client = make_client(emu)
    now = int(emu.now())
    for i, v in enumerate(["5", "7", "2"]):
        client.v1.billing.meter_events.create(meter_event(f"c{i}", event_name="calls", value=v))
        client.v1.billing.meter_events.create(
            {
                "event_name": "seats",
                "identifier": f"s{i}",
                "timestamp": now - 10 + i,
                "payload": {"customer": "cus_1", "n": v},
            }
        )
    assert emu.total("calls", "cus_1") == 3
    assert emu.total("seats", "cus_1") == 2


def test_pre_aggregated_meter_keeps_last_per_window(
    make_emulator: Callable[..., Emulator],
) -> None:
    emu = make_emulator(meters=(Meter("gauge", event_time_window="hour"),))
    client = make_client(emu)
    start = _day_start(emu)
    for i, (offset, value) in enumerate([(10, "5"), (20, "8"), (HOUR + 1, "3")]):
        _send(client, f"g{i}", value, start + offset, event_name="gauge")
    assert emu.total("gauge", "cus_1") == 11


def test_meters_list_and_retrieve(emu: Emulator, client: stripe.StripeClient) -> None:
    emu.add_meter(Meter("tokens", id="mtr_tokens", aggregation="sum", value_key="tokens"))
    meters = client.v1.billing.meters.list()
    assert {m.id for m in meters.data} == {"mtr_api_calls", "mtr_tokens"}

    meter = client.v1.billing.meters.retrieve("mtr_tokens")
    assert meter.object == "billing.meter"
    assert meter.event_name == "tokens"
    assert meter.value_settings.event_payload_key == "tokens"
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    assert meter.default_aggregation.formula == "sum"
    assert meter.status == "active"
