"""The console's pages and actions. Handlers only gather data and render; the rules live in
the store's SQL, the auth guard and (for actions) the operator commands of
relay/db/operations.py."""

import asyncio
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup, escape

import outbox
from relay import __version__
from relay.core import metrics
from relay.core.config import Settings, host_names, ip_networks
from relay.core.visible import visible
from relay.db import operations as ops
from relay.db import outage
from relay.db.queries import RetryHow
from relay.db.store import HOLD_CODES, LOOK_KINDS, ConsoleStore, Look, LookPage
from relay.server.console import chart
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
from relay.server.console.shared import (
    Busy,
    ClientLimit,
    Pacer,
    Page,
    SharedPages,
    SharedReading,
)
from relay.server.relay_view import RelayView

log = structlog.get_logger("relay.console")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOP_CUSTOMERS = 10
PAGE_SIZE = 50  # rows per page of the filtered list
BULK_MAX = 1000  # rows one bulk action takes (the oldest of the set; repeat for the rest)
BULK_SCAN = 5 * BULK_MAX  # index entries per state a bulk action reads at most
REFRESH_SECONDS = 15  # auto-refresh of the overview and the list, unless paused
CHART_MINUTES = 180
ATTEMPTS_SHOWN = 500  # a row's first calls shown on its page ("500+" calls when there are more)

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
# What a bulk action did: fixed texts with the counts it returned.
BULK_NOTICES = {
    "retry": "Requeued {done:,} row(s); {refused:,} refused (rejected, or first sent before the "
    "safe dedup window: outbox-relay retry --force after checking Stripe); {skipped:,} not "
    "failed, left alone.",
    "cancel": "Cancelled {done:,} row(s) at once; cancellation requested for {refused:,} that "
    "Stripe may have counted (the relay sends adjustments).",
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
        self.pages = SharedPages()
        self.pacer = Pacer()
        # Shared pages are rendered with this in place of the viewer's CSRF token, put in per
        # response; random, so no text from a row can contain it.
        self._csrf_mark = secrets.token_hex(16)

    def routes(self) -> list[web.RouteDef]:
        pages = {
            "/console": self.overview,
            "/console/failures": self.failures,
            "/console/bulk": self.bulk_confirm,
            "/console/row": self.row,
            "/console/login": self.login_form,
        }
        actions = {
            "/console/login": self.login,
            "/console/logout": self.logout,
            "/console/row/retry": self.retry,
            "/console/row/cancel": self.cancel,
            "/console/bulk": self.bulk,
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
                await self._paced()
                return await handler(request)
            finally:
                self.limit.leave(client)

        return checked

    async def _paced(self) -> None:
        """Wait this request's turn among all clients' (shared.Pacer); 503 if it is too far."""
        wait = self.pacer.turn()
        if wait is None:
            metrics.CONSOLE_BUSY.labels("paced").inc()
            raise web.HTTPServiceUnavailable(
                text="the console is busy: try again in a moment",
                headers={"Retry-After": str(max(1, math.ceil(self.pacer.wait)))},
            )
        if wait > 0:
            await asyncio.sleep(wait)

    # -- rendering -----------------------------------------------------------------------

    def _page(self, template: str, viewer: Viewer, status: int = 200, **data: Any) -> web.Response:
        """A page rendered for this request alone (the sign-in form: no data, nothing read)."""
        return self._respond(
            Page(_env.get_template(template).render(self._context(viewer, data)), status), viewer
        )

    def _context(self, viewer: Viewer, data: dict[str, Any]) -> dict[str, Any]:
        data.setdefault("refresh", None)
        return {
            "viewer": viewer,
            "protected": self.guard.protected,
            "actions": self.settings.console_actions and viewer.signed_in,
            "version": __version__,
            "relay_id": self.settings.relay_id,
            **data,
        }

    async def _render(self, template: str, viewer: Viewer, status: int = 200, **data: Any) -> Page:
        """A page for every viewer of this kind, rendered in a thread: the relay's event loop
        sends rows meanwhile (the CSRF token is a mark, replaced per response by _respond)."""
        context = self._context(replace(viewer, csrf=self._csrf_mark), data)
        html = await asyncio.to_thread(_env.get_template(template).render, context)
        return Page(html, status)

    async def _shared(
        self, request: web.Request, viewer: Viewer, name: str, build: Callable[[], Awaitable[Page]]
    ) -> web.Response:
        """The page of this URL for this kind of viewer, built at most once per few seconds
        for all its viewers, a few pages at a time (shared.py); 503 when none can start."""
        key = (
            request.path,
            tuple(sorted(request.query.items())),
            viewer.signed_in,
            viewer.by_bearer,
        )
        try:
            page, built = await self.pages.get(key, build)
        except Busy:
            metrics.CONSOLE_BUSY.labels("building").inc()
            raise web.HTTPServiceUnavailable(
                text="the console is busy: try again in a moment", headers={"Retry-After": "1"}
            ) from None
        metrics.CONSOLE_PAGES.labels(name, "built" if built else "shared").inc()
        return self._respond(page, viewer)

    def _respond(self, page: Page, viewer: Viewer) -> web.Response:
        html = page.body.replace(self._csrf_mark, str(escape(viewer.csrf)))
        response = web.Response(text=html, content_type="text/html", status=page.status)
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
        refresh = _refresh(request)

        async def build() -> Page:
            data = await self.overview_data.get(self._read_overview)
            return await self._render(
                "overview.html", viewer, auth_ok=self.relay.state.auth_ok, refresh=refresh, **data
            )

        return await self._shared(request, viewer, "overview", build)

    async def _read_overview(self) -> dict[str, Any]:
        """The overview's statements, one after the other on the console's pool (shared by
        every viewer for a few seconds: shared.py)."""
        relays = await self.store.live_relays()
        counts, unsent = await self.store.counts_and_unsent()
        return {
            "counts": counts,
            "lag": await self.store.lag(),
            "hour": await self.store.last_hour(),
            "attempt_errors": await self.store.attempt_errors(),
            "unsent": unsent,
            "held": await self.store.held_for_meter(),
            "failures": await self.store.failures_by_code(),
            "customers": await self.store.customer_backlog(TOP_CUSTOMERS),
            "top_n": TOP_CUSTOMERS,
            "relays": relays,
            "share": self._share(len(relays)),
            "drift": await self.store.latest_drift_report(),
            "confirmation": await self.store.confirmation(),
            "chart": await self._chart(),
            **await self._outage(),
        }

    async def _chart(self) -> chart.Chart:
        minutes = await self.store.calls_per_minute(CHART_MINUTES * 60)
        return chart.draw(minutes, datetime.now(UTC), CHART_MINUTES)

    async def _outage(self) -> dict[str, Any]:
        """The outage breaker from the database (every replica's console shows the same) and
        its banner line while Stripe is out."""
        shared = outage.report(await self.store.outage_state())
        return {"outage": shared, "outage_line": outage.line(shared)}

    def _share(self, live: int) -> dict[str, Any]:
        """Each live relay's share of the account's rate limit (equal shares, see share.py)."""
        rate = self.settings.effective_rate_limit()
        shared = self.settings.rate_limit_scope == "account"
        return {"account": rate, "shared": shared, "each": rate / live if shared and live else rate}

    async def failures(self, request: web.Request) -> web.Response:
        """Rows that need a look, filtered, a page at a time (keyset: ?after=<id>)."""
        viewer = await self._viewer(request)
        look = _look(request)
        after = _int(request.query.get("after", "0"))
        done = request.query.get("done", "")
        notice = _bulk_notice(done, request.query) if done in BULK_NOTICES else None
        refresh = _refresh(request)

        async def build() -> Page:
            page = await self.store.look(look, after=after, limit=PAGE_SIZE)
            return await self._failures_page(viewer, look, after, page, notice, refresh)

        return await self._shared(request, viewer, "failures", build)

    async def _failures_page(
        self,
        viewer: Viewer,
        look: Look,
        after: int,
        page: LookPage,
        notice: str | None,
        refresh: dict[str, Any],
    ) -> Page:
        paused = None if refresh["seconds"] else "off"  # a paused list stays paused
        query = urlencode(_filters(look))
        return await self._render(
            "failures.html",
            viewer,
            look=look,
            filters=_filters(look),
            kinds=LOOK_KINDS,
            page=page,
            after=after,
            first_url=_list_url(look, refresh=paused),
            next_url=_list_url(look, after=page.next_after, refresh=paused)
            if page.next_after
            else None,
            bulk_urls={a: f"/console/bulk?action={a}&{query}" for a in BULK_NOTICES},
            bulk_max=BULK_MAX,
            notice=notice,
            refresh=refresh,
        )

    async def bulk_confirm(self, request: web.Request) -> web.Response:
        """What a bulk action would take, counted, and the button that does it (POST)."""
        viewer = await self._viewer(request)
        action = request.query.get("action", "")
        if action not in BULK_NOTICES:
            raise web.HTTPBadRequest(text="action must be retry or cancel")
        look = _look(request)

        async def build() -> Page:
            return await self._bulk_page(viewer, action, look)

        return await self._shared(request, viewer, "bulk", build)

    async def _bulk_page(self, viewer: Viewer, action: str, look: Look) -> Page:
        page = await self._bulk_set(look, upto=None)
        by_state: dict[str, int] = {}
        for r in page.rows:
            kind = "held" if r["held"] else "retrying" if r["state"] == "pending" else r["state"]
            by_state[kind] = by_state.get(kind, 0) + 1
        preview = (
            await asyncio.to_thread(self._retry_preview, page.rows) if action == "retry" else None
        )
        return await self._render(
            "bulk.html",
            viewer,
            action=action,
            look=look,
            filters=_filters(look),
            count=len(page.rows),
            by_state=by_state,
            preview=preview,
            more=page.next_after is not None,
            upto=page.rows[-1]["id"] if page.rows else 0,
            cap=BULK_MAX,
            list_url=_list_url(look),
        )

    async def _bulk_set(self, look: Look, upto: int | None) -> LookPage:
        """The oldest BULK_MAX rows of the filtered set (up to id `upto`, the confirmed set)."""
        return await self.store.look(look, upto=upto, limit=BULK_MAX, scan=BULK_SCAN)

    def _retry_preview(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        """How many of these rows the CLI's `retry` would requeue and refuse (changes nothing)."""
        counts = {"requeued": 0, "refused": 0}
        with ops.connect(self.settings.database_url) as conn:
            for r in rows:
                if r["state"] not in ("failed", "rejected"):
                    continue
                for c in ops.retry_preview(conn, **self._retry_how(r["identifier"])):
                    counts["refused" if c.refused else "requeued"] += 1
        return counts

    def _retry_how(self, identifier: str) -> RetryHow:
        """The operator's `retry IDENTIFIER`: the same safety rules, never forced."""
        return {
            "identifier": identifier,
            "code": None,
            "force": False,
            "window_hours": self.settings.dedup_window_hours,
        }

    async def row(self, request: web.Request) -> web.Response:
        viewer = await self._viewer(request)
        identifier = request.query.get("identifier", "").strip()
        notice = NOTICES.get(request.query.get("done", ""))

        async def build() -> Page:
            return await self._row_page(viewer, identifier, notice)

        return await self._shared(request, viewer, "row", build)

    async def _row_page(self, viewer: Viewer, identifier: str, notice: str | None) -> Page:
        found = await self.store.row(identifier) if identifier else None
        attempts = await self.store.attempts(found["id"], ATTEMPTS_SHOWN) if found else []
        confirmation = await self.store.row_confirmation(identifier) if found else None
        return await self._render(
            "row.html",
            viewer,
            status=200 if found or not identifier else 404,
            identifier=identifier,
            row=found,
            attempts=attempts,
            confirmation=confirmation,
            calls=f"{len(attempts)}+" if len(attempts) >= ATTEMPTS_SHOWN else len(attempts),
            held=_held(found),
            notice=notice,
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

    async def _acting(self, request: web.Request) -> Any:
        """The form of an allowed action (signed in, same origin, CSRF); refuses anything else."""
        if not self.settings.console_actions:
            raise web.HTTPForbidden(text="console actions are off (OUTBOX_CONSOLE_ACTIONS)")
        form = await request.post()
        viewer = await self._who(request)
        if not self._may_act(request, viewer, _text(form.get("csrf"))):
            log.warning("console_action_refused", path=request.path, remote=request.remote)
            raise web.HTTPForbidden(text=NOTICES["refused"])
        return form

    async def _action(self, request: web.Request) -> str:
        """The identifier of an allowed action's row; refuses anything else."""
        identifier = _text((await self._acting(request)).get("identifier"))
        if not identifier:
            raise web.HTTPBadRequest(text="identifier missing")
        return identifier

    async def retry(self, request: web.Request) -> web.Response:
        identifier = await self._action(request)
        requeued, refused = await asyncio.to_thread(self._retry, identifier)
        self.pages.forget()
        done = "retried" if requeued else "retry_refused" if refused else "retry_nothing"
        log.info("console_retry", identifier=identifier, result=done, remote=request.remote)
        raise web.HTTPSeeOther(_row_url(identifier, done))

    def _retry(self, identifier: str) -> tuple[list[str], list[dict[str, Any]]]:
        """The operator's `retry` (relay/db/operations.py): the same safety rules, never forced."""
        with ops.connect(self.settings.database_url) as conn:
            return ops.retry(conn, **self._retry_how(identifier))

    async def cancel(self, request: web.Request) -> web.Response:
        identifier = await self._action(request)
        try:
            async with self.store.pool.connection() as conn:
                result = await outbox.cancel_usage(conn, identifier=identifier)
        except outbox.UnknownIdentifier:
            raise web.HTTPSeeOther(_row_url(identifier, "not_found")) from None
        self.pages.forget()
        done = "cancelled" if result.state == "cancelled" else "cancel_requested"
        log.info("console_cancel", identifier=identifier, result=done, remote=request.remote)
        raise web.HTTPSeeOther(_row_url(identifier, done))

    async def bulk(self, request: web.Request) -> web.Response:
        """Retry or cancel the confirmed set: the rows of the filters up to the id the
        confirmation showed, BULK_MAX at most, each by the CLI's own rules."""
        form = await self._acting(request)
        action = _text(form.get("action"))
        if action not in BULK_NOTICES:
            raise web.HTTPBadRequest(text="action must be retry or cancel")
        look = _look_from(form)
        page = await self._bulk_set(look, upto=_int(_text(form.get("upto")) or "0"))
        identifiers = [r["identifier"] for r in page.rows]
        act = self._bulk_retry if action == "retry" else self._bulk_cancel
        done, refused, skipped = await asyncio.to_thread(act, identifiers)
        self.pages.forget()
        log.info(
            "console_bulk", action=action, rows=len(identifiers), done=done, remote=request.remote
        )
        counts = {"done": action, "n": done, "refused": refused, "skipped": skipped}
        raise web.HTTPSeeOther(_list_url(look, **counts))

    def _bulk_retry(self, identifiers: list[str]) -> tuple[int, int, int]:
        """(requeued, refused, not failed or rejected): `retry IDENTIFIER` for each."""
        done = refused = skipped = 0
        with ops.connect(self.settings.database_url) as conn:
            for identifier in identifiers:
                requeued, refusals = ops.retry(conn, **self._retry_how(identifier))
                done, refused = done + len(requeued), refused + len(refusals)
                skipped += not requeued and not refusals
        return done, refused, skipped

    def _bulk_cancel(self, identifiers: list[str]) -> tuple[int, int, int]:
        """(cancelled at once, adjustment requested, 0): `cancel IDENTIFIER` for each
        (outbox.cancel_usage, idempotent for a row whose cancel is already under way)."""
        done = 0
        with ops.connect(self.settings.database_url) as conn:
            for identifier in identifiers:
                done += ops.cancel(conn, identifier).state == "cancelled"
        return done, len(identifiers) - done, 0


def _held(row: dict[str, Any] | None) -> bool:
    """A pending row the relay holds without calling Stripe (a refused key or account, or
    its meter): it waits, it is not retrying."""
    return row is not None and row["state"] == "pending" and row["last_error_code"] in HOLD_CODES


def _look(request: web.Request) -> Look:
    return _look_from(request.query)


def _look_from(values: Any) -> Look:
    """The filters of a query string or form: empty means "any"; code `(none)` means rows
    without a code; an unknown kind is refused."""

    def given(name: str) -> str | None:
        value = _text(values.get(name))
        return value.strip() if value and value.strip() else None

    kind = given("state")
    if kind is not None and kind not in LOOK_KINDS:
        raise web.HTTPBadRequest(text=f"state must be one of {', '.join(LOOK_KINDS)}")
    code = given("code")
    return Look(
        kind=kind,
        code="" if code == "(none)" else code,
        customer=given("customer"),
        event_name=given("meter"),
    )


def _filters(look: Look) -> dict[str, str]:
    """The filters as query parameters (what links and hidden fields carry)."""
    values = {
        "state": look.kind,
        "code": "(none)" if look.code == "" else look.code,
        "customer": look.customer,
        "meter": look.event_name,
    }
    return {k: v for k, v in values.items() if v is not None}


def _list_url(look: Look, **extra: Any) -> str:
    query = urlencode({**_filters(look), **{k: v for k, v in extra.items() if v is not None}})
    return "/console/failures" + (f"?{query}" if query else "")


def _int(value: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise web.HTTPBadRequest(text="a page cursor is a row id (digits)")
    return int(value)


def _bulk_notice(action: str, query: Any) -> str:
    counts = {k: int(v) if str(v).isdigit() else 0 for k, v in query.items()}
    return BULK_NOTICES[action].format(
        done=counts.get("n", 0), refused=counts.get("refused", 0), skipped=counts.get("skipped", 0)
    )


NOT_KEPT = ("refresh", "done", "n", "refused", "skipped")  # what _refresh's links leave out


def _refresh(request: web.Request) -> dict[str, Any]:
    """Auto-refresh (a meta refresh: no script) unless paused with ?refresh=off; the link
    toggles it and keeps the rest of the query."""
    paused = request.query.get("refresh") == "off"
    # An action's notice (done=...) is said once: the refresh and the toggle leave it out.
    query = {k: v for k, v in request.query.items() if k not in NOT_KEPT}
    toggled = {**query, **({} if paused else {"refresh": "off"})}
    return {
        "seconds": None if paused else REFRESH_SECONDS,
        "url": _url(request.path, query),
        "toggle": _url(request.path, toggled),
    }


def _url(path: str, query: dict[str, str]) -> str:
    encoded = urlencode(query)
    return path + (f"?{encoded}" if encoded else "")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _row_url(identifier: str, done: str) -> str:
    return "/console/row?" + urlencode({"identifier": identifier, "done": done})
