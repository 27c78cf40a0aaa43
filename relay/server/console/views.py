"""The console's pages and actions. Handlers only gather data and render; the rules live in
the store's SQL, the auth guard and (for actions) the operator commands of
relay/db/operations.py."""

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup

import outbox
from relay import __version__
from relay.core import metrics
from relay.core.config import Settings, host_names, ip_networks
from relay.core.visible import visible
from relay.db import operations as ops
from relay.db.store import ConsoleStore
from relay.server.console.auth import (
    COOKIE,
    SESSION_SECONDS,
    Guard,
    Viewer,
    set_session_cookie,
    signed_out,
)
from relay.server.console.brake import SignInBrake
from relay.server.console.proxy import Proxies, host_name
from relay.server.console.shared import ClientLimit, SharedReading
from relay.server.relay_view import RelayView

log = structlog.get_logger("relay.console")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOP_CUSTOMERS = 10

# What an action did, shown after its redirect; only these fixed texts are ever shown.
NOTICES = {
    "retried": "Requeued: the relay sends it again with a fresh idempotency key.",
    "retry_refused": "Not retried: rejected, or first sent before the safe dedup window "
    "(use `outbox-relay retry --force` after checking Stripe).",
    "retry_nothing": "Nothing to retry: the row is not failed.",
    "cancelled": "Cancelled: nothing had reached Stripe.",
    "cancel_requested": "Cancel requested: the relay sends a meter event adjustment.",
    "not_found": "No row with this identifier.",
    "refused": "Refused: sign in, and act from the console's own page.",
}


def _shown(value: Any) -> Any:
    """Every plain string a template prints shows controls and bidi characters as escapes
    (autoescaping then makes it HTML): a U+202E in an identifier or a Stripe message must not
    reverse what the operator reads. Markup built by this module is left alone."""
    return visible(value) if type(value) is str else value


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("relay.server.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    finalize=_shown,
)


def _age(value: timedelta | None) -> str:
    """8.2 s, 3 min 05 s, 2 h 10 min, 3 d 4 h: the unit an operator reads at a glance."""
    if value is None:
        return "–"
    seconds = value.total_seconds()
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 60:
        text = f"{seconds:.1f} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    else:
        text = f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
    return sign + text


def _when(value: datetime | None) -> Markup:
    """UTC to the second, the millisecond in the tooltip (the database's clock, not the
    browser's: no script converts it)."""
    if value is None:
        return Markup("–")
    utc = value.astimezone(UTC)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        utc.isoformat(), utc.strftime("%H:%M:%S.%f")[:-3] + "Z", utc.strftime("%Y-%m-%d %H:%M:%SZ")
    )


def _number(value: int | float | Decimal | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}"


_env.filters.update(age=_age, when=_when, number=_number)


class Console:
    """Routes under /console, bound to one relay's settings, store and state."""

    def __init__(
        self, settings: Settings, store: ConsoleStore, guard: Guard, relay: RelayView
    ) -> None:
        self.settings = settings
        self.store = store
        self.guard = guard
        self.relay = relay
        self.brake = SignInBrake()
        self.proxies = Proxies(ip_networks(settings.console_trusted_proxies))
        self.hosts = host_names(settings.console_allowed_hosts)
        self.limit = ClientLimit()
        self.overview_data: SharedReading[dict[str, Any]] = SharedReading()

    def routes(self) -> list[web.RouteDef]:
        pages = {
            "/console": self.overview,
            "/console/failures": self.failures,
            "/console/row": self.row,
            "/console/login": self.login_form,
        }
        actions = {
            "/console/login": self.login,
            "/console/logout": self.logout,
            "/console/row/retry": self.retry,
            "/console/row/cancel": self.cancel,
        }
        return [web.get(path, self._host_checked(h)) for path, h in pages.items()] + [
            web.post(path, self._host_checked(h)) for path, h in actions.items()
        ]

    def _host_checked(self, handler: Handler) -> Handler:
        """Refuse a Host header the console does not answer to (OUTBOX_CONSOLE_ALLOWED_HOSTS):
        a page on attacker.example that rebinds its DNS name to 127.0.0.1 (or to the end of
        a port-forward) reaches us with its own name, which is not in the list."""

        async def checked(request: web.Request) -> web.StreamResponse:
            if host_name(request.host) not in self.hosts:
                log.warning("console_host_refused", remote=request.remote)
                raise web.HTTPMisdirectedRequest(
                    text="this host name is not in OUTBOX_CONSOLE_ALLOWED_HOSTS"
                )
            client = self._client(request)
            if not self.limit.enter(client):
                raise web.HTTPTooManyRequests(
                    text="too many console requests at once from this address",
                    headers={"Retry-After": "1"},
                )
            try:
                return await handler(request)
            finally:
                self.limit.leave(client)

        return checked

    # -- rendering -----------------------------------------------------------------------

    def _page(self, template: str, viewer: Viewer, status: int = 200, **data: Any) -> web.Response:
        html = _env.get_template(template).render(
            viewer=viewer,
            protected=self.guard.protected,
            actions=self.settings.console_actions and viewer.signed_in,
            version=__version__,
            relay_id=self.settings.relay_id,
            **data,
        )
        response = web.Response(text=html, content_type="text/html", status=status)
        # No framing by other sites, no script at all, nothing fetched from elsewhere.
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: under no-referrer browsers send `Origin: null` with
        # the console's own forms, which may_act refuses.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _viewer(self, request: web.Request) -> Viewer:
        """Who is asking; redirected to the sign-in page if they may not see the console."""
        viewer = await self._who(request)
        if not viewer.allowed:
            raise web.HTTPSeeOther("/console/login")
        return viewer

    async def _who(self, request: web.Request) -> Viewer:
        """The requester, bearer tokens braked and counted, cookie sessions looked up."""
        client = self._client(request)
        if self.guard.protected and "Authorization" in request.headers:
            self._check_brake(request, client)
        viewer = self.guard.viewer(request)
        if viewer.bad_bearer:
            self._wrong_token(request, client)
        elif viewer.by_bearer:
            self.brake.succeeded(client)
        if viewer.session_id and not await self.store.session_alive(viewer.session_id):
            return signed_out(viewer)
        return viewer

    def _client(self, request: web.Request) -> str:
        return self.proxies.client(request)

    def _may_act(self, request: web.Request, viewer: Viewer, form_csrf: str | None) -> bool:
        return self.guard.may_act(request, viewer, form_csrf, self.proxies.scheme(request))

    def _check_brake(self, request: web.Request, client: str) -> None:
        """429 without looking at the token while this client is braked (brake.py)."""
        wait = self.brake.wait(client)
        if wait > 0:
            metrics.CONSOLE_SIGNIN_BRAKED.inc()
            log.warning("console_login_braked", remote=client, retry_after=math.ceil(wait))
            raise web.HTTPTooManyRequests(
                text=f"too many wrong tokens from this address: try again in {math.ceil(wait)} s",
                headers={"Retry-After": str(math.ceil(wait))},
            )

    def _wrong_token(self, request: web.Request, client: str) -> None:
        """Count and log a wrong token: who and how often, never what was tried."""
        failures, wait = self.brake.failed(client)
        metrics.CONSOLE_SIGNIN_FAILURES.inc()
        log.warning(
            "console_login_refused",
            remote=client,
            path=request.path,
            failures=failures,
            braked_for=wait,
        )

    # -- pages ---------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request)
        data = await self.overview_data.get(self._read_overview)
        return self._page("overview.html", viewer, auth_ok=self.relay.state.auth_ok, **data)

    async def _read_overview(self) -> dict[str, Any]:
        """The overview's statements, one after the other on the console's pool (shared by
        every viewer for a few seconds: shared.py)."""
        relays = await self.store.live_relays()
        return {
            "counts": await self.store.state_counts(),
            "lag": await self.store.lag(),
            "hour": await self.store.last_hour(),
            "attempt_errors": await self.store.attempt_errors(),
            "backing_off": await self.store.backing_off(),
            "held": await self.store.held_for_meter(),
            "failures": await self.store.failures_by_code(),
            "customers": await self.store.customer_backlog(TOP_CUSTOMERS),
            "top_n": TOP_CUSTOMERS,
            "relays": relays,
            "share": self._share(len(relays)),
            "drift": await self.store.latest_drift_report(),
            "confirmation": await self.store.confirmation(),
        }

    def _share(self, live: int) -> dict[str, Any]:
        """Each live relay's share of the account's rate limit (equal shares, see share.py)."""
        rate = self.settings.effective_rate_limit()
        shared = self.settings.rate_limit_scope == "account"
        return {"account": rate, "shared": shared, "each": rate / live if shared and live else rate}

    async def failures(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request)
        code = request.query.get("code", "")
        rows = await self.store.failed_rows(code)
        return self._page("failures.html", viewer, code=code, rows=rows, limit=200)

    async def row(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request)
        identifier = request.query.get("identifier", "").strip()
        found = await self.store.row(identifier) if identifier else None
        attempts = await self.store.attempts(found["id"]) if found else []
        confirmation = await self.store.row_confirmation(identifier) if found else None
        return self._page(
            "row.html",
            viewer,
            status=200 if found or not identifier else 404,
            identifier=identifier,
            row=found,
            attempts=attempts,
            confirmation=confirmation,
            notice=NOTICES.get(request.query.get("done", "")),
        )

    # -- sign-in -------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        return self._page("login.html", await self._who(request), failed=False)

    async def login(self, request: web.Request) -> web.Response:
        client = self._client(request)
        self._check_brake(request, client)
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not self.guard.token_matches(token):
            self._wrong_token(request, client)
            return self._page("login.html", Viewer(False, False), status=401, failed=True)
        self.brake.succeeded(client)
        cookie, session = self.guard.new_session()
        await self.store.open_session(session, SESSION_SECONDS)
        response = web.HTTPSeeOther("/console")
        secure = self.proxies.scheme(request) == "https"
        set_session_cookie(response, cookie, secure=secure)
        log.info("console_login", remote=client)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        viewer = await self._who(request)
        form = await request.post()
        if not self._may_act(request, viewer, _text(form.get("csrf"))):
            raise web.HTTPForbidden(text=NOTICES["refused"])
        if viewer.session_id:  # ends the session everywhere, not only in this browser
            await self.store.close_session(viewer.session_id)
        log.info("console_logout", remote=self._client(request))
        response = web.HTTPSeeOther("/console/login")
        response.del_cookie(COOKIE, path="/console")
        raise response

    # -- actions -------------------------------------------------------------------------

    async def _action(self, request: web.Request) -> str:
        """The identifier of an allowed action's row; refuses anything else."""
        if not self.settings.console_actions:
            raise web.HTTPForbidden(text="console actions are off (OUTBOX_CONSOLE_ACTIONS)")
        form = await request.post()
        viewer = await self._who(request)
        if not self._may_act(request, viewer, _text(form.get("csrf"))):
            log.warning("console_action_refused", path=request.path, remote=request.remote)
            raise web.HTTPForbidden(text=NOTICES["refused"])
        identifier = _text(form.get("identifier"))
        if not identifier:
            raise web.HTTPBadRequest(text="identifier missing")
        return identifier

    async def retry(self, request: web.Request) -> web.Response:
        identifier = await self._action(request)
        requeued, refused = await asyncio.to_thread(self._retry, identifier)
        done = "retried" if requeued else "retry_refused" if refused else "retry_nothing"
        log.info("console_retry", identifier=identifier, result=done, remote=request.remote)
        raise web.HTTPSeeOther(_row_url(identifier, done))

    def _retry(self, identifier: str) -> tuple[list[str], list[dict[str, Any]]]:
        """The operator's `retry` (relay/db/operations.py): the same safety rules, never forced."""
        with ops.connect(self.settings.database_url) as conn:
            return ops.retry(
                conn,
                identifier=identifier,
                code=None,
                force=False,
                window_hours=self.settings.dedup_window_hours,
            )

    async def cancel(self, request: web.Request) -> web.Response:
        identifier = await self._action(request)
        try:
            async with self.store.pool.connection() as conn:
                result = await outbox.cancel_usage(conn, identifier=identifier)
        except outbox.UnknownIdentifier:
            raise web.HTTPSeeOther(_row_url(identifier, "not_found")) from None
        done = "cancelled" if result.state == "cancelled" else "cancel_requested"
        log.info("console_cancel", identifier=identifier, result=done, remote=request.remote)
        raise web.HTTPSeeOther(_row_url(identifier, done))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _row_url(identifier: str, done: str) -> str:
    return "/console/row?" + urlencode({"identifier": identifier, "done": done})
