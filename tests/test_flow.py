"""The request path's own pieces that need no processes: the per-snapshot memos of bodies and estimates."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from proxy import esapi, flow
from proxy.config import hash_secret, parse_config
from proxy.cost import IndexSizes
from proxy.flow import Snapshot

#: a guard against a test hanging, never an assertion about time
GUARD_S = 10.0

CONFIG = {"upstream": {"nodes": ["http://127.0.0.1:9200"]}, "plans": {"p": {}},
          "tenants": {"acme": {"plan": "p", "api_keys": [hash_secret("k")], "indices": ["acme-*"]}}}


def _estimate(snap: Snapshot, raw: bytes, content_type: str = "application/json", target: str = "/acme-x/_search",
              sizes: IndexSizes | None = None):
    call = esapi.parse_call("POST", target)
    body = esapi.decode_body(call, raw, content_type, None, snap.config.limits)
    return snap.estimate("POST", target, content_type, call, body, sizes), snap.cost_model.estimate(call, body, sizes)


def test_the_estimate_memo_gives_what_the_cost_model_gives_and_stays_bounded():
    snap = Snapshot(parse_config(CONFIG), 1, "x")
    cheap, wild = b'{"query":{"match":{"m":"x"}}}', b'{"query":{"wildcard":{"m":"*x*"}}}'
    for raw in (cheap, wild, cheap, wild):
        remembered, computed = _estimate(snap, raw)
        assert remembered == computed
    assert len(snap._estimates) == 2
    # The same bytes under another Content-Type are another request (what is parsed depends on it).
    remembered, computed = _estimate(snap, wild, "application/vnd.elasticsearch+json; compatible-with=9")
    assert remembered == computed
    assert len(snap._estimates) == 3
    big = b'{"query":{"match":{"m":"' + b"x" * flow.MEMO_BYTES + b'"}}}'
    assert _estimate(snap, big)[0] == _estimate(snap, big)[1]
    assert len(snap._estimates) == 3  # too large to remember
    snap._estimates.size = 4
    for size in range(10):
        _estimate(snap, b'{"size":%d}' % size)
        assert len(snap._estimates) <= 5


def test_the_estimate_memo_starts_afresh_with_each_poll_of_the_index_sizes():
    snap = Snapshot(parse_config(CONFIG), 1, "x")
    agg = b'{"size":0,"aggs":{"a":{"terms":{"field":"f","size":1000}}}}'
    unknown, _ = _estimate(snap, agg)
    small = IndexSizes({"acme-x": 1_000})
    big = IndexSizes({"acme-x": 10_000_000})
    at_small, computed = _estimate(snap, agg, sizes=small)
    assert at_small == computed
    at_big, computed = _estimate(snap, agg, sizes=big)
    assert at_big == computed and at_big.cost > at_small.cost  # not the estimate remembered from the last poll
    assert _estimate(snap, agg)[0] == unknown


# ---- the body memo, through a real listener and Proxy.handle against a node that answers at once ----------


class Node:
    """A node on a free loopback port that records each request's body and answers at once."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.slow, self.abandoned = asyncio.Event(), asyncio.Event()

    async def start(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            answer = b'{"took":1,"responses":[]}'
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    body = await reader.readexactly(length) if length else b""
                    if not head.startswith(b"GET / "):  # not the health check
                        self.bodies.append(body)
                    if b"/_slow/" in head.split(b"\r\n", 1)[0]:  # never answers; notes when it is abandoned
                        self.slow.set()
                        await reader.read()
                        self.abandoned.set()
                        break
                    if b"/_stream/" in head.split(b"\r\n", 1)[0]:
                        await self.stream(writer, chunked=b"chunked" in head.split(b"\r\n", 1)[0])
                        continue
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(answer), answer))
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    #: a large search response, written as fast as the proxy takes it
    STREAM_CHUNKS = 1024
    CHUNK = b'{"_id":"x"},' * (65536 // 12)
    STREAM_BYTES = len(b'{"took":1,"hits":[') + STREAM_CHUNKS * len(CHUNK) + len(b"{}]}")

    async def stream(self, writer: asyncio.StreamWriter, chunked: bool) -> None:
        self.sent = 0
        pieces = [b'{"took":1,"hits":[', *([self.CHUNK] * self.STREAM_CHUNKS), b"{}]}"]
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % self.STREAM_BYTES)
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            self.sent += len(piece)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()


@contextlib.asynccontextmanager
async def served(config_doc: dict):
    """A Proxy behind a real Listener on a free port, in front of a recording Node: (proxy, port, node, listener)."""
    from proxy.accesslog import AccessLog
    from proxy.admission import Admission
    from proxy.cost import LearnedCosts
    from proxy.flow import Proxy
    from proxy.limiter import LocalLimiter
    from proxy.listener import Listener
    from proxy.metrics import Metrics
    from proxy.upstream import FORWARDED_HEADERS, Upstream

    node = Node()
    url = await node.start()
    config = parse_config({**config_doc, "upstream": {"nodes": [url]}})
    limiter = LocalLimiter()
    limiter.configure(config)
    admission = Admission()
    admission.configure(config)
    upstream = Upstream(config.upstream)
    await upstream.start()
    proxy = Proxy(Snapshot(config, 1, "x"), limiter=limiter, learned=LearnedCosts(100, 0.3), admission=admission,
                  upstream=upstream, metrics=Metrics(), access_log=AccessLog(config.access_log))
    listener = Listener(proxy.handle, limits=proxy.snapshot.config.limits, forwarded=FORWARDED_HEADERS)
    server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0)
    try:
        yield proxy, server.sockets[0].getsockname()[1], node, listener
    finally:
        server.close()
        listener.close_all()
        await upstream.close()
        node.server.close()


async def call(port: int, method: str, target: str, key: str, raw: bytes, content_type: str = "application/x-ndjson") -> int:
    """One request on its own connection; the response's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: proxy\r\nAuthorization: ApiKey {key}\r\n"
                     f"Content-Type: {content_type}\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def test_a_remembered_body_is_remembered_for_its_tenant_only():
    doc = {**CONFIG, "tenants": {
        "acme": {"plan": "p", "api_keys": [hash_secret("acme-key")], "indices": ["acme-*"]},
        "globex": {"plan": "p", "api_keys": [hash_secret("globex-key")], "indices": ["globex-*"]},
    }}
    async with served(doc) as (proxy, port, node, _):
        msearch = b'{"index":"acme-logs"}\n{"query":{"match_all":{}}}\n'
        for _ in range(3):
            assert await call(port, "POST", "/_msearch", "acme-key", msearch) == 200
            # The same bytes from a tenant whose grant does not cover acme-logs: checked, refused, every time.
            assert await call(port, "POST", "/_msearch", "globex-key", msearch) == 403
        assert node.bodies == [msearch] * 3
        assert [key[0] for key in proxy.snapshot.granted_bodies] == ["acme"]
        # Another Content-Type is another request: decoded and checked on its own.
        assert await call(port, "POST", "/_msearch", "acme-key", msearch, "text/plain") == 406
        assert len(proxy.snapshot.granted_bodies) == 1


# ---- backpressure: a client that stops reading stops the node's connection being read -------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_client_that_stops_reading_pauses_the_node_and_the_proxy_holds_little(framing):
    import socket

    from proxy.upstream_http import HIGH_WATER

    # No room to read ahead for this tenant's slow clients (limits.client_buffer_bytes_per_tenant): back-pressure.
    async with served({**CONFIG, "limits": {"client_buffer_bytes_per_tenant": 0}}) as (proxy, port, node, listener):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # the client's kernel holds little either
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /acme-a/_stream/%s HTTP/1.1\r\nHost: proxy\r\nAuthorization: ApiKey k\r\n\r\n"
                         % framing.encode())
            async with asyncio.timeout(GUARD_S):
                head = await reader.readuntil(b"\r\n\r\n")  # ... and then it reads nothing for a while
            assert head.startswith(b"HTTP/1.1 200")
            assert (b"Transfer-Encoding: chunked" in head) == (framing == "chunked")
            (conn,) = listener.connections
            async with asyncio.timeout(GUARD_S):
                while conn.stream_source is None or not conn.stream_source.reading_paused:
                    await asyncio.sleep(0.005)
            source = conn.stream_source
            assert not source.connection.transport.is_reading()  # the node's connection is really not being read
            held = source.buffered + conn.transport.get_write_buffer_size()
            assert held <= HIGH_WATER  # what the proxy holds for this slow client: bounded, not the response
            assert node.sent < node.STREAM_BYTES  # the node is held back too
            # The client reads again: everything arrives, intact.
            async with asyncio.timeout(GUARD_S * 3):
                if framing == "chunked":
                    body = bytearray()
                    while size := int(await reader.readuntil(b"\r\n"), 16):
                        body += await reader.readexactly(size)
                        assert await reader.readexactly(2) == b"\r\n"
                    assert await reader.readexactly(2) == b"\r\n"
                else:
                    body = await reader.readexactly(node.STREAM_BYTES)
            assert len(body) == node.STREAM_BYTES and body.endswith(b"{}]}")
        finally:
            writer.close()


async def test_with_room_to_read_ahead_a_slow_client_frees_the_node_slot_and_gate_at_once():
    """Once the node has answered, the request holds neither its tenant slot nor the gate, and with room
    in limits.client_buffer_bytes_per_tenant the proxy reads the whole answer while the client reads nothing."""
    import socket

    async with served(CONFIG) as (proxy, port, node, listener):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /acme-a/_stream/length HTTP/1.1\r\nHost: proxy\r\nAuthorization: ApiKey k\r\n\r\n")
            async with asyncio.timeout(GUARD_S):
                await reader.readuntil(b"\r\n\r\n")  # ... and then it reads nothing for a while
                while node.sent < node.STREAM_BYTES or proxy.admission.gate.inflight:
                    await asyncio.sleep(0.005)
            assert proxy.admission.tenants["acme"].inflight == 0
            assert proxy.client_buffers == {"acme": node.STREAM_BYTES}  # held for the client, counted against its room
            async with asyncio.timeout(GUARD_S * 3):
                body = await reader.readexactly(node.STREAM_BYTES)
            assert body.endswith(b"{}]}")
            async with asyncio.timeout(GUARD_S):
                while proxy.client_buffers:
                    await asyncio.sleep(0.005)
        finally:
            writer.close()


async def test_a_client_that_leaves_abandons_its_request_at_the_node_and_is_logged_499():
    # The node's connection is closed, so the cluster can stop the work; the slot comes back at once.
    async with served({**CONFIG, "tenants": {"acme": {"plan": "p", "api_keys": [hash_secret("k")],
                                                       "indices": ["acme-*"]}}}) as (proxy, port, node, listener):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /acme-a/_slow/x HTTP/1.1\r\nHost: proxy\r\nAuthorization: ApiKey k\r\n\r\n")
        async with asyncio.timeout(GUARD_S):
            await node.slow.wait()
        assert proxy.inflight == 1 and proxy.admission.gate.inflight == 1
        writer.close()
        async with asyncio.timeout(GUARD_S):
            await node.abandoned.wait()  # the proxy closed its connection to the node
        assert proxy.inflight == 0 and proxy.admission.gate.inflight == 0
        text = proxy.metrics.render().decode()
        assert 'sluicegate_responses_total{code="499",tenant="acme"} 1.0' in text


# ---------------------------------------------------------------- inflating, one body per tenant at a time


async def test_a_tenants_compressed_bodies_inflate_one_at_a_time_and_other_tenants_are_not_held():
    lanes = flow.InflateLanes()
    await lanes.enter("acme")  # acme's first bomb inflates
    second = asyncio.ensure_future(lanes.enter("acme"))
    third = asyncio.ensure_future(lanes.enter("acme"))
    await asyncio.sleep(0)  # both reach their wait
    await lanes.enter("globex")  # another tenant's body does not wait behind acme's
    assert not second.done() and not third.done()
    lanes.leave("acme")
    await second  # the lane passed to acme's next body
    assert not third.done()
    third.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await third
    lanes.leave("acme")  # nobody left waiting (the cancelled one is gone): the lane is free
    lanes.leave("globex")
    assert lanes.busy == {}


async def test_a_body_cancelled_as_the_lane_reaches_it_passes_the_lane_on():
    lanes = flow.InflateLanes()
    await lanes.enter("acme")
    handed = asyncio.ensure_future(lanes.enter("acme"))
    after = asyncio.ensure_future(lanes.enter("acme"))
    await asyncio.sleep(0)
    lanes.leave("acme")  # handed gets the lane ...
    handed.cancel()  # ... and its client leaves before it runs
    with contextlib.suppress(asyncio.CancelledError):
        await handed
    await after  # the lane was not lost with it
    lanes.leave("acme")
    assert lanes.busy == {}


async def test_the_inflating_a_refused_bomb_did_is_billed_to_its_tenant():
    """A gzip bomb refused at the inflate ratio still costs its tenant what inflating it took (2 cost units a
    MiB), so a tenant sending bombs runs out of budget like any other expensive client."""
    import gzip

    slow_refill = {**CONFIG, "plans": {"p": {"search": {"rate": 0.001, "burst": 100_000}}}}  # the level moves only by bills
    async with served(slow_refill) as (proxy, port, node, listener):
        before = proxy.limiter.level("acme", "search")
        bomb = gzip.compress(b" " * (20 << 20), 9)  # ~20 KB inflating to 20 MiB: refused at 100x, past 1 MiB
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /acme-a/_search HTTP/1.1\r\nHost: proxy\r\nAuthorization: ApiKey k\r\n"
                     b"Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(bomb), bomb))
        async with asyncio.timeout(GUARD_S):
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 413")
        billed = before - proxy.limiter.level("acme", "search")
        inflated_mib = max(1 << 20, 100 * len(bomb)) / (1 << 20)  # where the ratio stopped it
        assert 2.0 * inflated_mib <= billed <= 2.0 * (inflated_mib + 0.5)  # within one step past the limit
