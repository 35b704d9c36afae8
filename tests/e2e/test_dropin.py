"""The proxy is a drop-in: official clients work through it unchanged, and it keeps secrets and
memory where they belong. Real processes throughout: the simulated cluster, the proxy, clients."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
import urllib3
from elasticsearch import ApiError, Elasticsearch
from elasticsearch import helpers as es_helpers
from opensearchpy import OpenSearch
from opensearchpy import helpers as os_helpers

from tests.processes import REPO, make_config, tenant
from tests.upstreams import RecordingUpstream

#: what the proxy asks the cluster itself: node health checks and the gate's cluster-health polls
PROXY_OWN = ("/", "/_cluster/health", "/_nodes/stats/thread_pool", "/_stats/docs?filter_path=indices.*.primaries.docs.count")


@pytest.fixture
def proxy(procs, shared_cluster):
    return procs.proxy(make_config(shared_cluster.nodes))


def test_elasticsearch_py_end_to_end(proxy):
    es = Elasticsearch(proxy.url, api_key="acme-key", request_timeout=30)
    info = es.info()
    assert info["version"]["number"]
    es.index(index="acme-drop", id="1", document={"message": "hello from acme", "n": 1}, refresh=True)
    found = es.search(index="acme-drop", query={"match": {"message": "hello"}})
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
    assert es.indices.exists(index="acme-drop")
    assert not es.indices.exists(index="acme-absent")
    ok, errors = es_helpers.bulk(
        es, ({"_index": "acme-bulk", "_id": str(i), "n": i} for i in range(1000)), chunk_size=250, refresh=True
    )
    assert ok == 1000 and not errors
    assert es.count(index="acme-bulk")["count"] == 1000


def test_opensearch_py_end_to_end(proxy):
    client = OpenSearch(proxy.url, http_auth=None, headers={"Authorization": "ApiKey globex-key"}, timeout=30)
    assert client.info()["tagline"]
    client.index(index="globex-drop", id="7", body={"message": "hi from globex"}, refresh=True)
    found = client.search(index="globex-drop", body={"query": {"match": {"message": "globex"}}})
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["7"]
    ok, errors = os_helpers.bulk(client, ({"_index": "globex-bulk", "_id": str(i), "n": i} for i in range(1000)))
    assert ok == 1000 and not errors
    assert client.count(index="globex-bulk")["count"] == 1000


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "ApiKey wrong"}, {"Authorization": "Basic bm9ib2R5Om5vcGU="}, {"Authorization": "Bearer x"}],
    ids=["missing", "unknown-key", "unknown-user", "other-scheme"],
)
def test_unknown_or_missing_credentials_get_es_shaped_401(procs, headers):
    upstream = RecordingUpstream().start()
    try:
        proxy = procs.proxy(make_config([upstream.url]))
        http = urllib3.PoolManager()
        before = len([s for s in upstream.seen if s.path_qs not in PROXY_OWN])
        response = http.request("GET", proxy.url + "/acme-x/_search", headers=headers)
        assert response.status == 401
        assert "ApiKey" in response.headers["WWW-Authenticate"]
        body = orjson.loads(response.data)
        assert body["status"] == 401
        assert body["error"]["type"] == "security_exception"
        assert body["error"]["root_cause"][0]["type"] == "security_exception"
        assert len([s for s in upstream.seen if s.path_qs not in PROXY_OWN]) == before  # the cluster never heard of it
    finally:
        upstream.stop()


def test_client_authorization_is_replaced_never_forwarded(procs):
    upstream = RecordingUpstream().start()
    try:
        config = make_config([upstream.url], upstream={"auth": {"api_key": "proxy-own-key"}})
        proxy = procs.proxy(config)
        es = Elasticsearch(proxy.url, api_key="acme-key")
        es.search(index="acme-logs", query={"match_all": {}})
        http = urllib3.PoolManager()
        http.request("GET", proxy.url + "/acme-logs/_doc/1", headers={"Authorization": "ApiKey acme-key",
                                                                        "X-Forwarded-For": "10.0.0.1"})
        requests = [s for s in upstream.seen if s.path_qs not in PROXY_OWN]
        assert len(requests) == 2
        for seen in requests:
            assert seen.headers["Authorization"] == "ApiKey proxy-own-key"
            assert "acme-key" not in " ".join(seen.headers.values())
            assert seen.headers["X-Forwarded-Proto"] == "http"
        assert requests[1].headers["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
        assert "Connection" not in requests[1].headers or requests[1].headers["Connection"].lower() == "keep-alive"
    finally:
        upstream.stop()


def test_head_gets_the_nodes_content_length_and_no_body(procs):
    upstream = RecordingUpstream().start()  # answers HEAD with the Content-Length a GET would get
    try:
        proxy = procs.proxy(make_config([upstream.url]))
        http = urllib3.PoolManager()
        auth = {"Authorization": "ApiKey acme-key"}
        got = http.request("GET", proxy.url + "/acme-logs/_doc/1", headers=auth)
        head = http.request("HEAD", proxy.url + "/acme-logs/_doc/1", headers=auth)
        assert got.status == head.status == 200
        assert head.headers["Content-Length"] == got.headers["Content-Length"] == str(len(got.data))
        assert head.data == b""
    finally:
        upstream.stop()


def _rss_kib(pid: int, field: str = "VmHWM") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def test_50mb_response_streams_without_buffering(procs):
    upstream = RecordingUpstream().start()
    try:
        proxy = procs.proxy(make_config([upstream.url]))
        http = urllib3.PoolManager()
        headers = {"Authorization": "ApiKey acme-key"}
        # Warm up the code paths, then take the high-water mark of resident memory.
        http.request("GET", proxy.url + "/acme-big/_search?stream_mb=1", headers=headers, preload_content=True)
        peak_before = _rss_kib(proxy.proc.pid)
        response = http.request("GET", proxy.url + "/acme-big/_search?stream_mb=50", headers=headers, preload_content=False)
        assert response.status == 200
        received = sum(len(chunk) for chunk in response.stream(1 << 16))
        assert received > 50 * 1024 * 1024
        grew_mib = (_rss_kib(proxy.proc.pid) - peak_before) / 1024
        assert grew_mib < 20, f"proxy peak RSS grew by {grew_mib:.1f} MiB while streaming 50 MiB"
    finally:
        upstream.stop()


def test_check_config_names_key_path_of_each_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "upstream: {nodes: [http://127.0.0.1:9200]}\n"
        "plans:\n  standard:\n    search: {rate: -5, burst: 10}\n    max_concurrent: zero\n"
        "tenants:\n  acme: {plan: gold, api_keys: ['not-a-digest'], indices: ['acme-*']}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(broken)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 1
    for path in ("plans.standard.search.rate", "plans.standard.max_concurrent", "tenants.acme.api_keys"):
        assert path in result.stderr, result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(REPO / "config" / "demo.yaml")], capture_output=True, text=True
    )
    assert good.returncode == 0, good.stderr


def test_check_config_reports_unknown_plan_and_yaml_errors(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        "upstream: {nodes: ['http://127.0.0.1:9200']}\nplans: {standard: {}}\n"
        "tenants:\n  acme: {plan: gold, api_keys: ['" + tenant("acme")["api_keys"][0] + "'], indices: ['acme-*']}\n"
    )
    result = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(unknown)], capture_output=True, text=True)
    assert result.returncode == 1 and "tenants.acme.plan" in result.stderr
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("plans: [unclosed\n")
    result = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(bad_yaml)], capture_output=True, text=True)
    assert result.returncode == 1 and "line" in result.stderr


def test_hash_key_matches_config_form():
    result = subprocess.run([sys.executable, "-m", "proxy", "hash-key"], input="acme-key\n", capture_output=True,
                            text=True)
    assert result.stdout.strip() == tenant("acme")["api_keys"][0] and result.stderr == ""
    assert os.path.exists(REPO / "config" / "sluicegate.example.yaml")


def _readme_retry_example() -> str:
    readme = (REPO / "README.md").read_text()
    marker = readme.index("<!-- the block below is run by tests/e2e/test_dropin.py")
    start = readme.index("```python\n", marker) + len("```python\n")
    return readme[start:readme.index("```", start)]


def test_the_readme_retry_after_example(procs):
    """elasticsearch-py by default fires its retries of a 429 at once; the README's settings send one request
    per 429 and wait what Retry-After says, and then the request goes through."""
    upstream = RecordingUpstream().start()
    try:
        bucket = {"rate": 1.0, "burst": 2.0}  # one search (~1.3 units), then a second's wait for the next
        plans = {"standard": {"search": bucket, "read": bucket, "write": bucket, "admin": bucket, "max_wait_ms": 0}}
        proxy = procs.proxy(make_config([upstream.url], plans=plans, tenants={"acme": tenant("acme")}))

        def throttled() -> int:
            return proxy.tenants()["tenants"]["acme"]["throttled"]

        default = Elasticsearch(proxy.url, api_key="acme-key")
        default.search(index="acme-logs", query={"match_all": {}})
        with pytest.raises(ApiError) as refused:
            default.search(index="acme-logs", query={"match_all": {}})
        assert refused.value.meta.status == 429 and throttled() == 4  # the refusal and three retries at once
        code = _readme_retry_example().replace("http://127.0.0.1:8080", proxy.url).replace("acme-demo-key", "acme-key")
        before = throttled()
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)  # waits Retry-After, then succeeds
        assert namespace["result"]["hits"] is not None
        assert throttled() - before <= 1  # one request per 429, never a burst of retries
        es = namespace["es"]
        with pytest.raises(ApiError) as again:
            for _ in range(3):
                es.search(index="acme-logs", query={"match_all": {}})
        assert int(again.value.meta.headers["Retry-After"]) >= 1  # what honouring_retry_after waits
    finally:
        upstream.stop()
