"""What the simulator only imitated, on real Elasticsearch and OpenSearch: cluster rejections, and the
observed cost read from real `took` and `_shards`."""
from __future__ import annotations

import gzip
import threading

import orjson
import pytest
import urllib3

from tests.processes import make_config, tenant, wait_until
from tests.realclusters import bulk_load, http_json, unique_index

pytestmark = pytest.mark.real_cluster

HTTP = urllib3.PoolManager(maxsize=32, retries=False, timeout=urllib3.Timeout(connect=5, read=120))
AUTH = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}
#: a search that keeps a shard busy for a while on ~20k documents, with no script (Elasticsearch has no painless here)
SLOW_SEARCH = {"size": 0, "query": {"wildcard": {"msg": "*ord1*"}}, "aggs": {"n": {"terms": {"field": "n", "size": 2000}}}}
REJECTION_TYPES = {"es_rejected_execution_exception", "rejected_execution_exception"}


def rejection_causes(body: dict) -> set[str]:
    """The error types a search response names: its root causes, or its failed shards' reasons."""
    causes = {c.get("type") for c in body.get("error", {}).get("root_cause", [])}
    causes |= {f.get("reason", {}).get("type") for f in body.get("_shards", {}).get("failures", [])}
    return causes - {None}


def test_cluster_rejections_reach_the_client_unchanged_and_the_charge_is_refunded(procs, real_tiny_pool):
    url = real_tiny_pool.url
    index = unique_index("acme")
    bulk_load(url, index, 20_000, shards=5)  # five shard tasks per search against a pool of 1 and a queue of 1
    burst = 1_000_000.0
    plan = {
        "search": {"rate": 0.001, "burst": burst},  # no refill to speak of: the level is the bill
        "read": {"rate": 1000, "burst": 10000}, "write": {"rate": 1000, "burst": 10000},
        "admin": {"rate": 100, "burst": 1000}, "max_concurrent": 16, "max_queue": 64, "max_wait_ms": 5000,
    }
    proxy = procs.proxy(make_config(
        [url], tenants={"acme": tenant("acme")}, plans={"standard": plan},
        admission={"health_poll_s": 0.25}, access_log={"path": "-", "sample": 1.0},
    ))

    # Another client hammers the node directly, bypassing the proxy, as on a cluster shared with other paths in.
    stop = threading.Event()

    def direct_load():
        while not stop.is_set():
            HTTP.request("POST", f"{url}/{index}/_search?request_cache=false", body=orjson.dumps(SLOW_SEARCH),
                         headers={"Content-Type": "application/json"})

    hammers = [threading.Thread(target=direct_load) for _ in range(6)]
    for hammer in hammers:
        hammer.start()
    answers: list[tuple[int, dict, dict]] = []
    lock = threading.Lock()

    def through_proxy():
        for _ in range(8):
            response = HTTP.request("POST", f"{proxy.url}/{index}/_search?request_cache=false",
                                    body=orjson.dumps(SLOW_SEARCH), headers=AUTH)
            with lock:
                answers.append((response.status, dict(response.headers), orjson.loads(response.data)))

    try:
        clients = [threading.Thread(target=through_proxy) for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        # The gate counted the cluster's refusals as overload (429s, and the pools' rejection counters).
        wait_until(lambda: proxy.tenants()["gate"]["reason"] in ("upstream_errors", "search_rejections"),
                   what="the gate to see the rejections")
    finally:
        stop.set()
        for hammer in hammers:
            hammer.join()

    refused = [(headers, body) for status, headers, body in answers if status == 429]
    partial = [body for status, _, body in answers if status == 200 and body["_shards"]["failed"]]
    assert refused, f"the cluster rejected nothing: {[a[0] for a in answers]}"
    for headers, body in refused:
        # the cluster's own 429, as the cluster sent it: not one of Sluicegate's refusals
        assert "X-Sluicegate-Reason" not in headers
        assert body["status"] == 429 and body["error"]["type"] == "search_phase_execution_exception"
        assert rejection_causes(body) <= REJECTION_TYPES and rejection_causes(body)
    for body in partial:
        assert rejection_causes(body) <= REJECTION_TYPES | {"search_phase_execution_exception"}

    # The bill: refused searches were refunded whole; answered ones cost what the cluster reported.
    lines = wait_until(lambda: (ls := [x for x in proxy.access_log() if x["tenant"] == "acme"]) and len(ls) == len(answers)
                       and ls, what="every request in the access log")
    assert sorted(line["status"] for line in lines) == sorted(status for status, _, _ in answers)
    spent = sum(line["cost_observed"] for line in lines if line["status"] == 200)
    assert all(line["cost_observed"] is None for line in lines if line["status"] == 429)
    level = proxy.tenants()["tenants"]["acme"]["buckets"]["search"]["level"]
    assert level == pytest.approx(burst - spent, abs=0.5)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("big", [False, True], ids=["small", "streamed"])
def test_observed_cost_is_read_from_real_took_and_shards(procs, real_cluster, compressed, big):
    url = real_cluster.url
    index = unique_index("acme")
    bulk_load(url, index, 3_000, shards=3, replicas=1)
    proxy = procs.proxy(make_config(real_cluster.urls, tenants={"acme": tenant("acme")},
                                    access_log={"path": "-", "sample": 1.0}))
    headers = dict(AUTH, **({"Accept-Encoding": "gzip"} if compressed else {}))
    search = {"size": 3000, "query": {"match_all": {}}} if big else {"size": 5, "query": {"match": {"msg": "alpha3"}}}
    response = HTTP.request("POST", f"{proxy.url}/{index}/_search?request_cache=false", body=orjson.dumps(search),
                            headers=headers, decode_content=False)
    assert response.status == 200
    data = response.data
    assert (response.headers.get("Content-Encoding") == "gzip") == compressed  # the cluster compressed it, or not
    raw = gzip.decompress(data) if compressed else data
    body = orjson.loads(raw)
    assert (len(raw) > 256 * 1024) == big  # big: streamed by the proxy (over SMALL_RESPONSE, or chunked)
    shards = body["_shards"]
    expected = max(body["took"], 0.5) * max(1, shards["total"] - shards["skipped"] - shards["failed"])
    line = wait_until(lambda: next((x for x in proxy.access_log() if x["tenant"] == "acme"), None),
                      what="the access log line")
    assert line["cost_observed"] == pytest.approx(expected, abs=0.01)
