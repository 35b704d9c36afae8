"""Hardening (issue 17) on real OpenSearch: a write is never sent twice, and a hung (SIGSTOPped) node costs
seconds. Lean: one small index each, seconds per test."""
from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest
import urllib3

from tests.processes import make_config, tenant
from tests.realclusters import http_json, unique_index

pytestmark = pytest.mark.real_cluster

AUTH = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}


def test_an_update_and_a_bulk_whose_connection_closes_after_delivery_are_applied_once(procs, opensearch_cluster):
    """Item 3: nodes that take the request, let the cluster act on it, and close without answering. The
    painless `ctx._source.n += 1` runs once (n == 1), the bulk stores one document; the client gets a 502
    that says the outcome is unknown."""
    from tests.upstreams import ClosingRelay

    url = opensearch_cluster.url
    index = unique_index("acme")
    status, body = http_json(f"{url}/{index}", "PUT", {"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    assert status == 200, body
    status, body = http_json(f"{url}/{index}/_doc/1?refresh=true", "PUT", {"n": 0})
    assert status == 201, body
    target = url.removeprefix("http://")
    relays = [ClosingRelay(target).start() for _ in range(2)]
    try:
        proxy = procs.proxy(make_config([relay.url for relay in relays], tenants={"acme": tenant("acme")}))
        http = urllib3.PoolManager(retries=False, timeout=30)
        update = http.request("POST", f"{proxy.url}/{index}/_update/1", headers=AUTH,
                              body=orjson.dumps({"script": {"source": "ctx._source.n += 1", "lang": "painless"}}))
        bulk = http.request("POST", f"{proxy.url}/{index}/_bulk", body=b'{"index":{}}\n{"n":100}\n',
                            headers={**AUTH, "Content-Type": "application/x-ndjson"})
        http_json(f"{url}/{index}/_refresh", "POST")
        status, doc = http_json(f"{url}/{index}/_doc/1")
        assert doc["_source"]["n"] == 1
        status, counted = http_json(f"{url}/{index}/_count")
        assert counted["count"] == 2  # doc 1 and the one bulk document
        assert sum(relay.delivered for relay in relays) == 2
        for answer in (update, bulk):
            assert answer.status == 502, answer.data
            assert b"outcome is unknown" in answer.data
    finally:
        for relay in relays:
            relay.stop()


def test_a_sigstopped_node_costs_reads_a_resend_and_refuses_no_one(procs, opensearch_cluster):
    """Item 2: one node of three is SIGSTOPped under two tenants' reads and writes. Reads are all answered
    (re-sent once the node fails its health check), writes are 201 or a 502 of unknown outcome, nobody is
    refused (429) and nothing waits for request_timeout_s (60 s here; the clients give up at 45 s)."""
    cluster = opensearch_cluster
    url = cluster.url
    _, state = http_json(f"{url}/_cluster/state/master_node,nodes")
    master = state["nodes"][state["master_node"]]["name"]
    keeper, victim = [node for node in cluster.nodes if node.name != master][:2]
    indices = {name: unique_index(name) for name in ("acme", "globex")}
    for index in indices.values():  # on a node that stays up, so the cluster itself never waits on the victim
        status, body = http_json(f"{url}/{index}", "PUT", {"settings": {
            "number_of_shards": 1, "number_of_replicas": 0, "index.routing.allocation.require._name": keeper.name},
            "mappings": {"properties": {"n": {"type": "long"}}}})
        assert status == 200, body
        http_json(f"{url}/{index}/_doc/0?refresh=true", "PUT", {"n": 0})
    proxy = procs.proxy(make_config(
        cluster.urls, tenants={"acme": tenant("acme"), "globex": tenant("globex")},
        upstream={"health_interval_s": 1.0, "connect_timeout_s": 1.0, "request_timeout_s": 60},
    ))
    http = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=45))
    outcomes: list[tuple[str, int, float, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(name: str, i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            write = n % 4 == 0
            started = time.monotonic()
            path = f"/{indices[name]}/_doc" if write else f"/{indices[name]}/_search"
            try:
                answer = http.request("POST", proxy.url + path, headers={**AUTH, "Authorization": f"ApiKey {name}-key"},
                                      body=orjson.dumps({"n": n} if write else {"size": 1}))
                status, data = answer.status, answer.data
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                status, data = 0, str(exc).encode()
            with lock:
                outcomes.append(("write" if write else "read", status, time.monotonic() - started, data))

    threads = [threading.Thread(target=client, args=(name, i)) for name in indices for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        cluster.suspend_node(victim.index)
        time.sleep(6.0)
        stop.set()
        for thread in threads:  # still suspended: a request left waiting on the victim ends only at the client's 45 s
            thread.join()
    finally:
        stop.set()
        cluster.resume_node(victim.index)
        for thread in threads:
            thread.join()
    reads = [o for o in outcomes if o[0] == "read"]
    assert reads and all(status == 200 for _, status, _, _ in reads), [o for o in reads if o[1] != 200][:3]
    for _, status, _, data in outcomes:
        assert status in (200, 201) or (status == 502 and b"outcome is unknown" in data), (status, data[:300])
