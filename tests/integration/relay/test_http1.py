"""The lean client's keep-alive transport (relay/stripe/transport.py) against real servers
on 127.0.0.1: aiohttp.web for ordinary answers, raw asyncio servers for what a well-behaved
server never sends (hang-ups, resets, silence, HTTP/1.0, garbage). The async tests take no
fixtures, so the same scenarios run again under uvloop, the relay's event loop (last test).
"""

import asyncio
import contextlib
import gzip
import json
import re
import socket
import ssl
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
import uvloop
from aiohttp import web

from relay.stripe import transport as http1
from relay.stripe.calls import Wire
from relay.stripe.classify import Answer, Verdict, classify
from relay.stripe.sender import StripeSender
from tests.unit.rows import claimed

KEY = "sk_test_transport_secret"
ERROR = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "slow"}}
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class Server:
    """A server on 127.0.0.1: its base URL, the connections it accepted, what it was sent."""

    base: str = ""
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def raw_server(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """Runs `script(reader, writer, connection number)` for each connection."""
    server = Server()
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        number, server.accepted = server.accepted, server.accepted + 1
        try:
            await script(reader, writer, number)
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def web_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[Server]:
    """A real aiohttp.web server; `accepted` counts the distinct client connections."""
    server = Server()
    peers: set[Any] = set()

    async def counted(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        server.accepted = len(peers)
        server.requests.append(await request.read())
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", counted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield server
    finally:
        await runner.cleanup()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body), or None at the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head, re.IGNORECASE)
    assert length, head
    return head + await reader.readexactly(int(length.group(1)))


def answer(
    status: int = 200,
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    version: str = "1.1",
    length: bool = True,
) -> bytes:
    lines = [f"HTTP/{version} {status} Whatever", "Content-Type: application/json"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def keep_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> None:
    """A 200 to every request, `Request-Id: req_<connection number>`, connection kept open."""
    while await read_request(reader) is not None:
        writer.write(answer(headers={"Request-Id": f"req_{n}"}))


async def until_eof(reader: asyncio.StreamReader) -> None:
    """Reads until the client closes its end."""
    while await reader.read(65536):
        pass


def wire(client: http1.Client, base: str, timeout: float = 10.0) -> Wire:
    return Wire(client, KEY, base, timeout)


def lean(max_connections: int = 4, tls: ssl.SSLContext | None = None) -> http1.Client:
    return http1.Client(max_connections, tls or ssl.create_default_context())


async def one_call(base: str, identifier: str = "u1", **kwargs: Any) -> Answer:
    client = lean(**kwargs)
    try:
        return await wire(client, base).meter_event(claimed(identifier=identifier))
    finally:
        await client.close()


async def connections_gone(client: http1.Client) -> None:
    """Waits until asyncio has reported every pooled connection lost."""
    for pool in client._pools.values():
        await asyncio.gather(*(conn.closed for conn in list(pool._open)))


def failed(result: Answer) -> bool:
    """An answer with no status (outcome unknown: same key next time), and no secret in it."""
    assert KEY not in (result.message or "")
    return result.status is None and classify(result).verdict is Verdict.RETRY_SAME_KEY


# Keep-alive and the pool bound


async def test_sequential_calls_reuse_one_connection() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"Request-Id": "req_web"})

    async with web_server(ok) as server:
        client = lean()
        try:
            sender = wire(client, server.base)
            results = [await sender.meter_event(claimed(identifier=f"u{i}")) for i in range(3)]
        finally:
            await client.close()
    assert [r.status for r in results] == [200, 200, 200]
    assert results[0].request_id == "req_web"
    assert server.accepted == 1
    assert [b"identifier=u0" in r for r in server.requests] == [True, False, False]


async def test_callers_beyond_the_bound_wait_for_a_free_connection() -> None:
    """Three concurrent callers, two connections: the third waits, then reuses one."""
    both_in, release = asyncio.Event(), asyncio.Event()
    waiting: list[int] = []

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            waiting.append(n)
            if len(waiting) == 2:
                both_in.set()
            await release.wait()
            writer.write(answer(headers={"Request-Id": f"req_{n}"}))

    async with raw_server(held) as server:
        client = lean(max_connections=2)
        try:
            sender = wire(client, server.base)
            calls = [
                asyncio.create_task(sender.meter_event(claimed(identifier=f"u{i}")))
                for i in range(3)
            ]
            await both_in.wait()
            assert server.accepted == 2  # the third caller holds no connection yet
            release.set()
            results = await asyncio.gather(*calls)
        finally:
            await client.close()
    assert [r.status for r in results] == [200, 200, 200]
    assert server.accepted == 2
    assert len(waiting) == 3


async def test_waiting_callers_are_served_in_arrival_order() -> None:
    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            writer.write(answer())

    async with raw_server(recording) as server:
        client = lean(max_connections=1)
        try:
            sender = wire(client, server.base)
            await asyncio.gather(
                *(sender.meter_event(claimed(identifier=f"u{i}")) for i in range(5))
            )
        finally:
            await client.close()
    order = [re.search(rb"identifier=(u\d)", r).group(1) for r in server.requests]  # type: ignore[union-attr]
    assert order == [b"u0", b"u1", b"u2", b"u3", b"u4"]
    assert server.accepted == 1


async def two_calls_across_a_hang_up(handler: Script) -> tuple[Answer, Answer]:
    """A call, then (once the server has hung up that connection) another."""
    async with raw_server(handler) as server:
        client = lean()
        try:
            sender = wire(client, server.base)
            first = await sender.meter_event(claimed())
            await connections_gone(client)
            return first, await sender.meter_event(claimed())
        finally:
            await client.close()


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(headers={"Request-Id": f"req_{n}"}))  # keep-alive, then hangs up

    first, second = await two_calls_across_a_hang_up(once)
    assert (first.request_id, second.request_id) == ("req_0", "req_1")


async def test_connection_close_is_honoured() -> None:
    async def closing(request: web.Request) -> web.Response:
        response = web.json_response({})
        response.force_close()  # `Connection: close`
        return response

    async with web_server(closing) as server:
        client = lean()
        try:
            sender = wire(client, server.base)
            results = [await sender.meter_event(claimed()) for _ in range(2)]
        finally:
            await client.close()
    assert [r.status for r in results] == [200, 200]
    assert server.accepted == 2


async def test_an_http_1_0_answer_is_not_reused() -> None:
    dropped = asyncio.Event()

    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(headers={"Connection": "keep-alive"}, version="1.0"))
        await until_eof(reader)
        dropped.set()

    async with raw_server(old) as server:
        client = lean()
        try:
            sender = wire(client, server.base)
            results = [await sender.meter_event(claimed()) for _ in range(2)]
            assert server.accepted == 2
            await dropped.wait()  # the client closed the first connection
        finally:
            await client.close()
    assert [r.status for r in results] == [200, 200]


async def test_a_second_answer_in_the_same_read_is_not_taken_for_the_next_call() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(headers={"Request-Id": f"req_{n}"}) + answer(status=500))

    first, second = await two_calls_across_a_hang_up(chatty)
    assert (first.status, first.request_id) == (200, "req_0")
    assert (second.status, second.request_id) == (200, "req_1")


async def test_a_connection_aborted_for_an_unsolicited_answer_is_never_pooled() -> None:
    """The unsolicited answer aborts the connection; its end must not mark it reusable again
    in the moment before asyncio reports it lost (a closed connection never moves again)."""

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(headers={"Request-Id": f"req_{n}"}) + answer(status=500))

    async with raw_server(chatty) as server:
        client = lean()
        try:
            first = await wire(client, server.base).meter_event(claimed())
            conns = [conn for pool in client._pools.values() for conn in pool._open]
            assert first.request_id == "req_0"
            assert [conn.state for conn in conns] == [http1.ConnState.CLOSED]
            assert not any(pool._idle_connection() for pool in client._pools.values())
        finally:
            await client.close()


# A reused connection the server had closed: one retry, same request


def key_of(request: bytes) -> bytes:
    found = re.search(rb"\r\nIdempotency-Key: ([^\r]*)\r\n", request)
    assert found, request
    return found.group(1)


def stale_after_first(drop: Callable[[asyncio.StreamWriter], None], seen: list[bytes]) -> Script:
    """Connection 0 answers its first request, then drops the next one unanswered (`drop`),
    as a server that closed an idle connection just as the client wrote on it; later
    connections answer everything. Every request is recorded in `seen`."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request)
            if n == 0 and len(seen) > 1:
                drop(writer)
                return
            writer.write(answer(headers={"Request-Id": f"req_{n}"}))

    return script


def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def two_calls(
    script: Script, send: Callable[[Wire, str], Awaitable[Answer]]
) -> tuple[Server, list[Answer]]:
    async with raw_server(script) as server:
        client = lean()
        try:
            sender = wire(client, server.base)
            results = [await send(sender, "u1"), await send(sender, "u2")]
        finally:
            await client.close()
    return server, results


async def v1(sender: Wire, identifier: str) -> Answer:
    return await sender.meter_event(claimed(identifier=identifier))


async def v2(sender: Wire, identifier: str) -> Answer:
    return await sender.meter_event_stream("mes_tok", [claimed(identifier=identifier)])


@pytest.mark.parametrize("drop", [hang_up, reset], ids=["closed", "reset"])
@pytest.mark.parametrize("send", [v1, v2], ids=["v1", "v2"])
async def test_a_reused_connection_dropped_before_any_answer_is_retried_once_with_the_same_key(
    drop: Callable[[asyncio.StreamWriter], None],
    send: Callable[[Wire, str], Awaitable[Answer]],
) -> None:
    requests: list[bytes] = []
    server, results = await two_calls(stale_after_first(drop, requests), send)
    assert [(r.status, r.request_id) for r in results] == [(200, "req_0"), (200, "req_1")]
    assert server.accepted == 2  # the retry went out on a fresh connection
    assert len(requests) == 3 and requests[1] == requests[2]  # byte for byte: same key
    assert key_of(requests[1]) != key_of(requests[0])


# Bodies


async def test_a_chunked_error_body_is_read_and_classified() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=429, headers={"Request-Id": "req_chunked"})
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        text = json.dumps(ERROR).encode()
        for start in range(0, len(text), 7):
            await response.write(text[start : start + 7])
        await response.write_eof()
        return response

    async with web_server(chunked) as server:
        result = await one_call(server.base)
    assert result == Answer(429, "invalid_request_error", "rate_limit", "slow", "req_chunked")
    assert classify(result).verdict is Verdict.RETRY_SLOWER


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw, without the zlib header
    ],
    ids=["gzip", "deflate", "raw-deflate"],
)
async def test_a_compressed_error_body_is_decoded_and_classified(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    body = compress(json.dumps(ERROR).encode())

    async def compressed(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        writer.write(answer(429, body, {"Content-Encoding": encoding, "Request-Id": "req_z"}))

    async with raw_server(compressed) as server:
        result = await one_call(server.base)
    assert result == Answer(429, "invalid_request_error", "rate_limit", "slow", "req_z")
    assert classify(result).verdict is Verdict.RETRY_SLOWER


async def test_an_undecodable_gzip_body_is_no_answer() -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(200, b"not gzip at all", {"Content-Encoding": "gzip"}))

    async with raw_server(broken) as server:
        result = await one_call(server.base)
    assert failed(result)
    assert "gzip" in (result.message or "")


async def test_a_body_delimited_by_the_server_closing_is_read_to_the_end() -> None:
    async def until_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        writer.write(answer(402, json.dumps(ERROR).encode(), length=False))

    async with raw_server(until_close) as server:
        result = await one_call(server.base)
    assert (result.status, result.code, result.message) == (402, "rate_limit", "slow")


async def test_a_reused_connection_dropped_mid_answer_is_not_retried() -> None:
    """A byte of the answer came: the server was answering, so the relay decides (same key
    on its next claim), not the transport."""
    seen: list[bytes] = []

    async def partial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request)
            if len(seen) == 1:
                writer.write(answer(headers={"Request-Id": f"req_{n}"}))
            else:
                writer.write(answer(200, b'{"partial": ')[:-3])
                await writer.drain()
                return

    server, results = await two_calls(partial, v1)
    assert results[0].status == 200 and failed(results[1])
    assert (len(seen), server.accepted) == (2, 1)


async def test_a_fresh_connection_dropped_before_any_answer_is_not_retried() -> None:
    seen: list[bytes] = []

    async def dropping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        seen.append(await read_request(reader) or b"")

    async with raw_server(dropping) as server:
        result = await one_call(server.base)
    assert failed(result)
    assert (len(seen), server.accepted) == (1, 1)


async def test_a_stale_connection_is_retried_once_only() -> None:
    """The retry's fresh connection drops the request too: no answer, and the server saw the
    request twice, no more."""
    seen: list[bytes] = []

    async def stale_then_down(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request)
            if len(seen) > 1:
                return
            writer.write(answer(headers={"Request-Id": f"req_{n}"}))

    server, results = await two_calls(stale_then_down, v1)
    assert results[0].status == 200 and failed(results[1])
    assert (len(seen), server.accepted) == (3, 2)
    assert seen[1] == seen[2]


async def test_a_stale_connection_is_retried() -> None:
    """The retry's success, unparametrized for the uvloop run below."""
    await test_a_reused_connection_dropped_before_any_answer_is_retried_once_with_the_same_key(
        reset, v1
    )


# Bounds: an answer too large is no answer, read no further


HUGE = 300_000_000


async def test_a_300_mb_body_is_no_answer_and_is_not_buffered() -> None:
    """The client stops reading past its body cap: the server gets to push only what the
    sockets' buffers hold, and the client's memory stays bounded (tracemalloc's peak)."""
    pushed = 0

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal pushed
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
        chunk = bytes(1 << 16)
        with contextlib.suppress(ConnectionError):
            while pushed < HUGE:
                writer.write(chunk)
                await writer.drain()
                pushed += len(chunk)

    tracemalloc.start()
    try:
        async with raw_server(huge) as server:
            result = await one_call(server.base)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failed(result)
    assert result.message == f"answer body over {http1.MAX_BODY} bytes"
    assert pushed < HUGE // 10
    assert peak < 8 * http1.MAX_BODY


async def test_a_head_over_the_cap_is_no_answer() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
        with contextlib.suppress(ConnectionError):
            while True:  # one header that never ends, until the client hangs up
                writer.write(b"a" * (1 << 16))
                await writer.drain()

    async with raw_server(endless) as server:
        result = await one_call(server.base)
    assert failed(result)
    assert result.message == f"answer head over {http1.MAX_HEAD} bytes"


async def test_many_headers_over_the_cap_are_no_answer() -> None:
    headers = {f"X-H{i}": "v" * 100 for i in range(2 * http1.MAX_HEAD // 100)}

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(headers=headers))

    async with raw_server(chatty) as server:
        result = await one_call(server.base)
    assert failed(result)
    assert result.message == f"answer head over {http1.MAX_HEAD} bytes"


async def test_a_gzip_bomb_is_no_answer() -> None:
    """64 MiB of zeros in 64 KB of gzip: decoding stops at the body cap."""
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()
    assert len(bomb) < http1.MAX_BODY

    async def bombing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(200, bomb, {"Content-Encoding": "gzip"}))

    tracemalloc.start()
    try:
        async with raw_server(bombing) as server:
            result = await one_call(server.base)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failed(result)
    assert result.message == f"answer body over {http1.MAX_BODY} bytes once decoded"
    assert peak < 8 * http1.MAX_BODY


# Line endings: bare LF is read, as the SDK (aiohttp) reads it


def bare_lf(status: int, body: bytes, chunked: bool) -> bytes:
    """An answer whose lines end in a bare LF wherever aiohttp's parser takes one: the status
    line, the headers and after chunk data (chunk sizes keep their CRLF: aiohttp refuses a
    bare LF there, and so does the lean client, on the same llhttp leniencies)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    head = f"HTTP/1.1 {status} Whatever\nContent-Type: application/json\n{framing}\n"
    head += "Request-Id: req_lf\n\n"
    if not chunked:
        return head.encode() + body
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    return head.encode() + b"".join(b"%x\r\n%s\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("client", ["lean", "sdk"])
async def test_a_bare_lf_answer_is_read_as_the_sdk_reads_it(client: str, chunked: bool) -> None:
    async def lf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(bare_lf(429, json.dumps(ERROR).encode(), chunked))

    async with raw_server(lf) as server:
        sender = StripeSender(KEY, server.base, timeout=5.0, client=client)
        try:
            result, _ = await sender.send(claimed())
        finally:
            await sender.close()
    assert (result.verdict, result.code, result.message) == (
        Verdict.RETRY_SLOWER,
        "rate_limit",
        "slow",
    )
    assert (result.http_status, result.request_id) == (429, "req_lf")


# Failures: the row is retried with the same key


async def test_a_timeout_is_no_answer_and_its_connection_is_not_reused() -> None:
    dropped = asyncio.Event()

    async def silent_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        if n == 0:
            await read_request(reader)
            await until_eof(reader)  # never answers; the client gives up and closes
            dropped.set()
        else:
            await keep_answering(reader, writer, n)

    async with raw_server(silent_first) as server:
        client = lean()
        try:
            timed_out = await wire(client, server.base, timeout=0.05).meter_event(claimed())
            await dropped.wait()
            after = await wire(client, server.base).meter_event(claimed())
        finally:
            await client.close()
    assert failed(timed_out)
    assert timed_out.message == "TimeoutError"
    assert (after.status, after.request_id) == (200, "req_1")


@pytest.mark.parametrize("how", ["reset", "closed"])
async def test_a_server_gone_mid_answer_is_no_answer(how: str) -> None:
    async def gone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(200, b'{"partial": ')[:-3])
        await writer.drain()
        if how == "reset":  # RST rather than FIN
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with raw_server(gone) as server:
        result = await one_call(server.base)
    assert failed(result)


async def test_garbage_is_no_answer() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    async with raw_server(garbage) as server:
        result = await one_call(server.base)
    assert failed(result)
    assert (result.message or "").startswith("malformed HTTP response")


async def test_refused_is_no_answer() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert failed(await one_call(base))


async def test_cancellation_closes_the_connection() -> None:
    arrived, dropped = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        arrived.set()
        await until_eof(reader)
        dropped.set()

    async with raw_server(silent) as server:
        client = lean()
        try:
            call = asyncio.create_task(wire(client, server.base).meter_event(claimed()))
            await arrived.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await dropped.wait()
            await connections_gone(client)
            assert not any(pool._open for pool in client._pools.values())
        finally:
            await client.close()


async def test_close_closes_idle_connections() -> None:
    dropped = asyncio.Event()

    async def answer_then_wait(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        writer.write(answer())
        await until_eof(reader)
        dropped.set()

    async with raw_server(answer_then_wait) as server:
        client = lean()
        result = await wire(client, server.base).meter_event(claimed())
        await client.close()
        await dropped.wait()
    assert result.status == 200


async def test_close_fails_a_call_in_flight() -> None:
    arrived = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(length=False)[:-2])  # a body delimited by the close, under way
        arrived.set()
        await until_eof(reader)

    async with raw_server(silent) as server:
        client = lean()
        call = asyncio.create_task(wire(client, server.base).meter_event(claimed()))
        await arrived.wait()
        await client.close()
        result = await call
    assert failed(result)


async def test_a_control_character_in_a_header_is_refused_without_echoing_it() -> None:
    client = lean()
    sender = wire(client, "http://127.0.0.1:9")
    with pytest.raises(ValueError) as refused:
        await sender.meter_event(claimed(stripe_account="acct_1\r\nX-Injected: yes"))
    assert "acct_1" not in str(refused.value)
    await client.close()


# HTTPS


def tls_pair(ca: trustme.CA) -> ssl.SSLContext:
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_side)
    return server_side


async def test_https_with_a_trusted_ca_keeps_one_verified_connection() -> None:
    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with raw_server(keep_answering, tls=tls_pair(ca)) as server:
        client = lean(tls=trusting)
        try:
            sender = wire(client, server.base)
            results = [await sender.meter_event(claimed()) for _ in range(2)]
        finally:
            await client.close()
    assert [(r.status, r.request_id) for r in results] == [(200, "req_0"), (200, "req_0")]


async def test_https_with_an_unknown_ca_is_no_answer() -> None:
    async with raw_server(keep_answering, tls=tls_pair(trustme.CA())) as server:
        result = await one_call(server.base)  # the system's CAs only
    assert failed(result)
    assert "certificate verify failed" in (result.message or "")


# The request's head


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://api.stripe.com/v1/billing/meter_events", "api.stripe.com"),
        ("https://api.stripe.com:8443/v1/billing/meter_events", "api.stripe.com:8443"),
        ("http://127.0.0.1:80/v1/billing/meter_events", "127.0.0.1"),
        ("http://[::1]:8080/v1/billing/meter_events", "[::1]:8080"),
    ],
)
def test_host_names_the_port_only_when_not_the_default(url: str, host: str) -> None:
    head = http1.Endpoint("POST", url, {"Authorization": "Bearer x"}).head
    assert head.startswith(f"POST /v1/billing/meter_events HTTP/1.1\r\nHost: {host}\r\n".encode())
    assert b"\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n" in head


# The same scenarios on uvloop

UVLOOP = [
    test_sequential_calls_reuse_one_connection,
    test_callers_beyond_the_bound_wait_for_a_free_connection,
    test_an_idle_connection_the_server_closed_is_not_reused,
    test_a_timeout_is_no_answer_and_its_connection_is_not_reused,
    test_cancellation_closes_the_connection,
    test_garbage_is_no_answer,
    test_a_stale_connection_is_retried,
    test_a_stale_connection_is_retried_once_only,
    test_a_reused_connection_dropped_mid_answer_is_not_retried,
    test_a_300_mb_body_is_no_answer_and_is_not_buffered,
    test_a_head_over_the_cap_is_no_answer,
    test_https_with_a_trusted_ca_keeps_one_verified_connection,
    test_https_with_an_unknown_ca_is_no_answer,
]


@pytest.mark.parametrize("scenario", UVLOOP, ids=[s.__name__[5:] for s in UVLOOP])
def test_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
