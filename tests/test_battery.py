"""The battery (proxy/battery.py) and the sample documents it runs on (proxy/sample_docs.py)."""
from __future__ import annotations

import collections

import orjson
import pytest

from proxy import battery, sample_docs
from proxy.cost import CostModel, IndexSizes, Weights
from proxy.esapi import parse_call

LOGS = battery.sample_fields("corpus-logs")
CATALOGUE = battery.sample_fields("corpus-catalogue", "catalogue")
SCRATCH = battery.sample_fields("scratch")
MODEL = CostModel(Weights())
SIZES = IndexSizes({"corpus-logs": 300_000, "corpus-catalogue": 300_000, "scratch": 0})


def test_at_least_forty_shapes_cover_what_the_weights_model():
    assert len(battery.SHAPES) >= 40
    names = [s.name for s in battery.SHAPES]
    assert len(set(names)) == len(names)
    groups = collections.Counter(s.group for s in battery.SHAPES)
    assert set(groups) >= {"basic", "multi-term", "aggs", "joins", "hits", "scripts", "writes"}
    text = " ".join(names)
    for needed in ("match", "term", "bool", "range", "prefix", "trailing wildcard", "inner wildcard",
                   "leading wildcard", "regexp", "fuzzy", "query_string with a leading wildcard",
                   "size 10,000", "cardinality", "percentiles", "date_histogram", "nested agg", "script query",
                   "script sort", "highlight", "size 5,000", "deep from", "_msearch", "_bulk of 100",
                   "_bulk of 5,000"):
        assert needed in text, needed


@pytest.mark.parametrize("shape", battery.SHAPES, ids=lambda s: s.name)
def test_every_run_of_a_shape_is_the_same_shape_with_other_literals(shape):
    fields = SCRATCH if shape.write else LOGS
    requests = [shape.build(fields, run) for run in range(4)]
    estimates = [battery.estimate(MODEL, r, SIZES) for r in requests]
    assert len({e.fingerprint for e in estimates}) == 1
    assert all(e.cost > 0 for e in estimates)
    if not shape.write and shape.name != "match_all" and "size 5,000" not in shape.name:
        assert len({r.body for r in requests}) > 1, "runs should vary their literal values"
    for request in requests:
        call = parse_call(request.method, request.path)
        assert call.kind in ("search", "msearch", "bulk")
        if call.kind == "search":
            assert "request_cache=false" in request.path


def test_shapes_are_skipped_where_the_index_or_the_cluster_cannot_run_them():
    no_scripts = battery.sample_fields("corpus-logs", scripts=False)
    assert not [s for s in battery.shapes(no_scripts) if s.script]
    assert not [s for s in battery.shapes(LOGS) if s.write]  # writes only when asked, on the scratch index
    assert [s for s in battery.shapes(SCRATCH, writes=True) if s.write]
    bare = battery.Fields(index="bare", text="message", words=("a", "b"))
    assert {s.name for s in battery.shapes(bare)} >= {"match_all", "match one word"}
    assert "nested query" not in {s.name for s in battery.shapes(bare)}
    assert len(battery.shapes(LOGS)) >= 50 and len(battery.shapes(CATALOGUE)) >= 50


def test_discovery_on_the_sample_mapping_finds_the_roles_the_battery_needs():
    docs = list(sample_docs.documents("logs", 3, 0, 300))
    found = battery.discover("idx", sample_docs.LOGS_MAPPING, docs)
    assert (found.text, found.keyword, found.keyword_high, found.date) == ("message", "service", "user_id", "@timestamp")
    assert found.keyword_path == "url" and found.number and found.nested == "events"
    assert found.nested_keyword == "events.name"
    assert found.words and found.high_values and found.path_values and found.nested_values
    assert found.date_range[0] >= sample_docs.START_MS and found.date_range[1] > found.date_range[0]
    assert len(battery.shapes(found)) >= 50
    catalogue = battery.discover("c", sample_docs.CATALOGUE_MAPPING, list(sample_docs.documents("catalogue", 3, 0, 300)))
    assert catalogue.text in ("description", "title") and catalogue.nested == "variants"


def test_sample_documents_are_deterministic_and_any_chunk_stands_alone():
    whole = list(sample_docs.documents("logs", 9, 0, 2500, 10_000))
    assert whole == list(sample_docs.documents("logs", 9, 0, 2500, 10_000))
    assert whole[1234:1300] == list(sample_docs.documents("logs", 9, 1234, 66, 10_000))
    assert whole != list(sample_docs.documents("logs", 10, 0, 2500, 10_000))
    times = [d["@timestamp"] for d in sample_docs.documents("logs", 1, 0, 1000, 1000)]
    assert sample_docs.START_MS - 60_000 <= min(times) and max(times) <= sample_docs.START_MS + sample_docs.SPAN_MS + 60_000
    users = {d["user_id"] for d in whole}
    sessions = {d["session_id"] for d in whole}
    assert len(users) > 1000 and len(sessions) == len(whole)  # high cardinality
    words = collections.Counter(w for d in whole for w in d["message"].split())
    top, tenth = words.most_common(10)[0][1], words.most_common(10)[9][1]
    assert top > 3 * tenth  # Zipf: the head is steep
    assert any("events" in d for d in whole) and all(isinstance(d["tags"], list) for d in whole)
    products = list(sample_docs.documents("catalogue", 1, 0, 200))
    assert all(d["variants"] for d in products) and len({d["sku"] for d in products}) == 200
    with pytest.raises(ValueError):
        next(sample_docs.documents("nope", 1, 0, 1))
    orjson.dumps(whole)  # plain JSON types only
