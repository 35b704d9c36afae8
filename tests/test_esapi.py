"""The ES/OpenSearch URL grammar and body decoding (proxy/esapi.py)."""
from __future__ import annotations

import gzip
import json
import math
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import esapi
from proxy.config import HardLimits
from proxy.cost import CostModel, Weights
from proxy.errors import BadRequest, BodyTooLarge, IllegalArgument, InvalidParameter, NotAcceptable, Refusal
from proxy.esapi import Body, EsCall, decode_body, parse_call

LIMITS = HardLimits()
JSON = "application/json"
NDJSON = "application/x-ndjson"


# ---- URL grammar ------------------------------------------------------------------------------

# (method, target) -> (kind, resource, indices, doc_id, cluster, api), from the ES 8/9 and OpenSearch 2/3 REST references
ROUTES = [
    # root and search family
    ("GET", "/", ("info", "read", (), None, False, "info")),
    ("HEAD", "/", ("info", "read", (), None, False, "info")),
    ("GET", "/_search", ("search", "search", (), None, False, "search")),
    ("POST", "/my-index-000001/_search", ("search", "search", ("my-index-000001",), None, False, "search")),
    ("GET", "/my-index-000001,my-index-000002/_search", ("search", "search", ("my-index-000001", "my-index-000002"), None, False, "search")),
    ("GET", "/_all/_search", ("search", "search", ("_all",), None, False, "search")),
    ("GET", "/*/_search", ("search", "search", ("*",), None, False, "search")),
    ("POST", "/_msearch", ("msearch", "search", (), None, False, "msearch")),
    ("POST", "/my-index-000001/_msearch", ("msearch", "search", ("my-index-000001",), None, False, "msearch")),
    ("GET", "/my-index-000001/_count", ("count", "search", ("my-index-000001",), None, False, "count")),
    ("GET", "/_count", ("count", "search", (), None, False, "count")),
    ("POST", "/_search/scroll", ("scroll", "search", (), None, False, "scroll")),
    ("GET", "/_search/scroll/DXF1ZXJ5QW5kRmV0Y2gBAAAAAAAAAD4WYm9laVYtZndUQlNsdDcwakFMNjU1QQ==",
     ("scroll", "search", (), None, False, "scroll")),
    ("DELETE", "/_search/scroll", ("clear_scroll", "search", (), None, False, "clear_scroll")),
    ("GET", "/my-index/_search/template", ("search_template", "search", ("my-index",), None, False, "search_template")),
    ("GET", "/_search/template", ("search_template", "search", (), None, False, "search_template")),
    ("GET", "/my-index/_msearch/template", ("msearch_template", "search", ("my-index",), None, False, "msearch_template")),
    ("POST", "/_render/template", ("render_search_template", "search", (), None, False, "render_search_template")),
    ("POST", "/sales*/_async_search", ("async_search", "search", ("sales*",), None, False, "async_search.submit")),
    ("GET", "/_async_search/FmRldE8zREVEUzA2ZVpUeGs2ejJFUFEaMkZ5QTVrSTZSaVN3WlNFVmtlWHJsdzoxMDc=",
     ("async_search_get", "search", (), "FmRldE8zREVEUzA2ZVpUeGs2ejJFUFEaMkZ5QTVrSTZSaVN3WlNFVmtlWHJsdzoxMDc=", False, "async_search.get")),
    ("GET", "/_async_search/status/abc", ("async_search_get", "search", (), "abc", False, "async_search.status")),
    ("DELETE", "/_async_search/abc", ("async_search_delete", "search", (), "abc", False, "async_search.delete")),
    ("POST", "/_sql", ("sql", "search", (), None, False, "sql.query")),
    ("POST", "/_sql/close", ("sql", "search", (), None, False, "sql.clear_cursor")),
    ("POST", "/_query", ("esql", "search", (), None, False, "esql.query")),
    ("GET", "/my-index-000001/_eql/search", ("eql", "search", ("my-index-000001",), None, False, "eql.search")),
    ("GET", "/_eql/search/FkpMRkJGS1gzVDRlM3g4ZzMyRGlLbkEaTXlJZHdNT09TU2VTZVBoNDM3cFZMUToxMDM=",
     ("eql", "search", (), "FkpMRkJGS1gzVDRlM3g4ZzMyRGlLbkEaTXlJZHdNT09TU2VTZVBoNDM3cFZMUToxMDM=", False, "eql.get")),
    ("POST", "/my-index/_knn_search", ("knn_search", "search", ("my-index",), None, False, "knn_search")),
    ("GET", "/_field_caps", ("field_caps", "search", (), None, False, "field_caps")),
    ("POST", "/my-index-000001/_field_caps", ("field_caps", "search", ("my-index-000001",), None, False, "field_caps")),
    ("POST", "/my-index-000001/_pit", ("open_pit", "search", ("my-index-000001",), None, False, "open_point_in_time")),
    ("DELETE", "/_pit", ("close_pit", "search", (), None, False, "close_point_in_time")),
    ("GET", "/my-index-000001/_explain/0", ("explain", "search", ("my-index-000001",), "0", False, "explain")),
    ("GET", "/my-index-000001/_validate/query", ("validate_query", "search", ("my-index-000001",), None, False, "indices.validate_query")),
    ("POST", "/stackoverflow/_terms_enum", ("terms_enum", "search", ("stackoverflow",), None, False, "terms_enum")),
    # documents
    ("GET", "/my-index-000001/_doc/0", ("doc_get", "read", ("my-index-000001",), "0", False, "get")),
    ("HEAD", "/my-index-000001/_doc/0", ("doc_get", "read", ("my-index-000001",), "0", False, "get")),
    ("GET", "/my-index-000001/_source/1", ("doc_source", "read", ("my-index-000001",), "1", False, "get_source")),
    ("GET", "/_mget", ("mget", "read", (), None, False, "mget")),
    ("GET", "/my-index-000001/_mget", ("mget", "read", ("my-index-000001",), None, False, "mget")),
    ("GET", "/my-index-000001/_termvectors/1", ("termvectors", "read", ("my-index-000001",), "1", False, "termvectors")),
    ("PUT", "/my-index-000001/_doc/1", ("doc_index", "write", ("my-index-000001",), "1", False, "index")),
    ("POST", "/my-index-000001/_doc/", ("doc_index", "write", ("my-index-000001",), None, False, "index")),
    ("PUT", "/my-index-000001/_create/1", ("doc_create", "write", ("my-index-000001",), "1", False, "create")),
    ("POST", "/test/_update/1", ("doc_update", "write", ("test",), "1", False, "update")),
    ("DELETE", "/my-index-000001/_doc/1", ("doc_delete", "write", ("my-index-000001",), "1", False, "delete")),
    ("POST", "/_bulk", ("bulk", "write", (), None, False, "bulk")),
    ("PUT", "/my-index-000001/_bulk", ("bulk", "write", ("my-index-000001",), None, False, "bulk")),
    # by-query and reindex
    ("POST", "/my-index-000001/_delete_by_query", ("delete_by_query", "admin", ("my-index-000001",), None, False, "delete_by_query")),
    ("POST", "/my-index-000001/_update_by_query", ("update_by_query", "admin", ("my-index-000001",), None, False, "update_by_query")),
    ("POST", "/_reindex", ("reindex", "admin", (), None, False, "reindex")),
    ("POST", "/_reindex/r1A2WoRbTwKZ516z6NEs5A:36619/_rethrottle", ("rethrottle", "admin", (), None, True, "reindex.rethrottle")),
    # indices
    ("PUT", "/my-index-000001", ("index_create", "admin", ("my-index-000001",), None, False, "indices.create")),
    ("DELETE", "/my-index-000001", ("index_delete", "admin", ("my-index-000001",), None, False, "indices.delete")),
    ("HEAD", "/my-data-stream", ("index_exists", "admin", ("my-data-stream",), None, False, "indices.exists")),
    ("GET", "/my-index-000001", ("index_get", "admin", ("my-index-000001",), None, False, "indices.get")),
    ("GET", "/my-index-000001/_mapping", ("mapping", "admin", ("my-index-000001",), None, False, "indices.mapping")),
    ("PUT", "/publications/_mapping", ("mapping", "admin", ("publications",), None, False, "indices.mapping")),
    ("GET", "/_mapping", ("mapping", "admin", (), None, False, "indices.mapping")),
    ("GET", "/publications/_mapping/field/title", ("mapping", "admin", ("publications",), None, False, "indices.mapping")),
    ("GET", "/my-index-000001/_settings", ("settings", "admin", ("my-index-000001",), None, False, "indices.settings")),
    ("PUT", "/my-index-000001/_settings", ("settings", "admin", ("my-index-000001",), None, False, "indices.settings")),
    ("PUT", "/my-data-stream/_alias/my-alias", ("aliases", "admin", ("my-data-stream",), None, False, "indices.aliases")),
    ("POST", "/_aliases", ("aliases", "admin", (), None, False, "indices.aliases")),
    ("GET", "/_alias", ("aliases", "admin", (), None, False, "indices.aliases")),
    ("POST", "/my-index-000001/_refresh", ("refresh", "admin", ("my-index-000001",), None, False, "indices.refresh")),
    ("POST", "/_refresh", ("refresh", "admin", (), None, False, "indices.refresh")),
    ("POST", "/my-index-000001/_forcemerge", ("forcemerge", "admin", ("my-index-000001",), None, False, "indices.forcemerge")),
    ("POST", "/my-index-000001/_cache/clear", ("clear_cache", "admin", ("my-index-000001",), None, False, "indices.clear_cache")),
    ("GET", "/my-index-000001/_stats", ("index_stats", "admin", ("my-index-000001",), None, False, "indices.stats")),
    ("POST", "/my-index-000001/_close", ("index_close", "admin", ("my-index-000001",), None, False, "indices.close")),
    ("POST", "/my-data-stream/_rollover", ("rollover", "admin", ("my-data-stream",), None, False, "indices.rollover")),
    ("POST", "/my_source_index/_shrink/my_target_index", ("resize", "admin", ("my_source_index",), None, False, "indices.shrink")),
    ("GET", "/my-index-000001/_analyze", ("analyze", "admin", ("my-index-000001",), None, False, "indices.analyze")),
    ("GET", "/_analyze", ("analyze", "admin", (), None, True, "indices.analyze")),
    ("GET", "/_data_stream/my-data-stream", ("data_stream", "admin", ("my-data-stream",), None, False, "indices.data_stream")),
    ("GET", "/_resolve/index/f*,remoteCluster1:bar*", ("resolve_index", "admin", ("f*", "remoteCluster1:bar*"), None, False, "indices.resolve_index")),
    # cluster-level
    ("GET", "/_cluster/health", ("cluster_health", "admin", (), None, True, "cluster.health")),
    ("GET", "/_cluster/health/my-index-000001", ("cluster_health", "admin", ("my-index-000001",), None, True, "cluster.health")),
    ("PUT", "/_cluster/settings", ("cluster_settings", "admin", (), None, True, "cluster.settings")),
    ("GET", "/_cluster/state/metadata,routing_table/foo,bar", ("cluster_state", "admin", ("foo", "bar"), None, True, "cluster.state")),
    ("GET", "/_cluster/stats", ("cluster_stats", "admin", (), None, True, "cluster.stats")),
    ("POST", "/_cluster/reroute", ("cluster_reroute", "admin", (), None, True, "cluster.reroute")),
    ("GET", "/_cluster/allocation/explain", ("cluster_allocation_explain", "admin", (), None, True, "cluster.allocation")),
    ("GET", "/_nodes/stats", ("nodes_stats", "admin", (), None, True, "nodes.stats")),
    ("GET", "/_nodes/nodeId1,nodeId2/stats/indices", ("nodes_stats", "admin", (), None, True, "nodes.stats")),
    ("GET", "/_nodes/hot_threads", ("nodes_hot_threads", "admin", (), None, True, "nodes.hot_threads")),
    ("GET", "/_nodes/nodeId1/hot_threads", ("nodes_hot_threads", "admin", (), None, True, "nodes.hot_threads")),
    ("GET", "/_nodes", ("nodes_info", "admin", (), None, True, "nodes.info")),
    ("GET", "/_nodes/_all/jvm", ("nodes_info", "admin", (), None, True, "nodes.info")),
    ("GET", "/_cat/indices/my-index-*?v=true&s=index", ("cat", "admin", ("my-index-*",), None, True, "cat.indices")),
    ("GET", "/_cat/nodes?v=true", ("cat", "admin", (), None, True, "cat.nodes")),
    ("GET", "/_cat", ("cat", "admin", (), None, True, "cat")),
    ("GET", "/_tasks?actions=*search&detailed", ("tasks", "admin", (), None, True, "tasks")),
    ("POST", "/_tasks/oTUltX4IQMOUUVeiohTt8A:12345/_cancel", ("tasks", "admin", (), None, True, "tasks")),
    ("PUT", "/_snapshot/my_repository/my_snapshot", ("snapshot", "admin", (), None, True, "snapshot")),
    ("PUT", "/_ingest/pipeline/my-pipeline-id", ("ingest", "admin", (), None, True, "ingest.pipeline")),
    ("GET", "/_security/_authenticate", ("security", "admin", (), None, True, "security.authenticate")),
    ("PUT", "/_security/user/jacknich", ("security", "admin", (), None, True, "security.user")),
    ("PUT", "/_scripts/my-search-template", ("scripts", "admin", (), None, True, "scripts")),
    ("GET", "/_license", ("license", "admin", (), None, True, "license")),
    ("GET", "/_features", ("features", "admin", (), None, True, "features")),
    ("PUT", "/_index_template/template_1", ("index_template", "admin", (), None, True, "indices.index_template")),
    ("PUT", "/_component_template/template_1", ("index_template", "admin", (), None, True, "cluster.component_template")),
    ("GET", "/_ilm/policy/my_policy", ("ilm", "admin", (), None, True, "ilm.policy")),
    ("PUT", "/_nodes/USpTGYaBSIKbgSUJR2Z9lg/shutdown", ("nodes_shutdown", "admin", (), None, True, "nodes.shutdown")),
    # OpenSearch 2/3
    ("POST", "/my-index-1/_search/point_in_time?keep_alive=100m", ("open_pit", "search", ("my-index-1",), None, False, "open_point_in_time")),
    ("DELETE", "/_search/point_in_time", ("close_pit", "search", (), None, False, "close_point_in_time")),
    ("DELETE", "/_search/point_in_time/_all", ("close_pit", "search", (), None, False, "close_point_in_time")),
    ("POST", "/_plugins/_sql", ("sql", "search", (), None, False, "plugins.sql")),
    ("POST", "/_plugins/_ppl", ("sql", "search", (), None, False, "plugins.ppl")),
    ("POST", "/_opendistro/_sql", ("sql", "search", (), None, False, "plugins.sql")),
    ("POST", "/_plugins/_asynchronous_search?index=my-index", ("async_search", "search", (), None, False, "plugins.asynchronous_search")),
    ("GET", "/_plugins/_security/api/roles", ("security", "admin", (), None, True, "plugins.security")),
    ("GET", "/_plugins/_ism/explain/my-index", ("plugins", "admin", (), None, True, "plugins.ism")),
    # unknown
    ("GET", "/_no_such_api/x", ("other", "admin", (), None, True, "other.no_such_api")),
    ("GET", "/my-index/no_such_api", ("other", "admin", ("my-index",), None, False, "other")),
]


@pytest.mark.parametrize("method,target,expected", ROUTES, ids=[f"{m} {t[:60]}" for m, t, _ in ROUTES])
def test_route(method, target, expected):
    call = parse_call(method, target)
    got = (call.kind, call.resource, call.indices, call.doc_id, call.cluster, call.api)
    assert got == expected
    assert call.method == method


def test_every_design_resource_family_is_covered():
    # DESIGN's cost model lists these families per resource class
    design = {
        "search": {"search", "msearch", "count", "scroll", "async_search", "search_template", "sql", "eql", "knn_search",
                   "field_caps"},
        "read": {"doc_get", "mget"},
        "write": {"bulk", "doc_index", "doc_update", "doc_delete"},
        "admin": {"index_create", "index_delete", "mapping", "settings", "cluster_health", "nodes_stats", "cat", "tasks",
                  "snapshot", "reindex", "delete_by_query", "update_by_query"},
    }
    seen: dict[str, set[str]] = {}
    for method, target, (kind, resource, *_rest) in ROUTES:
        seen.setdefault(resource, set()).add(kind)
    for resource, kinds in design.items():
        assert kinds <= seen[resource], kinds - seen[resource]


def test_method_is_upper_cased():
    assert parse_call("get", "/x/_doc/1").method == "GET"
    assert parse_call("get", "/x/_doc/1").kind == "doc_get"


@pytest.mark.parametrize("target,indices", [
    ("/logs-*,-logs-2023*,metrics/_search", ("logs-*", "-logs-2023*", "metrics")),
    ("/%3Clogs-%7Bnow%2Fd%7D%3E/_search", ("<logs-{now/d}>",)),
    ("/%3Clogs-%7Bnow%2Fd%7D%3E,%3Clogs-%7Bnow%2Fd-1d%7D%3E/_search", ("<logs-{now/d}>", "<logs-{now/d-1d}>")),
    ("/%3Cmy-index-%7Bnow%2FM%7ByyyyMM%7CUTC%7D%7D%3E/_doc/1", ("<my-index-{now/M{yyyyMM|UTC}}>",)),
    ("/_all/_count", ("_all",)),
    ("/cluster_one:my-index-000001,my-index-000001/_search", ("cluster_one:my-index-000001", "my-index-000001")),
    ("/a,,b/_search", ("a", "b")),
    ("//my-index//_search/", ("my-index",)),
    ("/_search", ()),
])
def test_index_expressions(target, indices):
    assert parse_call("GET", target).indices == indices


def test_percent_encoded_slash_stays_inside_its_segment():
    call = parse_call("GET", "/my-index/_doc/a%2Fb%20c")
    assert (call.kind, call.doc_id) == ("doc_get", "a/b c")


def test_query_parameters_decode_and_last_value_wins():
    call = parse_call("GET", "/i/_search?q=user.id:kimchy+AND+x%3Ay&size=5&size=7&pretty&scroll=1m&routing=u1")
    assert call.params == {"q": "user.id:kimchy AND x:y", "size": "7", "pretty": "", "scroll": "1m", "routing": "u1"}


@pytest.mark.parametrize("query", [
    "size=10&from=9990", "size=0", "from=%2B5", "terminate_after=100", "timeout=2s", "scroll=1m", "scroll=30S",
    "scroll=-1", "max_concurrent_searches=3", "track_total_hits=true", "search_type=dfs_query_then_fetch",
    "size=2147483647", "keep_alive=1m", "from=00000000000001",
    # what real Elasticsearch 8.19 and OpenSearch 2.19 nodes take, odd as it looks: Java parses digits of
    # any script, a sign and blanks around the number of a time value, and -1 of any unit
    "size=%D9%A1%D9%A2", "scroll=-1s", "scroll=%2B5s", "scroll=5%20s", "scroll=%D9%A1s", "timeout=%205m%20", "scroll=0",
])
def test_cost_relevant_params_that_es_accepts(query):
    call = parse_call("GET", f"/i/_search?{query}")
    assert call.params


@pytest.mark.parametrize("query,param", [
    ("size=abc", "size"), ("size=-1", "size"), ("from=-10", "from"), ("size=1.5", "size"), ("size=", "size"),
    ("size=%201", "size"), ("size=1_000", "size"), ("size=2147483648", "size"),
    ("terminate_after=x", "terminate_after"), ("scroll=soon", "scroll"), ("timeout=5 minutes", "5 minutes"),
    ("max_docs=-1", "max_docs"), ("size=" + "9" * 5000, "size"), ("scroll=1.5s", "1.5s"), ("scroll=-5m", "scroll"),
])
def test_bad_numeric_params_are_400_like_es(query, param):
    with pytest.raises(InvalidParameter) as info:
        parse_call("POST", f"/i/_search?{query}")
    assert isinstance(info.value, BadRequest) and info.value.status == 400
    assert info.value.etype == "illegal_argument_exception"
    assert f"[{param}]" in info.value.reason


# What real Elasticsearch 8.19 and OpenSearch 2.19 nodes answered, word for word (they agree on these).
@pytest.mark.parametrize("query,reason,cause", [
    ("size=abc", "Failed to parse int parameter [size] with value [abc]", 'For input string: "abc"'),
    ("size=", "Failed to parse int parameter [size] with value []", 'For input string: ""'),
    ("size=99999999999", "Failed to parse int parameter [size] with value [99999999999]", 'For input string: "99999999999"'),
    ("size=-5", "[size] parameter cannot be negative, found [-5]", None),
    ("scroll=soon", "failed to parse setting [scroll] with value [soon] as a time value: unit is missing or unrecognized", None),
    ("timeout=abc", "failed to parse setting [timeout] with value [abc] as a time value: unit is missing or unrecognized", None),
    ("scroll=abcs", "failed to parse [abcs]", 'For input string: "abc"'),
    ("scroll=-5m", "failed to parse setting [scroll] with value [-5m] as a time value: negative durations are not supported", None),
    ("scroll=1.5s", "failed to parse [1.5s], fractional time values are not supported", 'For input string: "1.5"'),
    ("scroll=1e3s", "failed to parse [1e3s], fractional time values are not supported", 'For input string: "1e3"'),
])
def test_bad_params_are_refused_in_the_clusters_own_words(query, reason, cause):
    with pytest.raises(InvalidParameter) as info:
        parse_call("GET", f"/i/_search?{query}")
    body = orjson.loads(info.value.body())
    assert body["error"]["reason"] == body["error"]["root_cause"][0]["reason"] == reason
    assert body["error"].get("caused_by") == (cause and {"type": "number_format_exception", "reason": cause})


def test_numeric_params_of_other_apis_are_not_judged():
    assert parse_call("GET", "/_snapshot/repo/_all?size=abc").params["size"] == "abc"


@pytest.mark.parametrize("target", [
    "/%zz/_search", "/abc%", "/abc%4", "/i/_search?q=%", "/i/_search?a%2=1", "/%C3%28/_search", "/%FF",
    "/i/_doc/%00", "/i/_search?q=%00", "/i\x00/_search", "/\ud800/_search", "/i/_search?q=\udcff",
])
def test_unparseable_targets_are_400(target):
    with pytest.raises(BadRequest) as info:
        parse_call("GET", target)
    assert info.value.status == 400


def test_non_ascii_names_are_fine():
    assert parse_call("GET", "/%C3%A9t%C3%A9/_search").indices == ("été",)
    assert parse_call("GET", "/été/_search").indices == ("été",)


_URL_BITS = st.sampled_from([
    "", "/", "_search", "_msearch", "_doc", "_bulk", "_cat", "indices", "_cluster", "health", "_nodes", "stats",
    "scroll", "template", "_all", "*", "-x", "logs-*", "%3Clogs-%7Bnow%2Fd%7D%3E", "%zz", "%", "%00", "%C3%28",
    "%2F", ",", "?", "&", "=", "size=", "size=10", "from=-1", "scroll=1m", "q=*foo", "+", "\x00", "é", "\ud800",
    "_async_search", "status", "_sql", "_plugins", "_eql", "search", "_pit", "_source", "_update", "_create",
])


@given(st.text())
def test_parse_call_any_text_is_a_call_or_400(text):
    _parse_or_refuse("GET", text)


@given(st.lists(_URL_BITS, max_size=8).map("/".join), st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "x"]))
def test_parse_call_url_shaped_text_is_a_call_or_400(target, method):
    call = _parse_or_refuse(method, "/" + target)
    if call is not None:
        assert call.resource in ("search", "read", "write", "admin")
        estimate = CostModel(Weights()).estimate(call, None)
        assert math.isfinite(estimate.cost) and estimate.cost > 0
        assert 0 <= estimate.fingerprint < 2**64


def _parse_or_refuse(method: str, target: str) -> EsCall | None:
    try:
        call = parse_call(method, target)
    except BadRequest as refusal:
        assert refusal.status == 400
        return None
    assert isinstance(call, EsCall)
    return call


# ---- content types ----------------------------------------------------------------------------

SEARCH = parse_call("POST", "/my-index/_search")
MSEARCH = parse_call("POST", "/_msearch")
BULK = parse_call("POST", "/_bulk")
DOC = parse_call("PUT", "/my-index/_doc/1")
UPDATE = parse_call("POST", "/my-index/_update/1")
QUERY = b'{"query":{"match":{"message":"this is a test"}}}'


@pytest.mark.parametrize("content_type", [
    "application/json", "application/x-ndjson", "application/vnd.elasticsearch+json",
    "application/vnd.elasticsearch+x-ndjson", "application/json; charset=UTF-8",
    "application/vnd.elasticsearch+json; compatible-with=8", "application/vnd.elasticsearch+json;compatible-with=9",
    "APPLICATION/JSON", "Application/Vnd.Elasticsearch+Json; Compatible-With=8", " application/json ;charset=utf-8",
    "application/*",
])
def test_json_content_types_are_read(content_type):
    body = decode_body(SEARCH, QUERY, content_type, None, LIMITS)
    assert body.json == {"query": {"match": {"message": "this is a test"}}}
    assert (body.raw, body.data, body.lines, body.ndjson_lines) == (QUERY, QUERY, None, 0)


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/json", "application/vnd.elasticsearch+x-ndjson; compatible-with=8"])
def test_ndjson_content_types_are_read(content_type):
    body = decode_body(MSEARCH, b'{"index":"a"}\n{"query":{"match_all":{}}}\n', content_type, None, LIMITS)
    assert body.lines == ({"index": "a"}, {"query": {"match_all": {}}})


def test_missing_content_type_is_406_like_es():
    with pytest.raises(NotAcceptable) as info:
        decode_body(SEARCH, QUERY, None, None, LIMITS)
    assert (info.value.status, info.value.reason) == (406, "Content-Type header [] is not supported")
    # flat, as the REST layer of Elasticsearch and OpenSearch answers it
    assert orjson.loads(info.value.body()) == {"error": "Content-Type header [] is not supported", "status": 406}
    with pytest.raises(NotAcceptable):
        decode_body(DOC, b'{"a":1}', None, None, LIMITS)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", "", "json"])
def test_unsupported_content_type_is_406_like_es(content_type):
    with pytest.raises(NotAcceptable) as info:
        decode_body(SEARCH, QUERY, content_type, None, LIMITS)
    assert info.value.status == 406
    assert info.value.reason == f"Content-Type header [{content_type}] is not supported"
    assert orjson.loads(info.value.body()) == {"error": info.value.reason, "status": 406}


def test_smile_cbor_yaml_are_forwarded_for_documents_but_cannot_be_costed_for_searches():
    with pytest.raises(NotAcceptable) as info:
        decode_body(SEARCH, b":)\n\x05", "application/smile", None, LIMITS)
    assert "JSON only" in info.value.reason
    assert orjson.loads(info.value.body())["error"]["type"] == "media_type_header_exception"  # the proxy's own
    body = decode_body(DOC, b"a: 1\n", "application/yaml", None, LIMITS)
    assert (body.json, body.lines, body.data) == (None, None, b"a: 1\n")


def test_unknown_apis_take_any_content_type():
    call = parse_call("POST", "/_text_structure/find_structure")
    assert decode_body(call, b"plain text log\n", "text/plain", None, LIMITS).json is None
    assert decode_body(parse_call("POST", "/_foo"), b"x", None, None, LIMITS).data == b"x"


def test_empty_body_is_none_and_source_param_is_the_body():
    assert decode_body(SEARCH, b"", JSON, None, LIMITS) is None
    assert decode_body(DOC, b"", None, None, LIMITS) is None
    call = parse_call("GET", "/i/_search?source=%7B%22size%22%3A5%7D&source_content_type=application/json")
    body = decode_body(call, b"", None, None, LIMITS)
    assert (body.raw, body.json) == (b"", {"size": 5})


def test_whitespace_only_search_body_has_nothing_to_parse():
    assert decode_body(SEARCH, b" \n", JSON, None, LIMITS).json is None


# ---- what is parsed and what is not -----------------------------------------------------------


def test_document_bodies_are_not_decoded():
    # the document of an index/update is forwarded as is: even invalid JSON is ES's to judge
    for call in (DOC, UPDATE, parse_call("POST", "/i/_doc"), parse_call("PUT", "/i/_create/1")):
        body = decode_body(call, b'{"not json', JSON, None, LIMITS)
        assert (body.json, body.lines, body.data) == (None, None, b'{"not json')


def test_admin_bodies_are_not_decoded():
    body = decode_body(parse_call("PUT", "/my-index/_settings"), b'{"settings": ', JSON, None, LIMITS)
    assert body.json is None


@pytest.mark.parametrize("method,target", [
    ("PUT", "/my-index"), ("POST", "/_aliases"), ("PUT", "/i/_alias/a"), ("POST", "/i/_clone/j"),
    ("POST", "/a/_rollover"), ("PUT", "/i/_mapping"), ("DELETE", "/_pit"),
])
def test_admin_bodies_that_name_aliases_or_lookups_are_decoded_for_the_grants(method, target):
    call = parse_call(method, target)
    assert decode_body(call, b'{"aliases": {"a": {}}}', JSON, None, LIMITS).json == {"aliases": {"a": {}}}
    with pytest.raises(BadRequest):
        decode_body(call, b'{"aliases": ', JSON, None, LIMITS)


@pytest.mark.parametrize("call", [
    SEARCH, parse_call("POST", "/i/_count"), parse_call("POST", "/i/_delete_by_query"), parse_call("POST", "/_reindex"),
    parse_call("POST", "/_mget"), parse_call("POST", "/_search/scroll"), parse_call("POST", "/i/_async_search"),
    parse_call("POST", "/_sql"), parse_call("POST", "/i/_eql/search"), parse_call("POST", "/i/_knn_search"),
    parse_call("POST", "/i/_field_caps"), parse_call("GET", "/i/_search/template"), parse_call("POST", "/i/_update_by_query"),
    parse_call("GET", "/i/_explain/1"),
], ids=lambda c: c.kind)
def test_search_class_bodies_are_parsed_and_malformed_ones_are_400(call):
    assert decode_body(call, b'{"query":{"match_all":{}}}', JSON, None, LIMITS).json == {"query": {"match_all": {}}}
    with pytest.raises(BadRequest) as info:
        decode_body(call, b'{"query": {"match_all": {}}', JSON, None, LIMITS)
    assert info.value.status == 400 and info.value.etype == "parse_exception"
    assert "not valid JSON" in info.value.reason and "line 1" in info.value.reason


# ---- NDJSON -----------------------------------------------------------------------------------

MSEARCH_DOC = (  # from the _msearch reference
    b'{ }\n'
    b'{"query" : {"match" : { "message": "this is a test"}}}\n'
    b'{"index": "my-index-000002"}\n'
    b'{"query" : {"match_all" : {}}}\n'
)


@pytest.mark.parametrize("trailing", [b"", b"\n", b"\n\n", b"\r\n"])
def test_msearch_with_or_without_trailing_newline(trailing):
    body = decode_body(MSEARCH, MSEARCH_DOC.rstrip(b"\n") + trailing, NDJSON, None, LIMITS)
    assert body.lines == ({}, {"query": {"match": {"message": "this is a test"}}}, {"index": "my-index-000002"},
                          {"query": {"match_all": {}}})
    assert body.ndjson_lines == 4
    assert body.json is None


def test_msearch_blank_lines_keep_their_positions_as_es_reads_them():
    # ES reads a blank line as an empty header (or body): skipping it would pair a header with the wrong search
    raw = b'{"index":"acme-1"}\n\n{"index":"globex"}\n{"query":{"match_all":{}}}\n'
    body = decode_body(MSEARCH, raw, NDJSON, None, LIMITS)
    assert body.lines == ({"index": "acme-1"}, {}, {"index": "globex"}, {"query": {"match_all": {}}})
    assert body.ndjson_lines == 3
    # ES skips one leading empty line (deprecated)
    assert decode_body(MSEARCH, b"\n" + raw, NDJSON, None, LIMITS).lines == body.lines


def test_msearch_bad_line_names_the_line():
    with pytest.raises(BadRequest) as info:
        decode_body(MSEARCH, b'{}\n{"query":{}}\n{"index":\n{}\n', NDJSON, None, LIMITS)
    assert "line 3 of the [msearch] body is not valid JSON" in info.value.reason


BULK_DOC = (  # from the _bulk reference
    b'{ "index" : { "_index" : "test", "_id" : "1" } }\n'
    b'{ "field1" : "value1" }\n'
    b'{ "delete" : { "_index" : "test", "_id" : "2" } }\n'
    b'{ "create" : { "_index" : "test", "_id" : "3" } }\n'
    b'{ "field1" : "value3" }\n'
    b'{ "update" : {"_id" : "1", "_index" : "test"} }\n'
    b'{ "doc" : {"field2" : "value2"} }\n'
)
BULK_ACTIONS = (
    {"index": {"_index": "test", "_id": "1"}}, {"delete": {"_index": "test", "_id": "2"}},
    {"create": {"_index": "test", "_id": "3"}}, {"update": {"_id": "1", "_index": "test"}},
)


@pytest.mark.parametrize("trailing", [b"", b"\n", b"\n\n\n"])
def test_bulk_action_lines_only(trailing):
    body = decode_body(BULK, BULK_DOC.rstrip(b"\n") + trailing, NDJSON, None, LIMITS)
    assert body.lines == BULK_ACTIONS
    assert body.ndjson_lines == 7


def test_bulk_document_lines_are_not_decoded():
    raw = b'{"index":{"_index":"t"}}\n{"this is": not json at all\n{"delete":{"_index":"t","_id":"1"}}\n'
    body = decode_body(BULK, raw, NDJSON, None, LIMITS)
    assert body.lines == ({"index": {"_index": "t"}}, {"delete": {"_index": "t", "_id": "1"}})
    # a document that looks like an action is still a document
    raw = b'{"index":{"_index":"t"}}\n{"delete":{"_index":"other"}}\n'
    assert decode_body(BULK, raw, NDJSON, None, LIMITS).lines == ({"index": {"_index": "t"}},)


def test_bulk_blank_lines_between_actions_are_skipped_like_es():
    raw = b'\n{"delete":{"_index":"t","_id":"1"}}\n\n\r\n{"index":{"_index":"t"}}\n{"a":1}\n'
    body = decode_body(BULK, raw, NDJSON, None, LIMITS)
    assert body.lines == ({"delete": {"_index": "t", "_id": "1"}}, {"index": {"_index": "t"}})
    assert body.ndjson_lines == 3


@pytest.mark.parametrize("line", [
    b'"index"', b"[]", b'{"index":{},"delete":{}}', b'{"upsert":{}}', b'{"index":"t"}', b"{}", b"{bad",
])
def test_malformed_bulk_action_is_400_naming_the_line(line):
    raw = b'{"delete":{"_index":"t","_id":"1"}}\n' + line + b"\n{}\n"
    with pytest.raises(BadRequest) as info:
        decode_body(BULK, raw, NDJSON, None, LIMITS)
    assert "line [2]" in info.value.reason or "line 2" in info.value.reason


def test_ndjson_line_limit():
    limits = HardLimits(max_ndjson_lines=4)
    decode_body(MSEARCH, MSEARCH_DOC + b"\n\n\n\n", NDJSON, None, limits)  # blank lines do not count
    with pytest.raises(IllegalArgument) as info:
        decode_body(MSEARCH, MSEARCH_DOC * 2, NDJSON, None, limits)
    assert info.value.status == 400 and "max_ndjson_lines" in info.value.reason
    with pytest.raises(IllegalArgument):
        decode_body(BULK, b'{"delete":{"_index":"t","_id":"1"}}\n' * 5, NDJSON, None, limits)


def _nested(depth: int) -> bytes:
    return b'{"query":' * (depth - 1) + b'{}' + b"}" * (depth - 1)


def test_json_depth_limit():
    limits = HardLimits(max_json_depth=10)
    assert decode_body(SEARCH, _nested(10), JSON, None, limits).json is not None
    with pytest.raises(BadRequest) as info:
        decode_body(SEARCH, _nested(11), JSON, None, limits)
    assert "max_json_depth" in info.value.reason
    with pytest.raises(BadRequest):
        decode_body(SEARCH, b"[" * 11 + b"]" * 11, JSON, None, limits)
    with pytest.raises(BadRequest):
        decode_body(MSEARCH, b"{}\n" + _nested(11) + b"\n", NDJSON, None, limits)
    with pytest.raises(BadRequest):
        decode_body(BULK, b'{"index":{"_index":' + b"[" * 10 + b"]" * 10 + b"}}\n{}\n", NDJSON, None, limits)
    # brackets inside strings are not nesting
    assert decode_body(SEARCH, b'{"q":"' + b"{[" * 50 + b'"}', JSON, None, limits).json


def test_orjson_depth_beyond_its_own_limit_is_400_too():
    with pytest.raises(BadRequest):
        decode_body(SEARCH, b"[" * 5000 + b"]" * 5000, JSON, None, HardLimits(max_json_depth=10_000))


# ---- content encodings ------------------------------------------------------------------------


def _deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("encoding,encode", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("GZIP", gzip.compress),
    ("deflate", lambda d: _deflate(d, 15)), ("deflate", lambda d: _deflate(d, -15)), ("x-deflate", zlib.compress),
    ("identity", lambda d: d), ("gzip, identity", gzip.compress),
    ("deflate, gzip", lambda d: gzip.compress(zlib.compress(d))),
])
def test_compressed_bodies_inflate(encoding, encode):
    raw = encode(QUERY)
    body = decode_body(SEARCH, raw, JSON, encoding, LIMITS)
    assert body.raw == raw and body.data == QUERY
    assert body.json == {"query": {"match": {"message": "this is a test"}}}


def test_multi_member_gzip_inflates_whole():
    raw = gzip.compress(b'{"index":"a"}\n') + gzip.compress(b'{"query":{"match_all":{}}}\n')
    assert decode_body(MSEARCH, raw, NDJSON, "gzip", LIMITS).lines == ({"index": "a"}, {"query": {"match_all": {}}})


def test_gzip_document_bodies_inflate_under_the_limit_too():
    body = decode_body(DOC, gzip.compress(b'{"a":1}'), JSON, "gzip", LIMITS)
    assert (body.data, body.json) == (b'{"a":1}', None)


def test_gzip_bomb_is_413_without_inflating_it_all(monkeypatch):
    bomb = gzip.compress(b"\0" * (10 * 1024 * 1024), 9)
    assert len(bomb) < 20_000
    inflated = [0]
    real = zlib.decompressobj

    class Counting:
        def __init__(self, wbits):
            self._d = real(wbits)

        def decompress(self, data, max_length=0):
            chunk = self._d.decompress(data, max_length)
            inflated[0] += len(chunk)
            return chunk

        def __getattr__(self, name):
            return getattr(self._d, name)

    monkeypatch.setattr(esapi.zlib, "decompressobj", Counting)
    cap = 1024 * 1024
    for call in (SEARCH, DOC, BULK):
        inflated[0] = 0
        with pytest.raises(BodyTooLarge) as info:
            decode_body(call, bomb, JSON, "gzip", HardLimits(max_inflated_bytes=cap))
        assert info.value.status == 413 and "max_inflated_bytes" in info.value.reason
        assert cap < inflated[0] <= cap + 1  # stopped one byte past the limit


def test_body_exactly_at_the_inflated_limit_is_fine():
    data = b'{"size":1' + b" " * 990 + b"}"
    assert decode_body(SEARCH, gzip.compress(data), JSON, "gzip", HardLimits(max_inflated_bytes=len(data))).json == {"size": 1}
    with pytest.raises(BodyTooLarge):
        decode_body(SEARCH, gzip.compress(data), JSON, "gzip", HardLimits(max_inflated_bytes=len(data) - 1))


@pytest.mark.parametrize("raw", [
    gzip.compress(QUERY)[:-9], gzip.compress(QUERY)[:12], gzip.compress(QUERY)[:3], b"\x1f\x8b\x08garbage",
    b"not gzip at all", gzip.compress(QUERY) + b"trailing junk",
])
def test_truncated_or_corrupt_gzip_is_400(raw):
    with pytest.raises(BadRequest) as info:
        decode_body(SEARCH, raw, JSON, "gzip", LIMITS)
    assert info.value.status == 400 and "gzip" in info.value.reason


def test_truncated_deflate_is_400():
    with pytest.raises(BadRequest):
        decode_body(SEARCH, zlib.compress(QUERY)[:-6], JSON, "deflate", LIMITS)


def test_unknown_encoding_is_400_where_the_body_must_be_read_and_forwarded_elsewhere():
    with pytest.raises(BadRequest) as info:
        decode_body(SEARCH, b"\x0b\x01\x80", JSON, "br", LIMITS)
    assert "br" in info.value.reason
    assert decode_body(DOC, b"\x0b\x01\x80", JSON, "br", LIMITS).data == b"\x0b\x01\x80"


# ---- fuzzing ----------------------------------------------------------------------------------

_CALLS = [
    SEARCH, MSEARCH, BULK, DOC, UPDATE, parse_call("POST", "/_mget"), parse_call("POST", "/i/_count"),
    parse_call("POST", "/i/_delete_by_query"), parse_call("POST", "/_reindex"), parse_call("GET", "/i/_search/template"),
    parse_call("POST", "/i/_msearch/template"), parse_call("POST", "/_foo"), parse_call("PUT", "/i"),
    parse_call("GET", "/i/_search?size=100&from=10&scroll=1m&q=*foo"), parse_call("POST", "/_sql"),
]
_SMALL = HardLimits(max_inflated_bytes=4096, max_ndjson_lines=16, max_json_depth=6)
_CONTENT_TYPES = st.one_of(st.none(), st.text(max_size=30), st.sampled_from([
    JSON, NDJSON, "application/vnd.elasticsearch+json; compatible-with=8", "application/smile", "text/plain",
    "application/json; charset=UTF-8", "APPLICATION/X-NDJSON",
]))
_ENCODINGS = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(
    ["gzip", "deflate", "identity", "br", "gzip, gzip", "x-gzip", ""]
))


def _check_body(call: EsCall, raw: bytes, content_type, encoding, limits: HardLimits) -> None:
    try:
        body = decode_body(call, raw, content_type, encoding, limits)
    except Refusal as refusal:
        assert 400 <= refusal.status < 500
        return
    if not raw:
        assert body is None or body.raw == b""
    else:
        assert isinstance(body, Body) and body.raw == raw
    estimate = CostModel(Weights()).estimate(call, body)
    assert math.isfinite(estimate.cost) and estimate.cost > 0
    assert 0 <= estimate.fingerprint < 2**64


@given(st.sampled_from(_CALLS), st.binary(max_size=600), _CONTENT_TYPES, _ENCODINGS)
def test_decode_body_any_bytes_is_a_body_or_a_4xx(call, raw, content_type, encoding):
    _check_body(call, raw, content_type, encoding, _SMALL)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@given(st.sampled_from(_CALLS), st.lists(_JSONISH, min_size=1, max_size=6), st.sampled_from([None, "gzip", "deflate"]))
def test_decode_body_any_json_lines_is_a_body_or_a_4xx(call, docs, encoding):
    raw = "\n".join(json.dumps(d) for d in docs).encode() + b"\n"  # stdlib: also writes ints past 64 bits
    if encoding == "gzip":
        raw = gzip.compress(raw)
    elif encoding == "deflate":
        raw = zlib.compress(raw)
    _check_body(call, raw, JSON, encoding, _SMALL)


def test_parse_call_memo_is_transparent_and_bounded():
    from proxy import esapi
    from proxy.errors import BadRequest

    esapi._CALLS.clear()
    first = esapi.parse_call("POST", "/acme/_search?size=5")
    assert esapi.parse_call("POST", "/acme/_search?size=5") is first
    assert first == esapi._parse_call("POST", "/acme/_search?size=5")
    assert esapi.parse_call("GET", "/acme/_search?size=5").method == "GET"  # the method is part of the key
    for i in range(esapi._CALLS_MAX * 2):
        esapi.parse_call("GET", f"/a/_doc/{i}")
    assert len(esapi._CALLS) <= esapi._CALLS_MAX
    for _ in range(2):  # refusals are never memoised: each raises afresh
        with pytest.raises(BadRequest):
            esapi.parse_call("GET", "/acme/_search?size=x")
