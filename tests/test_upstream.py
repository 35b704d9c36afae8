"""The upstream side against real TCP servers: framing, keep-alive, retries, health, faults."""
from __future__ import annotations

import asyncio
import time

import pytest

from proxy.config import UpstreamConfig
from proxy.errors import UpstreamFailure
from proxy.upstream import Node, Upstream, passed_fields
from proxy.upstream_http import HIGH_WATER, MAX_HEAD, request_head
from tests.processes import free_port


class RawServer:
    """A TCP server whose per-connection behaviour is a coroutine (reader, writer) -> None."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        async def on_connect(reader, writer):
            self.connections += 1
            try:
                await self.behaviour(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def read_request(self, reader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def keep_alive(server, reader, writer):
    while True:
        request = await server.read_request(reader)
        if request.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 123\r\n\r\n")
        else:
            writer.write(ok(b'{"took":1}'))
        await writer.drain()


def upstream_for(*urls: str, **overrides) -> Upstream:
    config = {"nodes": list(urls), "health_interval_s": 3600, "node_cooldown_s": 60, "connect_timeout_s": 1.0}
    config.update(overrides)
    return Upstream(UpstreamConfig(**config))


def bare_upstream(*urls: str, **overrides) -> Upstream:
    """An Upstream with its nodes but no start(): no health probe touches the servers' connections."""
    upstream = upstream_for(*urls, **overrides)
    upstream.nodes = [Node(url, 4) for url in urls]
    return upstream


async def fetch(upstream: Upstream, method="GET", target="/i/_search", body=None, retry=True):
    response = await upstream.send(method, target, b"X-Test: 1\r\n", body, retry)
    try:
        return response.node, response.status, await response.read(), response
    finally:
        response.release()


async def test_keep_alive_connection_is_reused():
    async with RawServer(keep_alive) as server:
        upstream = upstream_for(server.url)
        await upstream.start()
        for _ in range(5):
            _, status, body, _ = await fetch(upstream, "POST", body=b'{"query":{}}')
            assert (status, body) == (200, b'{"took":1}')
        await upstream.close()
    assert server.connections == 1  # the health probe and all five requests shared one connection
    assert server.requests[-1].endswith(b'{"query":{}}')
    assert b"Content-Length: 12\r\n" in server.requests[-1]


async def test_head_response_has_no_body_whatever_its_content_length():
    async with RawServer(keep_alive) as server:
        upstream = upstream_for(server.url)
        await upstream.start()
        _, status, body, response = await fetch(upstream, "HEAD", "/i")
        assert (status, body, response.content_length) == (200, b"", 123)
        _, status, body, _ = await fetch(upstream)  # the connection is still in sync
        assert body == b'{"took":1}'
        await upstream.close()


async def test_chunked_response_is_decoded_across_arbitrary_splits():
    payload = [b'{"took":2,', b'"hits":', b"[" + b"x" * 5000 + b"]}"]

    async def chunked(server, reader, writer):
        await server.read_request(reader)
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for piece in payload:
            raw += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
        raw += b"0\r\nX-Trailer: t\r\n\r\n"
        for i in range(0, len(raw), 7):  # dribble it out in 7-byte writes
            writer.write(raw[i:i + 7])
            await writer.drain()
        await server.read_request(reader)
        writer.write(ok(b"second"))
        await writer.drain()
        await reader.read()

    async with RawServer(chunked) as server:
        upstream = bare_upstream(server.url)
        _, status, body, _ = await fetch(upstream)
        assert body == b"".join(payload)
        _, _, body, _ = await fetch(upstream)
        assert body == b"second"  # the connection was reused after the terminal chunk
        assert server.connections == 1
        await upstream.close()


def resource_usage_head(headers: int) -> bytes:
    """A response head like OpenSearch 2.x's to a long by-query call: a TASK_RESOURCE_USAGE header per task."""
    usage = b'TASK_RESOURCE_USAGE: {"action":"indices:data/read/search[phase/query/scroll]","taskId":%d,' \
            b'"parentTaskId":16689,"nodeId":"q-Q-_2foQVyxQ32jTpzRBw","taskResourceUsage":{"cpu_time_in_nanos":' \
            b'1027344,"memory_in_bytes":160104}}\r\n'
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n" + b"".join(
        usage % i for i in range(headers)) + b"\r\n"


@pytest.mark.parametrize("segment", [None, 1460], ids=["one-write", "in-segments"])
async def test_a_long_head_of_real_opensearch_headers_is_read_however_it_arrives(segment):
    head = resource_usage_head(600)  # a delete_by_query of 30,000 docs in batches of 100: 134 KB
    assert 1 << 16 < len(head) < MAX_HEAD

    async def long_head(server, reader, writer):
        await server.read_request(reader)
        raw = head + b'{"took":1}'
        for i in range(0, len(raw), segment or len(raw)):
            writer.write(raw[i:i + (segment or len(raw))])
            await writer.drain()
            await asyncio.sleep(0)  # let the proxy read each segment on its own, as it would off a network
        await reader.read()

    async with RawServer(long_head) as server:
        upstream = bare_upstream(server.url)
        _, status, body, response = await fetch(upstream, "POST", "/i/_delete_by_query", b"{}", retry=False)
        assert status == 200 and body == b'{"took":1}'
        assert sum(1 for name, _ in response.headers if name == "TASK_RESOURCE_USAGE") == 600
        await upstream.close()


async def test_a_head_over_the_limit_is_502_even_when_it_arrives_in_one_read():
    head = resource_usage_head(MAX_HEAD // 200)
    assert len(head) > MAX_HEAD

    async def huge_head(server, reader, writer):
        await server.read_request(reader)
        writer.write(head + b'{"took":1}')
        await writer.drain()
        await reader.read()

    async with RawServer(huge_head) as server:
        upstream = bare_upstream(server.url)
        with pytest.raises(UpstreamFailure) as info:
            await fetch(upstream, "POST", "/i/_delete_by_query", b"{}", retry=False)
        assert info.value.status == 502
        await upstream.close()


async def test_close_delimited_body_ends_at_close_and_is_not_reused():
    async def close_delimited(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-the-end")
        await writer.drain()

    async with RawServer(close_delimited) as server:

        upstream = bare_upstream(server.url)
        for _ in range(2):
            _, status, body, _ = await fetch(upstream)
            assert body == b"until-the-end"
        assert server.connections == 2
        await upstream.close()


async def test_stale_keep_alive_connection_is_replaced_transparently_even_for_writes():
    async def one_request_per_connection(server, reader, writer):
        await server.read_request(reader)
        writer.write(ok(b"fresh"))  # says nothing about closing, then closes: a stale idle connection
        await writer.drain()

    async with RawServer(one_request_per_connection) as server:

        upstream = bare_upstream(server.url)
        for _ in range(3):
            _, status, body, _ = await fetch(upstream, "POST", "/i/_bulk", b"{}\n", retry=False)
            assert body == b"fresh"
        assert len(server.requests) == 3  # each write reached the node exactly once
        await upstream.close()


async def test_a_read_on_a_connection_the_node_closed_goes_again_on_a_fresh_one():
    # A read skips the peek a write makes before reusing a connection: if the node had closed it, the read
    # fails early and is sent once more on a new connection, as if nothing had happened.
    async def one_request_per_connection(server, reader, writer):
        await server.read_request(reader)
        writer.write(ok(b"fresh"))
        await writer.drain()

    async with RawServer(one_request_per_connection) as server:

        upstream = bare_upstream(server.url)
        for _ in range(3):
            _, status, body, _ = await fetch(upstream, "POST", "/i/_search", b"{}", retry=True)
            assert status == 200 and body == b"fresh"
        assert len(server.requests) == 3
        await upstream.close()


async def test_refused_node_is_skipped_and_marked_down():
    dead = f"http://127.0.0.1:{free_port()}"
    async with RawServer(keep_alive) as server:
        upstream = upstream_for(dead, server.url)
        await upstream.start()
        assert not upstream.nodes[0].healthy and upstream.nodes[1].healthy
        assert upstream.ready
        for _ in range(4):
            node, status, _, _ = await fetch(upstream, "POST", "/i/_doc", b"{}", retry=False)
            assert node.url == server.url and status == 200
        await upstream.close()


async def test_no_usable_node_is_503_and_all_refusing_is_502():
    upstream = upstream_for(f"http://127.0.0.1:{free_port()}")
    await upstream.start()
    assert not upstream.ready
    with pytest.raises(UpstreamFailure) as info:
        await fetch(upstream)
    assert info.value.status == 503
    upstream.nodes[0].healthy = True  # pretend the probe was optimistic: the connect itself fails
    with pytest.raises(UpstreamFailure) as info:
        await fetch(upstream)
    assert info.value.status == 502 and "unreachable" in info.value.reason
    await upstream.close()


async def test_silent_node_times_out_with_504():
    silence = asyncio.Event()

    async def silent(server, reader, writer):
        await server.read_request(reader)
        await silence.wait()

    async with RawServer(silent) as server:

        upstream = bare_upstream(server.url, request_timeout_s=0.2)
        with pytest.raises(UpstreamFailure) as info:
            await fetch(upstream)
        assert info.value.status == 504
        silence.set()
        await upstream.close()


async def test_a_kept_alive_connection_times_out_its_later_requests_on_their_own_deadline():
    silence = asyncio.Event()

    async def answers_then_falls_silent(server, reader, writer):
        for _ in range(3):  # answered at once: each moves the connection's deadline on
            await server.read_request(reader)
            writer.write(ok(b'{"took":1}'))
            await writer.drain()
        await server.read_request(reader)
        await silence.wait()

    async with RawServer(answers_then_falls_silent) as server:
        upstream = bare_upstream(server.url, request_timeout_s=0.3)
        for _ in range(3):
            await fetch(upstream)
            await asyncio.sleep(0.15)  # the first request's deadline passes while the connection is in use
        started = time.monotonic()
        with pytest.raises(UpstreamFailure) as info:
            await fetch(upstream)
        assert info.value.status == 504
        assert 0.25 <= time.monotonic() - started < 1.0  # the silent request's own 0.3 s, not an older deadline
        assert server.connections == 1
        silence.set()
        await upstream.close()


async def test_garbage_from_node_is_502_for_writes_and_retried_for_reads():
    async def garbage(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with RawServer(garbage) as bad, RawServer(keep_alive) as good:

        upstream = bare_upstream(bad.url, good.url)
        with pytest.raises(UpstreamFailure) as info:
            await fetch(upstream, "POST", "/i/_doc", b"{}", retry=False)
        assert info.value.status == 502
        upstream.nodes[0].down_until = 0
        upstream._next = 0
        node, status, _, _ = await fetch(upstream, "GET", "/i/_search", retry=True)
        assert node.url == good.url and status == 200
        await upstream.close()


async def test_slow_consumer_pauses_the_node_and_memory_stays_bounded():
    total = 8 * HIGH_WATER

    async def firehose(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"y" * 65536
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    async with RawServer(firehose) as server:

        upstream = bare_upstream(server.url)
        response = await upstream.send("GET", "/big", b"", None, True)
        received = 0
        peak = 0
        async for chunk in response.iter_chunks():
            received += len(chunk)
            peak = max(peak, response.buffered)
            await asyncio.sleep(0)  # a consumer slower than loopback
        response.release()
        assert received == total
        assert peak <= HIGH_WATER + 2 * 65536 + 262144
        await upstream.close()


async def test_forward_fields_drop_credentials_and_hop_by_hop():
    upstream = upstream_for("http://127.0.0.1:1", auth={"api_key": "proxy-key"})
    incoming = [(b"Authorization", b"ApiKey tenant-secret"), (b"Connection", b"keep-alive"), (b"Keep-Alive", b"5"),
                (b"Expect", b"100-continue"), (b"Content-Type", b"application/json"), (b"X-Opaque-Id", b"abc"),
                (b"X-Forwarded-For", b"10.1.1.1"), (b"Host", b"proxy"), (b"Content-Length", b"2"),
                (b"Accept-Encoding", b"gzip")]
    passed = passed_fields(incoming)
    # X-Opaque-Id is not passed as the client sent it: flow forwards it behind the tenant (proxy/opaque.py)
    assert passed == b"Content-Type: application/json\r\nAccept-Encoding: gzip\r\n"
    assert upstream.forward_fields(passed, b"10.1.1.1", "127.0.0.9", "http") == passed + (
        b"X-Forwarded-For: 10.1.1.1, 127.0.0.9\r\nX-Forwarded-Proto: http\r\nAuthorization: ApiKey proxy-key\r\n")
    # A rebound request drops more (a body re-serialised plain); behind TLS the proto says so.
    passed = passed_fields(incoming, frozenset({b"accept-encoding"}))
    assert b"Accept-Encoding" not in passed
    assert b"X-Forwarded-Proto: https\r\n" in upstream.forward_fields(passed, None, "127.0.0.9", "https")


def test_the_request_head_is_built_as_bytes():
    head = request_head("POST", "/i/_search?q=caf%C3%A9", b"es1:9200", b"X-A: 1\r\n", 12)
    assert head == b"POST /i/_search?q=caf%C3%A9 HTTP/1.1\r\nHost: es1:9200\r\nX-A: 1\r\nContent-Length: 12\r\n\r\n"
    assert request_head("GET", "/", "es1", [("X-A", "1")], 0) == b"GET / HTTP/1.1\r\nHost: es1\r\nX-A: 1\r\n\r\n"
