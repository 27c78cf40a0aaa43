"""`outbox-relay run`: wire settings, database, Stripe, HTTP and signals around the Relay."""

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import structlog

from outbox.dburl import redact
from relay.core import systemd
from relay.core.clock import Clocks
from relay.core.config import Settings
from relay.core.errors import ConfigError, StartupError
from relay.db import migrate
from relay.db.pool import make_pool
from relay.db.store import Store
from relay.pipeline.supervisor import Relay
from relay.pipeline.wakeup import Wakeup
from relay.server.http_server import (
    CLOSE_TIMEOUT,
    connection_limit,
    make_app,
    open_file_budget,
    serve_http,
)
from relay.stripe.egress import Egress
from relay.stripe.rate_share import DuplicateRelayId
from relay.stripe.sender import StripeSender

log = structlog.get_logger("relay.service")
T = TypeVar("T")


# Container allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it exists (Linux, macOS): the relay spends much of its CPU in the
    event loop, a few callbacks per row, and uvloop does that several times
    faster than the default loop. Elsewhere, asyncio's own loop. The heap is settled first,
    and unsettled after (a process that runs the loop again, as the benchmarks do, would
    otherwise never collect what it froze and later dropped)."""
    threshold = gc.get_threshold()
    settle_heap()
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main)
        return uvloop.run(main)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def settle_heap() -> None:
    """Freeze what startup allocated (modules, the SDK, SQLAlchemy, the settings) out of the
    cyclic garbage collector's reach, and collect the young generation less often.

    Why: the relay's per-row objects are acyclic and freed by reference counting, but every
    few hundred allocations CPython's collector runs, and every few of those it scans all of
    the 100,000+ objects imported at startup. In the database-path bench that was a large share
    of the relay's CPU per row (figures in docs/benchmarks.md). Frozen objects are never
    collected, so the garbage of startup is collected once before freezing; cycles made later
    are still collected.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def check(settings: Settings) -> str:
    """Validate what `run` needs; returns the Stripe key."""
    if not settings.database_url:
        raise ConfigError("set OUTBOX_DATABASE_URL")
    key = settings.api_key()
    if not key and settings.stripe_api_key_file is not None:
        raise ConfigError(f"STRIPE_API_KEY_FILE: {settings.stripe_api_key_file} is empty")
    if not key:
        raise ConfigError("set STRIPE_API_KEY or STRIPE_API_KEY_FILE")
    if not key.startswith(("sk_", "rk_")):
        raise ConfigError("STRIPE_API_KEY must be a secret (sk_...) or restricted (rk_...) key")
    Egress.from_settings(settings).ssl_context()  # a bad proxy URL or CA file: one line, exit 2
    return key


class SchemaBehind(ConfigError):
    """The database has no outbox schema, or an older one than this relay's."""


SCHEMA_POLL_SECONDS = 2.0


def check_schema(database_url: str) -> None:
    """Refuse to start against a schema older than this relay's (it needs every table). A
    newer one is fine: migrations keep what older relays use (rolling upgrades).

    Only the outbox's own revision counts (migrate.current); the application's alembic
    revisions in the same database are never read as the outbox's."""
    at, known = migrate.current(database_url), migrate.revisions()
    needed = known[0]
    if at is None or (at in known and at != needed):
        raise SchemaBehind(
            f"the database schema is at {at or 'nothing'}, this relay needs {needed}: "
            "run `outbox-relay migrate` first"
        )


async def wait_for_schema(database_url: str, seconds: float) -> None:
    """Check the schema, waiting up to `seconds` for it to be migrated (and the database to
    answer) so the relay can start beside a migration that runs late (systemd Wants=, a
    Kubernetes Job), logging one line per wait. After that: SchemaBehind (exit 2), or the
    database error (exit 1) if it never answered."""
    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + seconds
    while True:
        try:
            await asyncio.to_thread(check_schema, database_url)
            return
        except (SchemaBehind, OperationalError) as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            reason = str(err) if isinstance(err, SchemaBehind) else "database unreachable"
            log.warning("waiting_for_schema", reason=reason, seconds_left=round(left))
            await asyncio.sleep(min(SCHEMA_POLL_SECONDS, left))


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the relay and its HTTP server until SIGTERM, SIGINT, SIGHUP or SIGQUIT (or `stop`),
    then drain."""
    key = check(settings)
    otel = _telemetry_module() if settings.otel else None
    await wait_for_schema(settings.database_url, settings.wait_for_schema)
    stop = stop or asyncio.Event()
    _install_signals(stop)
    pool = make_pool(settings.database_url, prepare=settings.database_prepare)
    await pool.open(wait=True, timeout=30)
    store = Store(pool)
    connections = settings.effective_concurrency() + 4
    # One clock (relay/core/clock.py): the database's, corrected by the Date of Stripe's answers.
    clocks = Clocks(timedelta(seconds=settings.clock_margin))
    egress = Egress.from_settings(settings)
    sender = StripeSender(
        key,
        settings.stripe_api_base,
        settings.request_timeout,
        connections,
        client=settings.stripe_client,
        clocks=clocks,
        egress=egress,
    )
    wakeup = Wakeup(settings.database_url, listen=not settings.poll_only)
    relay = Relay(settings, store, sender, wakeup, clocks=clocks)
    secret = settings.stripe_webhook_secret
    app = make_app(
        relay,
        store,
        sender.client,
        secret.get_secret_value() if secret else None,
        settings.http_read_timeout,
    )
    limit = connection_limit(settings.http_max_connections, open_file_budget(), connections)
    try:
        await relay.database.first()  # a read-only database: one line, exit 1
        runner = await serve_http(
            app, settings.http_host, settings.http_port, settings.http_read_timeout, limit
        )
    except (ConfigError, StartupError):
        await sender.close()
        await pool.close()
        raise
    log.info(
        "http_listening",
        host=settings.http_host,
        port=settings.http_port,
        database=redact(settings.database_url),
        stripe_proxy=egress.describe()[0],
        stripe_trust=egress.describe()[1],
    )
    telemetry = otel.start(settings, store, lambda: relay.state.auth_ok) if otel else None
    watchdog = asyncio.create_task(_watchdog(relay, stop))
    systemd.notify("READY=1")
    try:
        await relay.run(stop)
    except DuplicateRelayId as err:
        raise ConfigError(str(err)) from None
    finally:
        systemd.notify("STOPPING=1")
        watchdog.cancel()
        if telemetry is not None:
            await telemetry.stop()
        await runner.cleanup()
        await sender.close()
        await pool.close(timeout=CLOSE_TIMEOUT)


def _telemetry_module() -> Any:
    """OpenTelemetry, imported only here and only when asked for (relay/core/tracing.py)."""
    try:
        from relay.pipeline import telemetry
    except ImportError:
        raise ConfigError(
            "OUTBOX_OTEL=true needs OpenTelemetry: pip install 'outbox-relay[otel]'"
        ) from None
    return telemetry


# Signals that stop the relay: each drains as SIGTERM does (a default action would kill the
# process at once, leaving its rows in flight until their leases expire). SIGHUP has nothing
# to reload (settings are read at start). The user signals mean nothing here: logged only.
DRAIN_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
IGNORED_SIGNALS = ("SIGUSR1", "SIGUSR2")


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for names, action in ((DRAIN_SIGNALS, "drain"), (IGNORED_SIGNALS, "ignored")):
        for sig in (getattr(signal, name) for name in names if hasattr(signal, name)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, _on_signal, sig, action, stop)


def _on_signal(sig: signal.Signals, action: str, stop: asyncio.Event) -> None:
    log.info("signal_received", signal=sig.name, action=action)
    if action == "drain":
        stop.set()


async def _watchdog(relay: Relay, stop: asyncio.Event) -> None:
    """Pet systemd's watchdog while the producer loop keeps turning and the database has not
    been read-only past OUTBOX_READ_ONLY_GRACE (as /healthz)."""
    interval = systemd.watchdog_interval()
    if interval is None:
        return
    while not stop.is_set():
        turning = time.monotonic() - relay.state.last_loop < relay.settings.poll_interval + 60
        if turning and not relay.state.read_only_past(relay.settings.read_only_grace):
            systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
