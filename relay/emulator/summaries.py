"""Meter event summaries (`GET /v1/billing/meters/{id}/event_summaries`).

Bounds: `start_time` inclusive, `end_time` exclusive, both minute-aligned; with
`value_grouping_window=hour` they must be hour-aligned, with `day` UTC-midnight-aligned.
Without a grouping window the answer is ONE summary for the whole range (value 0 if
nothing counted); with one, one summary per window that holds counted events, newest first
(emulator choice: Stripe does not document whether empty windows are listed).
"""

from __future__ import annotations

import hashlib
from typing import Any

from relay.emulator import errors
from relay.emulator.config import Meter
from relay.emulator.errors import ApiError
from relay.emulator.ledger import LedgerEvent, aggregate

_ALIGNMENT = {None: 60, "hour": 3600, "day": 86400}


def check_bounds(start: int, end: int, grouping: str | None) -> None:
    """Raise the 400 Stripe gives for misaligned or inverted bounds."""
    if grouping not in _ALIGNMENT:
        raise errors.invalid(
            "value_grouping_window must be one of: hour, day.",
            code=errors.PARAMETER_INVALID,
            param="value_grouping_window",
        )
    unit = _ALIGNMENT[grouping]
    label = {60: "minute", 3600: "hour", 86400: "day"}[unit]
    for name, value in (("start_time", start), ("end_time", end)):
        if value % 60 or value % unit:
            raise ApiError(
                400,
                f"{name} must be aligned to a {label} boundary.",
                code=errors.TIME_NOT_ALIGNED,
                param=name,
            )
    if end <= start:
        raise errors.invalid(
            "end_time must be after start_time.", code=errors.PARAMETER_INVALID, param="end_time"
        )


def summarize(
    events: list[LedgerEvent],
    meter: Meter,
    customer: str,
    start: int,
    end: int,
    grouping: str | None,
    livemode: bool,
) -> list[dict[str, Any]]:
    """Summaries for `events` (one customer's events for `meter`), newest first."""
    in_range = [e for e in events if start <= e.timestamp < end]
    if grouping is None:
        return [_summary(meter, customer, start, end, in_range, livemode)]
    width = _ALIGNMENT[grouping]
    buckets: dict[int, list[LedgerEvent]] = {}
    for event in in_range:
        if event.counts:
            bucket = event.timestamp - (event.timestamp - start) % width
            buckets.setdefault(bucket, []).append(event)
    return [
        _summary(meter, customer, bucket, bucket + width, buckets[bucket], livemode)
        for bucket in sorted(buckets, reverse=True)
    ]


def _summary(
    meter: Meter,
    customer: str,
    start: int,
    end: int,
    events: list[LedgerEvent],
    livemode: bool,
) -> dict[str, Any]:
    value = aggregate(events, meter.aggregation, meter.event_time_window)
    key = f"{meter.id}|{customer}|{start}|{end}".encode()
    digest = hashlib.sha1(key, usedforsecurity=False).hexdigest()[:24]  # a stable id
    return {
        "id": f"mtrusg_{digest}",
        "object": "billing.meter_event_summary",
        "aggregated_value": float(value),
        "end_time": end,
        "livemode": livemode,
        "meter": meter.id,
        "start_time": start,
    }
