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
