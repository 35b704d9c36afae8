"""The simulated cluster (bench/simcluster.py): real servers on free ports, real clients, no mocks.

Sync clients (elasticsearch-py, opensearch-py) run in a worker thread against an in-process
SimCluster; the CLI is exercised once as a subprocess. Cost assertions compare thread_ms from the
cluster's own stats (never wall-clock bounds), and concurrency tests synchronise on pool stats.
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest
from elasticsearch import Elasticsearch, NotFoundError
from elasticsearch import helpers as es_helpers
from opensearchpy import OpenSearch
from opensearchpy import helpers as os_helpers

from bench.simcluster import SearchRequest, SimCluster

REPO = Path(__file__).resolve().parent.parent
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def start_cluster():
    """Factory: start an in-process SimCluster on free ports; every one started is stopped at teardown."""
    started: list[SimCluster] = []

    async def factory(**options) -> SimCluster:
        cluster = SimCluster(**options)
        await cluster.start()
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        await cluster.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, body=None, headers=None) -> tuple[int, dict | str, dict]:
    """One request; JSON bodies are decoded, text is returned as text."""
    data = body if isinstance(body, (bytes, str)) or body is None else orjson.dumps(body)
    async with http.request(method, url, data=data, headers=headers or (JSON if data else None)) as response:
        raw = await response.read()
        if response.content_type.endswith("json") and raw:
            return response.status, orjson.loads(raw), dict(response.headers)
        return response.status, raw.decode(), dict(response.headers)


async def wait_for(predicate, what: str, timeout: float = 5.0) -> None:
    """Yield to the cluster's event loop until `predicate()` holds (state, not sleep-based timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------------------------
# Official clients, unchanged
# --------------------------------------------------------------------------------------------


async def test_elasticsearch_py_9_works_unchanged(start_cluster):
    cluster = await start_cluster(nodes=3, time_scale=0.01)

    def session() -> None:
        es = Elasticsearch(cluster.node_urls, request_timeout=10)
        info = es.info()
        assert info["version"]["number"] == "9.1.0" and info["tagline"] == "You Know, for Search"
        assert es.ping()
        es.index(index="acme-docs", id="1", document={"message": "hello from acme", "n": 1}, refresh=True)
        found = es.search(index="acme-docs", query={"match": {"message": "hello"}})
        assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
        assert found["hits"]["total"] == {"value": 1, "relation": "eq"}
        assert found["_shards"] == {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        assert es.count(index="acme-docs", query={"term": {"n": 1}})["count"] == 1

        ok, errors = es_helpers.bulk(es, ({"_index": "acme-bulk", "_id": str(i), "n": i, "tag": f"t{i % 3}"}
                                          for i in range(1000)), chunk_size=250, refresh=True)
        assert ok == 1000 and not errors
        assert es.count(index="acme-bulk")["count"] == 1000

        docs = es.mget(index="acme-bulk", ids=["1", "2", "missing"])["docs"]
        assert [d["found"] for d in docs] == [True, True, False]
        assert docs[0]["_source"] == {"n": 1, "tag": "t1"}

        assert es.delete(index="acme-bulk", id="1")["result"] == "deleted"
        with pytest.raises(NotFoundError):
            es.get(index="acme-bulk", id="1")
        assert es.count(index="acme-bulk")["count"] == 999

        responses = es.msearch(searches=[{"index": "acme-bulk"}, {"query": {"range": {"n": {"gte": 990}}}},
                                         {"index": "acme-docs"}, {"query": {"match_all": {}}},
                                         {"index": "no-such-index"}, {}])["responses"]
        assert [r["status"] for r in responses] == [200, 200, 404]
        assert responses[0]["hits"]["total"]["value"] == 10
        assert responses[2]["error"]["type"] == "index_not_found_exception"

        scanned = list(es_helpers.scan(es, index="acme-bulk", query={"query": {"match_all": {}}}, size=100))
        assert len(scanned) == 999 and len({hit["_id"] for hit in scanned}) == 999
        aggs = es.search(index="acme-bulk", size=0, aggs={"tags": {"terms": {"field": "tag"}}, "top": {"max": {"field": "n"}}})
        assert {b["key"]: b["doc_count"] for b in aggs["aggregations"]["tags"]["buckets"]} == {"t0": 334, "t1": 332, "t2": 333}
        assert aggs["aggregations"]["top"]["value"] == 999.0

    await asyncio.to_thread(session)
    assert cluster.stats()["cluster"]["open_scroll_contexts"] == 0  # helpers.scan cleared its scroll


async def test_opensearch_py_works_unchanged(start_cluster):
    cluster = await start_cluster(nodes=2, time_scale=0.01)

    def session() -> None:
        client = OpenSearch(cluster.node_urls, timeout=10)
        assert client.info()["tagline"] == "You Know, for Search"
        client.index(index="globex-docs", id="7", body={"message": "hi from globex"}, refresh=True)
        found = client.search(index="globex-docs", body={"query": {"match": {"message": "globex"}}})
        assert [hit["_id"] for hit in found["hits"]["hits"]] == ["7"]
        ok, errors = os_helpers.bulk(client, ({"_index": "globex-bulk", "_id": str(i), "n": i} for i in range(1000)))
        assert ok == 1000 and not errors
        assert client.count(index="globex-bulk")["count"] == 1000
        assert [d["found"] for d in client.mget(index="globex-bulk", body={"ids": ["3", "x"]})["docs"]] == [True, False]
        assert client.delete(index="globex-bulk", id="3")["result"] == "deleted"
        responses = client.msearch(body=[{"index": "globex-bulk"}, {"query": {"match_all": {}}, "size": 1}])["responses"]
        assert responses[0]["hits"]["total"]["value"] == 999
        assert len(list(os_helpers.scan(client, index="globex-bulk", size=250))) == 999

    await asyncio.to_thread(session)


def test_cli_prints_ready_line_serves_and_exits_cleanly_on_sigterm():
    process = subprocess.Popen([sys.executable, str(REPO / "bench" / "simcluster.py"), "--nodes", "2", "--port", "0",
                                "--time-scale", "0.01", "--virtual-docs", "1000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(process.stdout.readline())
        assert len(ready["nodes"]) == 2 and all(url.startswith("http://127.0.0.1:") for url in ready["nodes"])
        with urllib.request.urlopen(ready["nodes"][1] + "/") as response:
            assert response.headers["X-Elastic-Product"] == "Elasticsearch"
            assert json.loads(response.read())["name"] == "node-1"
        request = urllib.request.Request(ready["nodes"][0] + "/_sim/nodes/1/_stop", data=b"", method="POST")
        with urllib.request.urlopen(request) as response:
            assert json.loads(response.read())["live_nodes"] == 1
        with urllib.request.urlopen(ready["nodes"][0] + "/_sim/stats") as response:
            assert json.loads(response.read())["cluster"]["live_nodes"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert process.stdout.read() == ""  # exactly one line on stdout


# --------------------------------------------------------------------------------------------
# Service time derives from the request's features and the documents it touches
# --------------------------------------------------------------------------------------------

MILLION = 1_000_000


def model_ms(body: dict, docs: float = MILLION, params: dict | None = None) -> float:
    """The model's service time (ms at time_scale 1) of a single-shard search over `docs` virtual docs."""
    request = SearchRequest(body, params or {})
    matching = request.matches(0, docs, docs)
    return request.shard_ms(docs, matching, min(request.size, matching))


@pytest.mark.parametrize(("body", "low", "high"), [
    ({"query": {"term": {"user": "kimchy"}}}, 1, 5),
    ({"query": {"match": {"message": "quick brown"}}}, 1, 5),
    ({"query": {"wildcard": {"message": "*fox"}}}, 100, 1000),
    ({"query": {"regexp": {"message": "f.*x"}}}, 100, 1000),
    ({"query": {"query_string": {"query": "message:*ox"}}}, 100, 1000),
    ({"size": 0, "aggs": {"users": {"terms": {"field": "user", "size": 10000}}}}, 100, 1000),
    ({"query": {"script_score": {"query": {"match_all": {}}, "script": {"source": "_score * 2"}}}}, 500, 2000),
], ids=["term", "match", "leading-wildcard", "regexp", "query_string-leading-wildcard", "terms-10000", "script_score"])
def test_model_magnitudes_at_one_million_docs(body, low, high):
    assert low <= model_ms(body) <= high


ORDERINGS = [  # (cheaper, dearer): each feature that makes Lucene slow costs more
    ({"query": {"term": {"m": "fox"}}}, {"query": {"wildcard": {"m": "*fox"}}}),
    ({"query": {"wildcard": {"m": "fox*"}}}, {"query": {"wildcard": {"m": "*fox"}}}),
    ({"query": {"prefix": {"m": "fox"}}}, {"query": {"regexp": {"m": "fo.*"}}}),
    ({"query": {"match": {"m": "fox"}}}, {"query": {"fuzzy": {"m": "foxes"}}}),
    ({"query": {"query_string": {"query": "m:fox"}}}, {"query": {"query_string": {"query": "m:*ox"}}}),
    ({"query": {"match": {"m": "fox"}}}, {"query": {"match_phrase": {"m": "quick fox"}}}),
    ({"query": {"match": {"m": "fox"}}}, {"query": {"nested": {"path": "c", "query": {"match": {"c.m": "fox"}}}}}),
    ({"query": {"match": {"m": "fox"}}}, {"query": {"has_child": {"type": "c", "query": {"match": {"m": "fox"}}}}}),
    ({"query": {"match_all": {}}}, {"query": {"script": {"script": "doc['n'].value > 1"}}}),
    ({"size": 0, "aggs": {"t": {"terms": {"field": "u", "size": 10}}}},
     {"size": 0, "aggs": {"t": {"terms": {"field": "u", "size": 10000}}}}),
    ({"size": 0, "aggs": {"a": {"terms": {"field": "u"}}}},
     {"size": 0, "aggs": {"a": {"terms": {"field": "u"}}, "b": {"avg": {"field": "n"}}}}),
    ({"size": 0, "aggs": {"a": {"terms": {"field": "u"}}}},
     {"size": 0, "aggs": {"a": {"terms": {"field": "u"}, "aggs": {"b": {"terms": {"field": "v"}}}}}}),
    ({"size": 0, "aggs": {"a": {"value_count": {"field": "u"}}}}, {"size": 0, "aggs": {"a": {"cardinality": {"field": "u"}}}}),
    ({"size": 0, "aggs": {"a": {"avg": {"field": "n"}}}}, {"size": 0, "aggs": {"a": {"percentiles": {"field": "n"}}}}),
    ({"from": 0, "size": 10}, {"from": 9000, "size": 1000}),
    ({"size": 10}, {"size": 1000}),
    ({"query": {"match": {"m": "fox"}}, "size": 50},
     {"query": {"match": {"m": "fox"}}, "size": 50, "highlight": {"fields": {"m": {}}}}),
    ({"sort": [{"n": "asc"}]}, {"sort": [{"_script": {"type": "number", "script": "doc['n'].value"}}]}),
    ({"query": {"match_all": {}}}, {"query": {"match_all": {}}, "sort": ["n"]}),
]


@pytest.mark.parametrize(("cheap", "dear"), ORDERINGS, ids=[str(i) for i in range(len(ORDERINGS))])
def test_model_orders_features_by_cost(cheap, dear):
    assert model_ms(cheap) < model_ms(dear)


def test_model_scales_with_documents_not_a_constant():
    for body in ({"query": {"term": {"m": "fox"}}}, {"query": {"wildcard": {"m": "*fox"}}}, {"aggs": {"t": {"terms": {"field": "u"}}}}):
        costs = [model_ms(body, docs) for docs in (1_000, 100_000, 10_000_000)]
        assert costs == sorted(costs) and costs[0] < costs[-1] / 5, (body, costs)


async def test_thread_ms_follows_features_on_a_live_cluster(start_cluster, http):
    cluster = await start_cluster(nodes=1, virtual_docs=200_000, time_scale=0.01, jitter=0)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/acme-logs/_doc/1?refresh=true", {"message": "the quick fox", "user": "kimchy", "n": 3})

    async def thread_ms(body: dict) -> float:
        before = cluster.stats()["indices"]["acme-logs"]["thread_ms"]
        status, result, _ = await call(http, "POST", url + "/acme-logs/_search", body)
        assert status == 200, result
        return cluster.stats()["indices"]["acme-logs"]["thread_ms"] - before

    term = await thread_ms({"query": {"term": {"message": "fox"}}})
    assert term > 0
    assert await thread_ms({"query": {"wildcard": {"message": "*ox"}}}) > 10 * term
    assert await thread_ms({"size": 0, "aggs": {"u": {"terms": {"field": "user", "size": 10000}}}}) > \
        await thread_ms({"size": 0, "aggs": {"u": {"terms": {"field": "user", "size": 10}}}})
    assert await thread_ms({"from": 9000, "size": 1000}) > await thread_ms({"from": 0, "size": 10})

    # Exact: with no jitter, thread_ms is the model's service time × time_scale, summed over shard tasks.
    body = {"query": {"match": {"message": "quick"}}}
    request = SearchRequest(body, {})
    n = 1 + 200_000
    matching = request.matches(1, 200_000, n)
    assert await thread_ms(body) == pytest.approx(request.shard_ms(n, matching, min(10, matching)) * 0.01, rel=1e-6)
    totals = cluster.stats()
    assert sum(i["thread_ms"] for i in totals["indices"].values()) == pytest.approx(totals["cluster"]["total_thread_ms"])


async def test_more_documents_cost_more_thread_time(start_cluster, http):
    cluster = await start_cluster(nodes=1, time_scale=0.01, jitter=0)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/small", {"settings": {"index": {"sim": {"virtual_docs": 10_000}}}})
    await call(http, "PUT", url + "/large", {"settings": {"index.sim.virtual_docs": 1_000_000}})
    lines = "".join(f'{{"index":{{"_index":"real"}}}}\n{{"message":"doc {i}"}}\n' for i in range(3000))
    await call(http, "POST", url + "/_bulk", lines, {"Content-Type": "application/x-ndjson"})
    await call(http, "PUT", url + "/tiny/_doc/1", {"message": "doc 1"})
    for name in ("small", "large", "real", "tiny"):
        await call(http, "POST", f"{url}/{name}/_search", {"query": {"wildcard": {"message": "*oc"}}})
    spent = {name: entry["thread_ms"] for name, entry in cluster.stats()["indices"].items()}
    assert spent["small"] < spent["large"]
    assert spent["tiny"] < spent["real"]  # real documents touched count too


# --------------------------------------------------------------------------------------------
# Thread pools, queues, rejections, shards, nodes
# --------------------------------------------------------------------------------------------

SLOW_QUERY = {"query": {"script_score": {"query": {"match_all": {}}, "script": {"source": "_score"}}}}


async def test_full_queue_rejects_with_es_rejected_execution_exception(start_cluster, http):
    # One thread, one queue place; each slow query holds the thread ~200 ms (1M docs × 1 µs × 0.2).
    cluster = await start_cluster(nodes=1, threads=1, queue=1, virtual_docs=1_000_000, time_scale=0.2, jitter=0)
    url = cluster.node_urls[0] + "/slow/_search"
    await call(http, "PUT", cluster.node_urls[0] + "/slow")
    search_pool = cluster.nodes[0].pools["search"]

    running = asyncio.create_task(call(http, "POST", url, SLOW_QUERY))
    await wait_for(lambda: search_pool.active == 1, "the first query to take the thread")
    queued = asyncio.create_task(call(http, "POST", url, SLOW_QUERY))
    await wait_for(lambda: len(search_pool.waiting) == 1, "the second query to queue")

    status, body, headers = await call(http, "POST", url, SLOW_QUERY)
    assert status == 429
    assert headers["X-Elastic-Product"] == "Elasticsearch"
    assert set(body) == {"error", "status"} and body["status"] == 429
    error = body["error"]
    assert error["type"] == "es_rejected_execution_exception"
    assert error["root_cause"] == [{"type": "es_rejected_execution_exception", "reason": error["reason"]}]
    assert error["reason"].startswith("rejected execution of ")
    assert "EsThreadPoolExecutor[name = node-0/search, queue capacity = 1," in error["reason"]

    first, second = await running, await queued
    assert first[0] == 200 and second[0] == 200
    assert second[1]["took"] >= first[1]["took"]  # the queued one waited for the thread
    stats = cluster.stats()
    assert stats["indices"]["slow"]["rejected"] == 1 and stats["cluster"]["rejected"] == 1
    status, nodes_stats, _ = await call(http, "GET", cluster.node_urls[0] + "/_nodes/stats/thread_pool")
    (node_stats,) = nodes_stats["nodes"].values()
    assert node_stats["thread_pool"]["search"] == {"threads": 1, "queue": 0, "active": 0, "rejected": 1,
                                                   "largest": 1, "completed": 2}


async def test_search_fans_out_one_task_per_shard_to_the_freest_nodes(start_cluster, http):
    cluster = await start_cluster(nodes=3, time_scale=0.01)
    url = cluster.node_urls[0]
    status, created, _ = await call(http, "PUT", url + "/sharded", {"settings": {"number_of_shards": 3}})
    assert created == {"acknowledged": True, "shards_acknowledged": True, "index": "sharded"}
    lines = "".join(f'{{"index":{{"_id":"{i}"}}}}\n{{"n":{i}}}\n' for i in range(30))
    status, bulk, _ = await call(http, "POST", url + "/sharded/_bulk", lines, {"Content-Type": "application/x-ndjson"})
    assert status == 200 and not bulk["errors"] and len(bulk["items"]) == 30
    assert {item["index"]["status"] for item in bulk["items"]} == {201}
    status, result, _ = await call(http, "POST", url + "/sharded/_search", {"size": 100})
    assert result["_shards"] == {"total": 3, "successful": 3, "skipped": 0, "failed": 0}
    assert result["hits"]["total"]["value"] == 30 and len(result["hits"]["hits"]) == 30
    # The three shard tasks were admitted together, so each went to a different (then freest) node.
    assert [node.pools["search"].completed for node in cluster.nodes] == [1, 1, 1]
    status, health, _ = await call(http, "GET", url + "/_cluster/health")
    assert health["active_primary_shards"] == 3 and health["active_shards"] == 9


async def test_stop_node_refuses_connections_and_leaves_the_cluster(start_cluster, http):
    cluster = await start_cluster(nodes=3, time_scale=0.01)
    first, second = cluster.node_urls[0], cluster.node_urls[1]
    host, port = second.removeprefix("http://").split(":")

    # A keep-alive connection to node 1 that has already served a request.
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")

    await cluster.stop_node(1)
    await asyncio.wait_for(reader.read(), 5)  # reads to EOF: the server closed the idle keep-alive connection
    assert reader.at_eof()
    writer.close()
    with pytest.raises(aiohttp.ClientConnectorError):
        await call(http, "GET", second + "/")
    _, health, _ = await call(http, "GET", first + "/_cluster/health")
    assert health["number_of_nodes"] == 2 and health["number_of_data_nodes"] == 2 and health["status"] == "green"
    _, nodes_stats, _ = await call(http, "GET", first + "/_nodes/stats/thread_pool")
    assert nodes_stats["_nodes"]["total"] == 2 and len(nodes_stats["nodes"]) == 2
    assert cluster.stats()["cluster"]["live_nodes"] == 2

    # A third of the search capacity is gone: shard tasks land only on the live nodes.
    await call(http, "PUT", first + "/cap", {"settings": {"number_of_shards": 4}})
    await call(http, "POST", first + "/cap/_search", {})
    assert cluster.nodes[1].pools["search"].completed == 0
    assert cluster.nodes[0].pools["search"].completed + cluster.nodes[2].pools["search"].completed == 4

    await cluster.start_node(1)
    assert cluster.node_urls[1] == second  # same port
    status, info, _ = await call(http, "GET", second + "/")
    assert status == 200 and info["name"] == "node-1"
    _, health, _ = await call(http, "GET", first + "/_cluster/health")
    assert health["number_of_data_nodes"] == 3


async def test_http_control_stops_and_starts_nodes(start_cluster, http):
    cluster = await start_cluster(nodes=2)
    first, second = cluster.node_urls
    status, answer, _ = await call(http, "POST", first + "/_sim/nodes/1/_stop")
    assert status == 200 and answer["live_nodes"] == 1
    with pytest.raises(aiohttp.ClientConnectorError):
        await call(http, "GET", second + "/")
    status, answer, _ = await call(http, "POST", first + "/_sim/nodes/1/_start")
    assert answer["live_nodes"] == 2
    status, stats, _ = await call(http, "GET", second + "/_sim/stats")
    assert stats["cluster"]["live_nodes"] == 2 and [n["live"] for n in stats["nodes"]] == [True, True]
    assert (await call(http, "POST", first + "/_sim/_reset_stats"))[1] == {"acknowledged": True}
    assert cluster.stats()["cluster"]["requests"] == 0


async def test_writes_run_on_the_write_pool_costing_actions_and_bytes(start_cluster, http):
    cluster = await start_cluster(nodes=1, time_scale=1.0, jitter=0)
    url = cluster.node_urls[0]
    small = "".join(f'{{"index":{{"_index":"small"}}}}\n{{"n":{i}}}\n' for i in range(200))
    large = "".join(f'{{"index":{{"_index":"large"}}}}\n{{"n":{i},"pad":"{"x" * 5000}"}}\n' for i in range(200))
    for body in (small, large):
        status, result, _ = await call(http, "POST", url + "/_bulk", body, {"Content-Type": "application/x-ndjson"})
        assert status == 200 and not result["errors"] and isinstance(result["took"], int)
    spent = cluster.stats()["indices"]
    assert 0 < spent["small"]["thread_ms"] < spent["large"]["thread_ms"]
    assert spent["small"]["thread_ms"] == pytest.approx(0.2 + 200 * 0.05 + len(small) / 2 / 10_000, rel=0.05)
    assert cluster.nodes[0].pools["write"].completed == 2 and cluster.nodes[0].pools["search"].completed == 0


async def test_instant_mode_answers_without_service_time_or_pool_accounting(start_cluster, http):
    cluster = await start_cluster(nodes=2, instant=True, virtual_docs=10_000_000)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/fast/_doc/1", {"message": "hello"})
    status, result, _ = await call(http, "POST", url + "/fast/_search", SLOW_QUERY)
    assert status == 200 and result["hits"]["total"]["value"] == 1
    stats = cluster.stats()
    assert stats["cluster"]["total_thread_ms"] == 0 and stats["indices"]["fast"]["requests"] == 2
    assert all(n["search"]["completed"] == 0 and n["write"]["completed"] == 0 for n in stats["nodes"])


async def test_took_is_wall_time_including_service(start_cluster, http):
    cluster = await start_cluster(nodes=1, virtual_docs=1_000_000, time_scale=0.05, jitter=0)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/timed")
    status, result, _ = await call(http, "POST", url + "/timed/_search", SLOW_QUERY)
    spent = cluster.stats()["indices"]["timed"]["thread_ms"]
    assert spent > 40 and result["took"] >= int(spent) - 1  # the thread time is inside took


# --------------------------------------------------------------------------------------------
# ES API shapes: stats, _cat, errors, headers, index expressions, documents, scroll
# --------------------------------------------------------------------------------------------


async def test_nodes_stats_thread_pool_has_es_shape(start_cluster, http):
    cluster = await start_cluster(nodes=3, threads=5, queue=50)
    status, stats, _ = await call(http, "GET", cluster.node_urls[2] + "/_nodes/stats/thread_pool")
    assert status == 200 and stats["_nodes"] == {"total": 3, "successful": 3, "failed": 0}
    assert stats["cluster_name"] and len(stats["nodes"]) == 3
    for node_id, node in stats["nodes"].items():
        assert len(node_id) == 22 and node["name"].startswith("node-") and "data" in node["roles"]
        assert set(node["thread_pool"]["search"]) == {"threads", "queue", "active", "rejected", "largest", "completed"}
        # like a real node's, an idle pool has started none of its threads; nodes info has the size
        assert node["thread_pool"]["search"]["threads"] == 0 and "write" in node["thread_pool"]
    assert (await call(http, "GET", cluster.node_urls[0] + "/_nodes/stats"))[1]["nodes"].keys() == stats["nodes"].keys()
    _, info, _ = await call(http, "GET", cluster.node_urls[0] + "/_nodes/_all/http")
    assert {n["http"]["publish_address"] for n in info["nodes"].values()} == {u[7:] for u in cluster.node_urls}
    _, info, _ = await call(http, "GET", cluster.node_urls[0] + "/_nodes/thread_pool")
    assert {n["thread_pool"]["search"]["size"] for n in info["nodes"].values()} == {5}


async def test_cat_indices_text_and_json(start_cluster, http):
    cluster = await start_cluster(nodes=3)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/beta", {"settings": {"index.number_of_shards": 2}})
    for i in range(3):
        await call(http, "PUT", f"{url}/alpha/_doc/{i}", {"message": "x" * 100})
    status, text, headers = await call(http, "GET", url + "/_cat/indices?v&s=index")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    header, alpha, beta = text.splitlines()
    assert header.split() == ["health", "status", "index", "uuid", "pri", "rep", "docs.count", "docs.deleted",
                              "store.size", "pri.store.size", "dataset.size"]
    assert alpha.split()[:8] == ["green", "open", "alpha", alpha.split()[3], "1", "2", "3", "0"]
    assert beta.split()[4:7] == ["2", "2", "0"]
    _, rows, _ = await call(http, "GET", url + "/_cat/indices?format=json&s=index")
    assert [(r["index"], r["docs.count"], r["pri"]) for r in rows] == [("alpha", "3", "1"), ("beta", "0", "2")]
    _, no_header, _ = await call(http, "GET", url + "/_cat/indices/alp*")
    assert len(no_header.splitlines()) == 1 and " alpha " in no_header


@pytest.mark.parametrize(("method", "path", "body", "status", "error_type"), [
    ("GET", "/missing/_search", None, 404, "index_not_found_exception"),
    ("POST", "/exists/_search", b'{"query": {"match": ', 400, "x_content_parse_exception"),
    ("PUT", "/exists", None, 400, "resource_already_exists_exception"),
    ("DELETE", "/missing", None, 404, "index_not_found_exception"),
    ("POST", "/exists/_search", {"query": {"no_such_query": {}}}, 400, "parsing_exception"),
    ("POST", "/exists/_search", {"from": 9999, "size": 10}, 400, "search_phase_execution_exception"),
    ("PUT", "/exists/_create/1", {"a": 1}, 409, "version_conflict_engine_exception"),
    ("POST", "/exists/_update/none", {"doc": {"a": 1}}, 404, "document_missing_exception"),
    ("PUT", "/Bad-Name", None, 400, "invalid_index_name_exception"),
    ("POST", "/_search/scroll", {"scroll_id": "nope"}, 404, "search_context_missing_exception"),
], ids=["missing-index", "malformed-json", "already-exists", "delete-missing", "unknown-query", "result-window",
        "create-conflict", "update-missing", "bad-index-name", "missing-scroll"])
async def test_errors_have_es_shape(start_cluster, http, method, path, body, status, error_type):
    cluster = await start_cluster(nodes=1)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/exists/_doc/1", {"a": 0})
    got_status, got, headers = await call(http, method, url + path, body)
    assert got_status == status and got["status"] == status
    assert got["error"]["type"] == error_type and got["error"]["reason"]
    assert got["error"]["root_cause"] and got["error"]["root_cause"][0]["reason"]
    assert headers["X-Elastic-Product"] == "Elasticsearch"


async def test_routing_errors_headers_and_content_types(start_cluster, http):
    cluster = await start_cluster(nodes=1)
    url = cluster.node_urls[0]
    status, body, _ = await call(http, "GET", url + "/_no/such/route")
    assert status == 400 and body == {"error": "no handler found for uri [/_no/such/route] and method [GET]", "status": 400}
    status, body, _ = await call(http, "GET", url + "/_bulk")
    assert status == 405 and body["error"].startswith("Incorrect HTTP method for uri [/_bulk] and method [GET]")
    status, body, _ = await call(http, "POST", url + "/_search", b"{}", {"Content-Type": "text/plain"})
    assert status == 406
    vendor = "application/vnd.elasticsearch+json; compatible-with=9"
    status, body, headers = await call(http, "POST", url + "/_search", b"{}", {"Content-Type": vendor, "Accept": vendor})
    assert status == 200 and headers["Content-Type"] == "application/vnd.elasticsearch+json;compatible-with=9"
    async with http.head(url + "/") as response:
        assert response.status == 200 and await response.read() == b""
        assert response.headers["X-Elastic-Product"] == "Elasticsearch"
    async with http.head(url + "/nope") as response:
        assert response.status == 404


async def test_answers_are_framed_as_a_real_elasticsearch_8_frames_them(start_cluster, http):
    # Seen on real 8.19 nodes: searches, scroll pages, _msearch, _cat and the _tasks list come chunked,
    # without a Content-Length; documents, counts and health with one; errors with one.
    cluster = await start_cluster(nodes=1)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/frame/_doc/1?refresh=true", {"n": 1})
    chunked = [("POST", "/frame/_search", {}), ("GET", "/frame/_search?scroll=1m", None), ("GET", "/_cat/indices", None),
               ("GET", "/_cat/indices/frame?format=json", None), ("POST", "/_msearch", None)]
    framed = [("GET", "/frame/_count", None), ("GET", "/frame/_doc/1", None), ("GET", "/_cluster/health", None),
              ("POST", "/nope/_search", {}), ("POST", "/frame/_refresh", None)]
    for method, path, body in chunked + framed:
        data = orjson.dumps(body) if body is not None else None
        if path == "/_msearch":
            data = b'{"index":"frame"}\n{}\n'
        async with http.request(method, url + path, data=data, headers=JSON if data else None) as response:
            await response.read()
            streamed = (method, path, body) in chunked
            assert (response.headers.get("Transfer-Encoding") == "chunked") is streamed, (path, dict(response.headers))
            assert ("Content-Length" in response.headers) is not streamed, path
    # A body without a Content-Type is refused, in the flat words real nodes use.
    async with http.post(url + "/frame/_search", data=b"{}", skip_auto_headers=["Content-Type"]) as response:
        assert response.status == 406
        assert await response.json() == {"error": "Content-Type header [] is not supported", "status": 406}


async def test_index_expressions(start_cluster, http):
    cluster = await start_cluster(nodes=1)
    url = cluster.node_urls[0]
    for name in ("acme-a", "acme-b", "globex-a"):
        await call(http, "PUT", f"{url}/{name}/_doc/1", {"owner": name})

    async def owners(expression: str) -> list[str]:
        status, result, _ = await call(http, "GET", f"{url}/{expression}/_search")
        assert status == 200, result
        return sorted(hit["_index"] for hit in result["hits"]["hits"])

    assert await owners("acme-*") == ["acme-a", "acme-b"]
    assert await owners("acme-*,-acme-b") == ["acme-a"]
    assert await owners("acme-a,globex-a") == ["acme-a", "globex-a"]
    assert await owners("_all") == await owners("*") == ["acme-a", "acme-b", "globex-a"]
    assert await owners("nothing-*") == []
    status, result, _ = await call(http, "GET", f"{url}/acme-a,missing/_search")
    assert status == 404 and result["error"]["index"] == "missing"
    status, result, _ = await call(http, "GET", f"{url}/acme-a,missing/_search?ignore_unavailable=true")
    assert status == 200 and [h["_index"] for h in result["hits"]["hits"]] == ["acme-a"]


async def test_document_apis(start_cluster, http):
    cluster = await start_cluster(nodes=2)
    url = cluster.node_urls[1]
    status, created, _ = await call(http, "POST", url + "/docs/_doc?refresh=true", {"user": {"name": "ann"}, "n": 1})
    assert status == 201 and created["result"] == "created" and len(created["_id"]) == 20
    assert created["_shards"] == {"total": 2, "successful": 2, "failed": 0} and created["forced_refresh"] is True
    doc_url = f"{url}/docs/_doc/{created['_id']}"
    status, got, _ = await call(http, "GET", doc_url)
    assert status == 200 and got["found"] and got["_source"] == {"user": {"name": "ann"}, "n": 1} and got["_version"] == 1
    status, got, _ = await call(http, "GET", doc_url + "?_source_includes=n")
    assert got["_source"] == {"n": 1}
    status, updated, _ = await call(http, "POST", f"{url}/docs/_update/{created['_id']}", {"doc": {"user": {"age": 30}}})
    assert status == 200 and updated["result"] == "updated" and updated["_version"] == 2
    status, source, _ = await call(http, "GET", f"{url}/docs/_source/{created['_id']}")
    assert source == {"user": {"name": "ann", "age": 30}, "n": 1}
    status, noop, _ = await call(http, "POST", f"{url}/docs/_update/{created['_id']}", {"doc": {"n": 1}})
    assert noop["result"] == "noop" and noop["_version"] == 2
    status, conflict, _ = await call(http, "PUT", doc_url + "?if_seq_no=0&if_primary_term=1", {"n": 2})
    assert status == 409 and conflict["error"]["type"] == "version_conflict_engine_exception"
    status, upsert, _ = await call(http, "POST", url + "/docs/_update/new", {"doc": {"n": 9}, "doc_as_upsert": True})
    assert status == 201 and upsert["result"] == "created"
    async with http.head(doc_url) as response:
        assert response.status == 200
    status, deleted, _ = await call(http, "DELETE", doc_url)
    assert status == 200 and deleted["result"] == "deleted" and deleted["_version"] == 3
    status, missing, _ = await call(http, "GET", doc_url)
    assert status == 404 and missing == {"_index": "docs", "_id": created["_id"], "found": False}
    status, again, _ = await call(http, "DELETE", doc_url)
    assert status == 404 and again["result"] == "not_found"
    status, body, _ = await call(http, "POST", url + "/_bulk",
                                 '{"create":{"_index":"docs","_id":"new"}}\n{"n":1}\n{"delete":{"_index":"docs","_id":"new"}}\n',
                                 {"Content-Type": "application/x-ndjson"})
    assert body["errors"] is True
    assert [next(iter(i.values()))["status"] for i in body["items"]] == [409, 200]


async def test_search_semantics(start_cluster, http):
    cluster = await start_cluster(nodes=1)
    url = cluster.node_urls[0]
    people = [{"name": "Ann Lee", "age": 31, "city": "Oslo", "bio": "likes quick brown foxes"},
              {"name": "Bob Stone", "age": 45, "city": "Bergen", "bio": "brown dogs are quick"},
              {"name": "Cy Lee", "age": 22, "city": "Oslo"},
              {"name": "Di Moss", "age": 38, "city": "Tromso", "bio": "a slow brown fox"}]
    lines = "".join(f'{{"index":{{"_id":"{i}"}}}}\n{orjson.dumps(p).decode()}\n' for i, p in enumerate(people))
    await call(http, "POST", url + "/people/_bulk?refresh=wait_for", lines, {"Content-Type": "application/x-ndjson"})

    async def ids(body: dict | None = None, query: str = "") -> list[str]:
        status, result, _ = await call(http, "POST", f"{url}/people/_search{query}", body or {})
        assert status == 200, result
        return [hit["_id"] for hit in result["hits"]["hits"]]

    assert sorted(await ids({"query": {"match": {"name": "lee"}}})) == ["0", "2"]
    assert await ids({"query": {"match": {"bio": {"query": "quick brown", "operator": "and"}}}, "sort": ["age"]}) == ["0", "1"]
    assert await ids({"query": {"match_phrase": {"bio": "brown fox"}}}) == ["3"]
    assert await ids({"query": {"term": {"city": "oslo"}}, "sort": [{"age": "desc"}]}) == ["0", "2"]
    assert sorted(await ids({"query": {"terms": {"city": ["Bergen", "Tromso"]}}})) == ["1", "3"]
    assert await ids({"query": {"range": {"age": {"gte": 30, "lt": 40}}}, "sort": "age"}) == ["0", "3"]
    assert sorted(await ids({"query": {"prefix": {"city": "ber"}}})) == ["1"]
    assert sorted(await ids({"query": {"wildcard": {"name": "*oss"}}})) == ["3"]
    assert sorted(await ids({"query": {"ids": {"values": ["2", "3", "9"]}}})) == ["2", "3"]
    assert sorted(await ids({"query": {"bool": {"must_not": {"exists": {"field": "bio"}}}}})) == ["2"]
    assert await ids({"query": {"bool": {"must": [{"match": {"bio": "brown"}}], "filter": [{"term": {"city": "oslo"}}],
                                         "must_not": [{"range": {"age": {"gt": 40}}}]}}}) == ["0"]
    assert sorted(await ids({"query": {"bool": {"should": [{"term": {"city": "bergen"}}, {"term": {"age": 22}}]}}})) == ["1", "2"]
    assert sorted(await ids(query="?q=city:oslo")) == ["0", "2"]
    assert await ids({"sort": [{"age": {"order": "asc"}}], "from": 1, "size": 2}) == ["0", "3"]
    status, result, _ = await call(http, "POST", url + "/people/_search",
                                   {"sort": ["age"], "size": 1, "_source": ["name"], "track_total_hits": 2})
    assert result["hits"]["total"] == {"value": 2, "relation": "gte"}
    assert result["hits"]["hits"][0]["_source"] == {"name": "Cy Lee"} and result["hits"]["hits"][0]["sort"] == [22]
    status, counted, _ = await call(http, "GET", url + "/people/_count?q=bio:brown")
    assert counted["count"] == 3

    status, result, _ = await call(http, "POST", url + "/people/_search", {"size": 0, "aggs": {
        "cities": {"terms": {"field": "city.keyword", "size": 1}, "aggs": {"oldest": {"max": {"field": "age"}}}},
        "avg_age": {"avg": {"field": "age"}}, "total": {"sum": {"field": "age"}}, "youngest": {"min": {"field": "age"}},
        "distinct": {"cardinality": {"field": "city"}}, "with_bio": {"value_count": {"field": "bio"}},
        "over_time": {"date_histogram": {"field": "ts", "calendar_interval": "day"}}}})
    aggs = result["aggregations"]
    assert aggs["cities"] == {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 2,
                              "buckets": [{"key": "Oslo", "doc_count": 2, "oldest": {"value": 31.0}}]}
    assert aggs["avg_age"]["value"] == 34.0 and aggs["total"]["value"] == 136.0 and aggs["youngest"]["value"] == 22.0
    assert aggs["distinct"]["value"] == 3 and aggs["with_bio"]["value"] == 3 and aggs["over_time"] == {"buckets": []}


async def test_scroll_pages_clears_expires_and_is_bounded(start_cluster, http):
    cluster = await start_cluster(nodes=2, time_scale=0.01)
    url = cluster.node_urls[0]
    lines = "".join(f'{{"index":{{"_id":"{i}"}}}}\n{{"n":{i}}}\n' for i in range(25))
    await call(http, "POST", url + "/paged/_bulk", lines, {"Content-Type": "application/x-ndjson"})
    status, page, _ = await call(http, "POST", url + "/paged/_search?scroll=1m", {"size": 10, "sort": ["n"]})
    seen = [hit["_source"]["n"] for hit in page["hits"]["hits"]]
    while True:
        # Any node serves the scroll: contexts live in the cluster, like a shared coordinating view.
        status, page, _ = await call(http, "POST", cluster.node_urls[1] + "/_search/scroll",
                                     {"scroll": "1m", "scroll_id": page["_scroll_id"]})
        assert status == 200 and page["hits"]["total"]["value"] == 25
        if not page["hits"]["hits"]:
            break
        seen += [hit["_source"]["n"] for hit in page["hits"]["hits"]]
    assert seen == list(range(25))
    status, cleared, _ = await call(http, "DELETE", url + "/_search/scroll", {"scroll_id": [page["_scroll_id"]]})
    assert status == 200 and cleared == {"succeeded": True, "num_freed": 1}

    status, short, _ = await call(http, "POST", url + "/paged/_search?scroll=1ms", {"size": 1})
    await asyncio.sleep(0.01)  # time must pass for a 1 ms keep-alive to lapse
    status, gone, _ = await call(http, "POST", url + "/_search/scroll", {"scroll_id": short["_scroll_id"]})
    assert status == 404 and gone["error"]["type"] == "search_context_missing_exception"

    cluster.scrolls.limit = 2
    for _ in range(2):
        assert (await call(http, "POST", url + "/paged/_search?scroll=1m", {"size": 1}))[0] == 200
    status, refused, _ = await call(http, "POST", url + "/paged/_search?scroll=1m", {"size": 1})
    assert status == 500 and "too many scroll contexts" in refused["error"]["reason"]


async def test_delete_by_query_costs_search_then_deletes(start_cluster, http):
    cluster = await start_cluster(nodes=1, time_scale=0.01)
    url = cluster.node_urls[0]
    lines = "".join(f'{{"index":{{"_id":"{i}"}}}}\n{{"n":{i}}}\n' for i in range(50))
    await call(http, "POST", url + "/dbq/_bulk", lines, {"Content-Type": "application/x-ndjson"})
    writes_before = cluster.nodes[0].pools["write"].completed
    status, result, _ = await call(http, "POST", url + "/dbq/_delete_by_query", {"query": {"range": {"n": {"lt": 20}}}})
    assert status == 200 and result["deleted"] == 20 and result["total"] == 20 and result["failures"] == []
    assert isinstance(result["took"], int)
    assert (await call(http, "GET", url + "/dbq/_count"))[1]["count"] == 30
    assert cluster.nodes[0].pools["search"].completed >= 1 and cluster.nodes[0].pools["write"].completed > writes_before


async def test_partial_shard_rejection_returns_partial_results_like_es(start_cluster, http):
    cluster = await start_cluster(nodes=1, threads=1, queue=0, time_scale=0.01)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/wide", {"settings": {"number_of_shards": 3}})
    status, result, _ = await call(http, "POST", url + "/wide/_search", {})
    assert status == 200
    assert {k: result["_shards"][k] for k in ("total", "successful", "skipped", "failed")} == \
        {"total": 3, "successful": 1, "skipped": 0, "failed": 2}
    assert {f["reason"]["type"] for f in result["_shards"]["failures"]} == {"es_rejected_execution_exception"}


async def test_equal_nodes_share_sequential_searches_round_robin(start_cluster, http):
    cluster = await start_cluster(nodes=3, time_scale=0.01)
    await call(http, "PUT", cluster.node_urls[0] + "/rr/_doc/1", {"a": 1})
    for _ in range(6):
        assert (await call(http, "POST", cluster.node_urls[0] + "/rr/_search", {}))[0] == 200
    assert [node.pools["search"].completed for node in cluster.nodes] == [2, 2, 2]


def test_simulation_is_independent_of_the_proxy():
    # The cluster's costs must be learned by the proxy from outside, so it may not share the proxy's model.
    code = "import sys, bench.simcluster; sys.exit(any(m == 'proxy' or m.startswith('proxy.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


async def test_index_stats_count_virtual_docs_and_honour_filter_path(start_cluster, http):
    cluster = await start_cluster(nodes=2, virtual_docs=1_000)
    url = cluster.node_urls[0]
    await call(http, "PUT", url + "/small", {"settings": {"index": {"sim": {"virtual_docs": 10}}}})
    await call(http, "PUT", url + "/logs-2024.01.01", {"settings": {"number_of_shards": 2}})
    for i in range(3):
        await call(http, "PUT", f"{url}/small/_doc/{i}", {"message": "x"})
    status, body, _ = await call(http, "GET", url + "/_stats/docs?filter_path=indices.*.primaries.docs.count")
    assert status == 200
    assert body == {"indices": {"small": {"primaries": {"docs": {"count": 13}}},
                                "logs-2024.01.01": {"primaries": {"docs": {"count": 1_000}}}}}
    _, full, _ = await call(http, "GET", url + "/small/_stats")
    assert full["_all"]["primaries"]["docs"]["count"] == 13 and full["_all"]["total"]["docs"]["count"] == 26
    assert full["_shards"]["total"] == 2 and set(full["indices"]) == {"small"}
    _, rows, _ = await call(http, "GET", url + "/_cat/indices/small?format=json&h=index,docs.count")
    assert rows == [{"index": "small", "docs.count": "13"}]
