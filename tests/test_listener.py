"""The HTTP listener (proxy/listener.py) over real sockets: hard limits, timeouts, keep-alive, pipelining.

A Listener runs in the test's event loop with a small application that answers with what it
received (`echo`); clients are raw sockets, so every byte on the wire is the test's choice.
"""
from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest

from proxy.config import HardLimits
from proxy.errors import Refusal
from proxy.listener import Listener, Request

#: a guard against a test hanging, never an assertion about time
GUARD_S = 10.0


async def echo(request: Request) -> None:
    """Answer with the target, the body's length and whether it is gzip: what the application received."""
    try:
        body = request.body if request.complete else await request.read_body(1 << 20, 5.0)
    except Refusal as refusal:
        request.respond(refusal.status, refusal.fields(), refusal.body())
        return
    doc = {"path": request.target, "body_len": len(body), "gzip": body[:2] == b"\x1f\x8b", "method": request.method}
    request.respond(200, b"Content-Type: application/json\r\n", orjson.dumps(doc))


@pytest.fixture
async def serve():
    started = []

    async def start(limits: HardLimits, app=echo) -> tuple[Listener, int]:
        listener = Listener(app, limits=lambda: limits)
        server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0)
        started.append((server, listener))
        return listener, server.sockets[0].getsockname()[1]

    yield start
    for server, listener in started:
        server.close()
        listener.close_all()


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


async def test_limits_in_force_when_a_request_begins_hold_on_connections_opened_before(serve):
    # Limits are read when each request begins: a reload applies to the next request on an open connection.
    listener, port = await serve(HardLimits(max_url_bytes=8000, max_header_bytes=60000, max_headers=500))
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        for reader, writer in opened:
            writer.write(request("/acme-a/_search?q=" + "x" * 300))
            assert (await read_response(reader))[0] == 200  # open, kept alive, under the loose limits
        listener.limits = lambda: LIMITS  # the "reload"
        (reader, writer), (reader2, writer2) = opened
        writer.write(request("/acme-a/_search?q=" + "x" * 300))
        status, headers, body = await read_response(reader)
        assert status == 414 and es_error(body)[0] == "too_long_http_line_exception"
        assert headers["connection"] == "close"  # the rest of that head was never read: the connection ends
        writer2.write(request(headers=[(f"X-H{i}", "1") for i in range(20)]))
        status, _, body = await read_response(reader2)
        assert status == 431 and "max_headers" in es_error(body)[1]
    finally:
        for _, writer in opened:
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
    assert status == 200 and orjson.loads(body) == {"path": "/acme-a/_search", "body_len": len(payload), "gzip": True,
                                                    "method": "POST"}


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
