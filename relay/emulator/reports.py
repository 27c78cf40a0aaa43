"""Asynchronous error reports: invalid events become v2 thin events, later.

Stripe validates the customer mapping and the meter AFTER answering 200, aggregates the
failures over a window and emits `v1.billing.meter.error_report_triggered` (per meter) or
`v1.billing.meter.no_meter_found` (unknown event names). The webhook carries only the thin
notification; the full event (counts per code, SAMPLE errors with `request.identifier`)
comes from `GET /v2/core/events/{id}`.

Here a window opens with the first failure and closes `error_report_delay` seconds later
(or when `flush()` is called); every window becomes one event per meter.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from dataclasses import dataclass, field
from typing import Any

from relay.emulator.clock import Clock, rfc3339
from relay.emulator.config import Meter
from relay.emulator.validation import EventProblem
from relay.emulator.webhooks import WebhookSender
from relay.emulator.wire import new_id

ERROR_REPORT_TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"


@dataclass
class _Window:
    """Failures collected for one (account, mode, meter) since the window opened."""

    account: str
    livemode: bool
    meter: Meter | None
    opened_at: float
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, problem: EventProblem, identifier: str, max_samples: int) -> None:
        self.counts[problem.code] = self.counts.get(problem.code, 0) + 1
        samples = self.samples.setdefault(problem.code, [])
        if len(samples) < max_samples:
            samples.append(
                {"error_message": problem.message, "request": {"identifier": identifier}}
            )


@dataclass
class EventStore:
    """Full v2 events by id, newest last; what `GET /v2/core/events` serves."""

    _events: dict[str, dict[str, Any]] = field(default_factory=dict)
    _accounts: dict[str, str] = field(default_factory=dict)

    def add(self, account: str, event: dict[str, Any]) -> None:
        self._events[event["id"]] = event
        self._accounts[event["id"]] = account

    def get(self, event_id: str, account: str) -> dict[str, Any] | None:
        if self._accounts.get(event_id) != account:
            return None
        return self._events.get(event_id)

    def list(
        self, account: str, *, types: list[str], object_id: str | None
    ) -> list[dict[str, Any]]:
        """Matching events, newest first."""
        found = []
        for event_id, event in reversed(self._events.items()):
            if self._accounts[event_id] != account:
                continue
            if types and event["type"] not in types:
                continue
            related = event.get("related_object") or {}
            if object_id is not None and related.get("id") != object_id:
                continue
            found.append(event)
        return found

    def all(self) -> builtins.list[dict[str, Any]]:  # `list` here is the method above
        return list(self._events.values())

    def reset(self) -> None:
        self._events.clear()
        self._accounts.clear()


@dataclass
class ErrorReporter:
    """Collects failures, turns them into events and hands them to the webhook sender."""

    clock: Clock
    sender: WebhookSender
    store: EventStore
    platform_account: str
    delay: float = 0.2
    max_samples: int = 10
    _windows: dict[tuple[str, bool, str | None], _Window] = field(default_factory=dict)
    _timer: asyncio.TimerHandle | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def record(
        self,
        account: str,
        livemode: bool,
        meter: Meter | None,
        problem: EventProblem,
        identifier: str,
    ) -> None:
        """Note one failed event; must run on the emulator's event loop."""
        key = (account, livemode, meter.meter_id if meter else None)
        window = self._windows.get(key)
        if window is None:
            window = _Window(account, livemode, meter, self.clock.now())
            self._windows[key] = window
        window.add(problem, identifier, self.max_samples)
        self._schedule()

    @property
    def pending(self) -> int:
        return len(self._windows)

    def _schedule(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> list[str]:
        """Close every open window now and wait until all deliveries finished (or failed).

        Returns the ids of the events created by this call.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        windows, self._windows = list(self._windows.values()), {}
        created = [self._emit(window) for window in windows]
        current = asyncio.current_task()
        waiting = [t for t in self._tasks if t is not current]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
        return created

    def _emit(self, window: _Window) -> str:
        event = self._build_event(window)
        self.store.add(window.account, event)
        notification = {k: v for k, v in event.items() if k != "data"}
        task = asyncio.ensure_future(self.sender.deliver(event["id"], json.dumps(notification)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        event_id: str = event["id"]
        return event_id

    def _build_event(self, window: _Window) -> dict[str, Any]:
        now = self.clock.now()
        prefix = "evt" if window.livemode else "evt_test"
        event: dict[str, Any] = {
            "id": new_id(prefix),
            "object": "v2.core.event",
            "type": NO_METER_FOUND if window.meter is None else ERROR_REPORT_TRIGGERED,
            "created": rfc3339(now),
            "livemode": window.livemode,
        }
        if window.account != self.platform_account:
            event["context"] = window.account
        if window.meter is not None:
            meter_id = window.meter.meter_id
            event["related_object"] = {
                "id": meter_id,
                "type": "billing.meter",
                "url": f"/v1/billing/meters/{meter_id}",
            }
        event["data"] = _event_data(window, now)
        return event

    async def cancel_deliveries(self) -> None:
        """Abandon deliveries still retrying (used on shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def reset(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._windows.clear()


def _event_data(window: _Window, now: float) -> dict[str, Any]:
    total = sum(window.counts.values())
    subject = "with no matching meter" if window.meter is None else f"for {window.meter.id}"
    noun = "event" if total == 1 else "events"
    return {
        "developer_message_summary": f"There {'is' if total == 1 else 'are'} {total} "
        f"invalid {noun} {subject}",
        "validation_start": rfc3339(window.opened_at),
        "validation_end": rfc3339(now),
        "reason": {
            "error_count": total,
            "error_types": [
                {"code": code, "error_count": count, "sample_errors": window.samples[code]}
                for code, count in window.counts.items()
            ],
        },
    }
