"""`Emulator`: the Python face of the Stripe meter-events emulator.

It runs either in a background thread with its own event loop (`start()` / `with`), which
suits synchronous tests and the stripe SDK's sync client, or inside the caller's running
loop (`await start_async()` / `async with`), which suits asyncio tests. Inspection and
steering methods are thread-safe in both modes.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Self

from aiohttp import web

from relay.emulator.admin import AdminApi
from relay.emulator.api import StripeApi
from relay.emulator.config import EmulatorConfig, EventDestination, Meter
from relay.emulator.faults import FaultKind, Faults, Gate, OutageMode
from relay.emulator.ledger import LedgerSnapshot, Number
from relay.emulator.server import Pipeline, not_found, stripe_routes
from relay.emulator.state import EmulatorState
from relay.emulator.webhooks import DeliveryAttempt

DEFAULT_FAIL_PATH = "/v1/billing/meter_events"


def build_app(state: EmulatorState) -> web.Application:
    """The aiohttp application: Stripe routes, admin routes, then a JSON 404 catch-all."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    pipeline = Pipeline(state)
    for route in stripe_routes(StripeApi(state)):
        app.router.add_route(route.method, route.path, pipeline.bind(route))
    app.router.add_routes(AdminApi(state).routes())
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


class Emulator:
    """A faithful local stand-in for Stripe's meter-event APIs; see docs/design.md."""

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = EmulatorConfig(**overrides)
        elif overrides:
            raise TypeError("pass either an EmulatorConfig or keyword overrides, not both")
        self.config = config
        self.state = EmulatorState(config)
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Serve from a background thread; returns once the port is bound."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("emulator already started")
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="stripe-emulator", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise
        return self

    def _thread_main(self, started: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._bind())
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._unbind())
            loop.close()

    async def start_async(self) -> Self:
        """Serve from the caller's running event loop."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("emulator already started")
        await self._bind()
        return self

    async def _bind(self) -> None:
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(
            build_app(self.state),
            access_log=None,
            handle_signals=False,
            # Do not keep a test waiting for requests stuck in injected latency.
            shutdown_timeout=0.5,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def _unbind(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.state.reporter.reset()
        await self.state.reporter.cancel_deliveries()
        await self.state.sender.close()

    def stop(self) -> None:
        """Stop serving (thread mode). Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            if self._runner is not None:
                raise RuntimeError("started with start_async(); use await stop_async()")
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    async def stop_async(self) -> None:
        """Stop serving (loop mode). Idempotent."""
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.stop)
            return
        await self._unbind()
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, no trailing slash (what stripe's base_addresses want)."""
        return f"http://{self.config.host}:{self.port}"

    # --- faults ------------------------------------------------------------------------

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the random faults (reseeding the generator); queued fail_next stay."""
        with self.state.lock:
            self.state.faults.configure(faults)

    def clear_faults(self) -> None:
        """Remove all faults, including queued fail_next directives and outages."""
        with self.state.lock:
            self.state.faults.clear()

    def fail_next(
        self,
        n: int,
        status: int = 500,
        path: str | None = DEFAULT_FAIL_PATH,
        kind: FaultKind = "status",
    ) -> None:
        """Make the next `n` requests to `path` (None = any API path) fail.

        kind: "status" (answer `status`; 500 is saved under the idempotency key, others are
        not), "429", "reset" (cut before processing) or "drop_after_processing" (count the
        event, save the 200, then cut the connection without answering).
        """
        with self.state.lock:
            self.state.faults.fail_next(n, kind=kind, status=status, path=path)

    def hold(self, path: str | None = DEFAULT_FAIL_PATH, count: int | None = 1) -> Gate:
        """Hold the next `count` requests to `path` (None = all) mid-execution until
        `gate.release()`; `gate.wait_arrived(n)` waits for them without sleeping."""
        with self.state.lock:
            return self.state.faults.hold(path, count)

    def set_revoked_accounts(self, accounts: set[str]) -> None:
        """Connected accounts whose requests get a 403 from now on (an empty set restores)."""
        with self.state.lock:
            self.state.revoked_accounts = set(accounts)

    def start_outage(self, seconds: float, mode: OutageMode = "503") -> None:
        """Fail every API request (503 or reset) for `seconds` of emulator time."""
        with self.state.lock:
            self.state.faults.start_outage(seconds, mode)

    def end_outage(self) -> None:
        with self.state.lock:
            self.state.faults.end_outage()

    # --- clock -------------------------------------------------------------------------

    def advance_clock(self, seconds: float) -> float:
        """Move the emulator clock; returns the new emulator time (Unix seconds)."""
        with self.state.lock:
            return self.state.clock.advance(seconds)

    def now(self) -> float:
        return self.state.clock.now()

    # --- inspection --------------------------------------------------------------------

    def ledger(self) -> LedgerSnapshot:
        """Totals per (account, event_name, customer), accepted and rejected events."""
        return self.state.ledger_snapshot()

    def counted(self, identifier: str, account: str | None = None) -> int:
        """How often this identifier is counted (0 or 1; more would be a double count)."""
        return self.state.counted(identifier, account)

    def total(self, event_name: str, customer: str, account: str | None = None) -> Number:
        """Billed value after cancellations (account None = summed over all accounts)."""
        return self.state.total(event_name, customer, account)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def requests(self, path: str | None = None, status: int | str | None = None) -> int:
        """Number of requests to `path` (bare path or "METHOD path") with `status`."""
        with self.state.lock:
            return self.state.stats_counters.count(path, status)

    def events(self) -> list[dict[str, Any]]:
        """Every v2 event (error report) created so far, full form."""
        with self.state.lock:
            return list(self.state.events.all())

    def webhook_attempts(self) -> list[DeliveryAttempt]:
        with self.state.lock:
            return list(self.state.sender.attempts)

    # --- error reports -----------------------------------------------------------------

    def flush_error_reports(self, timeout: float = 30.0) -> list[str]:
        """Emit pending error reports now and wait for their deliveries (thread mode, or
        from a thread other than the emulator's loop). Returns the created event ids."""
        loop = self._require_loop()
        if _running_loop() is loop:
            raise RuntimeError("on the emulator's loop: use await emu.flush_error_reports_async()")
        future = asyncio.run_coroutine_threadsafe(self.state.reporter.flush(), loop)
        return future.result(timeout)

    async def flush_error_reports_async(self) -> list[str]:
        loop = self._require_loop()
        if _running_loop() is loop:
            return await self.state.reporter.flush()
        future = asyncio.run_coroutine_threadsafe(self.state.reporter.flush(), loop)
        return await asyncio.wrap_future(future)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("emulator not started")
        return self._loop

    # --- configuration at run time -----------------------------------------------------

    def reset(self) -> None:
        """Back to the configured start (ledger, keys, sessions, counters, faults, clock).

        Runs on the emulator's loop, because it also cancels the error-report timer.
        """
        loop = self._loop
        if loop is None or _running_loop() is loop or not loop.is_running():
            self.state.reset()
            return
        done: Future[None] = Future()

        def run() -> None:
            try:
                self.state.reset()
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        done.result(timeout=30)

    def add_meter(self, meter: Meter, account: str | None = None, replace: bool = True) -> Meter:
        """Create a meter on `account` (None: every account, present and future). `replace`
        drops that account's meters of the same event name, as Stripe keeps one per name."""
        self.state.add_meter(meter, account, replace)
        return meter

    def deactivate_meter(self, meter_id: str, account: str | None = None) -> bool:
        return self.state.set_meter_active(meter_id, False, account)

    def reactivate_meter(self, meter_id: str, account: str | None = None) -> bool:
        return self.state.set_meter_active(meter_id, True, account)

    def remove_meter(self, meter_id: str, account: str | None = None) -> None:
        """Forget a meter (emulator only: Stripe never deletes one)."""
        self.state.remove_meter(meter_id, account)

    def set_meter_list_fault(self, fault: str | None) -> None:
        """Answer the meter list badly: "malformed", "truncated", "endless" (None: well)."""
        with self.state.lock:
            self.state.meter_list_fault = fault

    def set_restricted_keys(self, keys: set[str]) -> None:
        """Keys that get a 403 on the meter list and the event destinations list."""
        with self.state.lock:
            self.state.restricted_keys = set(keys)

    def set_event_destinations(self, destinations: list[EventDestination] | None) -> None:
        """None: one destination for the webhook URL (see EmulatorState.destinations)."""
        with self.state.lock:
            self.state.event_destinations = None if destinations is None else list(destinations)

    def add_customer(self, customer: str) -> None:
        self.state.add_customer(customer)

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Point error-report deliveries somewhere else (and optionally change the secret)."""
        with self.state.lock:
            self.state.sender.url = url
            if secret is not None:
                self.state.sender.secrets = (secret, *self.config.webhook_additional_secrets)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
