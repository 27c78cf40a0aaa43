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

What it deliberately does not do: proxies, redirects, cookies, HTTP/2, pipelining, retries
(the relay owns retries: only it knows when an idempotency key may be reused), request
streaming or `Expect: 100-continue`. A connection is reused only after a complete HTTP/1.1
keep-alive answer; one whose answer was not read to the end (timeout, error, cancellation)
is closed, since its stream may be out of step.

Failures surface as `OSError` (refused, reset, DNS, TLS), `TimeoutError` or `ResponseError`
(the server hung up early, or sent something that is not HTTP); none carries a header.
"""

import asyncio
import re
import ssl
import zlib
from collections.abc import Callable, Mapping
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools

DEFAULT_PORTS = {"http": 80, "https": 443}
# aiohttp's default request headers: sent too, so the request stays the SDK's (which runs on
# aiohttp) byte for byte, and the answer may come compressed.
DEFAULT_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
# What aiohttp refuses in a header (header injection): control characters but the tab.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ResponseError(Exception):
    """No usable answer: the server hung up before its end, or what came back is not HTTP."""


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
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self.reusable = False
        self._aborted = False
        self.closed: asyncio.Future[None] = loop.create_future()

    def exchange(self, request: bytes) -> "asyncio.Future[Response]":
        """Write the whole request at once; the future resolves with the answer."""
        if self._transport is None or self._answer is not None:
            raise RuntimeError("exchange on a connection that is not idle")
        self.reusable = False
        self._reset()
        self._answer = answer = self._loop.create_future()
        self._transport.write(request)
        return answer

    def abort(self) -> None:
        """Drop the connection now (no flush, no TLS goodbye): its stream is out of step, or
        the pool is closing and nothing is owed to the server. An answer still awaited fails
        (were it delimited by the close, what came so far would pass for all of it)."""
        self.reusable = False
        self._aborted = True  # until asyncio reports it lost, a late answer must not revive it
        self._fail(ResponseError("connection closed by the client before the response"))
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # bytes nobody asked for: never reuse this stream
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as err:
            self._fail(ResponseError(f"malformed HTTP response: {err}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.reusable = False
        if exc is None and self._headers_done and self._until_close():
            self._complete()  # the body was delimited by the server closing
        else:
            self._fail(exc or ResponseError("server closed the connection before the response"))
        self._lost(self)
        self.closed.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._answer is None:  # a second answer in the same read: out of step
            self.abort()
        self._reset()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        if parser.get_status_code() < 200:  # 100 Continue, 103: the answer follows
            self._reset()
            return
        keep_alive = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        self.reusable = keep_alive and self._transport is not None and not self._aborted
        self._complete()

    def _reset(self) -> None:
        self._headers = {}
        self._body = []
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
        self, origin: Origin, max_connections: int, ssl_context: ssl.SSLContext | None
    ) -> None:
        self._origin = origin
        self._ssl = ssl_context if origin.scheme == "https" else None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []  # most recently used last, taken first
        self._open: set[_Connection] = set()

    async def exchange(self, request: bytes) -> Response:
        """Send one request on an idle connection (or a new one) and read its answer."""
        async with self._slots:
            conn = self._idle_connection() or await self._connect()
            try:
                response = await conn.exchange(request)
            except BaseException:  # cancelled or failed mid-exchange: the stream is unusable
                conn.abort()
                raise
            if conn.reusable:
                self._idle.append(conn)
            else:
                conn.abort()
            return response

    def _idle_connection(self) -> _Connection | None:
        """The most recently used idle connection still fit for use (an idle one aborted for
        bytes nobody asked for stays listed until asyncio reports it lost)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = self._origin.host, self._origin.port
        _, conn = await loop.create_connection(
            lambda: _Connection(loop, self._forget),
            host,
            port,
            ssl=self._ssl,
            server_hostname=host if self._ssl else None,
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


class Client:
    """Pools per origin, each of at most `max_connections` connections; `ssl_context` verifies
    HTTPS origins (plain http is for local servers: the emulator, tests)."""

    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext) -> None:
        self._max_connections = max_connections
        self._ssl = ssl_context
        self._pools: dict[Origin, _Pool] = {}

    # One total timeout per request, connect to last byte, as HTTP clients take it.
    async def send(
        self, endpoint: Endpoint, headers: Mapping[str, str], body: bytes, timeout: float  # noqa: ASYNC109
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
        pool = self._pools[origin] = _Pool(origin, self._max_connections, self._ssl)
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
    try:
        return response._replace(body=zlib.decompress(body, wbits))
    except zlib.error as err:
        raise ResponseError(f"undecodable {encoding} body: {err}") from None
