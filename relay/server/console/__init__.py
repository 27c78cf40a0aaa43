"""The web console: what an on-call engineer needs on one page, served by the relay's HTTP
server under /console. Server-rendered HTML (Jinja2, autoescaped), no script, no external
asset. Read-only unless OUTBOX_CONSOLE_ACTIONS is on; see auth.py for who may act and how
requests are protected against cross-site forgery.
"""

from typing import Any

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from relay.core.config import Settings
from relay.db.store import ConsoleStore
from relay.server.console.auth import Guard
from relay.server.console.views import Console

CONSOLE = web.AppKey("console", Console)  # the installed console (tests reach its brake)


def install(
    app: web.Application, settings: Settings, pool: AsyncConnectionPool, relay: Any
) -> None:
    """Add the console's routes to the relay's app (nothing when OUTBOX_CONSOLE=false)."""
    if not settings.console:
        return
    token = settings.console_token.get_secret_value() if settings.console_token else None
    console = Console(settings, ConsoleStore(pool, settings.relay_stale_after), Guard(token), relay)
    app[CONSOLE] = console
    app.add_routes(console.routes())
