"""A minimal HTTP/1.1 keep-alive client for the relay's two hot calls (relay/stripe/calls.py).

Why: aiohttp's `ClientSession.post` was a third of the relay process's CPU per v1 meter event
(profiled): request and response objects, cookie and header processing, timeouts, tracing hooks
and connector bookkeeping, general machinery these calls never use. Here a call is one
`transport.write` of prebuilt bytes and an answer read by llhttp (`httptools`, C) into a status,
a header dict and a body. The v2 stream sends 100 events a request, so there it matters little.
The figures, before and after: docs/benchmarks.md.

What it does: a pool of keep-alive connections per origin (scheme, host, port), at most
`max_connections` each, callers beyond that waiting in FIFO order; one request per connection
at a time; HTTPS verified with the caller's SSL context; bodies delimited by Content-Length,
chunked encoding or the server closing; gzip and deflate bodies decoded (the request
advertises them, as aiohttp does); one total timeout per request, connect to last byte.

Proxies: an https origin may be reached through an HTTP proxy's CONNECT tunnel (the proxy and
NO_PROXY are decided in relay/stripe/egress.py); TLS then runs through the tunnel as it would
directly. A proxy's refusal is an `egress.ProxyRefused` (an OSError: no answer from Stripe).

What it deliberately does not do: plain-http requests through a proxy, redirects, cookies,
HTTP/2, pipelining, request streaming or `Expect: 100-continue`, and retries but one: the relay
owns retries (only it knows when an idempotency key may be reused). The one retry is of a stale
keep-alive connection: a server may close an idle connection just as a request goes out on it,
and then nothing of the request was answered. So a request that a REUSED connection loses
before any byte of its answer arrives is written again, once, byte for byte (same idempotency
key), on a fresh connection. Never once a byte of the answer came (the server was answering:
the relay decides), and never on a fresh connection (the server is failing, not stale).

A connection's life is an explicit `ConnState` with legal moves only (`_MOVES`): reused only
from IDLE, reached only by an HTTP/1.1 keep-alive answer read to its end; one whose answer was
not read to the end (timeout, error, cancellation) is closed, since its stream may be out of
step, and a closed connection never moves again (nothing can mark it reusable).

Answers are bounded, as aiohttp bounds the SDK's: a head over `MAX_HEAD` bytes or a body over
`MAX_BODY` bytes (before or after decoding) ends the read and the connection, so a hostile or
broken server cannot make the relay buffer it. Line endings are read as aiohttp reads them
(llhttp with aiohttp's leniencies: a bare LF ends a status or header line).

Failures surface as `OSError` (refused, reset, DNS, TLS), `TimeoutError` or `ResponseError`
(the server hung up early, sent something that is not HTTP, or too much of it); none carries
a header. Each is no answer to the relay: the row keeps its idempotency key for the next call.
"""

import asyncio
import enum
import re
import socket
import ssl
import zlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import httptools

from relay.stripe.egress import Proxy, ProxyRefused

DEFAULT_PORTS = {"http": 80, "https": 443}
# aiohttp's default request headers: sent too, so the request stays the SDK's (which runs on
# aiohttp) byte for byte, and the answer may come compressed.
DEFAULT_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
# What aiohttp refuses in a header (header injection): control characters but the tab.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Stripe's answers to these calls are a few hundred bytes of head and of body. The caps are
# far above that and far below what would hurt: a server past them is broken or hostile.
MAX_HEAD = 64 * 1024  # the headers (aiohttp takes 128 of 8190 bytes at most)
MAX_BODY = 1024 * 1024  # the body as received, and again once decoded (gzip, deflate)


class ResponseError(Exception):
    """No usable answer: the server hung up before its end, or what came back is not HTTP or
    is over a cap."""


class ConnState(enum.Enum):
    """Where a connection is in its life; `_MOVES` lists the legal moves."""

    FRESH = "fresh"  # connected, nothing sent yet
    IDLE = "idle"  # a keep-alive answer read to its end: may carry the next request
    SENT = "sent"  # a request written, no byte of its answer yet
    RECEIVING = "receiving"  # the answer is arriving
    DROPPED = "dropped"  # lost while SENT: the server hung up (or the network failed) unanswered
    CLOSED = "closed"  # closed by the client, or lost with (part of) an answer, or idle

    # Members are singletons, so identity is their equality: hashing by identity (in C) keeps
    # each move a few lookups, where Enum's own hash runs Python code on every call.
    __hash__ = object.__hash__


# The members as module names: looked up on the class, a member costs several times more,
# and a call makes about ten of these checks.
FRESH, IDLE, SENT = ConnState.FRESH, ConnState.IDLE, ConnState.SENT
RECEIVING, DROPPED, CLOSED = ConnState.RECEIVING, ConnState.DROPPED, ConnState.CLOSED
_MOVES: dict[ConnState, frozenset[ConnState]] = {
    FRESH: frozenset({SENT, CLOSED}),
    IDLE: frozenset({SENT, CLOSED}),
    SENT: frozenset({RECEIVING, DROPPED, CLOSED}),
    RECEIVING: frozenset({IDLE, CLOSED}),
    DROPPED: frozenset(),
    CLOSED: frozenset(),
}


class _TooLarge(ResponseError):
    """An answer past a cap (raised inside llhttp's callbacks to stop the parse)."""


class Origin(NamedTuple):
    """Where a connection goes: the pool's key."""

    scheme: str
    host: str
    port: int


class Response(NamedTuple):
    """An answer read to its end: header names lower-cased, the body decoded."""

    status: int
    headers: dict[str, str]
    body: bytes


def header_lines(headers: Mapping[str, str]) -> bytes:
    """`Name: value\\r\\n` lines, UTF-8 as aiohttp encodes them; a control character in a name
    or value is refused as aiohttp refuses it (the message names neither: values hold keys)."""
    for name, value in headers.items():
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
            raise ValueError("forbidden control character in a request header")
    return "".join([f"{name}: {value}\r\n" for name, value in headers.items()]).encode()


class Endpoint:
    """One method and URL, parsed once: the origin to connect to and the request's constant
    start (request line, Host, the caller's constant headers and aiohttp's defaults)."""

    __slots__ = ("head", "origin")

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        default_port = DEFAULT_PORTS.get(parts.scheme)
        if default_port is None or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        port = parts.port or default_port
        self.origin = Origin(parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        if port != default_port:  # as aiohttp writes Host: the port only when not the default
            host = f"{host}:{port}"
        start = f"{method} {target} HTTP/1.1\r\n".encode()
        self.head = start + header_lines({"Host": host, **headers, **DEFAULT_HEADERS})


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, feeds what comes back to llhttp and
    resolves the request's future when the answer ends (or fails it when the stream does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lost: Callable[["_Connection"], None]):
        self._loop = loop
        self._lost = lost
        self._parser = httptools.HttpResponseParser(self)
        # aiohttp's leniencies for answers (its parser is llhttp too), so the lean client
        # reads what the SDK reads: bare LF line endings above all.
        self._parser.set_dangerous_leniencies(
            lenient_headers=True,
            lenient_optional_cr_before_lf=True,
            lenient_spaces_after_chunk_size=True,
        )
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._unfinished = 0  # bytes read while the head was unfinished: at least the head
        self._body_size = 0
        self._headers_done = False
        self.state = FRESH
        self.closed: asyncio.Future[None] = loop.create_future()

    def _move(self, to: ConnState) -> None:
        """Take a legal move; an ended connection (DROPPED, CLOSED) stays as it is."""
        if to in _MOVES[self.state]:
            self.state = to
        elif _MOVES[self.state]:
            raise RuntimeError(f"connection state {self.state.value} -> {to.value}")

    def exchange(self, request: bytes) -> "asyncio.Future[Response]":
        """Write the whole request at once; the future resolves with the answer."""
        if self._transport is None or self._answer is not None:
            raise RuntimeError("exchange on a connection that is not idle")
        self._move(SENT)
        self._reset()
        self._unfinished = 0
        self._answer = answer = self._loop.create_future()
        self._transport.write(request)
        return answer

    def abort(self) -> None:
        """Drop the connection now (no flush, no TLS goodbye): its stream is out of step, or
        the pool is closing and nothing is owed to the server. An answer still awaited fails
        (were it delimited by the close, what came so far would pass for all of it)."""
        self._move(CLOSED)
        self._fail(ResponseError("connection closed by the client before the response"))
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.state is SENT:
            self._move(RECEIVING)
        elif self.state is not RECEIVING:  # bytes nobody asked for: never reuse
            self.abort()
            return
        if not self._headers_done:
            self._unfinished += len(data)
        try:
            self._parser.feed_data(data)
            if not self._headers_done and self._unfinished > MAX_HEAD:  # an endless head
                raise _TooLarge(f"answer head over {MAX_HEAD} bytes")
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, _TooLarge) as err:
            cause = err if isinstance(err, _TooLarge) else err.__context__
            if not isinstance(cause, _TooLarge):
                cause = ResponseError(f"malformed HTTP response: {err}")
            self._fail(cause)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.state is SENT:
            self._move(DROPPED)  # nothing of the answer came: see _Pool.exchange
        elif exc is None and self._headers_done and self._until_close():
            self._complete()  # the body was delimited by the server closing
        self._move(CLOSED)
        self._fail(exc or ResponseError("server closed the connection before the response"))
        self._lost(self)
        self.closed.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.state is not RECEIVING:  # a second answer in the same read
            self.abort()
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # Counted only when what was read (head and maybe body) is past the cap: the head
        # itself may still be under it. (Repeated names are kept once: what is kept counts.)
        if self._unfinished > MAX_HEAD:
            size = sum(len(name) + len(value) + 4 for name, value in self._headers.items())
            if size > MAX_HEAD:
                raise _TooLarge(f"answer head over {MAX_HEAD} bytes")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            raise _TooLarge(f"answer body over {MAX_BODY} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.state is not RECEIVING:  # aborted within this read: it stays so
            return
        parser = self._parser
        if parser.get_status_code() < 200:  # 100 Continue, 103: the answer follows
            self._reset()
            return
        if parser.should_keep_alive() and parser.get_http_version() == "1.1":
            self._move(IDLE)
            self._complete()
        else:
            self._complete()
            self.abort()  # the server ends it, or HTTP/1.0: not reusable

    def _reset(self) -> None:
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._headers_done = False

    def _until_close(self) -> bool:
        """Neither a length nor chunks: the body ends when the server closes (RFC 9112 6.3)."""
        return "content-length" not in self._headers and "transfer-encoding" not in self._headers

    def _complete(self) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            status = self._parser.get_status_code()
            answer.set_result(Response(status, self._headers, b"".join(self._body)))

    def _fail(self, exc: BaseException) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)


class _Pool:
    """The keep-alive connections to one origin. A slot (of `max_connections`) is held for a
    whole exchange, so connections never outnumber slots: a new one is opened only when no
    idle one is left, and a caller without a slot waits its turn (asyncio.Semaphore is FIFO)."""

    def __init__(
        self,
        origin: Origin,
        max_connections: int,
        ssl_context: ssl.SSLContext | None,
        proxy: Proxy | None = None,
    ) -> None:
        self._origin = origin
        self._ssl = ssl_context if origin.scheme == "https" else None
        self._proxy = proxy
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []  # most recently used last, taken first
        self._open: set[_Connection] = set()

    async def exchange(self, request: bytes) -> Response:
        """Send one request on an idle connection (or a new one) and read its answer; once
        more on a new connection if the idle one was stale (module docstring)."""
        async with self._slots:
            conn = self._idle_connection()
            if conn is not None:
                try:
                    return await self._on(conn, request)
                except (OSError, ResponseError):
                    if conn.state is not DROPPED:
                        raise
            return await self._on(await self._connect(), request)

    async def _on(self, conn: _Connection, request: bytes) -> Response:
        try:
            response = await conn.exchange(request)
        except BaseException:  # cancelled or failed mid-exchange: the stream is unusable
            conn.abort()
            raise
        if conn.state is IDLE:
            self._idle.append(conn)
        else:
            conn.abort()
        return response

    def _idle_connection(self) -> _Connection | None:
        """The most recently used idle connection still fit for use (an idle one aborted for
        bytes nobody asked for stays listed until asyncio reports it lost)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.state is IDLE:
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = self._origin.host, self._origin.port
        hostname = host if self._ssl else None

        def made() -> _Connection:
            return _Connection(loop, self._forget)

        if self._proxy is None:
            _, conn = await loop.create_connection(
                made, host, port, ssl=self._ssl, server_hostname=hostname
            )
        else:
            sock = await _tunnel(self._proxy, host, port)
            _, conn = await loop.create_connection(
                made, sock=sock, ssl=self._ssl, server_hostname=hostname
            )
        self._open.add(conn)
        return conn

    def _forget(self, conn: _Connection) -> None:
        """A connection is gone (the server closed it, or we did): never hand it out again."""
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        """Drop every connection, idle or busy (a busy one's caller gets a failure), and wait
        until asyncio has let go of each."""
        conns = list(self._open)
        for conn in conns:
            conn.abort()
        await asyncio.gather(*(conn.closed for conn in conns))


async def _tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A socket to `proxy` on which it has agreed to `CONNECT host:port` (its 200 read, and
    nothing after it: the server speaks only once TLS starts)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    sock = await _connected(loop, infos)
    try:
        target = f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk or len(head) + len(chunk) > MAX_HEAD:
                raise ProxyRefused("the proxy closed the connection or sent too much")
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        if not re.fullmatch(r"HTTP/1\.[01] 200(\s.*)?", status):
            raise ProxyRefused(f"CONNECT answered {status[:100]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


async def _connected(
    loop: asyncio.AbstractEventLoop, infos: list[tuple[Any, ...]]
) -> socket.socket:
    """A non-blocking socket connected to the first address that takes it."""
    error: OSError = OSError("the proxy's name resolved to no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as err:
            sock.close()
            error = err
    raise error


class Client:
    """Pools per origin, each of at most `max_connections` connections; `ssl_context` verifies
    HTTPS origins (plain http is for local servers: the emulator, tests); `proxy_for(scheme,
    host)` names the proxy an origin is reached through (relay/stripe/egress.py), or None."""

    def __init__(
        self,
        max_connections: int,
        ssl_context: ssl.SSLContext,
        proxy_for: Callable[[str, str], Proxy | None] = lambda scheme, host: None,
    ) -> None:
        self._max_connections = max_connections
        self._ssl = ssl_context
        self._proxy_for = proxy_for
        self._pools: dict[Origin, _Pool] = {}

    # One total timeout per request, connect to last byte, as HTTP clients take it.
    async def send(
        self,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,  # noqa: ASYNC109
    ) -> Response:
        """One request: the endpoint's constant head, this call's `headers`, the body. The
        timeout covers waiting for a connection, connecting, writing and reading."""
        request = b"".join(
            (endpoint.head, header_lines(headers), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        pool = self._pools.get(endpoint.origin) or self._pool(endpoint.origin)
        async with asyncio.timeout(timeout):
            return _decoded(await pool.exchange(request))

    def _pool(self, origin: Origin) -> _Pool:
        proxy = self._proxy_for(origin.scheme, origin.host)
        pool = self._pools[origin] = _Pool(origin, self._max_connections, self._ssl, proxy)
        return pool

    async def close(self) -> None:
        """Close every pooled connection."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()


def _decoded(response: Response) -> Response:
    """The body as sent before compression, for the encodings the request advertises: gzip,
    and deflate with its zlib header or (as some servers send it) without, as aiohttp reads it."""
    encoding = response.headers.get("content-encoding", "").lower()
    body = response.body
    if encoding not in ("gzip", "deflate") or not body:
        return response
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    else:
        wbits = zlib.MAX_WBITS if body[0] & 0x0F == 8 else -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        decoded = decoder.decompress(body, MAX_BODY + 1)  # a bomb stops here, not in memory
    except zlib.error as err:
        raise ResponseError(f"undecodable {encoding} body: {err}") from None
    if len(decoded) > MAX_BODY:
        raise ResponseError(f"answer body over {MAX_BODY} bytes once decoded")
    if not decoder.eof:
        raise ResponseError(f"undecodable {encoding} body: incomplete or truncated stream")
    return response._replace(body=decoded)
