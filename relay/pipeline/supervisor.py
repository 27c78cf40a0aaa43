"""The relay: its services wired together, started and stopped as one.

    producer  (walk + claim)  --rows-->  executor (Stripe calls)  --outcomes-->  completer
        ^--- capacity: rows chosen or held until their outcome is written (released by the
             completer); the wakeup pokes the producer when capacity or a lane is freed
    maintenance: fold_counts, heartbeat (rate share), outage_watch (the shared outage
    meter_refresh: the meter catalogue; confirmation: accepted rows against Stripe's summaries
    breaker); listener: NOTIFY hints

Every service runs as one task under `Services`: any that fails (or returns before the stop
signal) logs `service_died` and stops the relay, which then drains as on SIGTERM and raises
`ServiceDied` (exit 1: the process supervisor restarts it). Services retry only the errors of
the resource they wait on (relay.core.retryable); see docs/design.md, "Errors: who retries
what". Shutdown order: stop claiming, let calls finish within the grace
period, give the rate share back, write the last outcomes, stop the rest.
"""

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import structlog

from relay.core.clock import Clocks
from relay.core.config import Settings, parse_meter_keys
from relay.core.errors import ServiceDied
from relay.db.store import Store
from relay.pipeline import maintenance
from relay.pipeline.completer import Completer
from relay.pipeline.confirmation import Confirmation
from relay.pipeline.confirmation import sdk_fetch as summaries_fetch
from relay.pipeline.database_watch import DatabaseWatch
from relay.pipeline.executor import Executor, RelayState, Sender
from relay.pipeline.meter_refresh import Fetch, MeterRefresh, sdk_fetch
from relay.pipeline.producer import Capacity, Producer, capacity_limit
from relay.pipeline.wakeup import Wakeup
from relay.stripe.auth_gate import AuthGate
from relay.stripe.catalogue import MeterCatalogue
from relay.stripe.outage import OutageBreaker
from relay.stripe.rate_limit import RateLimiter
from relay.stripe.rate_share import DuplicateRelayId, RateShare
from relay.stripe.reachability import Reachability
from relay.stripe.read_budget import ReadBudget, default_read_rate
from relay.stripe.sender import StripeSender

log = structlog.get_logger("relay")

OUTCOME_RESERVE = 5.0  # seconds of the shutdown grace kept for writing the last outcomes
# With the grace used up, giving the share back and writing the last outcomes still get these
# (a restart need not wait out the share; released rows go back pending at once).
LEAVE_TIMEOUT = 0.5
OUTCOME_WRITE_MIN = 1.0


# A held row costs two writes each time it is looked at (its claim and its outcome), so it is
# held for two refresh intervals: at most one write per held row per interval. Its meter
# becoming usable does not wait for that: the refresh releases the row at once.
HOLD_REFRESHES = 2


class Services:
    """Tasks started together and stopped together; the first to die sets `stop`."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.fatal: DuplicateRelayId | None = None  # ends the process with a config error
        self.died: ServiceDied | None = None  # the first service that died (exit 1)

    def start(self, name: str, service: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(service, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None and self._stop.is_set():
            return  # finished its work after the stop signal
        if isinstance(error, DuplicateRelayId):
            self.fatal = error
            log.error("duplicate_relay_id", service=name, error=str(error))
        else:
            described = _describe(error)
            log.error("service_died", service=name, error=described)
            if self.died is None:
                self.died = ServiceDied(name, described)
        self._stop.set()

    async def stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is None:
            return
        # Cancelled again until it ends: a cancellation that lands inside a database call can
        # be absorbed on the way out (the service then loops on), seen as a hung shutdown.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    async def stop_all(self) -> None:
        for name in reversed(list(self._tasks)):
            await self.stop(name)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "returned before the stop signal"
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]  # a task group's single failure
    return repr(error)


class Relay:
    """One relay process; several can run against the same database."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sender: Sender,
        wakeup: Wakeup,
        meters_fetch: Fetch | None = None,
        clocks: Clocks | None = None,
    ) -> None:
        self.settings = settings
        self.clocks = clocks or Clocks(timedelta(seconds=settings.clock_margin))
        self.store = store
        self.sender = sender
        self.wakeup = wakeup
        # Stripe's answers so far (/readyz: not ready before the first). A sender that is no
        # StripeSender (a test double) answers by construction.
        self.reachability: Reachability = getattr(sender, "reachability", None) or Reachability(
            reached=True
        )
        rate = settings.effective_rate_limit()
        # A small catch-up burst (1% of a second) so a momentarily idle limiter does not lose
        # slots; any one-second window still sees at most 1.01 x the rate.
        self.limiter = RateLimiter(rate, burst=max(1.0, rate / 100))
        self.share = (
            RateShare(
                store,
                self.limiter,
                settings.relay_id,
                rate,
                interval=settings.heartbeat_interval,
                stale_after=settings.relay_stale_after,
            )
            if settings.rate_limit_scope == "account"
            else None
        )
        self.state = RelayState()
        self.database = DatabaseWatch(store, self.clocks, self.state, settings.upkeep_interval)
        self.outage = self._outage_breaker()
        self.capacity = Capacity(self._capacity_limit, settings.effective_batch_size())
        self.completer = Completer(
            settings, store, self.capacity, wakeup, database_now=self.clocks.database_now
        )
        auth = AuthGate(
            self._set_ready, settings.auth_probe_interval, settings.auth_probe_max_interval
        )
        self.auth = auth
        self.read_budget = ReadBudget(
            settings.read_rate_limit or default_read_rate(settings.api_key() or "")
        )
        self.meters, self.meter_refresh = self._meter_catalogue(meters_fetch)
        self.confirmation = self._confirmation()
        self.executor = Executor(
            settings,
            sender,
            self.limiter,
            auth,
            self.completer.record,
            self.meters,
            self.outage,
            self.clocks,
        )
        self.producer = Producer(
            settings,
            store,
            wakeup,
            self.capacity,
            self.state,
            send=self.executor.start,
            hand_back=self.completer.record,
        )

    def _outage_breaker(self) -> OutageBreaker | None:
        settings = self.settings
        if not settings.outage_threshold:
            return None
        return OutageBreaker(
            self.store,
            settings.relay_id,
            threshold=settings.outage_threshold,
            interval=settings.outage_probe_interval,
            cap=settings.outage_probe_max_interval,
            lease_seconds=settings.lease_seconds,
            on_change=self.wakeup.poke,  # claims stop, or start again at once
            reachability=self.reachability,
        )

    def _capacity_limit(self) -> int:
        """Rows held at once (producer.capacity_limit); while Stripe is out, only a probe."""
        limit = capacity_limit(self.settings, self.limiter.rate, self.limiter.ceiling)
        return limit if self.outage is None else self.outage.claim_limit(limit)

    def _set_ready(self, auth_ok: bool) -> None:
        self.state.auth_ok = auth_ok

    def _meter_catalogue(
        self, fetch: Fetch | None
    ) -> tuple[MeterCatalogue | None, MeterRefresh | None]:
        """The catalogue and its refresh job; none for a sender that cannot read meters (a
        test double): rows then go with the default keys, as before the catalogue."""
        if fetch is None and isinstance(self.sender, StripeSender):
            fetch = sdk_fetch(self.sender.client, self.read_budget)
        if fetch is None:
            return None, None
        settings = self.settings
        catalogue = MeterCatalogue(
            HOLD_REFRESHES * settings.meter_refresh_seconds, parse_meter_keys(settings.meter_keys)
        )
        refresh = MeterRefresh(
            self.store,
            catalogue,
            fetch,
            settings.meter_refresh_seconds,
            on_key_refused=self.auth.refuse_key,
            on_key_accepted=self.auth.key_accepted,
            reachability=self.reachability,
            written=self.completer.written_through_now,
        )
        return catalogue, refresh

    def _confirmation(self) -> Confirmation | None:
        """The confirmation against Stripe's summaries, on its share of the read budget; none
        without a catalogue (it names the meter) or an SDK client (a test double)."""
        if self.meters is None or not isinstance(self.sender, StripeSender):
            return None
        budget = self.read_budget.share(self.settings.confirm_read_share)
        fetch = summaries_fetch(self.sender.client, budget)
        return Confirmation(self.settings, self.store, self.meters, fetch, budget.rate)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (or a service dies), then drain within the grace period."""
        services = Services(stop)
        try:
            services.start("completer", self.completer.run())
            services.start("database_watch", self.database.run())
            services.start("executor", self.executor.watch())
            services.start(
                "fold_counts",
                maintenance.fold_counts(self.store, self.settings.upkeep_interval, self.state),
            )
            if self.wakeup.listens:
                services.start("listener", self.wakeup.listen())
            if self.share:
                await self.share.join(stop)
                services.start(
                    "heartbeat",
                    maintenance.heartbeat(self.share, self.settings.heartbeat_interval),
                )
            if self.outage is not None:  # before traffic: an outage other replicas see holds
                await self.outage.sync()
                services.start(
                    "outage_watch",
                    maintenance.outage_watch(self.outage, self.settings.heartbeat_interval),
                )
            if self.meter_refresh is not None:
                # Before traffic: the read that needs only the key (a 401 makes /readyz fail).
                await self.meter_refresh.start()
                services.start("meter_refresh", self.meter_refresh.run())
            if self.confirmation is not None:
                services.start("confirmation", self.confirmation.run())
            self.state.started = True
            log.info(
                "relay_started",
                relay_id=self.settings.relay_id,
                rate_limit=self.limiter.ceiling,
                concurrency=self.capacity.limit,
                mode=self.settings.stripe_api_mode,
                poll_only=not self.wakeup.listens,
            )
            services.start("producer", self.producer.run(stop))
            await stop.wait()
        finally:
            stop.set()
            await self._shutdown(services)
        if services.fatal is not None:
            raise services.fatal
        if services.died is not None:
            raise services.died

    async def _shutdown(self, services: Services) -> None:
        """Everything within OUTBOX_SHUTDOWN_GRACE (plus at most LEAVE_TIMEOUT and
        OUTCOME_WRITE_MIN when it is used up), also with the database down (below systemd's
        TimeoutStopSec and Kubernetes' grace period): calls get the grace less a reserve for
        writing their outcomes. Rows whose outcome is not written are safe: their
        leases expire and the retry replays what Stripe did (same key)."""
        grace = self.settings.shutdown_grace
        deadline = time.monotonic() + grace
        reserve = min(OUTCOME_RESERVE, grace / 4)

        def left(until: float = deadline) -> float:
            return max(0.0, until - time.monotonic())

        await services.stop("producer")
        await self.producer.finish(left(deadline - reserve))  # claims hand rows back unsent
        await self.executor.drain(left(deadline - reserve))
        if self.outage is not None:  # the last calls count in the shared figures
            await services.stop("outage_watch")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outage.sync(), max(left(), LEAVE_TIMEOUT))
        if self.share:  # sent the last call: give the share back
            await services.stop("heartbeat")
            with contextlib.suppress(TimeoutError):  # a restart under this id need not wait
                await asyncio.wait_for(self.share.leave(), max(left(), LEAVE_TIMEOUT))
        if services.running("completer"):
            await self.completer.finish(max(left(), OUTCOME_WRITE_MIN))
        await services.stop_all()
        log.info("relay_stopped", relay_id=self.settings.relay_id)
