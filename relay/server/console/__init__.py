"""The web console: what an on-call engineer needs on one page, served by the relay's HTTP
server under /console. Server-rendered HTML (Jinja2, autoescaped), no script, no external
asset. Read-only unless OUTBOX_CONSOLE_ACTIONS is on; see auth.py for who may act and how
requests are protected against cross-site forgery.
"""

import ipaddress

import structlog
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from relay.core.config import Settings
from relay.db.store import ConsoleStore
from relay.server.console.auth import Guard
from relay.server.console.views import Console
from relay.server.relay_view import RelayView

log = structlog.get_logger("relay.console")
CONSOLE = web.AppKey("console", Console)  # the installed console (tests reach its brake)
CONSOLE_OFF = web.AppKey("console_off", str)  # why the console was not installed


def announce(app: web.Application) -> None:
    """One loud line when the console is off for want of a token (after the server listens)."""
    reason = app.get(CONSOLE_OFF)
    if reason:
        log.error(
            "console_disabled",
            reason=reason,
            fix="set OUTBOX_CONSOLE_TOKEN_FILE (or OUTBOX_CONSOLE_TOKEN) to enable the console, "
            "or OUTBOX_CONSOLE=false to silence this",
        )


def is_loopback(host: str) -> bool:
    """Only this machine can connect to `host` (0.0.0.0 and `::` mean every interface)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve to anything


def install(
    app: web.Application, settings: Settings, pool: AsyncConnectionPool, relay: RelayView
) -> None:
    """Add the console's routes to the relay's app (nothing when OUTBOX_CONSOLE=false)."""
    if not settings.console:
        return
    token = settings.console_token.get_secret_value() if settings.console_token else None
    if token is None and not is_loopback(settings.http_host):
        # Customer ids and metadata must not be one request away for every neighbour. Said once
        # the server listens (announce): a start that fails says only why it failed.
        app[CONSOLE_OFF] = (
            f"OUTBOX_HTTP_HOST={settings.http_host} is reachable from other machines and no "
            "console token is set"
        )
        return
    console = Console(settings, ConsoleStore(pool, settings.relay_stale_after), Guard(token), relay)
    app[CONSOLE] = console
    app.add_routes(console.routes())
