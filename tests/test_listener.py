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
from proxy.listener import ClientGone, Listener, Request

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
        listener = Listener(app, limits=limits)
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


async def test_limits_in_force_when_a_request_begins_hold_on_connections_opened_before(serve):
    # Limits are read when each request begins: a reload applies to the next request on an open connection.
    listener, port = await serve(HardLimits(max_url_bytes=8000, max_header_bytes=60000, max_headers=500))
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        for reader, writer in opened:
            writer.write(request("/acme-a/_search?q=" + "x" * 300))
            assert (await read_response(reader))[0] == 200  # open, kept alive, under the loose limits
        listener.limits = LIMITS  # the "reload"
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


# ---- pipelining and splitting ------------------------------------------------------------------


async def test_pipelined_requests_are_served_one_at_a_time_in_order(serve):
    events: list[str] = []
    release = asyncio.Event()

    async def app(request: Request) -> None:
        events.append("start " + request.target)
        if request.target == "/slow":
            await release.wait()  # the first request takes long; the second must still come second
        events.append("end " + request.target)
        request.respond(200, b"", request.target.encode())

    _, port = await serve(LIMITS, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request("/slow") + request("/fast") + request("/last"))
        async with asyncio.timeout(GUARD_S):
            while not events:
                await asyncio.sleep(0.01)
        assert events == ["start /slow"]  # the ones behind it have not started
        release.set()
        bodies = [(await read_response(reader))[2] for _ in range(3)]
    finally:
        writer.close()
    assert bodies == [b"/slow", b"/fast", b"/last"]
    assert events == ["start /slow", "end /slow", "start /fast", "end /fast", "start /last", "end /last"]


def _echo_all(seen: list):
    async def app(request: Request) -> None:
        body = request.body if request.complete else await request.read_body(1 << 20, 5.0)
        seen.append((request.method, request.target, request.version, list(request.headers), body))
        request.respond(200, b"X-Echo: yes\r\n", b"%s %s %d" % (request.method.encode(), request.target.encode(), len(body)))
    return app


#: three requests as one client might pipeline them: a body by Content-Length, a chunked body with an
#: extension and a trailer, and a GET; every split point of these bytes must give the same three requests
PIPELINE = (
    b"POST /acme-a/_search?q=x%20y HTTP/1.1\r\nHost: sluicegate\r\nAuthorization: ApiKey acme-key\r\n"
    b"Content-Type: application/json\r\nContent-Length: 26\r\n\r\n{\"query\":{\"match_all\":{}}}"
    b"POST /acme-a/_bulk HTTP/1.1\r\nHost: sluicegate\r\nContent-Type: application/x-ndjson\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"b;ext=1\r\n{\"index\":{}\r\n8\r\n}\n{\"a\":1\r\n2\r\n}\n\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"GET /acme-a/_doc/1 HTTP/1.1\r\nHost: sluicegate\r\nAccept: */*\r\n\r\n"
)
EXPECTED = [
    ("POST", "/acme-a/_search?q=x%20y", "1.1",
     [(b"Host", b"sluicegate"), (b"Authorization", b"ApiKey acme-key"), (b"Content-Type", b"application/json"),
      (b"Content-Length", b"26")], b'{"query":{"match_all":{}}}'),
    ("POST", "/acme-a/_bulk", "1.1",
     [(b"Host", b"sluicegate"), (b"Content-Type", b"application/x-ndjson"), (b"Transfer-Encoding", b"chunked")],
     b'{"index":{}}\n{"a":1}\n'),
    ("GET", "/acme-a/_doc/1", "1.1", [(b"Host", b"sluicegate"), (b"Accept", b"*/*")], b""),
]


async def _connected(listener: Listener):
    """A real connection to `listener` over a socket pair: (the protocol, the client's end)."""
    import socket

    ours, theirs = socket.socketpair()
    _, conn = await asyncio.get_running_loop().connect_accepted_socket(listener, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    return conn, reader, writer


async def _three_responses(reader) -> list[bytes]:
    out = []
    for _ in range(3):
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["x-echo"] == "yes"
        out.append(body)
    return out


@pytest.mark.parametrize("split", range(1, len(PIPELINE)))
async def test_a_request_split_at_any_byte_is_the_same_request(split):
    # The bytes reach the protocol exactly as split (as two reads would deliver them), then three answers come back.
    seen: list = []
    listener = Listener(_echo_all(seen), limits=LIMITS)
    conn, reader, writer = await _connected(listener)
    try:
        conn.data_received(PIPELINE[:split])
        conn.data_received(PIPELINE[split:])
        bodies = await _three_responses(reader)
    finally:
        writer.close()
        listener.close_all()
    assert seen == EXPECTED
    assert bodies == [b"POST /acme-a/_search?q=x%20y 26", b"POST /acme-a/_bulk 21", b"GET /acme-a/_doc/1 0"]


async def test_a_request_fed_one_byte_at_a_time_is_the_same_request():
    seen: list = []
    listener = Listener(_echo_all(seen), limits=LIMITS)
    conn, reader, writer = await _connected(listener)
    try:
        for i in range(len(PIPELINE)):
            conn.data_received(PIPELINE[i:i + 1])
            await asyncio.sleep(0)  # let a request whose body is still coming read what there is
        await _three_responses(reader)
    finally:
        writer.close()
        listener.close_all()
    assert seen == EXPECTED


async def test_a_pipelined_flood_is_not_read_while_requests_wait(serve):
    release = asyncio.Event()

    async def app(request: Request) -> None:
        await release.wait()
        request.respond(200, b"", b"")

    listener, port = await serve(LIMITS, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request() * 3)
        async with asyncio.timeout(GUARD_S):
            while not listener.connections:
                await asyncio.sleep(0.01)
        (conn,) = listener.connections
        async with asyncio.timeout(GUARD_S):
            while not conn._reading_paused:
                await asyncio.sleep(0.01)
        assert not conn.transport.is_reading()  # requests wait behind the first: read no further
        release.set()
        for _ in range(3):
            assert (await read_response(reader))[0] == 200
        assert conn.transport.is_reading()
    finally:
        writer.close()


# ---- HTTP features --------------------------------------------------------------------------------


async def test_expect_100_continue_is_answered_before_the_body_is_sent(serve):
    _, port = await serve(LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b'{"query":{}}'
        writer.write(b"POST /acme-a/_search HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        async with asyncio.timeout(GUARD_S):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        status, _, answer = await read_response(reader)
    finally:
        writer.close()
    assert status == 200 and orjson.loads(answer)["body_len"] == len(body)


async def test_http_1_0_closes_after_the_response_unless_asked_to_keep_alive(serve):
    _, port = await serve(LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /acme-a/_search HTTP/1.0\r\n\r\n")  # no Host needed in 1.0
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        async with asyncio.timeout(GUARD_S):
            assert await reader.read() == b""
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(b"GET /acme-a/_search HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers["connection"] == "keep-alive"
    finally:
        writer.close()


async def test_connection_close_from_the_client_is_honoured(serve):
    _, port = await serve(LIMITS)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(headers=[("Connection", "close")]) + request("/never/_search"))
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        async with asyncio.timeout(GUARD_S):
            assert await reader.read() == b""  # the request after it is not served
    finally:
        writer.close()


async def test_head_gets_the_length_a_get_would_get_and_no_body(serve):
    async def app(request: Request) -> None:
        request.respond(200, b"Content-Type: application/json\r\n", b'{"found":true}')

    _, port = await serve(LIMITS, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"HEAD /acme-a/_doc/1 HTTP/1.1\r\nHost: x\r\n\r\n" + request())
        async with asyncio.timeout(GUARD_S):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 14\r\n" in head
        status, _, body = await read_response(reader)  # the next response follows at once: no body was sent
        assert status == 200 and body == b'{"found":true}'
    finally:
        writer.close()


def _streaming(pieces: list[bytes], length: int | None):
    async def app(request: Request) -> None:
        request.begin(200, b"Content-Type: application/json\r\n", length)
        for piece in pieces:
            request.send(piece)
            if request.writing_paused:
                await request.drain()
        request.end()
    return app


async def test_a_streamed_response_of_unknown_length_is_chunked_and_the_connection_kept(serve):
    pieces = [b'{"hits":[', b"1,2,3", b"]}"]
    _, port = await serve(LIMITS, _streaming(pieces, None))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(request())
            async with asyncio.timeout(GUARD_S):
                head = await reader.readuntil(b"\r\n\r\n")
                assert b"Transfer-Encoding: chunked\r\n" in head
                raw = await reader.readuntil(b"0\r\n\r\n")
            assert raw == b"9\r\n{\"hits\":[\r\n5\r\n1,2,3\r\n2\r\n]}\r\n0\r\n\r\n"
    finally:
        writer.close()


async def test_a_streamed_response_to_http_1_0_ends_with_the_connection(serve):
    _, port = await serve(LIMITS, _streaming([b"abc", b"def"], None))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        async with asyncio.timeout(GUARD_S):
            raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"chunked" not in head and body == b"abcdef"


# ---- bodies: limits and timeouts ---------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_and_the_connection_closed(serve):
    async def app(request: Request) -> None:
        try:
            body = request.body if request.complete and not request.too_large else await request.read_body(100, 5.0)
        except Refusal as refusal:
            request.respond(refusal.status, refusal.fields(), refusal.body())
            return
        request.respond(200, b"", body)

    _, port = await serve(HardLimits(max_body_bytes=100), app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"40\r\n" + b"x" * 64 + b"\r\n" + b"40\r\n" + b"y" * 64 + b"\r\n")  # 128 bytes and counting
        status, headers, body = await read_response(reader)
        assert status == 413 and es_error(body)[0] == "content_too_long_exception"
        assert headers["connection"] == "close"
        async with asyncio.timeout(GUARD_S):
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_a_body_that_stops_coming_is_408_after_the_body_timeout(serve):
    async def app(request: Request) -> None:
        try:
            await request.read_body(1 << 20, 0.3)
        except Refusal as refusal:
            request.respond(refusal.status, refusal.fields(), refusal.body())

    _, port = await serve(LIMITS, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"query\":")
        status, headers, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 408 and es_error(body)[0] == "request_timeout_exception"
    assert headers["connection"] == "close"


# ---- the application's failures, the client's departure, draining -----------------------------


async def test_an_application_that_fails_gets_its_request_a_500_not_a_hang(serve):
    async def app(request: Request) -> None:
        raise RuntimeError("a bug")

    _, port = await serve(LIMITS, app)
    status, _, body = await exchange(port, request())
    assert status == 500 and es_error(body)[0] == "proxy_internal_exception"


async def test_a_keep_alive_connection_is_served_by_one_task_that_ends_with_it(serve):
    tasks: list[asyncio.Task] = []

    async def app(request: Request) -> None:
        tasks.append(asyncio.current_task())
        if request.target == "/cancelled":  # as the proxy cancels a runaway request, and answers it itself
            task = asyncio.current_task()
            asyncio.get_running_loop().call_soon(task.cancel)
            try:
                await asyncio.sleep(GUARD_S)
            except asyncio.CancelledError:
                task.uncancel()
                request.respond(504, b"", b"cancelled")
                return
        request.respond(200, b"", request.target.encode())

    _, port = await serve(LIMITS, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bodies = []
    for target in ("/a", "/cancelled", "/b"):
        writer.write(request(target))
        bodies.append((await read_response(reader))[2])
    writer.write(request("/c") + request("/d"))  # pipelined: the second is handed to the task the first ran in
    bodies += [(await read_response(reader))[2] for _ in range(2)]
    assert bodies == [b"/a", b"cancelled", b"/b", b"/c", b"/d"]
    assert len(tasks) == 5 and all(task is tasks[0] for task in tasks)
    assert not tasks[0].done()  # waiting for the next request
    writer.close()
    done, _ = await asyncio.wait(tasks[:1], timeout=GUARD_S)
    assert done and tasks[0].cancelled()  # ended with the connection


async def test_a_client_that_leaves_cancels_its_request(serve):
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def app(request: Request) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    _, port = await serve(LIMITS, app)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request())
    async with asyncio.timeout(GUARD_S):
        await started.wait()
    writer.close()
    async with asyncio.timeout(GUARD_S):
        await cancelled.wait()


async def test_draining_closes_idle_connections_now_and_busy_ones_after_their_response(serve):
    release = asyncio.Event()

    async def app(request: Request) -> None:
        if request.target == "/slow":
            await release.wait()
        request.respond(200, b"", b"ok")

    listener, port = await serve(LIMITS, app)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        idle_writer.write(request())
        assert (await read_response(idle_reader))[0] == 200
        busy_writer.write(request("/slow"))
        async with asyncio.timeout(GUARD_S):
            while not any(conn.busy for conn in listener.connections):
                await asyncio.sleep(0.01)
        listener.drain()
        async with asyncio.timeout(GUARD_S):
            assert await idle_reader.read() == b""  # closed at once
        release.set()
        status, headers, body = await read_response(busy_reader)
        assert (status, body, headers["connection"]) == (200, b"ok", "close")
        async with asyncio.timeout(GUARD_S):
            assert await busy_reader.read() == b""
    finally:
        idle_writer.close()
        busy_writer.close()


# ---- TLS: the listener is transport-agnostic ------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_the_listener_serves_over_tls_and_says_https(tls_files):
    import ssl

    cert, key = tls_files
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    client_side = ssl.create_default_context(cafile=str(cert))
    schemes = []

    async def app(request: Request) -> None:
        schemes.append(request.scheme)
        await echo(request)

    listener = Listener(app, limits=LIMITS)
    server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0, ssl=server_side)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_side)
        try:
            for path in ("/acme-a/_search", "/acme-b/_search"):  # kept alive across requests
                writer.write(request(path, body=b'{"query":{}}'))
                status, _, body = await read_response(reader)
                assert status == 200 and orjson.loads(body)["path"] == path
        finally:
            writer.close()
    finally:
        server.close()
        listener.close_all()
    assert schemes == ["https", "https"]


async def test_a_client_that_reads_nothing_is_cut_at_the_write_timeout(serve):
    """Issue 17: neither a streamed response nor one written whole can be held by a client that never reads."""
    import socket

    streaming_ended: asyncio.Future = asyncio.get_running_loop().create_future()

    async def big(request: Request) -> None:
        if request.target == "/whole":
            request.respond(200, b"", b"x" * (32 << 20))  # in the transport's buffer: nobody waits on it
            return
        request.begin(200, b"", None)
        try:
            while True:
                request.send(b"y" * 65536)
                if request.writing_paused:
                    await request.drain()
        except (ClientGone, asyncio.CancelledError) as exc:
            streaming_ended.set_result(type(exc).__name__)
            raise

    listener, port = await serve(HardLimits(client_write_timeout_s=0.5), big)
    for cut, target in enumerate((b"/whole", b"/stream"), 1):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        async with asyncio.timeout(GUARD_S):
            while listener.write_timeouts < cut:  # cut by the proxy, not by this client
                await asyncio.sleep(0.01)
            while listener.connections:
                await asyncio.sleep(0.01)
        writer.close()
    assert listener.write_timeouts == 2
    assert await asyncio.wait_for(streaming_ended, GUARD_S) in ("ClientGone", "CancelledError")
