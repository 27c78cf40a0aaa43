"""The relay's HTTP surface: Stripe webhooks, Prometheus metrics, liveness and readiness.

The server faces the network, so slow or hostile clients must not take the probes down with
them (Kubernetes restarts a pod whose /healthz stops answering):
- a client has `read_timeout` seconds to send a request's headers (aiohttp's idle timeout, which
  also covers a connection that never completes its first request) and as long for a body;
- open connections are capped below the process's file limit; at the cap, the oldest
  connection not in a request is closed to admit the new one (else the oldest of all), so a
  probe always gets in;
- a client that drops its connection costs one log line, not a traceback.
"""

import asyncio
import resource
import time

import stripe
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.core import metrics
from relay.core.errors import bind_error
from relay.db.pool import make_reader_pool
from relay.db.store import ConsoleStore, Store
from relay.server import console
from relay.server.relay_view import RelayView
from relay.stripe.webhooks import BadDelivery, handle_delivery

log = structlog.get_logger("relay.http")
# After the relay's own shutdown (OUTBOX_SHUTDOWN_GRACE): seconds each for closing the HTTP server
# and the database pool, so a stop ends below systemd's TimeoutStopSec=30 with the default grace.
CLOSE_TIMEOUT = 2.0
STALL_SECONDS = 60.0  # /healthz fails if the producer loop has not turned for this long
FILES_KEPT = 64  # descriptors left for the pool, LISTEN, logs and the interpreter itself
BUSY = web.AppKey("busy", set)  # connections inside a request: not evicted first


def make_app(
    relay: RelayView,
    db: Store,
    client: stripe.StripeClient,
    secret: str | None,
    read_timeout: float = 10.0,
) -> web.Application:
    """Routes bound to a running relay (its state drives /healthz and /readyz). The console
    and /metrics read through their own pool (make_reader_pool), opened with the app."""
    reader = make_reader_pool(relay.settings.database_url, prepare=relay.settings.database_prepare)
    refresh = metrics.ScrapeRefresh(
        ConsoleStore(reader, relay.settings.relay_stale_after), relay.settings.stripe_api_mode
    )

    async def healthz(_: web.Request) -> web.Response:
        now = time.monotonic()
        stalled = now - relay.state.last_loop > STALL_SECONDS + relay.settings.poll_interval
        # A relay pointed at a replica is alive but useless: past the grace, a restart may
        # reach the primary (and a read-only database stops it at start, exit 1).
        read_only = relay.state.read_only_past(relay.settings.read_only_grace)
        ok = not (stalled or read_only)
        return web.json_response(
            {"ok": ok, "stalled": stalled, "database_read_only": read_only},
            status=200 if ok else 503,
        )

    async def readyz(_: web.Request) -> web.Response:
        checks = {
            "database": await db.ping(),
            "stripe_auth": relay.state.auth_ok,
            # Stripe answered once (relay/stripe/reachability.py): later outages keep it ready.
            "stripe_reached": relay.reachability.reached,
            "started": relay.state.started,
            "database_writable": relay.state.read_only_since is None,
        }
        ok = all(checks.values())
        return web.json_response({"ok": ok, **checks}, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        await refresh(relay.state.auth_ok)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def webhook(request: web.Request) -> web.Response:
        if not secret:
            metrics.WEBHOOKS.labels("not_configured").inc()
            return web.json_response({"error": "STRIPE_WEBHOOK_SECRET is not set"}, status=503)
        try:
            async with asyncio.timeout(read_timeout):
                body = await request.read()
        except TimeoutError:
            metrics.WEBHOOKS.labels("slow_body").inc()
            log.warning("webhook_body_too_slow", remote=request.remote, seconds=read_timeout)
            return web.json_response({"error": "request body too slow"}, status=408)
        try:
            result = await handle_delivery(
                client, secret, db, body, request.headers.get("Stripe-Signature")
            )
            catalogue = getattr(relay, "meters", None)
            if catalogue is not None and result.get("meter_problem"):
                catalogue.request(result["account"])
        except BadDelivery as bad:  # signed or not, nothing we can use: the sender's problem
            metrics.WEBHOOKS.labels(bad.reason).inc()
            log.warning(
                "webhook_refused", reason=bad.reason, detail=str(bad), remote=request.remote
            )
            return web.json_response({"error": str(bad)}, status=400)
        except Exception as err:  # Stripe redelivers on non-2xx: nothing is lost
            metrics.WEBHOOKS.labels("error").inc()
            log.error("webhook_failed", error=str(err), error_type=type(err).__name__)
            return web.json_response({"error": "processing failed"}, status=500)
        metrics.WEBHOOKS.labels("ok").inc()
        return web.json_response(result)

    app = web.Application(middlewares=[_track_requests])
    app[BUSY] = set()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_view),
            web.post("/webhooks/stripe", webhook),
        ]
    )
    console.install(app, relay.settings, reader, relay)

    async def open_reader(_: web.Application) -> None:
        await reader.open(wait=False)

    async def close_reader(_: web.Application) -> None:
        await reader.close()

    app.on_startup.append(open_reader)
    app.on_cleanup.append(close_reader)
    return app


@web.middleware
async def _track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks the connection busy while its request runs (eviction spares it), and turns a
    client that went away mid-request into one log line instead of aiohttp's traceback."""
    busy = request.app[BUSY]
    busy.add(request.protocol)
    try:
        return await handler(request)
    except ConnectionResetError:
        metrics.HTTP_DISCONNECTED.inc()
        log.info("http_client_disconnected", path=request.path, remote=request.remote)
        return web.Response(status=499)  # never sent: the connection is gone
    finally:
        busy.discard(request.protocol)


class _GuardedSite(web.TCPSite):
    """A TCP site whose connections are capped (see the module docstring)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limit: int) -> None:
        super().__init__(runner, host, port)
        self._app_runner = runner  # the base class keeps it as a BaseRunner, without .app
        self._limit = limit

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server, busy = self._runner.server, self._app_runner.app[BUSY]
        if server is None:
            raise RuntimeError("the runner has no server: setup() was not awaited")

        def admit() -> RequestHandler:
            open_now = [  # oldest first; those already closing free their descriptor anyway
                c for c in server.connections if c.transport and not c.transport.is_closing()
            ]
            if len(open_now) >= self._limit:
                idle = [c for c in open_now if c not in busy]
                (idle or open_now)[0].force_close()
                metrics.HTTP_EVICTED.inc()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            admit, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def open_file_budget() -> int:
    """Raise the soft open-file limit to the hard one (systemd's soft default is 1,024) and
    return it: each connection, Stripe's included, holds a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
    if soft != resource.RLIM_INFINITY and wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # keep the soft limit; the connection cap below follows it
    return soft if soft != resource.RLIM_INFINITY else wanted


def connection_limit(configured: int, files: int, stripe_connections: int) -> int:
    """At most `configured` HTTP connections, and few enough that the process keeps
    descriptors for its Stripe connections, its database and itself."""
    return max(8, min(configured, files - stripe_connections - FILES_KEPT))


async def serve_http(
    app: web.Application, host: str, port: int, read_timeout: float, limit: int
) -> web.AppRunner:
    """Start listening; a port in use or an address not of this machine is one clear error."""
    # Bounded exit: a webhook cut short is redelivered by Stripe (it saw no 2xx).
    runner = web.AppRunner(
        app, access_log=None, keepalive_timeout=read_timeout, shutdown_timeout=CLOSE_TIMEOUT
    )
    await runner.setup()
    try:
        await _GuardedSite(runner, host, port, limit).start()
    except OSError as err:
        await runner.cleanup()
        raise bind_error(host, port, err) from None
    console.announce(app)
    return runner
