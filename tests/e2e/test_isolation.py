"""One tenant can never reach another's indices, ids or the cluster's settings — and the cluster never hears of the attempt.

Real processes: the proxy, and a recording upstream that issues scroll, point-in-time and
async-search ids the way Elasticsearch does (first key of the response). Tenant acme opens one of
each through the proxy; tenant globex then tries every endpoint and trick in ATTEMPTS. Each is a
403, and the upstream receives nothing. The last test runs scrolls end to end against the
simulated cluster with the official client.
"""
from __future__ import annotations

import base64
import os
from urllib.parse import quote

import orjson
import pytest
import urllib3
from aiohttp import web
from elasticsearch import AuthorizationException, Elasticsearch
from elasticsearch import helpers as es_helpers

from tests.processes import make_config, tenant
from tests.upstreams import RecordingUpstream, Seen


def _es_id(tag: bytes) -> str:
    return base64.b64encode(tag + os.urandom(48)).decode()  # ES ids are base64, often with padding


class IdIssuingUpstream(RecordingUpstream):
    """Records every request, and answers the calls that open a scroll, a PIT or an async search with a fresh id."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers), body))
        path = request.path
        if path.endswith("/_pit"):
            payload = {"id": _es_id(b"pit"), "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}
        elif path.endswith("/_async_search"):
            payload = {"id": _es_id(b"async"), "is_partial": True, "is_running": True, "start_time_in_millis": 1}
        elif "scroll" in request.query or path.startswith("/_search/scroll"):
            payload = {"_scroll_id": _es_id(b"scroll"), "took": 2, "timed_out": False,
                       "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                       "hits": {"total": {"value": 0, "relation": "eq"}, "max_score": None, "hits": []}}
        else:
            payload = {"took": 1, "timed_out": False, "hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}}
        return web.json_response(payload, headers={"X-Elastic-Product": "Elasticsearch"})


def client_requests(upstream: RecordingUpstream) -> list[Seen]:
    """What clients caused upstream (the proxy's own health checks carry no X-Forwarded-For)."""
    return [s for s in upstream.seen if "X-Forwarded-For" in s.headers]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.processes import Processes

    upstream = IdIssuingUpstream().start()
    procs = Processes(tmp_path_factory.mktemp("isolation"))
    try:
        proxy = procs.proxy(make_config([upstream.url], tenants={"acme": tenant("acme"), "globex": tenant("globex")}))
        http = urllib3.PoolManager(headers={"Content-Type": "application/json"})
        acme = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}

        def acme_call(method: str, path: str, body=None) -> dict:
            response = http.request(method, proxy.url + path, headers=acme, body=orjson.dumps(body) if body else None)
            assert response.status == 200, response.data
            return orjson.loads(response.data)

        ids = {
            "scroll": acme_call("POST", "/acme-logs/_search?scroll=1m", {"size": 10})["_scroll_id"],
            "pit": acme_call("POST", "/acme-logs/_pit?keep_alive=1m")["id"],
            "async": acme_call("POST", "/acme-logs/_async_search", {"query": {"match_all": {}}})["id"],
        }
        yield proxy, upstream, http, ids
    finally:
        procs.close()
        upstream.stop()


def test_acme_gets_bound_ids_and_the_cluster_its_own(world):
    proxy, upstream, http, ids = world
    for name, wrapped in ids.items():
        assert wrapped.startswith("sg1.") and wrapped.count(".") >= 2, name
    # acme continues its own scroll: the node receives the id it issued, not the wrapper
    response = http.request("POST", proxy.url + "/_search/scroll", body=orjson.dumps({"scroll": "1m", "scroll_id": ids["scroll"]}),
                            headers={"Authorization": "ApiKey acme-key", "Content-Type": "application/json"})
    assert response.status == 200, response.data
    sent = orjson.loads(client_requests(upstream)[-1].body)
    assert sent["scroll_id"] == ids["scroll"].split(".", 2)[2]
    assert orjson.loads(response.data)["_scroll_id"].startswith("sg1.")


def nd(*lines) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


NDJSON = "application/x-ndjson"

# (name, method, path, body, content type) — globex attacking acme. {scroll} {pit} {async} are acme's bound ids.
ATTEMPTS = [
    ("search another's index", "GET", "/acme-logs/_search", None, None),
    ("write another's index", "POST", "/acme-logs/_doc", {"x": 1}, None),
    ("read a document", "GET", "/acme-logs/_doc/1", None, None),
    ("delete another's index", "DELETE", "/acme-logs", None, None),
    ("wildcard over another's prefix", "GET", "/acme-*/_search", None, None),
    ("_all", "GET", "/_all/_search", None, None),
    ("bare * on count", "GET", "/*/_count", None, None),
    ("no index at all", "POST", "/_search", {"query": {"match_all": {}}}, None),
    ("own index listed with another's", "GET", "/globex-a,acme-logs/_search", None, None),
    ("leading exclusion", "GET", "/-globex-a/_search", None, None),
    ("date math", "GET", "/%3Cacme-%7Bnow%2Fd%7D%3E/_search", None, None),
    ("percent-encoded comma", "GET", "/globex-a%2Cacme-logs/_search", None, None),
    ("remote cluster prefix", "GET", "/other:globex-a/_search", None, None),
    ("_msearch header", "POST", "/_msearch", nd({"index": "acme-logs"}, {}), NDJSON),
    ("_msearch header overriding the path", "POST", "/globex-a/_msearch", nd({}, {}, {"indices": ["acme-logs"]}, {}), NDJSON),
    ("_bulk action", "POST", "/_bulk", nd({"index": {"_index": "acme-logs"}}, {"x": 1}), NDJSON),
    ("_bulk action overriding the path", "POST", "/globex-a/_bulk", nd({"delete": {"_index": "acme-logs", "_id": "1"}}), NDJSON),
    ("_mget doc", "POST", "/globex-a/_mget", {"docs": [{"_index": "acme-logs", "_id": "1"}]}, None),
    ("_reindex out of", "POST", "/_reindex", {"source": {"index": "acme-logs"}, "dest": {"index": "globex-copy"}}, None),
    ("_reindex into", "POST", "/_reindex", {"source": {"index": "globex-a"}, "dest": {"index": "acme-logs"}}, None),
    ("_reindex script rewriting _index", "POST", "/_reindex",
     {"source": {"index": "globex-a"}, "dest": {"index": "globex-b"}, "script": {"source": "ctx._index = 'acme-logs'"}}, None),
    ("_aliases onto another's index", "POST", "/_aliases", {"actions": [{"add": {"index": "acme-logs", "alias": "globex-view"}}]}, None),
    ("alias into another's namespace", "PUT", "/globex-a/_alias/acme-logs-current", None, None),
    ("alias at index creation", "PUT", "/globex-new", {"aliases": {"acme-hijack": {}}}, None),
    ("clone into another's namespace", "POST", "/globex-a/_clone/acme-clone", None, None),
    ("rollover into another's namespace", "POST", "/globex-alias/_rollover/acme-000002", None, None),
    ("SQL", "POST", "/_sql", {"query": "SELECT * FROM \"acme-logs\""}, None),
    ("SQL subquery", "POST", "/_sql", {"query": "SELECT * FROM globex-a WHERE x IN (SELECT y FROM acme-logs)"}, None),
    ("ES|QL", "POST", "/_query", {"query": "FROM acme-logs | LIMIT 10"}, None),
    ("ES|QL lookup join", "POST", "/_query", {"query": "FROM globex-a | LOOKUP JOIN acme-users ON id"}, None),
    ("PPL", "POST", "/_plugins/_ppl", {"query": "source=acme-logs"}, None),
    ("EQL", "POST", "/acme-logs/_eql/search", {"query": "any where true"}, None),
    ("terms lookup", "POST", "/globex-a/_search",
     {"query": {"terms": {"user": {"index": "acme-users", "id": "1", "path": "followers"}}}}, None),
    ("lookup runtime field", "POST", "/globex-a/_search",
     {"runtime_mappings": {"x": {"type": "lookup", "target_index": "acme-users", "input_field": "a",
                                 "target_field": "b", "fetch_fields": ["c"]}}}, None),
    ("inline template with a lookup", "POST", "/globex-a/_search/template",
     {"source": "{\"query\":{\"terms\":{\"u\":{\"index\":\"{{i}}\",\"id\":\"1\",\"path\":\"p\"}}}}", "params": {"i": "acme-users"}}, None),
    ("?index= parameter", "POST", "/_plugins/_asynchronous_search?index=acme-logs", {}, None),
    ("another's scroll id", "POST", "/_search/scroll", {"scroll": "1m", "scroll_id": "{scroll}"}, None),
    ("another's scroll id in the path", "GET", "/_search/scroll/{scroll_q}?scroll=1m", None, None),
    ("another's scroll id in the query", "GET", "/_search/scroll?scroll=1m&scroll_id={scroll_q}", None, None),
    ("clearing another's scroll", "DELETE", "/_search/scroll", {"scroll_id": ["{scroll}"]}, None),
    ("clearing every scroll", "DELETE", "/_search/scroll/_all", None, None),
    ("the cluster's raw scroll id", "POST", "/_search/scroll", {"scroll_id": "{scroll_raw}"}, None),
    ("searching another's PIT", "POST", "/_search", {"pit": {"id": "{pit}", "keep_alive": "1m"}}, None),
    ("closing another's PIT", "DELETE", "/_pit", {"id": "{pit}"}, None),
    ("closing every PIT", "DELETE", "/_search/point_in_time/_all", None, None),
    ("another's async search", "GET", "/_async_search/{async_q}", None, None),
    ("deleting another's async search", "DELETE", "/_async_search/{async_q}", None, None),
    ("cluster settings", "PUT", "/_cluster/settings", {"persistent": {"cluster.routing.allocation.enable": "none"}}, None),
    ("hot threads", "GET", "/_nodes/_all/hot_threads", None, None),
    ("snapshot repository", "PUT", "/_snapshot/steal", {"type": "fs", "settings": {"location": "/tmp"}}, None),
    ("security API", "GET", "/_security/user", None, None),
    ("ingest pipeline", "PUT", "/_ingest/pipeline/reroute", {"processors": [{"set": {"field": "_index", "value": "acme-logs"}}]}, None),
    ("shutdown a node", "PUT", "/_nodes/node-1/shutdown", {"type": "restart", "reason": "x"}, None),
    ("everyone's tasks", "GET", "/_tasks?detailed", None, None),
    ("cancel a task", "POST", "/_tasks/node-1:42/_cancel", None, None),
    ("index template capturing another's prefix", "PUT", "/_index_template/grab", {"index_patterns": ["acme-*"]}, None),
    ("_cat/indices lists every tenant's", "GET", "/_cat/indices?v", None, None),
    ("_cat/indices on another's", "GET", "/_cat/indices/acme-*", None, None),
    ("health listing every index", "GET", "/_cluster/health?level=indices", None, None),
    ("cluster state", "GET", "/_cluster/state", None, None),
    ("resolve another's names", "GET", "/_resolve/index/acme-*", None, None),
    ("mapping of another's index", "GET", "/acme-logs/_mapping", None, None),
    ("delete by query", "POST", "/acme-logs/_delete_by_query", {"query": {"match_all": {}}}, None),
    ("refresh every index", "POST", "/_refresh", None, None),
    ("settings of every index", "PUT", "/_settings", {"index": {"number_of_replicas": 0}}, None),
]


def _fill(value, ids: dict):
    text = orjson.dumps(value).decode() if not isinstance(value, (str, bytes)) else value
    if isinstance(text, bytes):
        return text
    subs = {"scroll": ids["scroll"], "pit": ids["pit"], "async": ids["async"],
            "scroll_raw": ids["scroll"].split(".", 2)[2]}
    subs.update({f"{k}_q": quote(v, safe="") for k, v in list(subs.items())})
    for key, sub in subs.items():
        text = text.replace("{" + key + "}", sub)
    return text


@pytest.mark.parametrize("name,method,path,body,ctype", ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
def test_cross_tenant_attempt_is_403_and_the_upstream_receives_nothing(world, name, method, path, body, ctype):
    proxy, upstream, http, ids = world
    before = len(client_requests(upstream))
    data = None if body is None else _fill(body, ids)
    response = http.request(method, proxy.url + _fill(path, ids), body=data,
                            headers={"Authorization": "ApiKey globex-key", "Content-Type": ctype or "application/json"})
    assert response.status == 403, response.data
    error = orjson.loads(response.data)
    assert error["status"] == 403 and error["error"]["type"] == "security_exception"
    reason = error["error"]["reason"]
    assert "tenant 'globex'" in reason
    assert "acme-key" not in reason
    for own_id in ids.values():  # never echo an id, nor name whose it was
        assert own_id not in reason and own_id.split(".", 2)[2] not in reason
    if any("{" + key in path + repr(body) for key in ("scroll", "pit", "async")):
        assert "acme" not in reason  # an id refusal names neither the id nor its owner
    assert len(client_requests(upstream)) == before, [s.path_qs for s in client_requests(upstream)[before:]]


def test_there_are_at_least_thirty_attempts():
    assert len(ATTEMPTS) >= 30


def test_official_client_sees_403_as_authorization_errors(world):
    proxy, upstream, http, ids = world
    before = len(client_requests(upstream))
    es = Elasticsearch(proxy.url, api_key="globex-key", request_timeout=10)
    for attempt in (
        lambda: es.search(index="acme-logs", query={"match_all": {}}),
        lambda: es.scroll(scroll_id=ids["scroll"], scroll="1m"),
        lambda: es.search(pit={"id": ids["pit"], "keep_alive": "1m"}),
        lambda: es.async_search.get(id=ids["async"]),
        lambda: es.indices.put_alias(index="globex-a", name="acme-logs-alias"),
        lambda: es.cluster.put_settings(persistent={"x": 1}),
    ):
        with pytest.raises(AuthorizationException):
            attempt()
    assert len(client_requests(upstream)) == before
    # ... and the proxy goes on serving globex inside its own grant
    assert es.search(index="globex-a", query={"match_all": {}})["hits"]["total"]["value"] == 0


def test_scrolls_end_to_end_with_the_official_client(procs, shared_cluster):
    proxy = procs.proxy(make_config(shared_cluster.nodes))
    acme = Elasticsearch(proxy.url, api_key="acme-key", request_timeout=30)
    globex = Elasticsearch(proxy.url, api_key="globex-key", request_timeout=30)
    es_helpers.bulk(acme, ({"_index": "acme-scroll", "_id": str(i), "n": i} for i in range(25)), refresh=True)
    # helpers.scan scrolls page by page and clears the scroll at the end, all through bound ids
    assert sorted(hit["_source"]["n"] for hit in es_helpers.scan(acme, index="acme-scroll", size=7)) == list(range(25))
    first = acme.search(index="acme-scroll", scroll="1m", size=10, sort=["n"])
    scroll_id = first["_scroll_id"]
    assert scroll_id.startswith("sg1.")
    with pytest.raises(AuthorizationException):
        globex.scroll(scroll_id=scroll_id, scroll="1m")
    with pytest.raises(AuthorizationException):
        acme.scroll(scroll_id=scroll_id.split(".", 2)[2], scroll="1m")  # the cluster's id, unwrapped
    second = acme.scroll(scroll_id=scroll_id, scroll="1m")
    assert [h["_source"]["n"] for h in second["hits"]["hits"]] == list(range(10, 20))
    assert acme.clear_scroll(scroll_id=second["_scroll_id"])["succeeded"]
