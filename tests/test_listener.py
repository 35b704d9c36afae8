"""The HTTP listener's hard limits (proxy/listener.py), over real sockets.

A Listener runs in the test's event loop with a small handler that does what flow does first
(check_head); clients are raw sockets, so every byte on the wire is the test's choice.
"""
from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest
from aiohttp import web

from proxy.config import HardLimits
from proxy.errors import Refusal
from proxy.listener import Listener, check_head

#: a guard against a test hanging, never an assertion about time
GUARD_S = 10.0


def _handler(current):
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        try:
            check_head(request, current())  # as flow does first, with the limits in force now
        except Refusal as refusal:
            return refusal.response()
        body = await request.read()
        return web.json_response({"path": request.raw_path, "body_len": len(body), "gzip": body[:2] == b"\x1f\x8b"})

    return handle


@pytest.fixture
async def serve():
    runners = []

    async def start(limits: HardLimits) -> tuple[Listener, int]:
        listener = Listener(None, limits=lambda: limits, handler_cancellation=True, access_log=None)
        listener.request_handler = _handler(lambda: listener.limits())
        runner = web.ServerRunner(listener, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return listener, site._server.sockets[0].getsockname()[1]

    yield start
    for runner in runners:
        await runner.cleanup()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length; (0, {}, b"") when the server closed instead."""
    async with asyncio.timeout(GUARD_S):
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return 0, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    async with asyncio.timeout(GUARD_S):
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await read_response(reader)
        except asyncio.IncompleteReadError:
            return 0, {}, b""
    finally:
        writer.close()


def request(target: str = "/acme-a/_search", headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: sluicegate"] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def es_error(body: bytes) -> tuple[str, str]:
    doc = orjson.loads(body)
    return doc["error"]["type"], doc["error"]["reason"]


LIMITS = HardLimits(max_url_bytes=256, max_header_bytes=1024, max_headers=10)


async def test_a_normal_request_is_served(serve):
    _, port = await serve(LIMITS)
    status, _, body = await exchange(port, request())
    assert status == 200 and orjson.loads(body)["path"] == "/acme-a/_search"


async def test_responses_carry_no_server_header_of_the_proxys_own(serve):
    # Elasticsearch and OpenSearch send no Server header; aiohttp's would name Python's and its own versions.
    _, port = await serve(LIMITS)
    for data in (request(), request("/acme-a/_search?q=" + "x" * 300), b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n"):
        status, headers, _ = await exchange(port, data)
        assert status in (200, 414, 400)
        assert "server" not in headers, headers
        assert "date" in headers  # a proxy adds Date where the origin sent none (RFC 9110 §6.6.1)


@pytest.mark.parametrize("length,status", [(256, 200), (257, 414), (5000, 414)])
async def test_url_length_is_414_es_shaped(serve, length, status):
    _, port = await serve(LIMITS)
    target = "/acme-a/_search?q=" + "x" * (length - len("/acme-a/_search?q="))
    got, headers, body = await exchange(port, request(target))
    assert got == status
    if status == 414:
        assert es_error(body)[0] == "too_long_http_line_exception"
        assert headers["x-elastic-product"] == "Elasticsearch"


async def test_one_huge_header_is_431(serve):
    _, port = await serve(LIMITS)
    status, _, body = await exchange(port, request(headers=[("X-Big", "y" * 5000)]))
    assert status == 431 and es_error(body)[0] == "too_long_http_header_exception"


async def test_headers_that_are_too_large_only_together_are_431(serve):
    _, port = await serve(LIMITS)
    status, _, body = await exchange(port, request(headers=[(f"X-H{i}", "z" * 200) for i in range(6)]))
    assert status == 431 and "max_header_bytes" in es_error(body)[1]


async def test_too_many_headers_is_431(serve):
    _, port = await serve(LIMITS)
    status, _, body = await exchange(port, request(headers=[(f"X-H{i}", "1") for i in range(20)]))
    assert status == 431 and es_error(body)[0] == "too_long_http_header_exception"


async def test_limits_hold_exactly_when_the_parsers_are_looser(serve):
    # A connection's parser limits are fixed when it opens; a reload may lower them after.
    listener, port = await serve(HardLimits(max_url_bytes=8000, max_header_bytes=60000, max_headers=500))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request())
        assert (await read_response(reader))[0] == 200  # the connection is open, with loose parser limits
        listener.limits = lambda: LIMITS  # the "reload"
        writer.write(request("/acme-a/_search?q=" + "x" * 300))
        status, _, body = await read_response(reader)
        assert status == 414 and es_error(body)[0] == "too_long_http_line_exception"
        writer.write(request(headers=[(f"X-H{i}", "1") for i in range(20)]))
        status, _, body = await read_response(reader)
        assert status == 431 and "max_headers" in es_error(body)[1]
    finally:
        writer.close()


@pytest.mark.parametrize("data", [
    b"GET /acme-a/_search HTTP/1.1\r\nHost x\r\n\r\n",  # header without a colon
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to a plain port
    b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /acme-a/_search HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /acme-a/_search HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /acme-a/_search HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /acme-a/_search HTTP/9.9\r\nHost: x\r\n\r\n",
])
async def test_malformed_http_is_400_es_shaped(serve, data):
    _, port = await serve(LIMITS)
    status, headers, body = await exchange(port, data)
    assert status == 400, body
    assert es_error(body)[0] == "parse_exception"
    assert headers["content-type"].startswith("application/json")


async def test_gzip_bodies_reach_the_handler_as_sent(serve):
    _, port = await serve(LIMITS)
    payload = gzip.compress(b'{"query":{"match_all":{}}}')
    status, _, body = await exchange(port, request(headers=[("Content-Encoding", "gzip")], body=payload))
    assert status == 200 and orjson.loads(body) == {"path": "/acme-a/_search", "body_len": len(payload), "gzip": True}


# ---- slowloris --------------------------------------------------------------------------------


async def test_a_slowloris_head_gets_408_and_is_disconnected(serve):
    listener, port = await serve(HardLimits(header_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = request()
    sent = 0

    async def trickle() -> None:  # the attack itself: one byte of the head every 0.1 s
        nonlocal sent
        while sent < len(head):
            writer.write(head[sent:sent + 1])
            sent += 1
            await asyncio.sleep(0.1)

    attack = asyncio.create_task(trickle())
    try:
        status, _, body = await read_response(reader)
        async with asyncio.timeout(GUARD_S):
            assert await reader.read() == b""  # and the connection is closed
    finally:
        attack.cancel()
        writer.close()
    assert status == 408 and es_error(body)[0] == "request_timeout_exception"
    assert sent < len(head)  # cut off long before the head was complete
    assert listener.header_timeouts == 1


async def test_a_silent_new_connection_is_closed_without_a_response(serve):
    listener, port = await serve(HardLimits(header_timeout_s=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(GUARD_S):
            assert await reader.read() == b""  # EOF: closed by the server
    finally:
        writer.close()
    assert listener.header_timeouts == 1


async def test_an_idle_keep_alive_connection_is_keepalive_timeouts_not_the_head_timers(serve):
    listener, port = await serve(HardLimits(header_timeout_s=0.2, keepalive_timeout_s=30))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request())
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.6)  # idle between requests, three header timeouts long
        writer.write(request())
        assert (await read_response(reader))[0] == 200
    finally:
        writer.close()
    assert listener.header_timeouts == 0


async def test_pipelined_requests_are_all_served(serve):
    _, port = await serve(HardLimits(header_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request("/a-1/_search") + request("/a-2/_search") + request("/a-3/_search"))
        paths = [orjson.loads((await read_response(reader))[2])["path"] for _ in range(3)]
    finally:
        writer.close()
    assert paths == ["/a-1/_search", "/a-2/_search", "/a-3/_search"]


# ---- connections per client -------------------------------------------------------------------


async def test_connections_beyond_the_per_client_limit_are_closed_at_once(serve):
    listener, port = await serve(HardLimits(max_connections_per_client=3))
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        for reader, writer in held:  # each is served
            writer.write(request())
            assert (await read_response(reader))[0] == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request())
        async with asyncio.timeout(GUARD_S):
            assert await reader.read() == b""  # closed without an answer
        writer.close()
        assert listener.refused_connections == 1
        held.pop()[1].close()  # one of the three goes away: room for one more
        async with asyncio.timeout(GUARD_S):
            while sum(listener.per_client.values()) > 2:
                await asyncio.sleep(0.01)  # the server sees the close
        status, _, _ = await exchange(port, request())
        assert status == 200
    finally:
        for _, writer in held:
            writer.close()
