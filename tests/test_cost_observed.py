"""Observed cost (proxy/cost_observed.py): what a request cost, read from the first bytes of its response."""
from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cost_observed import _observed, observed_cost


SEARCH_HEAD = (b'{"took":5,"timed_out":false,"_shards":{"total":1,"successful":1,"skipped":0,"failed":0},'
               b'"hits":{"total":{"value":20,"relation":"eq"},"max_score":1.3862942,"hits":[{"_index":"my-index-000001",'
               b'"_id":"0","_score":1.3862942,"_source":{"@timestamp":"2099-11-15T14:12:12","http":{"request":')


@pytest.mark.parametrize("head,expected", [
    (SEARCH_HEAD, 5.0),
    (b'{"took":12,"timed_out":false,"_shards":{"total":5,"successful":5,"skipped":2,"failed":0},"hits":{', 36.0),
    # two shards rejected (a saturated node answers 200 with them as failures): they did no work
    (b'{"took":12,"timed_out":false,"_shards":{"total":5,"successful":3,"skipped":0,"failed":2,"failures":[{"shard":0}]}}', 36.0),
    (b'{"took":12,"timed_out":false,"_shards":{"total":5,"successful":0,"skipped":0,"failed":5}}', 12.0),
    (b'{"took":7,"timed_out":false,"_shards":{"total":4,"successful":4,"skipped":4,"failed":0},"hits":{', 7.0),
    (b'{\n  "took" : 5,\n  "timed_out" : false,\n  "_shards" : {\n    "total" : 2,\n    "successful" : 2,\n'
     b'    "skipped" : 0,\n    "failed" : 0\n  },\n  "hits" : {', 10.0),  # ?pretty
    (b'{"took":0,"timed_out":false,"_shards":{"total":1,"successful":1,"skipped":0,"failed":0}', 0.5),
    # msearch: the nested responses' _shards are not the top level's
    (b'{"took":57,"responses":[{"took":5,"timed_out":false,"_shards":{"total":3,"successful":3,"skipped":0,"failed":0},'
     b'"hits":{"total":{"value":1,"relation":"eq"}', 57.0),
    # bulk: took alone (each item's _shards is nested)
    (b'{"took":30,"errors":false,"items":[{"index":{"_index":"test","_id":"1","_version":1,"result":"created",'
     b'"_shards":{"total":2,"successful":1,"failed":0},"status":201,"_seq_no":0,"_primary_term":1}}', 30.0),
    (b'{"errors":false,"took":30,"items":[', 30.0),
    # cut inside _shards: took alone
    (b'{"took":5,"timed_out":false,"_shards":{"total":3', 5.0),
    # a "took" inside a string is not the took
    (b'{"_scroll_id":"x\\"took\\":99","took":3,"timed_out":false,"_shards":{"total":2,"successful":2,"skipped":0,"failed":0}', 6.0),
])
def test_observed_cost_from_response_heads(head, expected):
    assert observed_cost(head) == expected


@pytest.mark.parametrize("head", [
    b'{"count":1,"_shards":{"total":1,"successful":1,"skipped":0,"failed":0}}',  # _count
    b'{"error":{"root_cause":[{"type":"index_not_found_exception","reason":"no such index [x]","index":"x"}],'
    b'"type":"index_not_found_exception","reason":"no such index [x]"},"status":404}',
    b'{"_index":"my-index-000001","_id":"0","_version":1,"_seq_no":0,"_primary_term":1,"found":true,"_source":{"took":4}}',
    b'{"id":"FmRldE8zREVEUzA2ZVpUeGs2ejJFUFEaMkZ5QTVrSTZSaVN3WlNFVmtlWHJsdzoxMDc=","is_partial":false,'
    b'"is_running":false,"response":{"took":1122,"timed_out":false}}',  # async search: took is not top level
    b'{"took":1', b'{"took":', b'{"took', b'', b'not json', b'{"took":"5"}', b"\xff\xfe\x00",
])
def test_no_observed_cost(head):
    assert observed_cost(head) is None


@given(st.binary(max_size=600))
def test_observed_cost_never_raises(head):
    result = observed_cost(head)
    assert result is None or (math.isfinite(result) and result > 0)


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=1000),
       st.integers(min_value=0, max_value=1000), st.integers(min_value=1, max_value=600))
def test_observed_cost_of_any_search_head(took, total, skipped, cut):
    full = orjson.dumps({"took": took, "timed_out": False,
                         "_shards": {"total": total, "successful": total, "skipped": skipped, "failed": 0}})
    assert observed_cost(full) == max(took, 0.5) * max(1, total - skipped)
    result = observed_cost(full[:cut])
    assert result is None or result in (max(took, 0.5), max(took, 0.5) * max(1, total - skipped))



# ---- the fast path for search heads agrees with the general scanner ----


@given(
    took=st.integers(0, 10**6), timed_out=st.booleans(), early=st.none() | st.booleans(),
    phases=st.none() | st.integers(0, 50), total=st.integers(0, 5000), skipped=st.integers(0, 5000),
    tail=st.binary(max_size=60), cut=st.integers(0, 400),
)
def test_search_head_fast_path_matches_the_general_scanner(took, timed_out, early, phases, total, skipped, tail, cut):
    head = b'{"took":%d,"timed_out":%s,' % (took, b"true" if timed_out else b"false")
    if early is not None:
        head += b'"terminated_early":%s,' % (b"true" if early else b"false")
    if phases is not None:
        head += b'"num_reduce_phases":%d,' % phases
    head += b'"_shards":{"total":%d,"successful":%d,"skipped":%d,"failed":0},"hits":' % (total, total, skipped) + tail
    head = head[: max(cut, 1)]
    if b'"failed":0}' in head:
        assert observed_cost(head) == _observed(head)
    else:  # cut inside _shards: the fast path may already have read total and skipped whole
        full = max(0.5, float(took)) * max(1, total - skipped)
        assert observed_cost(head) in (_observed(head), full)

