"""Who may see the console and who may act in it.

Without OUTBOX_CONSOLE_TOKEN the console is read-only and protected only by where the HTTP
server listens (OUTBOX_HTTP_HOST, like /metrics). With a token, every console page needs it:
either `Authorization: Bearer <token>` (scripts) or a session cookie obtained by typing the
token into the login form (browsers).

The cookie holds no secret: `expiry.nonce.signature`, signed with an HMAC keyed by the token,
so changing the token signs everyone out. It is HttpOnly, SameSite=Strict, scoped to /console,
and Secure when the browser reached us over HTTPS (directly, or through a proxy listed in
OUTBOX_CONSOLE_TRUSTED_PROXIES). A signature alone is not enough: the session must also be in
the database (outbox_console_sessions, by a hash of its nonce), so signing out ends it on
every replica at once and a copied cookie dies with it.

Actions (POST) are CSRF-safe twice over: the SameSite=Strict cookie is not sent with requests
started by another site, and a cookie-authenticated POST must also carry the session's CSRF
token (an HMAC of the session nonce, rendered into the page's forms), which another site cannot
read. A bearer-authenticated POST needs no CSRF token: browsers never add that header on their
own. A POST whose Origin header names another origin (scheme, host and port), or that the
browser marks as cross-site (Sec-Fetch-Site), is refused whatever it carries.
"""

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

COOKIE = "outbox_console"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Viewer:
    """The requester: may they see the console, are they signed in, their CSRF token."""

    allowed: bool
    signed_in: bool
    csrf: str = ""
    by_bearer: bool = False
    bad_bearer: bool = False  # a bearer token was presented and it is wrong
    session_id: str = ""  # a cookie session, still to be found in the database


class Guard:
    """Checks requests against the console token (None: read-only console, no sign-in)."""

    def __init__(self, token: str | None, clock: Callable[[], float] = time.time) -> None:
        if token is not None and not token:  # the settings refuse it; never read it as "open"
            raise ValueError("an empty console token")
        self._key = token.encode() if token is not None else None
        self._now = clock

    @property
    def protected(self) -> bool:
        return self._key is not None

    def _sign(self, purpose: str, value: str) -> str:
        if self._key is None:
            raise RuntimeError("signing needs OUTBOX_CONSOLE_TOKEN")
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        return self._key is not None and hmac.compare_digest(candidate.encode(), self._key)

    def new_session(self) -> tuple[str, str]:
        """(cookie value, session id) for a freshly signed-in browser."""
        session = f"{int(self._now()) + SESSION_SECONDS}.{secrets.token_urlsafe(16)}"
        return f"{session}.{self._sign('session', session)}", session_id(session)

    def _session(self, cookie: str | None) -> str | None:
        """The session part of a valid, unexpired cookie."""
        if not cookie or self._key is None or cookie.count(".") != 2:
            return None
        session, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign("session", session)):
            return None
        expiry = session.split(".", 1)[0]
        return session if expiry.isdigit() and int(expiry) > self._now() else None

    def viewer(self, request: web.Request) -> Viewer:
        if self._key is None:
            return Viewer(allowed=True, signed_in=False)
        header = request.headers.get("Authorization", "")
        bearer = header.startswith("Bearer ")
        if bearer and self.token_matches(header[7:].strip()):
            return Viewer(allowed=True, signed_in=True, by_bearer=True)
        session = self._session(request.cookies.get(COOKIE))
        if session is None:
            return Viewer(allowed=False, signed_in=False, bad_bearer=bearer)
        return Viewer(
            allowed=True,
            signed_in=True,
            csrf=self._sign("csrf", session),
            bad_bearer=bearer,
            session_id=session_id(session),
        )

    def may_act(
        self, request: web.Request, viewer: Viewer, form_csrf: str | None, scheme: str
    ) -> bool:
        """A signed-in viewer's POST from this origin, with the session's CSRF token. `scheme`
        is the one the browser used (see proxy.py): an http:// page must not act on https://."""
        origin = request.headers.get("Origin")
        if origin and origin != f"{scheme}://{request.host}":  # "null" is refused too
            return False
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        if not viewer.signed_in:
            return False
        if viewer.by_bearer:
            return True
        return bool(form_csrf) and hmac.compare_digest(form_csrf or "", viewer.csrf)


def session_id(session: str) -> str:
    """What the database holds for a session: a hash, so reading the table forges nothing."""
    return hashlib.sha256(session.encode()).hexdigest()


def signed_out(viewer: Viewer) -> Viewer:
    """The viewer whose cookie session is no longer in the database."""
    return Viewer(allowed=False, signed_in=False, bad_bearer=viewer.bad_bearer)


def set_session_cookie(response: web.StreamResponse, value: str, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )
