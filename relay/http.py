"""The relay's HTTP surface: Stripe webhooks, Prometheus metrics, liveness and readiness."""

import time
from typing import Any

import stripe
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay import console, metrics
from relay.store import ConsoleStore, Store
from relay.webhooks import handle_delivery

log = structlog.get_logger("relay.http")
STALL_SECONDS = 60.0  # /healthz fails if the dispatcher loop has not turned for this long


def make_app(
    relay: Any, db: Store, client: stripe.StripeClient, secret: str | None
) -> web.Application:
    """Routes bound to a running relay (its state drives /healthz and /readyz)."""
    refresh = metrics.ScrapeRefresh(
        ConsoleStore(db.pool, relay.settings.relay_stale_after), relay.settings.stripe_api_mode
    )

    async def healthz(_: web.Request) -> web.Response:
        stalled = (
            time.monotonic() - relay.state.last_loop > STALL_SECONDS + relay.settings.poll_interval
        )
        return web.json_response({"ok": not stalled}, status=503 if stalled else 200)

    async def readyz(_: web.Request) -> web.Response:
        checks = {
            "database": await db.ping(),
            "stripe_auth": relay.state.auth_ok,
            "started": relay.state.started,
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
        body = await request.read()
        try:
            result = await handle_delivery(
                client, secret, db, body, request.headers.get("Stripe-Signature")
            )
        except stripe.SignatureVerificationError:
            metrics.WEBHOOKS.labels("bad_signature").inc()
            log.warning("webhook_bad_signature", remote=request.remote)
            return web.json_response({"error": "invalid signature"}, status=400)
        except Exception as err:  # Stripe redelivers on non-2xx: nothing is lost
            metrics.WEBHOOKS.labels("error").inc()
            log.error("webhook_failed", error=str(err))
            return web.json_response({"error": "processing failed"}, status=500)
        metrics.WEBHOOKS.labels("ok").inc()
        return web.json_response(result)

    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics_view),
            web.post("/webhooks/stripe", webhook),
        ]
    )
    console.install(app, relay.settings, db.pool, relay)
    return app
