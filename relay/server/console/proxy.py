"""What a request says about its client when a reverse proxy stands in front of the relay.

`X-Forwarded-Proto` and `X-Forwarded-For` are believed only from the addresses listed in
OUTBOX_CONSOLE_TRUSTED_PROXIES: anyone else could send them to pass for HTTPS (and get a cookie
marked Secure sent over plain HTTP) or for another client (and escape the sign-in brake).
"""

import ipaddress
from collections.abc import Iterable

from aiohttp import web

from relay.core.config import Network


class Proxies:
    """The trusted proxies, and the scheme and client address of a request through them."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self._networks = list(networks)

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def scheme(self, request: web.Request) -> str:
        """https or http, as the browser sees it (the last proxy's X-Forwarded-Proto)."""
        if self.trusts(request.remote):
            forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip()
            if forwarded in ("http", "https"):
                return forwarded
        return "https" if request.secure else "http"

    def client(self, request: web.Request) -> str:
        """The client's address: walking X-Forwarded-For from the right, the first hop that
        is not a trusted proxy (entries left of it could be written by the client)."""
        address = request.remote or "unknown"
        if not self.trusts(address):
            return address
        hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self.trusts(hop):
                return hop
        return address


def host_name(host: str | None) -> str:
    """The name part of a Host header, lower-case: `[::1]:8080` -> `[::1]`, `a.b:80` -> `a.b`."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
