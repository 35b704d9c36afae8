"""The estimate (proxy/cost_estimate.py and the clause, aggregation and weight modules it uses):
costs of real request shapes, orderings, fingerprints, weights, index sizes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from proxy.config import CostConfig, HardLimits
from proxy.cost import (
    INNER,
    LEADING,
    NO_WILDCARD,
    TRAILING,
    CostModel,
    Estimate,
    IndexSizes,
    Weights,
    size_bucket,
    wildcard_position,
)
from proxy.esapi import Body, decode_body, parse_call

MODEL = CostModel(Weights())
LIMITS = HardLimits()


def estimate(method: str, target: str, body=None, model: CostModel = MODEL, sizes: IndexSizes | None = None) -> Estimate:
    """Parse and cost a request as the proxy would: `body` is a JSON-able object, NDJSON bytes or None."""
    call = parse_call(method, target)
    if body is None:
        raw, ctype = b"", None
    elif isinstance(body, bytes):
        raw, ctype = body, "application/x-ndjson"
    else:
        raw, ctype = json.dumps(body).encode(), "application/json"  # stdlib: writes ints past 64 bits too
    return model.estimate(call, decode_body(call, raw, ctype, None, LIMITS), sizes)


def ndjson(*docs) -> bytes:
    return b"".join(orjson.dumps(d) + b"\n" for d in docs)


def search(body: dict, target: str = "/my-index-000001/_search") -> tuple[str, str, dict]:
    return ("POST", target, body)


# ---- real request shapes from the Elasticsearch reference -------------------------------------
# Each is named after the reference page it comes from; bodies are the documented examples
# (a few vary one knob of a documented example, e.g. a terms agg's size, to make a pair).

MATCH_TEST = {"match": {"message": {"query": "this is a test"}}}
BULK_LINE = {"@timestamp": "2099-11-15T13:12:00", "message": "GET /search HTTP/1.1 200 1070000", "user": {"id": "kimchy"}}

SHAPES: dict[str, tuple[str, str, object]] = {
    "match_all": search({"query": {"match_all": {}}}),
    "term": search({"query": {"term": {"user.id": {"value": "kimchy", "boost": 1.0}}}}),
    "terms": search({"query": {"terms": {"user.id": ["kimchy", "elkbee"], "boost": 1.0}}}),
    "terms_2000_values": search({"query": {"terms": {"user.id": [f"user{i}" for i in range(2000)]}}}),
    "range": search({"query": {"range": {"age": {"gte": 10, "lte": 20, "boost": 2.0}}}}),
    "exists": search({"query": {"exists": {"field": "user"}}}),
    "match": search({"query": MATCH_TEST}),
    "match_fuzziness": search({"query": {"match": {"message": {"query": "this is a testt", "fuzziness": "AUTO"}}}}),
    "match_phrase": search({"query": {"match_phrase": {"message": "this is a test"}}}),
    "multi_match": search({"query": {"multi_match": {"query": "this is a test", "fields": ["subject", "message"]}}}),
    "bool": search({"query": {"bool": {
        "must": {"term": {"user.id": "kimchy"}},
        "filter": {"term": {"tags": "production"}},
        "must_not": {"range": {"age": {"gte": 10, "lte": 20}}},
        "should": [{"term": {"tags": "env1"}}, {"term": {"tags": "deployed"}}],
        "minimum_should_match": 1, "boost": 1.0,
    }}}),
    "prefix": search({"query": {"prefix": {"user.id": {"value": "ki"}}}}),
    "wildcard_trailing": search({"query": {"wildcard": {"user.id": {"value": "kim*"}}}}),
    "wildcard_inner": search({"query": {"wildcard": {"user.id": {"value": "ki*y", "boost": 1.0, "rewrite": "constant_score_blended"}}}}),
    "wildcard_leading": search({"query": {"wildcard": {"user.id": {"value": "*chy"}}}}),
    "regexp": search({"query": {"regexp": {"user.id": {"value": "k.*y", "flags": "ALL", "case_insensitive": True,
                                                       "max_determinized_states": 10000, "rewrite": "constant_score_blended"}}}}),
    "fuzzy": search({"query": {"fuzzy": {"user.id": {"value": "ki", "fuzziness": "AUTO", "max_expansions": 50,
                                                     "prefix_length": 0, "transpositions": True,
                                                     "rewrite": "constant_score_blended"}}}}),
    "query_string": search({"query": {"query_string": {"query": "(new york city) OR (big apple)", "default_field": "content"}}}),
    "query_string_trailing": search({"query": {"query_string": {"query": "kim*", "default_field": "user.id"}}}),
    "query_string_leading": search({"query": {"query_string": {"query": "*chy", "default_field": "user.id"}}}),
    "simple_query_string": search({"query": {"simple_query_string": {
        "query": "\"fried eggs\" +(eggplant | potato) -frittata", "fields": ["title^5", "body"], "default_operator": "and"}}}),
    "uri_search_leading_wildcard": ("GET", "/my-index-000001/_search?q=user.id:*chy", None),
    "script_score": search({"query": {"script_score": {"query": {"match": {"message": "elasticsearch"}},
                                                       "script": {"source": "doc['my-int'].value / 10 "}}}}),
    "script_query": search({"query": {"bool": {"filter": {"script": {"script": {
        "source": "doc['num1'].value > 1", "lang": "painless"}}}}}}),
    "function_score": search({"query": {"function_score": {"query": {"match_all": {}}, "boost": "5",
                                                           "random_score": {}, "boost_mode": "multiply"}}}),
    "nested": search({"query": {"nested": {"path": "obj1", "query": {"bool": {"must": [
        {"match": {"obj1.name": "blue"}}, {"range": {"obj1.count": {"gt": 5}}}]}}, "score_mode": "avg"}}}),
    "has_child": search({"query": {"has_child": {"type": "child", "query": {"match_all": {}}, "max_children": 10,
                                                 "min_children": 2, "score_mode": "min"}}}),
    "has_parent": search({"query": {"has_parent": {"parent_type": "parent", "query": {"term": {"tag": {"value": "Elasticsearch"}}}}}}),
    "terms_agg_10": search({"aggs": {"genres": {"terms": {"field": "genre"}}}}),
    "terms_agg_10000": search({"aggs": {"genres": {"terms": {"field": "genre", "size": 10000}}}}),
    "date_histogram": search({"aggs": {"sales_over_time": {"date_histogram": {"field": "date", "calendar_interval": "month"}}}}),
    "date_histogram_nested": search({"aggs": {"sales_over_time": {
        "date_histogram": {"field": "date", "calendar_interval": "day"},
        "aggs": {"by_type": {"terms": {"field": "type"}, "aggs": {"total": {"sum": {"field": "price"}}}}}}}}),
    "avg": search({"aggs": {"avg_grade": {"avg": {"field": "grade"}}}}),
    "cardinality": search({"aggs": {"type_count": {"cardinality": {"field": "type"}}}}),
    "percentiles": search({"size": 0, "aggs": {"load_time_outlier": {"percentiles": {"field": "load_time"}}}}),
    "top_hits": search({"aggs": {"top_tags": {"terms": {"field": "type", "size": 3}, "aggs": {"top_sales_hits": {
        "top_hits": {"sort": [{"date": {"order": "desc"}}], "_source": {"includes": ["date", "price"]}, "size": 1}}}}}}),
    "composite": search({"size": 0, "aggs": {"my_buckets": {"composite": {"sources": [
        {"date": {"date_histogram": {"field": "timestamp", "calendar_interval": "1d"}}},
        {"product": {"terms": {"field": "product"}}}]}}}}),
    "significant_terms": search({"query": {"terms": {"force": ["British Transport Police"]}},
                                 "aggregations": {"significant_crime_types": {"significant_terms": {"field": "crime_type"}}}}),
    "scripted_metric": search({"query": {"match_all": {}}, "aggs": {"profit": {"scripted_metric": {
        "init_script": "state.transactions = []",
        "map_script": "state.transactions.add(doc.type.value == 'sale' ? doc.amount.value : -1 * doc.amount.value)",
        "combine_script": "double profit = 0; for (t in state.transactions) { profit += t } return profit",
        "reduce_script": "double profit = 0; for (a in states) { profit += a } return profit"}}}}),
    "highlight": search({"query": {"match": {"content": "kimchy"}}, "highlight": {"fields": {"content": {}}}}),
    "match_content": search({"query": {"match": {"content": "kimchy"}}}),
    "from_5": search({"from": 5, "size": 20, "query": {"match": {"user.id": "kimchy"}}}),
    "from_9990": search({"from": 9990, "size": 20, "query": {"match": {"user.id": "kimchy"}}}),
    "size_100": search({"size": 100, "query": {"match": {"message": "foo"}}}),
    "scroll": search({"size": 100, "query": {"match": {"message": "foo"}}}, "/my-index-000001/_search?scroll=1m"),
    "scroll_next": ("POST", "/_search/scroll", {"scroll": "1m", "scroll_id": "DXF1ZXJ5QW5kRmV0Y2gBAAAAAAAAAD4WYm9laVYtZndUQlNsdDcwakFMNjU1QQ=="}),
    "sort_script": search({"query": {"term": {"user": "kimchy"}}, "sort": {"_script": {
        "type": "number", "script": {"lang": "painless", "source": "doc['field_name'].value * params.factor",
                                     "params": {"factor": 1.1}}, "order": "asc"}}}),
    "term_user": search({"query": {"term": {"user": "kimchy"}}}),
    "runtime_mappings": search({"runtime_mappings": {"day_of_week": {"type": "keyword", "script": {
        "source": "emit(doc['@timestamp'].value.dayOfWeekEnum.getDisplayName(TextStyle.FULL, Locale.ENGLISH))"}}},
        "aggs": {"day_of_week": {"terms": {"field": "day_of_week"}}}}),
    "knn": search({"knn": {"field": "image-vector", "query_vector": [-5, 9, -12], "k": 10, "num_candidates": 100},
                   "fields": ["title", "file-type"]}, "/image-index/_search"),
    "collapse": search({"query": {"match": {"message": "GET /search"}}, "collapse": {"field": "user.id"},
                        "sort": ["http.response.bytes"], "from": 0}),
    "rescore": search({"query": {"match": {"message": {"operator": "or", "query": "the quick brown"}}},
                       "rescore": {"window_size": 50, "query": {"rescore_query": {"match_phrase": {
                           "message": {"query": "the quick brown", "slop": 2}}}, "query_weight": 0.7,
                           "rescore_query_weight": 1.2}}}),
    "track_total_hits": search({"track_total_hits": True, "query": {"match": {"user.id": "elkbee"}}}),
    "match_elkbee": search({"query": {"match": {"user.id": "elkbee"}}}),
    "msearch_1": ("GET", "/my-index-000001/_msearch", ndjson({}, {"query": MATCH_TEST})),
    "msearch_20": ("GET", "/my-index-000001/_msearch", ndjson(*[d for _ in range(20) for d in ({}, {"query": MATCH_TEST})])),
    "bulk_10": ("POST", "/_bulk", ndjson(*[d for i in range(10) for d in ({"index": {"_index": "test", "_id": str(i)}}, BULK_LINE)])),
    "bulk_1000": ("POST", "/_bulk", ndjson(*[d for i in range(1000) for d in ({"index": {"_index": "test", "_id": str(i)}}, BULK_LINE)])),
    "delete_by_query": ("POST", "/my-index-000001/_delete_by_query", {"query": {"match": {"user.id": "elkbee"}}}),
    "update_by_query": ("POST", "/my-index-000001/_update_by_query", {
        "script": {"source": "ctx._source.count++", "lang": "painless"}, "query": {"term": {"user.id": "kimchy"}}}),
    "reindex": ("POST", "/_reindex", {"source": {"index": "my-index-000001"}, "dest": {"index": "my-new-index-000001"}}),
    "count": ("GET", "/my-index-000001/_count", {"query": {"term": {"user.id": "kimchy"}}}),
    "search_same_as_count": search({"query": {"term": {"user.id": "kimchy"}}}),
    "index_wildcard": search({"query": {"term": {"user.id": "kimchy"}}}, "/my-index-*/_search"),
    "index_all": search({"query": {"term": {"user.id": "kimchy"}}}, "/_search"),
    "doc_get": ("GET", "/my-index-000001/_doc/0", None),
    "mget": ("GET", "/_mget", {"docs": [{"_index": "my-index-000001", "_id": "1"}, {"_index": "my-index-000001", "_id": "2"}]}),
    "doc_index": ("PUT", "/my-index-000001/_doc/1", BULK_LINE),
    "cluster_health": ("GET", "/_cluster/health", None),
    "index_create": ("PUT", "/my-index-000001", {"settings": {"number_of_shards": 3, "number_of_replicas": 2}}),
}

ORDERINGS = [
    ("match_all", "term"), ("term", "match"), ("term", "wildcard_trailing"), ("wildcard_trailing", "wildcard_inner"),
    ("wildcard_inner", "wildcard_leading"), ("match", "match_fuzziness"), ("match", "fuzzy"), ("term", "regexp"),
    ("wildcard_trailing", "regexp"), ("prefix", "wildcard_inner"), ("term", "terms"), ("terms", "terms_2000_values"),
    ("term", "range"), ("match", "match_phrase"), ("match", "multi_match"),
    ("query_string_trailing", "query_string_leading"), ("match", "uri_search_leading_wildcard"),
    ("wildcard_trailing", "uri_search_leading_wildcard"),
    ("match", "script_score"), ("term", "script_query"), ("match_all", "function_score"),
    ("match", "nested"), ("match", "has_child"), ("term", "has_parent"),
    ("terms_agg_10", "terms_agg_10000"), ("date_histogram", "date_histogram_nested"), ("match_all", "terms_agg_10"),
    ("avg", "cardinality"), ("avg", "percentiles"), ("terms_agg_10", "top_hits"), ("terms_agg_10", "significant_terms"),
    ("avg", "scripted_metric"), ("match_content", "highlight"), ("from_5", "from_9990"), ("size_100", "scroll"),
    ("term_user", "sort_script"), ("terms_agg_10", "runtime_mappings"), ("match_all", "knn"),
    ("match", "collapse"), ("match", "rescore"), ("match_elkbee", "track_total_hits"),
    ("msearch_1", "msearch_20"), ("match", "msearch_20"), ("bulk_10", "bulk_1000"), ("doc_index", "bulk_10"),
    ("match_elkbee", "delete_by_query"), ("term", "update_by_query"), ("count", "search_same_as_count"),
    ("search_same_as_count", "index_wildcard"), ("index_wildcard", "index_all"), ("doc_get", "match"),
    ("doc_get", "mget"), ("cluster_health", "index_create"), ("scroll_next", "scroll"), ("term", "exists"),
]


@pytest.fixture(scope="module")
def costs() -> dict[str, float]:
    return {name: estimate(*shape).cost for name, shape in SHAPES.items()}


def test_the_table_holds_forty_real_shapes():
    assert len(SHAPES) >= 40


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_shape_has_a_finite_positive_cost(name, costs):
    assert math.isfinite(costs[name]) and costs[name] > 0


@pytest.mark.parametrize("cheaper,dearer", ORDERINGS, ids=[f"{a}<{b}" for a, b in ORDERINGS])
def test_cost_ordering(cheaper, dearer, costs):
    assert costs[cheaper] < costs[dearer], (cheaper, costs[cheaper], dearer, costs[dearer])


def test_msearch_is_the_sum_of_its_searches(costs):
    w = Weights()
    one = costs["msearch_1"] - w.msearch
    assert costs["msearch_20"] == pytest.approx(w.msearch + 20 * one)
    # and each search in it costs what it would cost on its own
    assert one == pytest.approx(costs["match"])


def test_msearch_header_index_expressions_count():
    concrete = estimate("GET", "/_msearch", ndjson({"index": "my-index-000001"}, {"query": MATCH_TEST})).cost
    wildcard = estimate("GET", "/_msearch", ndjson({"index": "my-index-*"}, {"query": MATCH_TEST})).cost
    everything = estimate("GET", "/_msearch", ndjson({}, {"query": MATCH_TEST})).cost
    listed = estimate("GET", "/_msearch", ndjson({"index": ["a", "b"]}, {"query": MATCH_TEST})).cost
    assert concrete < listed < wildcard < everything


def test_bulk_is_per_action_and_per_kilobyte():
    w = Weights()
    ten, thousand = estimate(*SHAPES["bulk_10"]), estimate(*SHAPES["bulk_1000"])
    per_action = (thousand.cost - ten.cost) / 990
    line = len(orjson.dumps({"index": {"_index": "test", "_id": "100"}})) + len(orjson.dumps(BULK_LINE)) + 2
    assert per_action == pytest.approx(w.bulk_index + w.write_per_kb * line / 1024, rel=0.05)
    deletes = ndjson(*[{"delete": {"_index": "test", "_id": str(i)}} for i in range(1000)])
    assert estimate("POST", "/_bulk", deletes).cost < thousand.cost


def test_refresh_true_costs_a_refresh():
    assert estimate("PUT", "/i/_doc/1?refresh=true", BULK_LINE).cost > estimate("PUT", "/i/_doc/1", BULK_LINE).cost


def test_deep_from_is_what_from_plus_size_pays():
    deep = estimate("GET", "/i/_search", {"from": 9990, "size": 10}).cost
    flat = estimate("GET", "/i/_search", {"from": 0, "size": 10}).cost
    assert deep - flat == pytest.approx(Weights().hit_depth * 9990)


def test_query_parameters_count_like_the_body():
    assert estimate("GET", "/i/_search?size=500").cost == estimate("GET", "/i/_search", {"size": 500}).cost
    assert estimate("GET", "/i/_search?from=5000").cost > estimate("GET", "/i/_search").cost
    assert estimate("GET", "/i/_search?routing=u1").cost < estimate("GET", "/i/_search").cost
    dfs = estimate("GET", "/i/_search?search_type=dfs_query_then_fetch", {"query": MATCH_TEST}).cost
    assert dfs > estimate("GET", "/i/_search", {"query": MATCH_TEST}).cost


def test_date_histogram_buckets_follow_the_query_time_range():
    def histogram(gte: str, interval: str) -> float:
        return estimate("GET", "/i/_search", {
            "query": {"bool": {"filter": [{"range": {"@timestamp": {"gte": gte, "lte": "now"}}}]}},
            "aggs": {"t": {"date_histogram": {"field": "@timestamp", "fixed_interval": interval},
                           "aggs": {"h": {"terms": {"field": "host"}}}}},
        }).cost

    assert histogram("now-15m", "30s") < histogram("now-30d", "30s")
    assert histogram("now-30d", "1h") < histogram("now-30d", "1m")


def test_query_string_wildcards_by_position():
    def qs(text: str, **extra) -> float:
        return estimate("GET", "/i/_search", {"query": {"query_string": {"query": text, "default_field": "f", **extra}}}).cost

    assert qs("foo") < qs("foo*") < qs("f*o") < qs("*foo")
    assert qs("\"*foo in a phrase\"") < qs("*foo")  # quoted: a phrase, not a wildcard
    assert qs("foo\\*") < qs("foo*")  # escaped
    assert qs("/joh?n(ath[oa]n)/") > qs("foo")  # regexp
    assert qs("quikc~") > qs("quick")  # fuzzy
    assert qs("*foo", allow_leading_wildcard=False) < qs("*foo")  # ES refuses it: nothing runs
    no_field = estimate("GET", "/i/_search", {"query": {"query_string": {"query": "foo"}}}).cost
    assert no_field > qs("foo")  # every field


def test_absurd_inputs_are_clamped_finite():
    w = Weights()
    for body in (
        {"size": 10**18, "from": 10**18},
        {"size": 1e308, "aggs": {"a": {"terms": {"field": "x", "size": 10**30, "shard_size": 1e300}}}},
        {"track_total_hits": 10**40, "rescore": {"window_size": 10**20}, "knn": {"k": 10**19, "num_candidates": 1e200}},
        {"aggs": {"h": {"histogram": {"field": "x", "interval": 1e-300, "extended_bounds": {"min": -1e300, "max": 1e300}}}}},
        {"aggs": {"d": {"date_histogram": {"field": "x", "fixed_interval": "1ms", "hard_bounds": {"min": 0, "max": 2**62}}}}},
    ):
        cost = estimate("GET", "/_all/_search", body).cost
        assert math.isfinite(cost) and 0 < cost <= w.max_cost


def test_hostile_but_valid_json_is_charged_not_crashed():
    for body in (
        [], "query", 42, None, {"query": "match_all"}, {"query": []}, {"query": {"bool": []}},
        {"query": {"bool": {"must": "x"}}}, {"query": {"match": 5}}, {"query": {"wildcard": {"f": 5}}},
        {"aggs": []}, {"aggs": {"a": 1}}, {"aggs": {"a": {"terms": "x"}}}, {"aggs": {"a": {"aggs": {}}}},
        {"size": "ten", "from": [1], "sort": 7, "highlight": [], "knn": "x", "rescore": [1, 2]},
        {"size": "20"}, {"size": -5}, {"size": True}, {"query": {"terms": {"f": {"index": "i", "id": "1", "path": "p"}}}},
    ):
        call = parse_call("POST", "/i/_search")
        cost = MODEL.estimate(call, Body(b"x", b"x", body, None, 0)).cost
        assert math.isfinite(cost) and cost > 0


def test_deep_nesting_is_walked_bounded():
    q: dict = {"match_all": {}}
    for _ in range(900):
        q = {"bool": {"must": [q]}}
    aggs: dict = {"a": {"avg": {"field": "x"}}}
    for _ in range(900):
        aggs = {"n": {"terms": {"field": "x"}, "aggs": aggs}}
    cost = MODEL.estimate(parse_call("POST", "/i/_search"), Body(b"x", b"x", {"query": q, "aggs": aggs}, None, 0)).cost
    assert math.isfinite(cost) and cost > 0


def test_every_kind_gets_a_cost():
    from tests.test_esapi import ROUTES

    for method, target, _ in ROUTES:
        e = estimate(method, target)
        assert math.isfinite(e.cost) and e.cost > 0 and 0 <= e.fingerprint < 2**64


# ---- monotonicity (Hypothesis) ----------------------------------------------------------------

_HUGE = st.integers(min_value=0, max_value=10**18)


def _ordered(strategy):
    return st.tuples(strategy, strategy).map(sorted)


@given(_ordered(_HUGE))
def test_monotone_in_size(pair):
    small, large = pair
    a = estimate("GET", "/i/_search", {"size": small, "query": MATCH_TEST}).cost
    b = estimate("GET", "/i/_search", {"size": large, "query": MATCH_TEST}).cost
    assert a <= b


@given(_ordered(_HUGE), st.integers(min_value=0, max_value=10_000))
def test_monotone_in_from(pair, size):
    small, large = pair
    a = estimate("GET", "/i/_search", {"from": small, "size": size}).cost
    b = estimate("GET", "/i/_search", {"from": large, "size": size}).cost
    assert a <= b


@given(_ordered(_HUGE), st.sampled_from(["terms", "significant_terms", "multi_terms", "composite", "top_hits"]),
       st.booleans())
def test_monotone_in_agg_size(pair, agg, nested):
    def body(size: int) -> dict:
        spec = {agg: {"field": "genre", "size": size}}
        if nested:
            return {"aggs": {"outer": {"terms": {"field": "x"}, "aggs": {"inner": spec}}}}
        return {"aggs": {"a": spec}}

    small, large = pair
    assert estimate("GET", "/i/_search", body(small)).cost <= estimate("GET", "/i/_search", body(large)).cost


@given(_ordered(st.integers(min_value=0, max_value=40)), st.sampled_from(["terms", "date_histogram", "filter", "nested"]),
       st.integers(min_value=0, max_value=100_000))
def test_monotone_in_agg_depth(pair, agg, size):
    def body(depth: int) -> dict:
        aggs: dict = {"leaf": {"avg": {"field": "price"}}}
        for _ in range(depth):
            spec = {"terms": {"field": "t", "size": size}, "date_histogram": {"field": "d", "calendar_interval": "day"},
                    "filter": {"term": {"t": "x"}}, "nested": {"path": "p"}}[agg]
            aggs = {"level": {agg: spec, "aggs": aggs}}
        return {"aggs": aggs}

    shallow, deep = pair
    assert estimate("GET", "/i/_search", body(shallow)).cost <= estimate("GET", "/i/_search", body(deep)).cost


_LITERAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=20)


@given(st.text(min_size=1, max_size=20), _LITERAL, _LITERAL, st.sampled_from(["*", "?"]))
def test_leading_wildcard_costs_more_than_trailing(field, literal, other, mark):
    def wildcard(pattern: str) -> float:
        return estimate("GET", "/i/_search", {"query": {"wildcard": {field: {"value": pattern}}}}).cost

    assume(field not in ("boost", "_name"))
    assert wildcard(mark + literal) > wildcard(literal + mark)
    assert wildcard(literal + mark + other) > wildcard(literal + mark)
    assert wildcard(mark + literal) > wildcard(literal + mark + other)


@given(_LITERAL)
def test_wildcard_position(literal):
    assert wildcard_position(literal) == NO_WILDCARD
    assert wildcard_position(literal + "*") == TRAILING
    assert wildcard_position(literal + "?*") == TRAILING
    assert wildcard_position(literal + "*" + literal) == INNER
    assert wildcard_position("*" + literal) == LEADING
    assert wildcard_position("?" + literal + "*") == LEADING


# ---- structured fuzzing of search bodies ------------------------------------------------------

_ES_WORDS = st.sampled_from([
    "query", "bool", "must", "filter", "should", "must_not", "match", "term", "terms", "range", "wildcard", "regexp",
    "fuzzy", "prefix", "nested", "has_child", "has_parent", "script", "script_score", "function_score", "functions",
    "dis_max", "queries", "constant_score", "boosting", "positive", "negative", "query_string", "simple_query_string",
    "multi_match", "fields", "value", "size", "from", "aggs", "aggregations", "date_histogram", "histogram",
    "cardinality", "percentiles", "top_hits", "composite", "sources", "significant_terms", "scripted_metric",
    "field", "interval", "calendar_interval", "fixed_interval", "sort", "_script", "highlight", "rescore",
    "window_size", "rescore_query", "collapse", "inner_hits", "knn", "k", "num_candidates", "runtime_mappings",
    "script_fields", "track_total_hits", "extended_bounds", "hard_bounds", "min", "max", "ranges", "filters",
    "buckets_path", "shard_size", "fuzziness", "max_expansions", "case_insensitive", "path", "type", "pit",
    "search_type", "profile", "terminate_after", "post_filter", "suggest", "gte", "lt", "now-1d", "*",
])
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10) | _ES_WORDS)
_DOCS = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_ES_WORDS | st.text(max_size=5), children, max_size=5),
    max_leaves=40,
)


@given(_DOCS, st.sampled_from(["/i/_search", "/_search", "/i/_count", "/i/_delete_by_query", "/_reindex",
                               "/i/_search/template", "/_mget", "/i/_async_search", "/i/_knn_search",
                               "/i/_search?size=3&from=7&scroll=1m&q=a*"]))
def test_random_json_documents_in_search_bodies(doc, target):
    call = parse_call("POST", target)
    body = decode_body(call, json.dumps(doc).encode(), "application/json", None, LIMITS)
    e = MODEL.estimate(call, body)
    assert math.isfinite(e.cost) and e.cost > 0 and 0 <= e.fingerprint < 2**64


@given(st.dictionaries(_ES_WORDS, _DOCS, max_size=6), _DOCS, _DOCS)
def test_random_json_in_known_positions(top, query, aggs):
    body = {**top, "query": query, "aggs": {"a": {"terms": {"field": "x"}, "aggs": aggs}}}
    e = MODEL.estimate(parse_call("POST", "/i/_search"), Body(b"x", b"x", body, None, 0))
    assert math.isfinite(e.cost) and e.cost > 0
    lines = (top, body, {"index": query}, aggs)
    e = MODEL.estimate(parse_call("POST", "/_msearch"), Body(b"x", b"x", None, lines, 4))
    assert math.isfinite(e.cost) and e.cost > 0
    e = MODEL.estimate(parse_call("POST", "/_bulk"), Body(b"x", b"x", None, (top, {"index": query}), 2))
    assert math.isfinite(e.cost) and e.cost > 0


# ---- fingerprints -----------------------------------------------------------------------------


def fp(method: str, target: str, body=None) -> int:
    return estimate(method, target, body).fingerprint


def test_size_buckets_by_powers_of_two():
    assert size_bucket(10) == size_bucket(12) != size_bucket(1000)
    assert [size_bucket(n) for n in (0, 1, 2, 3, 4, 7, 8)] == [0, 1, 2, 2, 3, 3, 4]
    assert fp("GET", "/i/_search", {"size": 10}) == fp("GET", "/i/_search", {"size": 12})
    assert fp("GET", "/i/_search", {"size": 10}) != fp("GET", "/i/_search", {"size": 1000})
    agg = lambda n: {"aggs": {"g": {"terms": {"field": "genre", "size": n}}}}  # noqa: E731
    assert fp("GET", "/i/_search", agg(10)) == fp("GET", "/i/_search", agg(12))
    assert fp("GET", "/i/_search", agg(10)) != fp("GET", "/i/_search", agg(10000))


def test_literal_values_are_removed_but_fields_and_clauses_kept():
    term = lambda field, value: {"query": {"term": {field: value}}}  # noqa: E731
    assert fp("GET", "/i/_search", term("user.id", "kimchy")) == fp("GET", "/i/_search", term("user.id", "elkbee"))
    assert fp("GET", "/i/_search", term("user.id", "kimchy")) != fp("GET", "/i/_search", term("user.name", "kimchy"))
    match = {"query": {"match": {"user.id": "kimchy"}}}
    assert fp("GET", "/i/_search", term("user.id", "kimchy")) != fp("GET", "/i/_search", match)
    rng = lambda a, b: {"query": {"range": {"age": {"gte": a, "lte": b}}}}  # noqa: E731
    assert fp("GET", "/i/_search", rng(10, 20)) == fp("GET", "/i/_search", rng(30, 99))


def test_wildcard_position_class_is_kept_and_the_literal_dropped():
    w = lambda v: fp("GET", "/i/_search", {"query": {"wildcard": {"f": {"value": v}}}})  # noqa: E731
    assert w("*foo") == w("*bar")
    assert w("foo*") == w("bar*")
    assert len({w("*foo"), w("f*o"), w("foo*")}) == 3


def test_agg_types_and_nesting_are_in_the_shape():
    flat = {"aggs": {"a": {"terms": {"field": "x"}}, "b": {"avg": {"field": "y"}}}}
    nested = {"aggs": {"a": {"terms": {"field": "x"}, "aggs": {"b": {"avg": {"field": "y"}}}}}}
    renamed = {"aggs": {"other": {"terms": {"field": "x"}, "aggs": {"names": {"avg": {"field": "y"}}}}}}
    assert fp("GET", "/i/_search", flat) != fp("GET", "/i/_search", nested)
    assert fp("GET", "/i/_search", nested) == fp("GET", "/i/_search", renamed)  # agg names are labels, not shape


def test_index_shape_collapses_digits():
    body = {"query": MATCH_TEST}
    assert fp("GET", "/logs-2024.01.01/_search", body) == fp("GET", "/logs-2024.03.17/_search", body)
    assert fp("GET", "/logs-2024.01.01/_search", body) != fp("GET", "/metrics-2024.01.01/_search", body)
    assert fp("GET", "/logs-*/_search", body) != fp("GET", "/logs-2024/_search", body)


def test_endpoint_kind_is_in_the_shape():
    body = {"query": {"term": {"user.id": "kimchy"}}}
    assert fp("GET", "/i/_search", body) != fp("GET", "/i/_count", body)
    assert fp("GET", "/i/_search", body) == fp("POST", "/i/_search", body)


def test_msearch_shape_is_its_searches_and_their_count_bucket():
    pair = ({}, {"query": MATCH_TEST})
    eighteen = ndjson(*[d for _ in range(18) for d in pair])
    twenty = ndjson(*[d for _ in range(20) for d in pair])
    other = ndjson(*[d for _ in range(20) for d in ({}, {"query": {"term": {"f": "v"}}})])
    assert fp("GET", "/i/_msearch", eighteen) == fp("GET", "/i/_msearch", twenty)
    assert fp("GET", "/i/_msearch", twenty) != fp("GET", "/i/_msearch", other)


_FP_SCRIPT = """
import orjson
from proxy.config import HardLimits
from proxy.cost import CostModel, Weights
from proxy.esapi import decode_body, parse_call
call = parse_call("POST", "/logs-2024.01.01/_search?size=20")
raw = b'{"query":{"bool":{"must":[{"match":{"message":"x"}}],"filter":[{"term":{"a":"b"}}]}},"aggs":{"t":{"terms":{"field":"h"}}}}'
print(CostModel(Weights()).estimate(call, decode_body(call, raw, "application/json", None, HardLimits())).fingerprint)
"""


def test_fingerprint_is_stable_across_processes():
    root = Path(__file__).resolve().parent.parent
    seen = set()
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _FP_SCRIPT], cwd=root, env=env, capture_output=True, text=True, check=True)
        seen.add(int(out.stdout))
    assert len(seen) == 1
    raw = b'{"query":{"bool":{"must":[{"match":{"message":"x"}}],"filter":[{"term":{"a":"b"}}]}},"aggs":{"t":{"terms":{"field":"h"}}}}'
    assert seen == {fp("POST", "/logs-2024.01.01/_search?size=20", orjson.loads(raw))}


# ---- weights ----------------------------------------------------------------------------------


def test_weights_are_frozen_strict_and_documented():
    w = Weights()
    with pytest.raises(ValidationError):
        w.wildcard_leading = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Weights(no_such_weight=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Weights(wildcard_leading=-1)
    with pytest.raises(ValidationError):
        Weights(agg_depth_factor=0.5)  # a factor below 1 would make depth cheaper
    for name, field in Weights.model_fields.items():
        assert field.description and ("cost units" in field.description or "multiplier" in field.description
                                      or field.description.split(":")[0] in ("buckets", "seconds", "documents/hits", "documents", "exponent")), name


def test_weights_from_config_change_the_estimate():
    cfg = CostConfig.model_validate({"weights": {"wildcard_leading": 500.0}})
    model = CostModel(cfg.weights)
    body = {"query": {"wildcard": {"f": "*x"}}}
    assert estimate("GET", "/i/_search", body, model).cost > estimate("GET", "/i/_search", body).cost + 400


# ---- index sizes ------------------------------------------------------------------------------

SCRIPT_SCORE = {"query": {"script_score": {"query": {"match_all": {}}, "script": {"source": "doc['n'].value"}}}}
#: the data-scaled part alone: a search's fixed costs (about a script's cost on reference_docs) zeroed
DATA_ONLY = CostModel(Weights(search=0.0, match_all=0.0, hit=0.0, hit_depth=0.0, msearch=0.0))
LEADING_WILDCARD = {"query": {"query_string": {"query": "*rror", "default_field": "message"}}}
TERM = {"query": {"term": {"service": "checkout"}}}


def test_data_scaled_parts_grow_with_the_documents_of_the_index_and_fixed_parts_do_not():
    w = Weights()
    big = IndexSizes({"big": round(10 * w.reference_docs), "ref": round(w.reference_docs)})
    for body in (SCRIPT_SCORE, LEADING_WILDCARD, TERM):
        unknown = estimate("POST", "/big/_search", body)
        assert estimate("POST", "/ref/_search", body, sizes=big).cost == pytest.approx(unknown.cost, rel=0.1)
        sized = estimate("POST", "/big/_search", body, sizes=big)
        assert sized.fingerprint == unknown.fingerprint  # the size prices a shape, it is not part of it
        if body is TERM:
            assert sized.cost == unknown.cost  # postings and fixed overhead: not scaled
    script = estimate("POST", "/big/_search", SCRIPT_SCORE, sizes=big).cost
    assert script == pytest.approx(10 * w.script, rel=0.12)  # a scan: linear in documents
    wildcard = estimate("POST", "/big/_search", LEADING_WILDCARD, sizes=big).cost - w.query_string - w.search
    assert wildcard == pytest.approx(w.wildcard_leading * 10**w.term_dictionary_exponent, rel=0.12)  # sublinear


def test_small_indices_make_expensive_shapes_cheaper_and_unknown_names_keep_the_calibrated_weights():
    sizes = IndexSizes({"tiny": 1_000})
    assert estimate("POST", "/tiny/_search", SCRIPT_SCORE, DATA_ONLY, sizes).cost < 0.05 * estimate(
        "POST", "/tiny/_search", SCRIPT_SCORE, DATA_ONLY).cost
    assert estimate("POST", "/tiny/_search", SCRIPT_SCORE, sizes=sizes).cost < estimate(
        "POST", "/tiny/_search", SCRIPT_SCORE).cost
    for target in ("/alias-or-stream/_search", "/alias-or-stream,other/_search"):
        assert estimate("POST", target, SCRIPT_SCORE, sizes=sizes).cost == estimate("POST", target, SCRIPT_SCORE).cost


def test_index_expressions_resolve_against_the_polled_names_like_elasticsearch():
    sizes = IndexSizes({"logs-1": 10, "logs-2": 20, "metrics": 40, ".hidden": 80})
    assert sorted(sizes.reach(("logs-*",))) == [10, 20]
    assert sorted(sizes.reach(("logs-*", "-logs-2"))) == [10]
    assert sorted(sizes.reach(("_all",))) == sorted(sizes.reach(())) == sorted(sizes.reach(("*",))) == [10, 20, 40]
    assert sorted(sizes.reach((".h*",))) == [80]
    assert sorted(sizes.reach(("metrics", "logs-?"))) == [10, 20, 40]
    assert sizes.reach(("nope-*",)) == [] and sizes.reach(("nope",)) == [None]


def test_a_wildcard_sums_the_documents_it_reaches():
    w = Weights()
    ref = round(w.reference_docs)
    one, three = IndexSizes({"logs-1": ref}), IndexSizes({"logs-1": ref, "logs-2": ref, "logs-3": ref})
    cost = lambda sizes: estimate("POST", "/logs-*/_search", SCRIPT_SCORE, DATA_ONLY, sizes).cost  # noqa: E731
    assert cost(three) == pytest.approx(3 * cost(one), rel=0.2)
    assert cost(IndexSizes({})) < cost(one)  # matches nothing: only the fixed overhead


def test_msearch_prices_each_search_by_its_own_index():
    ref = round(Weights().reference_docs)
    sizes = IndexSizes({"small": ref // 100, "big": ref * 10})
    small = ndjson({"index": "small"}, SCRIPT_SCORE)
    big = ndjson({"index": "big"}, SCRIPT_SCORE)
    assert estimate("POST", "/_msearch", big, DATA_ONLY, sizes).cost > 100 * estimate(
        "POST", "/_msearch", small, DATA_ONLY, sizes).cost


def test_scaled_weights_are_memoised_per_expression_and_forgotten_with_a_new_poll():
    model = CostModel(Weights(search=0.0, match_all=0.0))
    first = IndexSizes({"big": 5_000_000})
    a = estimate("POST", "/big/_search", SCRIPT_SCORE, model, first).cost
    assert model._table(("big",), first) is model._table(("big",), first)
    second = IndexSizes({"big": 50_000})
    b = estimate("POST", "/big/_search", SCRIPT_SCORE, model, second).cost
    assert b < a / 50
    assert estimate("POST", "/big/_search", SCRIPT_SCORE, model, first).cost == a


def test_size_scales_are_clamped_and_quantised():
    w = Weights()
    huge = IndexSizes({"huge": 10**15})
    cost = estimate("POST", "/huge/_search", SCRIPT_SCORE, sizes=huge).cost
    assert math.isfinite(cost) and cost <= w.script * w.max_size_scale * 1.01 + 10
    empty = IndexSizes({"empty": 0})
    assert 0 < estimate("POST", "/empty/_search", SCRIPT_SCORE, DATA_ONLY, empty).cost < 2

