"""The drop-in matrix, against real clusters: each official client runs the same scenario once straight
at a real 3-node cluster and once through Sluicegate in front of it, and what the client saw must be
equal, step by step — status, the headers that carry meaning, and the body.

The scenarios are tests/clients/scenario.py (elasticsearch-py, opensearch-py) and
tests/clients/scenario.mjs (the Node.js clients). Each prints a JSON transcript: per step the status,
the response headers and the body the client decoded (errors included), or a value a helper computed.
Each run gets a fresh index; `normalise` lists, field by field, everything allowed to differ and why.

elasticsearch-py 9 and Elasticsearch 8.19: the 9.x client sends `compatible-with=9` media types, and
8.19 refuses them (400 media_type_header_exception, checked below). The client's API methods override
client-level Accept/Content-Type headers, so the scenario rewrites the media types in a node class
(`--compatible-with 8`, see scenario.py): the one supported hook below the API methods.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import REPO, make_config, tenant
from tests.realclusters import http_json, unique_index

pytestmark = pytest.mark.real_cluster

CLIENTS_DIR = REPO / "tests" / "clients"
DOCS = 10_000  # the scenarios' bulk
ES8 = REPO / ".venv" / "es8"
TENANT = "dropin"
API_KEY = f"{TENANT}-key"


@dataclass(frozen=True)
class Client:
    name: str
    #: the client's major version, as the scenario reports it (so the wrong install cannot pass unnoticed)
    major: str
    command: tuple[str, ...]
    env: dict = field(default_factory=dict)

    def run(self, urls: list[str], index: str, api_key: str | None) -> list[dict]:
        args = [*self.command, "--index", index]
        if api_key:
            args += ["--api-key", api_key]
        result = subprocess.run(
            [*args, *urls], capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, **self.env}
        )
        assert result.returncode == 0, f"{self.name} scenario failed:\n{result.stderr[-4000:]}"
        return json.loads(result.stdout)


PY_SCENARIO = (sys.executable, str(CLIENTS_DIR / "scenario.py"))
NODE_SCENARIO = ("node", str(CLIENTS_DIR / "scenario.mjs"))
ELASTICSEARCH_CLIENTS = [
    Client("elasticsearch-py 8", "8", (*PY_SCENARIO, "--client", "elasticsearch"), {"PYTHONPATH": str(ES8)}),
    Client("elasticsearch-py 9", "9", (*PY_SCENARIO, "--client", "elasticsearch", "--compatible-with", "8")),
    Client("@elastic/elasticsearch 8", "8", (*NODE_SCENARIO, "--client", "elasticsearch")),
]
OPENSEARCH_CLIENTS = [
    Client("opensearch-py", "3", (*PY_SCENARIO, "--client", "opensearch")),
    Client("@opensearch-project/opensearch", "3", (*NODE_SCENARIO, "--client", "opensearch")),
]

#: what the scenario needs beyond its own indices: `_tasks` and `_cat/indices` are cluster-level calls
#: (GET `_cluster/health` without an index filter is open to every tenant, with one it is an index call)
PLAN = {
    "search": {"rate": 100000, "burst": 1000000},
    "write": {"rate": 100000, "burst": 1000000},
    "read": {"rate": 100000, "burst": 1000000},
    "admin": {"rate": 10000, "burst": 100000},
    "max_concurrent": 16,
    "max_queue": 64,
    "max_wait_ms": 5000,
    "cluster_apis": ["tasks", "cat.indices"],
}


@pytest.fixture
def proxy_for(procs):
    def start(cluster):
        config = make_config(cluster.urls, tenants={TENANT: tenant(TENANT)}, plans={"standard": PLAN})
        return procs.proxy(config)
    return start


@pytest.mark.parametrize("client", ELASTICSEARCH_CLIENTS, ids=lambda c: c.name)
def test_elasticsearch_clients_see_through_the_proxy_what_they_see_directly(client, elasticsearch_cluster, proxy_for):
    assert_same_through_proxy(client, elasticsearch_cluster, proxy_for(elasticsearch_cluster))


@pytest.mark.parametrize("client", OPENSEARCH_CLIENTS, ids=lambda c: c.name)
def test_opensearch_clients_see_through_the_proxy_what_they_see_directly(client, opensearch_cluster, proxy_for):
    assert_same_through_proxy(client, opensearch_cluster, proxy_for(opensearch_cluster))


def test_elasticsearch_py_9_unmodified_is_refused_alike_directly_and_through_the_proxy(elasticsearch_cluster, proxy_for):
    """Without the node class that rewrites its media types, elasticsearch-py 9 cannot talk to 8.19 at all:
    the cluster refuses `compatible-with=9` with a 400, and through the proxy the client gets the same 400."""
    from elasticsearch import ApiError, Elasticsearch

    proxy = proxy_for(elasticsearch_cluster)
    index = unique_index(TENANT)
    seen = []
    for es in (Elasticsearch(elasticsearch_cluster.urls), Elasticsearch(proxy.url, api_key=API_KEY)):
        answers = []
        for call in (es.info, lambda: es.search(index=index, query={"match_all": {}}),
                     lambda: es.bulk(operations=[{"index": {"_index": index}}, {"n": 1}])):
            with pytest.raises(ApiError) as refused:
                call()
            error = refused.value.body["error"]
            # which headers the reason lists first depends on the node that answered, not on the client
            listed = sorted(re.search(r"headers \[(.*)\]", error["reason"]).group(1).split(", "))
            answers.append((refused.value.meta.status, error["type"], listed, error["caused_by"],
                            refused.value.meta.headers["x-elastic-product"]))
        seen.append(answers)
    direct, proxied = seen
    assert direct == proxied
    assert direct[0][:3] == (400, "media_type_header_exception", ["Accept", "Content-Type"])
    assert "found 9" in direct[0][3]["reason"]


def assert_same_through_proxy(client: Client, cluster, proxy) -> None:
    direct_index, proxied_index = unique_index(TENANT), unique_index(TENANT)
    try:
        direct = client.run(cluster.urls, direct_index, None)
        proxied = client.run([proxy.url], proxied_index, API_KEY)
    finally:  # a scenario that failed half-way leaves its indices on a cluster the session shares
        names = ",".join(f"{index}{suffix}" for index in (direct_index, proxied_index) for suffix in ("", "-gz"))
        http_json(f"{cluster.url}/{names}?ignore_unavailable=true", method="DELETE")  # by name: 8.x refuses wildcards
    for transcript in (direct, proxied):
        assert transcript[0]["value"]["major"] == client.major, transcript[0]
        assert_scenario_ran(transcript, cluster.flavor)
    assert_ids_wrapped(direct, proxied)
    differences = compare(normalise(direct, direct_index), normalise(proxied, proxied_index))
    assert not differences, f"{client.name}: {len(differences)} differences, direct vs through the proxy:\n" + "\n".join(
        differences[:30])


def assert_scenario_ran(transcript: list[dict], flavor: str) -> None:
    """The scenario did what it says (equal transcripts of a scenario that failed early would prove nothing)."""
    steps = {s["step"]: s for s in transcript}
    status = {name: s.get("status") for name, s in steps.items()}
    value = {name: s.get("value") for name, s in steps.items()}
    bulk = value["bulk helper"]
    assert bulk.get("ok", bulk.get("successful")) == DOCS and not bulk.get("errors") and not bulk.get("failed")
    assert value["scan helper"] == {"docs": DOCS, "sum": DOCS * (DOCS - 1) // 2}
    assert [name for name in steps if name.startswith("scroll: page")] == [f"scroll: page {i}" for i in range(1, 11)]
    assert steps["scroll: page 10"]["body"]["hits"]["hits"] == []  # the end
    assert [name for name in steps if name.startswith("pit: page")] == [f"pit: page {i}" for i in range(5)]
    for name in ("create index", "index doc", "update doc", "search", "count", "mget", "msearch", "clear scroll",
                 "open point in time", "close point in time", "get task", "list tasks", "cat indices json",
                 "cat indices text", "cluster health of the index", "cluster health", "delete index"):
        assert status[name] in (200, 201), (name, steps[name])
    assert (status["HEAD index"], status["HEAD missing index"], status["get deleted doc"]) == (200, 404, 404)
    assert steps["count"]["body"]["count"] == DOCS
    gzipped = [s for name, s in steps.items() if name.startswith("gzip: ") and s.get("headers") and not _carries_id(s)]
    assert gzipped and all(s["headers"].get("content-encoding") == "gzip" for s in gzipped), gzipped
    if flavor == "elasticsearch":
        # The integ-test distribution has no rest-root, async-search or reindex module (bench/realcluster.py).
        assert (status["info"], status["async search"], status["delete by query"]) == (405, 400, 400)
        assert "no handler found" in steps["async search"]["body"]["error"]
    else:
        assert status["info"] == 200 and status["delete by query"] == 200
        assert steps["delete by query"]["body"]["deleted"] == DOCS // 10


# ---- what may differ ----------------------------------------------------------------------------

ID_FIELDS = ("_scroll_id", "pit_id", "id")


def assert_ids_wrapped(direct: list[dict], proxied: list[dict]) -> None:
    """The scroll and point-in-time ids the proxy hands out are its bound wrappers; the cluster's are not."""
    wrapped = [(s["step"], s["body"][f]) for s in proxied for f in ID_FIELDS if _id_step(s, f)]
    raw = [(s["step"], s["body"][f]) for s in direct for f in ID_FIELDS if _id_step(s, f)]
    assert wrapped and len(wrapped) == len(raw)
    assert all(value.startswith("sg1.") for _, value in wrapped), wrapped
    assert not any(value.startswith("sg1.") for _, value in raw)
    for transcript in (direct, proxied):  # OpenSearch names the ids it closed: the ones the client sent
        closed = [s for s in transcript if s["step"] == "close point in time"]
        pages = [s for s in transcript if s["step"].startswith("pit: page") and isinstance(s["body"], dict)]
        if closed and "pits" in closed[0]["body"]:
            assert [p["pit_id"] for p in closed[0]["body"]["pits"]] == [pages[-1]["body"]["pit_id"]]


def _id_step(step: dict, name: str) -> bool:
    body = step.get("body")
    if not isinstance(body, dict) or not isinstance(body.get(name), str):
        return False
    return name != "id" or step["step"].endswith("open point in time")


#: response headers that may differ: Sluicegate's own; the hop-by-hop ones (RFC 9110 §7.6.1), each hop's
#: own framing and connection handling — Content-Length and Transfer-Encoding (the body is compared
#: itself; its length follows `took` and the wrapped ids), Connection (the Node.js clients send HEAD
#: with `Connection: close`, which the proxy answers in kind and the nodes do not); and Date, which a
#: proxy must add where the node sent none (RFC 9110 §6.6.1: Elasticsearch and OpenSearch send none)
MAY_DIFFER = re.compile(
    r"x-sluicegate-.*|ratelimit.*|retry-after|content-length|transfer-encoding|connection|keep-alive|date")


def normalise(transcript: list[dict], index: str) -> list[dict]:
    """The transcript with what may legitimately differ between the two runs replaced by placeholders."""
    # The index name: each run has its own fresh index (and its "-gz" and "-absent" siblings).
    steps = json.loads(json.dumps(transcript).replace(index, "<index>"))
    for step in steps:
        name = step["step"]
        if isinstance(step.get("headers"), dict):
            step["headers"] = {k.lower(): v for k, v in step["headers"].items() if not MAY_DIFFER.fullmatch(k.lower())}
            if "task_resource_usage" in step["headers"]:
                # OpenSearch's resource tracking leaks into scroll and by-query responses as headers: the
                # task ids, node id, CPU time and memory of whichever shard tasks the receiving node ran itself.
                step["headers"]["task_resource_usage"] = "<the node's own tasks>"
            if name.startswith("gzip: ") and _carries_id(step):
                # The proxy asks the node for identity encoding where it rewrites an id in the response's
                # first bytes (docs/SECURITY.md): those answers come back uncompressed, on purpose.
                step["headers"].pop("content-encoding", None)
        body = step.get("body")
        # `took`: the cluster's own timing of the request, different on every run.
        _replace_key(body, "took", "<took>")
        # Scroll and point-in-time ids: wrapped by the proxy on purpose (and new on every run anyway).
        _replace_key(body, "_scroll_id", "<scroll id>")
        _replace_key(body, "pit_id", "<pit id>")
        if name.endswith("open point in time") and isinstance(body, dict) and "id" in body:
            body["id"] = "<pit id>"
        if isinstance(body, dict):
            if name == "info" and "name" in body:
                body["name"] = "<node>"  # which of the three nodes answered: the client's and the proxy's round-robin
            if name.endswith("open point in time") and "creation_time" in body:
                body["creation_time"] = "<time>"  # OpenSearch: when the point in time was opened
            if name.endswith("as a task") and "task" in body:
                body["task"] = "<task>"  # node id and task number: the cluster's, new per run
            if name == "get task" and isinstance(body.get("task"), dict):
                task = body["task"]
                for key in ("node", "id", "start_time_in_millis", "running_time_in_nanos"):
                    task[key] = f"<{key}>"  # which node ran it, its number, when and for how long
                if isinstance(task.get("headers"), dict):
                    # The proxy tags every forwarded request with `X-Opaque-Id: <tenant>;<id>` (runaway control:
                    # the tenant on every task); the cluster keeps it on the task. The client's own headers match.
                    task["headers"].pop("X-Opaque-Id", None)
            if name.startswith("pit: page") and isinstance(body.get("hits"), dict):
                # Elasticsearch adds the implicit `_shard_doc` tiebreaker: shard << 32 | Lucene doc id, which
                # follows how the bulk happened to be cut into segments on each run's own index.
                for hit in body["hits"].get("hits", []):
                    if isinstance(hit.get("sort"), list) and len(hit["sort"]) > 1:
                        hit["sort"][-1] = "<shard_doc>"
            if name.startswith("cluster health"):
                # Cluster-wide figures on a cluster other tests use at the same time: its pending tasks,
                # and (without an index filter) the shard counts and status of everyone's indices.
                cluster_wide = ["number_of_pending_tasks", "number_of_in_flight_fetch", "task_max_waiting_in_queue_millis"]
                if name == "cluster health":
                    cluster_wide += ["status", "active_primary_shards", "active_shards", "relocating_shards",
                                     "initializing_shards", "unassigned_shards", "unassigned_primary_shards",
                                     "delayed_unassigned_shards", "active_shards_percent_as_number"]
                for key in cluster_wide:
                    if key in body:
                        body[key] = f"<{key}>"
        if name.startswith("cat indices json") and isinstance(body, list):
            for row in body:
                row["uuid"] = "<uuid>"  # the index's own id
                for key in ("docs.deleted", "store.size", "pri.store.size", "dataset.size"):
                    if key in row:  # bytes on disk and deleted docs not merged away yet: when segments merged
                        row[key] = f"<{key}>"
    return steps


def _carries_id(step: dict) -> bool:
    """Whether the response holds a scroll or point-in-time id (the responses the proxy rewrites)."""
    body = step.get("body")
    return isinstance(body, dict) and ("_scroll_id" in body or "pit_id" in body or _id_step(step, "id"))


def _replace_key(value, key: str, placeholder: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                value[k] = placeholder
            else:
                _replace_key(v, key, placeholder)
    elif isinstance(value, list):
        for v in value:
            _replace_key(v, key, placeholder)


def compare(direct, proxied, path: str = "") -> list[str]:
    """Every place where the two differ, as 'path: direct != proxied' lines."""
    if isinstance(direct, dict) and isinstance(proxied, dict):
        out = []
        for key in sorted(set(direct) | set(proxied), key=str):
            if key not in proxied:
                out.append(f"{path}.{key}: only direct: {_short(direct[key])}")
            elif key not in direct:
                out.append(f"{path}.{key}: only through the proxy: {_short(proxied[key])}")
            else:
                out += compare(direct[key], proxied[key], f"{path}.{key}")
        return out
    if isinstance(direct, list) and isinstance(proxied, list):
        if path == "" and [s["step"] for s in direct] != [s["step"] for s in proxied]:
            return [f"steps differ: {[s['step'] for s in direct]} != {[s['step'] for s in proxied]}"]
        if len(direct) != len(proxied):
            return [f"{path}: {len(direct)} items != {len(proxied)} items"]
        out = []
        for i, (a, b) in enumerate(zip(direct, proxied)):
            label = a["step"] if path == "" and isinstance(a, dict) and "step" in a else str(i)
            out += compare(a, b, f"{path}[{label}]")
        return out
    if direct != proxied:
        return [f"{path}: {_short(direct)} != {_short(proxied)}"]
    return []


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 300 else text[:300] + "..."
