"""The request path's own pieces that need no processes: the per-snapshot memos of bodies and estimates."""
from __future__ import annotations

from proxy import esapi, flow
from proxy.config import hash_secret, parse_config
from proxy.cost import IndexSizes
from proxy.flow import Snapshot

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


# ---- the body memo, through Proxy.handle against a node that answers at once ----------------

def _proxy(config):
    from proxy.accesslog import AccessLog
    from proxy.admission import Admission
    from proxy.cost import LearnedCosts
    from proxy.flow import Proxy
    from proxy.limiter import LocalLimiter
    from proxy.metrics import Metrics
    from proxy.upstream import Node, Upstream
    from proxy.upstream_http import UpstreamResponse

    limiter = LocalLimiter()
    limiter.configure(config)
    admission = Admission()
    admission.configure(config)
    upstream = Upstream(config.upstream)
    upstream.nodes = [Node(url, 1) for url in config.upstream.nodes]
    answer = b'{"took":1,"responses":[]}'

    class Connection:
        closed = False

        def idle(self) -> None: ...

        def close(self) -> None: ...

    sent = []

    async def exchange(node, head, body, is_head):
        sent.append(body)
        response = UpstreamResponse(Connection(), 200, [("Content-Type", "application/json")], len(answer), True)
        response._chunks.append(answer)
        response.complete = True
        return response

    upstream._exchange = exchange
    proxy = Proxy(Snapshot(config, 1, "x"), limiter=limiter, learned=LearnedCosts(100, 0.3), admission=admission,
                  upstream=upstream, metrics=Metrics(), access_log=AccessLog(config.access_log))
    return proxy, sent


def _request(method: str, target: str, key: str, raw: bytes, content_type: str = "application/x-ndjson"):
    import asyncio

    from aiohttp import streams
    from aiohttp.http import HttpVersion11
    from aiohttp.http_parser import RawRequestMessage
    from aiohttp.web_request import BaseRequest
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    class Protocol:
        transport = None
        ssl_context = None
        peername = ("127.0.0.1", 40000)
        sockname = ("127.0.0.1", 9200)
        _reading_paused = False

        def resume_reading(self, **_) -> None: ...

        def pause_reading(self, **_) -> None: ...

    loop = asyncio.get_running_loop()
    protocol = Protocol()
    payload = streams.StreamReader(protocol, 1 << 16, loop=loop)  # type: ignore[arg-type]
    payload.feed_data(raw)
    payload.feed_eof()
    headers = [("Host", "proxy"), ("Authorization", f"ApiKey {key}"), ("Content-Type", content_type),
               ("Content-Length", str(len(raw)))]
    message = RawRequestMessage(method, target, HttpVersion11, CIMultiDictProxy(CIMultiDict(headers)),
                                tuple((k.encode(), v.encode()) for k, v in headers), False, None, False, False,
                                URL.build(path=target, encoded=True))
    return BaseRequest(message, payload, protocol, None, asyncio.current_task(), loop)  # type: ignore[arg-type]


async def test_a_remembered_body_is_remembered_for_its_tenant_only():
    config = parse_config({**CONFIG, "tenants": {
        "acme": {"plan": "p", "api_keys": [hash_secret("acme-key")], "indices": ["acme-*"]},
        "globex": {"plan": "p", "api_keys": [hash_secret("globex-key")], "indices": ["globex-*"]},
    }})
    proxy, sent = _proxy(config)
    msearch = b'{"index":"acme-logs"}\n{"query":{"match_all":{}}}\n'
    for _ in range(3):
        assert (await proxy.handle(_request("POST", "/_msearch", "acme-key", msearch))).status == 200
        # The same bytes from a tenant whose grant does not cover acme-logs: checked, refused, every time.
        assert (await proxy.handle(_request("POST", "/_msearch", "globex-key", msearch))).status == 403
    assert sent == [msearch] * 3
    assert [key[0] for key in proxy.snapshot.granted_bodies] == ["acme"]
    # Another Content-Type is another request: decoded and checked on its own.
    refused = await proxy.handle(_request("POST", "/_msearch", "acme-key", msearch, "text/plain"))
    assert refused.status == 406
    assert len(proxy.snapshot.granted_bodies) == 1
