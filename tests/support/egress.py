"""A way out to a local "Stripe" as real deployments have one: a TLS front signed by a test CA
(trustme) in front of the emulator, and an HTTP CONNECT proxy that counts its tunnels.

Both run on one event loop in a background thread (the relay under test runs on the test's own
loop), and only forward bytes: what the emulator sees is what the relay sent.
"""

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trustme

T = TypeVar("T")


class _Loop:
    """An event loop in a daemon thread; `call` runs a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


@dataclass
class ConnectProxy:
    """Counts CONNECT requests (`connects`, their targets and Proxy-Authorization values);
    `refuse` answers 403 instead of tunnelling."""

    port: int = 0
    connects: int = 0
    targets: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    refuse: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        self.connects += 1
        self.targets.append(target)
        auth = [ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("proxy-auth")]
        self.authorizations.append(auth[0] if auth else None)
        if self.refuse:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        upstream = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _splice((reader, writer), upstream)


@dataclass
class TlsFront:
    """TLS (a certificate for localhost and 127.0.0.1 from `ca`) in front of host:port."""

    upstream_host: str
    upstream_port: int
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            writer.close()
            return
        await _splice((reader, writer), upstream)


@dataclass
class Egress:
    """What a test gets: the proxy, the TLS front, and the CA files (the right one, another)."""

    proxy: ConnectProxy
    front: TlsFront
    ca_file: Path
    other_ca_file: Path


@contextlib.contextmanager
def egress(upstream_url: str, tmp: Path) -> Iterator[Egress]:
    """A TLS front to `upstream_url` (http://host:port) and a CONNECT proxy, both running."""
    host, port = upstream_url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    ca, other = trustme.CA(), trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    ca_file, other_ca_file = tmp / "egress-ca.pem", tmp / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other.cert_pem.write_to_path(str(other_ca_file))
    proxy, front = ConnectProxy(), TlsFront(host, int(port))
    loop = _Loop()

    async def start() -> list[asyncio.Server]:
        servers = [
            await asyncio.start_server(proxy.handle, "127.0.0.1", 0),
            await asyncio.start_server(front.handle, "127.0.0.1", 0, ssl=server_ctx),
        ]
        proxy.port = servers[0].sockets[0].getsockname()[1]
        front.port = servers[1].sockets[0].getsockname()[1]
        return servers

    async def stop(servers: list[asyncio.Server]) -> None:
        for server in servers:
            server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    servers = loop.call(start())
    try:
        yield Egress(proxy, front, ca_file, other_ca_file)
    finally:
        loop.call(stop(servers))
        loop.close()
