"""Redacted examples: the shape of a request without its data."""
from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from proxy import esapi, redact
from proxy.config import HardLimits


def example(method: str, target: str, body: bytes = b"", content_type: str = "application/json") -> str:
    call = esapi.parse_call(method, target)
    decoded = esapi.decode_body(call, body, content_type if body else None, None, HardLimits())
    return redact.example(method, target, call, decoded)


def test_literals_become_question_marks_and_the_shape_stays():
    body = {
        "query": {"bool": {"must": [{"wildcard": {"message": "*rror"}}, {"term": {"user": "bob"}}],
                           "filter": {"range": {"ts": {"gte": "2024-01-01", "lt": 1700000000}}}}},
        "size": 50,
        "aggs": {"users": {"terms": {"field": "user", "size": 10000}}},
    }
    line = example("POST", "/acme-logs/_search?q=message:error&size=10&routing=bob", orjson.dumps(body))
    assert line == (
        'POST /acme-logs/_search?q=?&size=10&routing=? {"query":{"bool":{"must":[{"wildcard":{"message":"*?"}},'
        '{"term":{"user":?}}],"filter":{"range":{"ts":{"gte":?,"lt":?}}}}},"size":50,'
        '"aggs":{"users":{"terms":{"field":"user","size":10000}}}}'
    )
    for secret in ("bob", "rror", "2024", "1700000000", "error"):
        assert secret not in line


def test_wildcard_patterns_keep_where_their_stars_are():
    assert redact.redact_json({"wildcard": {"m": "*rror"}}) == '{"wildcard":{"m":"*?"}}'
    assert redact.redact_json({"wildcard": {"m": "err*"}}) == '{"wildcard":{"m":"?*"}}'
    assert redact.redact_json({"wildcard": {"m": "e*r*"}}) == '{"wildcard":{"m":"?*?*"}}'
    assert redact.redact_json({"query_string": {"query": "*"}}) == '{"query_string":{"query":"*"}}'


def test_document_ids_in_the_path_and_bodies_of_bulk_are_redacted():
    assert example("GET", "/acme-logs/_doc/user-4711") == "GET /acme-logs/_doc/?"
    bulk = b'{"index":{"_index":"acme-logs","_id":"42"}}\n{"card":"4111-1111"}\n' * 8
    line = example("POST", "/_bulk", bulk, "application/x-ndjson")
    assert line.startswith('POST /_bulk {"index":{"_index":"acme-logs","_id":?}}\n')
    assert "42" not in line and "4111" not in line and line.endswith("… +3 lines")


def test_long_arrays_deep_nesting_and_long_bodies_are_cut():
    assert redact.redact_json({"terms": {"user": list(range(100))}}) == '{"terms":{"user":[?,?,?,?,?,…+95]}}'
    deep: dict = {}
    node = deep
    for _ in range(50):
        node["bool"] = {}
        node = node["bool"]
    assert "{…}" in redact.redact_json(deep)
    huge = orjson.dumps({"query": {"multi_terms": {f"field_{i}": {"value": i} for i in range(5000)}}})
    line = example("POST", "/acme-logs/_search", huge)
    assert len(line) <= redact.MAX_CHARS and line.endswith("…")


def test_a_body_that_is_not_json_shows_its_size_only():
    call = esapi.parse_call("PUT", "/acme-logs/_doc/1")
    body = esapi.Body(b"\x00\x01secret", b"\x00\x01secret", None, None, 0)
    assert redact.example("PUT", "/acme-logs/_doc/1", call, body) == "PUT /acme-logs/_doc/? <8 bytes>"


_DATA_KEYS = st.sampled_from(["query", "bool", "must", "term", "match", "user", "message", "gte", "value", "x"])
_SECRET = st.text(min_size=1, max_size=8).map(lambda s: "zq" + s)
_JSON = st.recursive(
    st.one_of(_SECRET, st.integers(min_value=10**9, max_value=10**12), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=8), st.dictionaries(_DATA_KEYS, inner, max_size=6)),
    max_leaves=60,
)


@given(_JSON)
def test_no_literal_survives_outside_the_shape_keys(doc):
    text = redact.redact_json(doc)
    assert "zq" not in text
    assert not any(str(n) in text for n in range(10**9, 10**9 + 1))  # big numbers are redacted
    assert len(text) < 100_000
