"""`/_emulator/*`: inspect and steer a running emulator over HTTP (no auth; loopback only).

These mirror the Python API so a relay running in another process (or a shell with curl)
can set faults, move the clock and read the ledger.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from relay.emulator.config import Meter
from relay.emulator.faults import Faults
from relay.emulator.state import EmulatorState
from relay.emulator.wire import JSON_CONTENT_TYPE, dumps, new_id

PREFIX = "/_emulator"


def _json(payload: Any, status: int = 200) -> web.Response:
    headers = {"Request-Id": new_id("req"), "Content-Type": JSON_CONTENT_TYPE}
    return web.Response(body=dumps(payload), status=status, headers=headers)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return data


class AdminApi:
    """Handlers for the admin endpoints over the shared state."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/health", self.health),
            web.get(f"{PREFIX}/ledger", self.ledger),
            web.get(f"{PREFIX}/stats", self.stats),
            web.post(f"{PREFIX}/reset", self.reset),
            web.get(f"{PREFIX}/faults", self.get_faults),
            web.post(f"{PREFIX}/faults", self.set_faults),
            web.delete(f"{PREFIX}/faults", self.clear_faults),
            web.post(f"{PREFIX}/fail_next", self.fail_next),
            web.post(f"{PREFIX}/outage", self.start_outage),
            web.delete(f"{PREFIX}/outage", self.end_outage),
            web.get(f"{PREFIX}/clock", self.get_clock),
            web.post(f"{PREFIX}/clock", self.set_clock),
            web.post(f"{PREFIX}/flush_error_reports", self.flush_error_reports),
            web.get(f"{PREFIX}/events", self.events),
            web.get(f"{PREFIX}/webhooks", self.webhooks),
            web.post(f"{PREFIX}/meters", self.add_meter),
            web.post(f"{PREFIX}/customers", self.add_customer),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def ledger(self, request: web.Request) -> web.Response:
        return _json(self.state.ledger_snapshot().as_dict())

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.state.stats())

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return _json({"ok": True})

    async def get_faults(self, request: web.Request) -> web.Response:
        with self.state.lock:
            return _json(self.state.faults.describe())

    async def set_faults(self, request: web.Request) -> web.Response:
        """Replace the random faults: body is `Faults` as JSON (`latency_ms` shortcut ok)."""
        try:
            faults = Faults.from_dict(await _body(request))
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, status=400)
        with self.state.lock:
            self.state.faults.configure(faults)
            return _json(self.state.faults.describe())

    async def clear_faults(self, request: web.Request) -> web.Response:
        with self.state.lock:
            self.state.faults.clear()
            return _json(self.state.faults.describe())

    async def fail_next(self, request: web.Request) -> web.Response:
        """`{"n": 3, "status": 500, "kind": "status|429|reset|drop_after_processing",
        "path": "/v1/billing/meter_events" or null for any}`."""
        data = await _body(request)
        try:
            with self.state.lock:
                self.state.faults.fail_next(
                    int(data.get("n", 1)),
                    kind=data.get("kind", "status"),
                    status=int(data.get("status", 500)),
                    path=data.get("path", "/v1/billing/meter_events"),
                )
                return _json(self.state.faults.describe())
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, status=400)

    async def start_outage(self, request: web.Request) -> web.Response:
        """`{"duration_s": 30, "mode": "503"|"reset", "start_in_s": 0}`."""
        data = await _body(request)
        if "duration_s" not in data:
            return _json({"error": "duration_s (seconds) is required"}, status=400)
        try:
            with self.state.lock:
                self.state.faults.start_outage(
                    float(data["duration_s"]),
                    data.get("mode", "503"),
                    start_in_s=float(data.get("start_in_s", 0.0)),
                )
                return _json(self.state.faults.describe())
        except (KeyError, TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, status=400)

    async def end_outage(self, request: web.Request) -> web.Response:
        with self.state.lock:
            self.state.faults.end_outage()
            return _json(self.state.faults.describe())

    async def get_clock(self, request: web.Request) -> web.Response:
        clock = self.state.clock
        return _json({"now": clock.now(), "offset_seconds": clock.offset})

    async def set_clock(self, request: web.Request) -> web.Response:
        """`{"advance_seconds": N}` or `{"set": unix_seconds}`."""
        data = await _body(request)
        with self.state.lock:
            if "set" in data:
                self.state.clock.set(float(data["set"]))
            else:
                self.state.clock.advance(float(data.get("advance_seconds", 0)))
        return await self.get_clock(request)

    async def flush_error_reports(self, request: web.Request) -> web.Response:
        created = await self.state.reporter.flush()
        return _json({"created": created})

    async def events(self, request: web.Request) -> web.Response:
        with self.state.lock:
            return _json({"data": self.state.events.all()})

    async def webhooks(self, request: web.Request) -> web.Response:
        with self.state.lock:
            attempts = [a.__dict__ for a in self.state.sender.attempts]
        return _json({"url": self.state.sender.url, "attempts": attempts})

    async def add_meter(self, request: web.Request) -> web.Response:
        data = await _body(request)
        try:
            meter = Meter(**data)
        except (TypeError, ValueError) as exc:
            return _json({"error": str(exc)}, status=400)
        self.state.add_meter(meter)
        return _json({"id": meter.id, "event_name": meter.event_name})

    async def add_customer(self, request: web.Request) -> web.Response:
        data = await _body(request)
        customer = data.get("customer") or data.get("id")
        if not isinstance(customer, str) or not customer:
            return _json({"error": "customer is required"}, status=400)
        self.state.add_customer(customer)
        return _json({"customer": customer})
