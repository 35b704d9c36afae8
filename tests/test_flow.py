"""The request path's own pieces that need no processes: the per-snapshot estimate memo."""
from __future__ import annotations

from proxy import esapi, flow
from proxy.config import hash_secret, parse_config
from proxy.flow import Snapshot

CONFIG = {"upstream": {"nodes": ["http://127.0.0.1:9200"]}, "plans": {"p": {}},
          "tenants": {"acme": {"plan": "p", "api_keys": [hash_secret("k")], "indices": ["acme-*"]}}}


def _estimate(snap: Snapshot, raw: bytes, content_type: str = "application/json", target: str = "/acme-x/_search"):
    call = esapi.parse_call("POST", target)
    body = esapi.decode_body(call, raw, content_type, None, snap.config.limits)
    return snap.estimate("POST", target, content_type, call, body), snap.cost_model.estimate(call, body)


def test_the_estimate_memo_gives_what_the_cost_model_gives_and_stays_bounded(monkeypatch):
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
    big = b'{"query":{"match":{"m":"' + b"x" * flow.ESTIMATE_MEMO_BYTES + b'"}}}'
    assert _estimate(snap, big)[0] == _estimate(snap, big)[1]
    assert len(snap._estimates) == 3  # too large to remember
    monkeypatch.setattr(flow, "ESTIMATE_MEMO", 4)
    for size in range(10):
        _estimate(snap, b'{"size":%d}' % size)
        assert len(snap._estimates) <= 5
