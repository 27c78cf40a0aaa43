"""How the relay's traffic to Stripe leaves the host: through which proxy, trusting which CAs.

Both clients (the lean one, relay/stripe/transport.py, and the SDK's aiohttp session) take
their proxy and their TLS context from here, so they never disagree about the way out.

Proxy: `OUTBOX_STRIPE_PROXY` if set, else `HTTPS_PROXY` (or `https_proxy`) from the
environment, for https origins; a host matched by `NO_PROXY` goes direct either way. The
proxy is spoken to in plain HTTP and asked to `CONNECT host:port`: TLS then runs end to end
with Stripe through the tunnel, so the proxy sees neither the key nor the events (unless it
inspects TLS, with a CA of its own: below). Credentials in the proxy URL (`user:pass@`) go in
`Proxy-Authorization` and are never logged.

Trust: the stripe package's CA bundle (what the SDK pins), plus `SSL_CERT_FILE` when the
environment sets it (OpenSSL's variable, so what the host's other tools trust), plus
`OUTBOX_STRIPE_CA_FILE` (`OUTBOX_STRIPE_CA_MODE=add`, the default), or that file alone
(`replace`): a TLS-inspecting egress proxy signs with a corporate CA that no public bundle
holds.
"""

import base64
import functools
import os
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
import stripe

from relay.core.config import Settings
from relay.core.errors import ConfigError, one_line

CaMode = Literal["add", "replace"]


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy that tunnels (CONNECT)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # Proxy-Authorization, from the URL
    given: str = field(default="", repr=False)  # the URL as given (aiohttp reads its user:pass)

    @property
    def url(self) -> str:
        """Without credentials: for logs and `doctor`."""
        return f"http://{self.host}:{self.port}"


def parse_proxy(url: str, variable: str) -> Proxy:
    """`http://[user:pass@]host[:port]`; ConfigError naming `variable` (never the value: it may
    hold a password)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or 3128
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port < 1:
        raise ConfigError(
            f"{variable} is not an HTTP proxy URL: set it to http://host:port "
            "(a proxy that tunnels HTTPS with CONNECT)"
        )
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization, parts.geturl())


@dataclass(frozen=True, slots=True)
class Egress:
    """The way out to Stripe, decided once at start (`from_settings`)."""

    proxy: Proxy | None
    proxy_source: str | None  # the variable it came from
    ca_file: Path | None
    ca_mode: CaMode

    @classmethod
    def from_environment(
        cls, proxy: str | None = None, ca_file: Path | None = None, ca_mode: CaMode = "add"
    ) -> "Egress":
        """`proxy` (OUTBOX_STRIPE_PROXY) wins over HTTPS_PROXY; an empty value means none."""
        source, url = _proxy_setting(proxy)
        return cls(
            parse_proxy(url, source) if url else None, source if url else None, ca_file, ca_mode
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> "Egress":
        """The relay's: OUTBOX_STRIPE_PROXY / _CA_FILE / _CA_MODE and the environment."""
        return cls.from_environment(
            settings.egress_proxy(), settings.stripe_ca_file, settings.stripe_ca_mode
        )

    def proxy_for(self, scheme: str, host: str) -> Proxy | None:
        """The proxy for an origin: https only, and not for a host NO_PROXY names."""
        if self.proxy is None or scheme != "https" or _bypassed(host):
            return None
        return self.proxy

    def aiohttp_proxy(self, base_url: str) -> str | None:
        """The SDK's one proxy (its session takes one): decided for the API host."""
        parts = urlsplit(base_url)
        proxy = self.proxy_for(parts.scheme, parts.hostname or "")
        return proxy.given if proxy else None

    def ssl_context(self) -> ssl.SSLContext:
        """Stripe's bundle, SSL_CERT_FILE and the CA file as `ca_mode` says (module docstring);
        ConfigError when a file cannot be read or holds no certificate."""
        if self.ca_file is not None and self.ca_mode == "replace":
            return _context(("OUTBOX_STRIPE_CA_FILE", str(self.ca_file)))
        files = [("stripe's CA bundle", stripe.ca_bundle_path)]
        if os.environ.get("SSL_CERT_FILE"):
            files.append(("SSL_CERT_FILE", os.environ["SSL_CERT_FILE"]))
        if self.ca_file is not None:
            files.append(("OUTBOX_STRIPE_CA_FILE", str(self.ca_file)))
        return _context(*files)

    def describe(self) -> list[str]:
        """What `doctor` and the start line say: the proxy (no credentials) and the trust."""
        proxy = f"{self.proxy.url} (from {self.proxy_source})" if self.proxy else "none (direct)"
        bypass = os.environ.get("NO_PROXY") or os.environ.get("no_proxy")
        if self.proxy and bypass:
            proxy += f", not for NO_PROXY={bypass}"
        trust = ["stripe's CA bundle"]
        if os.environ.get("SSL_CERT_FILE"):
            trust.append(f"SSL_CERT_FILE={os.environ['SSL_CERT_FILE']}")
        if self.ca_file is not None:
            trust = [] if self.ca_mode == "replace" else trust
            trust.append(f"OUTBOX_STRIPE_CA_FILE={self.ca_file}")
        return [proxy, " + ".join(trust)]


def _proxy_setting(explicit: str | None) -> tuple[str, str | None]:
    if explicit is not None:
        return "OUTBOX_STRIPE_PROXY", explicit.strip() or None
    for name in ("HTTPS_PROXY", "https_proxy"):
        if os.environ.get(name):
            return name, os.environ[name].strip()
    return "HTTPS_PROXY", None


def _bypassed(host: str) -> bool:
    """NO_PROXY (or no_proxy) as Python's urllib reads it: names, domain suffixes, `*`."""
    bypass: Callable[[str], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    return bool(bypass(host))


def _context(*files: tuple[str, str]) -> ssl.SSLContext:
    """A verifying client context that trusts exactly these files (never the system's store
    but through SSL_CERT_FILE: create_default_context loads only the `cafile` it is given)."""
    (first_name, first), *more = files
    context = _load(first_name, lambda: ssl.create_default_context(cafile=first))
    for name, path in more:
        _load(name, functools.partial(context.load_verify_locations, cafile=path))
    return context


T = TypeVar("T")


def _load(name: str, load: Callable[[], T]) -> T:
    try:
        return load()
    except (OSError, ssl.SSLError) as err:
        reason = getattr(err, "strerror", None) or "no PEM certificate in it"
        raise ConfigError(
            f"{name}: cannot use it as CA certificates ({reason}): point it at a readable PEM file"
        ) from None


def failure(err: BaseException) -> str:
    """What to say of a call that got no answer: what to fix when the way out is the cause
    (the SDK wraps the network's error: its cause is read), else the error's own text."""
    cause: BaseException | None = err
    while cause is not None:
        known = _egress_failure(cause)
        if known:
            return known
        cause = cause.__cause__
    return one_line(str(err) or type(err).__name__)[:500]


def _egress_failure(err: BaseException) -> str | None:
    if isinstance(err, ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError):
        return (
            "Stripe's TLS certificate is not trusted (certificate verify failed): if an egress "
            "proxy inspects TLS, set OUTBOX_STRIPE_CA_FILE to its CA"
        )
    # aiohttp's messages may quote the proxy URL (credentials and all): only its status is said.
    if isinstance(err, ProxyRefused):
        what = one_line(str(err))
    elif isinstance(err, aiohttp.ClientHttpProxyError):
        what = f"CONNECT answered {err.status}"
    elif isinstance(err, aiohttp.ClientProxyConnectionError):
        what = "cannot connect to the proxy"
    else:
        return None
    return (
        f"the proxy refused or failed the tunnel to Stripe ({what}): "
        "check OUTBOX_STRIPE_PROXY or HTTPS_PROXY"
    )


class ProxyRefused(OSError):
    """The proxy answered CONNECT with something other than 200 (its status line says why)."""
