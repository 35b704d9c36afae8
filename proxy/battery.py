"""The battery: query shapes that exercise what the cost weights cover, for `sluicegate calibrate` and
`bench/accuracy.py`.

A `Shape` is a family of requests: every run of it is the same shape (same fingerprint) with other
literal values, so a node's filter cache or a repeated term does not make the second run free.
Shapes are written against field roles (`Fields`: a text field, low- and high-cardinality keywords,
a number, a date, a nested path), so the same battery runs on the sample documents
(proxy/sample_docs.py) or, read-only, on an operator's own index, whose roles `discover` fills in
from its mapping and a few sampled documents. A shape whose roles an index lacks is skipped.

Pure: builds requests, does no I/O.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from .config import HardLimits
from .cost_estimate import CostModel, Estimate, IndexSizes
from .esapi import Body, decode_body, parse_call


@dataclass(frozen=True)
class Request:
    """One HTTP request of a shape's run: method, path (with query string), body bytes, Content-Type."""

    method: str
    path: str
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class Fields:
    """The fields of one index, by the role a shape needs, and literal values to put in the queries.

    Empty strings and tuples mean the index has no such field: shapes that need it are skipped."""

    index: str
    text: str = ""                       # analysed text (log message, description)
    text2: str = ""                      # a second text field, for multi_match
    keyword: str = ""                    # low-cardinality keyword (service, brand)
    keyword_high: str = ""               # high-cardinality keyword (user id, session id)
    keyword_path: str = ""               # keyword with long structured values (URL, SKU): wildcards walk many terms
    number: str = ""                     # numeric field
    date: str = ""                       # date field
    nested: str = ""                     # nested path
    nested_keyword: str = ""             # keyword under the nested path (full name)
    nested_number: str = ""              # number under the nested path (full name)
    words: tuple[str, ...] = ()          # frequent-ish words of `text`
    rare_words: tuple[str, ...] = ()     # rarer words of `text`
    keywords: tuple[str, ...] = ()       # values of `keyword`
    high_values: tuple[str, ...] = ()    # values of `keyword_high`
    path_values: tuple[str, ...] = ()    # values of `keyword_path`
    nested_values: tuple[str, ...] = ()  # values of `nested_keyword`
    number_range: tuple[float, float] = (0.0, 0.0)   # typical low and high values of `number`
    date_range: tuple[int, int] = (0, 0)              # epoch ms the `date` field spans
    scripts: bool = True                 # the cluster runs painless scripts (Elasticsearch's integ-test zip does not)

    def has(self, role: str) -> bool:
        value = getattr(self, role)
        return bool(value) and value != (0.0, 0.0) and value != (0, 0)


def pick(values: tuple, run: int, offset: int = 0) -> Any:
    """The literal of this run: values cycle, so runs differ but stay in one frequency band."""
    return values[(run + offset) % len(values)]


@dataclass(frozen=True)
class Shape:
    """One query shape of the battery.

    `needs`: the `Fields` roles it uses; `script`: it needs painless; `write`: it writes (only ever
    against the scratch index); `build(fields, run)` makes the request of run number `run`."""

    name: str
    group: str
    needs: tuple[str, ...]
    build: Callable[[Fields, int], Request]
    script: bool = False
    write: bool = False

    def runs_on(self, fields: Fields, writes: bool) -> bool:
        """Whether this shape can run against these fields (and writes, when `writes` allows them)."""
        if self.write and not writes:
            return False
        if self.script and not fields.scripts:
            return False
        return all(fields.has(role) for role in self.needs)


def search(fields: Fields, body: dict, params: str = "") -> Request:
    """A _search of `fields.index` with the request cache off (the battery measures work, not the cache)."""
    query = "request_cache=false" + (f"&{params}" if params else "")
    return Request("POST", f"/{fields.index}/_search?{query}", orjson.dumps(body))


def _date_window(fields: Fields, run: int, days: float) -> dict:
    """A range on the date field: `days` long (widened by a second per run), somewhere in the data's span."""
    low, high = fields.date_range
    width = int(days * 86_400_000)
    room = high - low - width
    start = low + (run * 7_919_000_003) % room if room > 0 else low
    return {"range": {fields.date: {"gte": start - run * 1000, "lt": start + width + run * 1000,
                                    "format": "epoch_millis"}}}


def _num_gte(fields: Fields, run: int, quantile: float) -> dict:
    """A range on the number field from about its `quantile` between low and high (a little higher per run)."""
    low, high = fields.number_range
    value = (low + (high - low) * quantile) * (1.0 + 0.01 * (run % 7))
    return {"range": {fields.number: {"gte": round(value, 2)}}}


_SHAPES: list[Shape] = []


def shape(name: str, group: str, *needs: str, script: bool = False, write: bool = False):
    """Register a shape builder under `name` (decorator)."""

    def register(build: Callable[[Fields, int], Request]) -> Callable[[Fields, int], Request]:
        _SHAPES.append(Shape(name, group, needs, build, script, write))
        return build

    return register


# ---- match, term, bool, range -------------------------------------------------------------------

@shape("match_all", "basic")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match_all": {}}, "size": 10})


@shape("term on a keyword", "basic", "keyword", "keywords")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"term": {f.keyword: pick(f.keywords, run)}}})


@shape("term on a high-cardinality keyword", "basic", "keyword_high", "high_values")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"term": {f.keyword_high: pick(f.high_values, run)}}})


@shape("terms with 50 values", "basic", "keyword_high", "high_values")
def _(f: Fields, run: int) -> Request:
    values = [pick(f.high_values, run, i) for i in range(50)]
    return search(f, {"query": {"terms": {f.keyword_high: values}}})


@shape("match one word", "basic", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: pick(f.words, run)}}})


@shape("match three words", "basic", "text", "words")
def _(f: Fields, run: int) -> Request:
    text = " ".join(pick(f.words, run, i * 3) for i in range(3))
    return search(f, {"query": {"match": {f.text: text}}})


@shape("match_phrase", "basic", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match_phrase": {f.text: f"{pick(f.words, run)} {pick(f.words, run, 1)}"}}})


@shape("bool: match, term filter, date range filter", "basic", "text", "words", "keyword", "keywords", "date")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"bool": {
        "must": [{"match": {f.text: pick(f.words, run)}}],
        "filter": [{"term": {f.keyword: pick(f.keywords, run)}}, _date_window(f, run, 3)]}}})


@shape("bool of should clauses with must_not", "basic", "text", "words", "keyword", "keywords")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"bool": {
        "should": [{"match": {f.text: pick(f.words, run, i)}} for i in range(4)],
        "must_not": [{"term": {f.keyword: pick(f.keywords, run)}}], "minimum_should_match": 1}}})


@shape("date range, one day", "basic", "date")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": _date_window(f, run, 1)})


@shape("numeric range", "basic", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": _num_gte(f, run, 0.5)})


@shape("exists", "basic", "keyword_high")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"exists": {"field": f.keyword_high}}, "size": 10 + run % 3})


@shape("_msearch of 5 term searches", "basic", "keyword", "keywords")
def _(f: Fields, run: int) -> Request:
    lines = []
    for i in range(5):
        lines.append({"index": f.index, "request_cache": False})
        lines.append({"query": {"term": {f.keyword: pick(f.keywords, run, i)}}})
    return Request("POST", "/_msearch", b"".join(orjson.dumps(x) + b"\n" for x in lines), "application/x-ndjson")


@shape("_msearch of 4 mixed searches", "basic", "text", "words", "keyword", "keywords", "number")
def _(f: Fields, run: int) -> Request:
    bodies = [
        {"query": {"match": {f.text: pick(f.words, run)}}},
        {"query": {"term": {f.keyword: pick(f.keywords, run)}}, "size": 0,
         "aggs": {"t": {"terms": {"field": f.keyword, "size": 10}}}},
        {"query": _num_gte(f, run, 0.8), "size": 20},
        {"query": {"match_all": {}}, "sort": [{f.number: "desc"}]},
    ]
    lines = []
    for body in bodies:
        lines.append({"index": f.index, "request_cache": False})
        lines.append(body)
    return Request("POST", "/_msearch", b"".join(orjson.dumps(x) + b"\n" for x in lines), "application/x-ndjson")


# ---- multi-term queries: prefix, wildcards, regexp, fuzzy, query_string ---------------------------

@shape("prefix on a text field", "multi-term", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"prefix": {f.text: pick(f.words, run)[:2]}}})


@shape("prefix on a structured keyword", "multi-term", "keyword_path", "path_values")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"prefix": {f.keyword_path: pick(f.path_values, run)[:-3]}}})


@shape("trailing wildcard on a high-cardinality keyword", "multi-term", "keyword_high", "high_values")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"wildcard": {f.keyword_high: {"value": pick(f.high_values, run)[:-2] + "*"}}}})


@shape("inner wildcard on a structured keyword", "multi-term", "keyword_path", "path_values")
def _(f: Fields, run: int) -> Request:
    value = pick(f.path_values, run)  # a prefix as a person types it: half the value, then the end they recall
    return search(f, {"query": {"wildcard": {f.keyword_path: {"value": value[:len(value) // 2] + "*" + value[-3:]}}}})


@shape("leading wildcard on a text field", "multi-term", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"wildcard": {f.text: {"value": "*" + pick(f.words, run)[-3:]}}}})


@shape("leading wildcard on a high-cardinality keyword", "multi-term", "keyword_high", "high_values")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"wildcard": {f.keyword_high: {"value": "*" + pick(f.high_values, run)[-3:]}}}})


@shape("leading wildcard on a structured keyword", "multi-term", "keyword_path", "path_values")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"wildcard": {f.keyword_path: {"value": "*" + pick(f.path_values, run)[-4:]}}}})


@shape("case-insensitive leading wildcard", "multi-term", "keyword_high", "high_values")
def _(f: Fields, run: int) -> Request:
    value = "*" + pick(f.high_values, run)[-3:].upper()
    return search(f, {"query": {"wildcard": {f.keyword_high: {"value": value, "case_insensitive": True}}}})


@shape("regexp on a text field", "multi-term", "text", "words")
def _(f: Fields, run: int) -> Request:
    word = pick(f.words, run)
    return search(f, {"query": {"regexp": {f.text: word[:2] + ".*" + word[-1:]}}})


@shape("regexp with a leading .*", "multi-term", "keyword_high", "high_values")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"regexp": {f.keyword_high: ".*" + pick(f.high_values, run)[-3:]}}})


@shape("fuzzy on a text field", "multi-term", "text", "rare_words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"fuzzy": {f.text: {"value": pick(f.rare_words, run), "fuzziness": 2}}}})


@shape("match with fuzziness AUTO", "multi-term", "text", "rare_words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: {"query": pick(f.rare_words, run), "fuzziness": "AUTO"}}}})


@shape("query_string with boolean terms", "multi-term", "text", "words")
def _(f: Fields, run: int) -> Request:
    text = f"{pick(f.words, run)} AND ({pick(f.words, run, 1)} OR {pick(f.words, run, 2)})"
    return search(f, {"query": {"query_string": {"query": text, "default_field": f.text}}})


@shape("query_string with a trailing wildcard", "multi-term", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"query_string": {"query": pick(f.words, run)[:3] + "*", "default_field": f.text}}})


@shape("query_string with a leading wildcard", "multi-term", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"query_string": {"query": "*" + pick(f.words, run)[-3:], "default_field": f.text}}})


@shape("query_string with two leading wildcards", "multi-term", "text", "words", "keyword_high", "high_values")
def _(f: Fields, run: int) -> Request:
    text = f"{f.text}:*{pick(f.words, run)[-3:]} OR {f.keyword_high}:*{pick(f.high_values, run)[-3:]}"
    return search(f, {"query": {"query_string": {"query": text}}})


@shape("simple_query_string", "multi-term", "text", "words")
def _(f: Fields, run: int) -> Request:
    text = f"{pick(f.words, run)} +{pick(f.words, run, 1)} -{pick(f.words, run, 2)}"
    return search(f, {"query": {"simple_query_string": {"query": text, "fields": [f.text]}}})


@shape("multi_match over two text fields", "multi-term", "text", "text2", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"multi_match": {"query": pick(f.words, run), "fields": [f.text, f.text2]}}})


# ---- aggregations -----------------------------------------------------------------------------

@shape("terms agg, size 10", "aggs", "keyword")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _date_window(f, run, 30) if f.date else {"match_all": {}},
                      "aggs": {"t": {"terms": {"field": f.keyword, "size": 10}}}})


@shape("terms agg, size 100 on a high-cardinality keyword", "aggs", "keyword_high")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"t": {"terms": {"field": f.keyword_high, "size": 100}}}})


@shape("terms agg, size 1,000 on a high-cardinality keyword", "aggs", "keyword_high")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"t": {"terms": {"field": f.keyword_high, "size": 1000}}}})


@shape("terms agg, size 10,000 on a high-cardinality keyword", "aggs", "keyword_high")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"t": {"terms": {"field": f.keyword_high, "size": 10_000}}}})


@shape("terms agg ordered by a sub-aggregation", "aggs", "keyword", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0),
                      "aggs": {"t": {"terms": {"field": f.keyword, "size": 20, "order": {"m": "desc"}},
                                     "aggs": {"m": {"avg": {"field": f.number}}}}}})


@shape("cardinality of a high-cardinality keyword", "aggs", "keyword_high")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"c": {"cardinality": {"field": f.keyword_high}}}})


@shape("cardinality of a structured keyword, precision 40,000", "aggs", "keyword_path")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"c": {"cardinality": {"field": f.keyword_path, "precision_threshold": 40_000}}}})


@shape("percentiles of a number", "aggs", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0),
                      "aggs": {"p": {"percentiles": {"field": f.number, "percents": [50, 95, 99]}}}})


@shape("stats of a number", "aggs", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0), "aggs": {"s": {"stats": {"field": f.number}}}})


@shape("date_histogram by hour over the span", "aggs", "date")
def _(f: Fields, run: int) -> Request:
    low, high = f.date_range
    return search(f, {"size": 0, "query": _date_window(f, run, 30),
                      "aggs": {"h": {"date_histogram": {"field": f.date, "fixed_interval": "1h",
                                                        "extended_bounds": {"min": low, "max": high}}}}})


@shape("date_histogram by day with an avg", "aggs", "date", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _date_window(f, run, 30),
                      "aggs": {"d": {"date_histogram": {"field": f.date, "calendar_interval": "day"},
                                     "aggs": {"a": {"avg": {"field": f.number}}}}}})


@shape("histogram of a number", "aggs", "number")
def _(f: Fields, run: int) -> Request:
    low, high = f.number_range
    interval = max(round((high - low) / 50.0, 2), 0.01)
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0),
                      "aggs": {"h": {"histogram": {"field": f.number, "interval": interval}}}})


@shape("range agg", "aggs", "number")
def _(f: Fields, run: int) -> Request:
    low, high = f.number_range
    step = (high - low) / 4
    ranges = [{"to": low + step}, {"from": low + step, "to": low + 2 * step}, {"from": low + 2 * step}]
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0),
                      "aggs": {"r": {"range": {"field": f.number, "ranges": ranges}}}})


@shape("filters agg of three matches", "aggs", "text", "words")
def _(f: Fields, run: int) -> Request:
    filters = {f"f{i}": {"match": {f.text: pick(f.words, run, i)}} for i in range(3)}
    return search(f, {"size": 0, "aggs": {"f": {"filters": {"filters": filters}}}})


@shape("terms > date_histogram > percentiles (nested aggs)", "aggs", "keyword", "date", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _date_window(f, run, 30), "aggs": {"t": {
        "terms": {"field": f.keyword, "size": 10},
        "aggs": {"d": {"date_histogram": {"field": f.date, "calendar_interval": "day"},
                       "aggs": {"p": {"percentiles": {"field": f.number}}}}}}}})


@shape("terms > top_hits", "aggs", "keyword")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.3) if f.number else {"match_all": {}},
                      "aggs": {"t": {"terms": {"field": f.keyword, "size": 10},
                                     "aggs": {"h": {"top_hits": {"size": 3}}}}}})


@shape("composite agg of two sources", "aggs", "keyword", "keyword_high")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"c": {"composite": {"size": 1000, "sources": [
                          {"k": {"terms": {"field": f.keyword}}}, {"h": {"terms": {"field": f.keyword_high}}}]}}}})


@shape("significant_terms", "aggs", "keyword", "keywords", "keyword_high")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": {"term": {f.keyword: pick(f.keywords, run)}},
                      "aggs": {"s": {"significant_terms": {"field": f.keyword_high}}}})


@shape("nested query", "joins", "nested", "nested_keyword", "nested_values")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"nested": {"path": f.nested, "query": {
        "term": {f.nested_keyword: pick(f.nested_values, run)}}}}})


@shape("nested agg: terms and a metric under a nested path", "joins", "nested", "nested_keyword", "nested_number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"n": {"nested": {"path": f.nested}, "aggs": {
                          "t": {"terms": {"field": f.nested_keyword, "size": 50},
                                "aggs": {"a": {"avg": {"field": f.nested_number}}}}}}}})


# ---- hits: sort, size, from, highlight, collapse, rescore ------------------------------------------

@shape("sort on a number", "hits", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": _num_gte(f, run, 0.0), "sort": [{f.number: "desc"}], "size": 10})


@shape("sort on two fields, track_total_hits", "hits", "keyword", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": _num_gte(f, run, 0.0), "sort": [{f.keyword: "asc"}, {f.number: "desc"}],
                      "track_total_hits": True, "size": 20})


@shape("size 1,000", "hits", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: pick(f.words, run)}}, "size": 1000})


@shape("size 5,000", "hits")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match_all": {}}, "size": 5000})


@shape("deep from: 9,000 + 100", "hits", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": _num_gte(f, run, 0.0), "sort": [{f.number: "asc"}], "from": 9000, "size": 100})


@shape("highlight, 50 hits", "hits", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: pick(f.words, run)}}, "size": 50,
                      "highlight": {"fields": {f.text: {}}}})


@shape("collapse on a keyword", "hits", "keyword", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: pick(f.words, run)}}, "collapse": {"field": f.keyword}})


@shape("rescore window 500", "hits", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: pick(f.words, run)}}, "rescore": {
        "window_size": 500, "query": {"rescore_query": {"match_phrase": {
            f.text: f"{pick(f.words, run)} {pick(f.words, run, 1)}"}}}}})


@shape("function_score with field_value_factor", "hits", "text", "words", "number")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"function_score": {"query": {"match": {f.text: pick(f.words, run)}},
                                                   "field_value_factor": {"field": f.number, "missing": 1}}}})


@shape("post_filter", "hits", "keyword", "keywords", "text", "words")
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: pick(f.words, run)}},
                      "post_filter": {"term": {f.keyword: pick(f.keywords, run)}}})


# ---- scripts (painless) --------------------------------------------------------------------------

@shape("script query", "scripts", "number", script=True)
def _(f: Fields, run: int) -> Request:
    limit = round(f.number_range[1] * (0.5 + 0.01 * run), 2)
    return search(f, {"query": {"bool": {"filter": {"script": {"script": {
        "source": f"doc['{f.number}'].size() != 0 && doc['{f.number}'].value > params.limit",
        "params": {"limit": limit}}}}}}})


@shape("script_score over every document", "scripts", "number", script=True)
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"script_score": {"query": {"match_all": {}}, "script": {
        "source": f"doc['{f.number}'].size() == 0 ? 0 : Math.log(2 + doc['{f.number}'].value) * params.k",
        "params": {"k": 1 + run % 3}}}}})


@shape("script sort", "scripts", "number", "text", "words", script=True)
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match": {f.text: pick(f.words, run)}}, "sort": {"_script": {
        "type": "number", "order": "desc", "script": {
            "source": f"doc['{f.number}'].size() == 0 ? 0 : doc['{f.number}'].value % params.m",
            "params": {"m": 7 + run % 5}}}}})


@shape("script sort over every document", "scripts", "number", script=True)
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": {"match_all": {}}, "sort": {"_script": {
        "type": "number", "order": "asc", "script": {
            "source": f"doc['{f.number}'].size() == 0 ? 0 : doc['{f.number}'].value % params.m",
            "params": {"m": 11 + run % 5}}}}})


@shape("script_fields on 100 hits", "scripts", "number", script=True)
def _(f: Fields, run: int) -> Request:
    return search(f, {"query": _num_gte(f, run, 0.0), "size": 100, "script_fields": {"x": {"script": {
        "source": f"doc['{f.number}'].size() == 0 ? 0 : doc['{f.number}'].value * params.f",
        "params": {"f": 2 + run % 3}}}}})


@shape("terms agg with a script", "scripts", "keyword", script=True)
def _(f: Fields, run: int) -> Request:
    return search(f, {"size": 0, "query": _num_gte(f, run, 0.0) if f.number else {"match_all": {}},
                      "aggs": {"t": {"terms": {"size": 10, "script": {
                          "source": f"doc['{f.keyword}'].size() == 0 ? '' : doc['{f.keyword}'].value.substring(0, 1)",
                          "lang": "painless"}}}}})


# ---- writes (scratch index only) -------------------------------------------------------------------

def bulk(fields: Fields, run: int, actions: int, op: str = "index") -> Request:
    """A _bulk of `actions` index (or a mix of index/update/delete) actions into the scratch index."""
    from .sample_docs import documents  # imported here: only write shapes need documents

    lines: list[bytes] = []
    docs = documents("logs", 7 + run, 0, actions)
    for i, doc in enumerate(docs):
        doc_id = f"r{run}-{i}"
        if op == "mixed" and i % 4 == 1 and i > 1:
            lines.append(orjson.dumps({"update": {"_index": fields.index, "_id": f"r{run}-{i - 1}"}}))
            lines.append(orjson.dumps({"doc": {"status": 503}}))
        elif op == "mixed" and i % 4 == 3:
            lines.append(orjson.dumps({"delete": {"_index": fields.index, "_id": f"r{run}-{i - 2}"}}))
        else:
            lines.append(orjson.dumps({"index": {"_index": fields.index, "_id": doc_id}}))
            lines.append(orjson.dumps(doc))
    return Request("POST", "/_bulk", b"\n".join(lines) + b"\n", "application/x-ndjson")


@shape("_bulk of 100 index actions", "writes", write=True)
def _(f: Fields, run: int) -> Request:
    return bulk(f, run, 100)


@shape("_bulk of 1,000 index actions", "writes", write=True)
def _(f: Fields, run: int) -> Request:
    return bulk(f, run, 1000)


@shape("_bulk of 5,000 index actions", "writes", write=True)
def _(f: Fields, run: int) -> Request:
    return bulk(f, run, 5000)


@shape("_bulk of 1,000 mixed index/update/delete actions", "writes", write=True)
def _(f: Fields, run: int) -> Request:
    return bulk(f, run, 1000, "mixed")


SHAPES: tuple[Shape, ...] = tuple(_SHAPES)


def shapes(fields: Fields, writes: bool = False, only: Iterable[str] | None = None) -> list[Shape]:
    """The battery's shapes that can run on these fields, in battery order (optionally only those named)."""
    wanted = set(only) if only is not None else None
    return [s for s in SHAPES if s.runs_on(fields, writes) and (wanted is None or s.name in wanted)]


# ---- the estimate of a request ---------------------------------------------------------------------

def estimate(model: CostModel, request: Request, sizes: IndexSizes | None) -> Estimate:
    """What the proxy would estimate for this request, with these index sizes (cost units and fingerprint)."""
    call = parse_call(request.method, request.path)
    body: Body | None = decode_body(call, request.body, request.content_type, None, _LIMITS)
    return model.estimate(call, body, sizes)


_LIMITS = HardLimits()


# ---- sample documents' fields, and discovery on an operator's index --------------------------------

def sample_fields(index: str, kind: str = "logs", scripts: bool = True) -> Fields:
    """The roles of the sample documents (proxy/sample_docs.py) of this kind, in index `index`."""
    from . import sample_docs as docs

    words = tuple(docs.word_at_rank(r) for r in range(40, 80))  # frequent, not stop-word frequent
    rare = tuple(w for w in (docs.word_at_rank(r) for r in range(3000, 30_000, 97)) if len(w) >= 6)[:40]
    if kind == "logs":
        return Fields(
            index=index, text="message", keyword="service", keyword_high="user_id", keyword_path="url",
            number="latency_ms", date="@timestamp", nested="events", nested_keyword="events.name",
            nested_number="events.duration_ms", words=words, rare_words=rare, keywords=tuple(docs.SERVICES[:12]),
            high_values=tuple(f"u{n:06d}" for n in range(1000, 200_000, 4999)),
            path_values=tuple(f"/api/v2/{s}/{r}/{n}" for s, r, n in zip(
                docs.SERVICES, docs.RESOURCES * 3, range(12_345, 999_999, 37_001))),
            nested_values=tuple(docs.EVENTS), number_range=(1.0, 200.0),
            date_range=(docs.START_MS, docs.START_MS + docs.SPAN_MS), scripts=scripts)
    return Fields(
        index=index, text="description", text2="title", keyword="brand", keyword_high="sku", keyword_path="category",
        number="price", date="created", nested="variants", nested_keyword="variants.color",
        nested_number="variants.price", words=words, rare_words=rare,
        keywords=tuple(f"brand-{n:03d}" for n in range(12)),
        high_values=tuple(f"SKU-{n:08d}-0000" for n in range(0, 300_000, 7001)),
        path_values=tuple(f"c{a}/c{b}/c{c}" for a, b, c in zip(range(12), range(8), range(10))),
        nested_values=tuple(docs.COLORS), number_range=(5.0, 120.0),
        date_range=(docs.START_MS, docs.START_MS + docs.SPAN_MS), scripts=scripts)


_TOKEN = re.compile(r"[^\W_]{3,}")
_PREFERRED = {
    "text": ("message", "description", "body", "content", "text", "title"),
    "keyword": ("service", "level", "status", "brand", "category", "type", "host"),
    "keyword_high": ("user_id", "user", "session_id", "client_ip", "sku", "id", "trace_id"),
    "keyword_path": ("url", "path", "uri", "request", "url.original", "url.path", "sku"),
    "date": ("@timestamp", "timestamp", "created", "date", "time"),
}
_NUMBER_TYPES = frozenset({"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float",
                           "unsigned_long"})


def _flatten(properties: Mapping, prefix: str = "", nested: str = "") -> Iterable[tuple[str, str, str]]:
    """(full field name, type, nested path or "") of every leaf field of a mapping's properties."""
    for name, spec in properties.items():
        if not isinstance(spec, Mapping):
            continue
        full = f"{prefix}{name}"
        kind = spec.get("type", "object")
        if kind == "nested":
            yield full, "nested", full
            yield from _flatten(spec.get("properties") or {}, full + ".", full)
        elif "properties" in spec:
            yield from _flatten(spec["properties"], full + ".", nested)
        else:
            yield full, kind, nested
            for sub, subspec in (spec.get("fields") or {}).items():
                if isinstance(subspec, Mapping):
                    yield f"{full}.{sub}", subspec.get("type", "object"), nested


def _values(docs: list[Mapping], name: str) -> list[Any]:
    """The values of a dotted field name across sampled _source documents (lists flattened)."""
    out: list[Any] = []
    for doc in docs:
        stack: list[Any] = [doc]
        for part in name.split("."):
            nxt: list[Any] = []
            for item in stack:
                if isinstance(item, list):
                    item_list = item
                else:
                    item_list = [item]
                for x in item_list:
                    if isinstance(x, Mapping) and part in x:
                        nxt.append(x[part])
            stack = nxt
        for value in stack:
            out.extend(value if isinstance(value, list) else [value])
    return [v for v in out if v is not None and not isinstance(v, (dict, list))]


def _choose(candidates: list[str], role: str) -> str:
    for preferred in _PREFERRED.get(role, ()):
        if preferred in candidates:
            return preferred
    return candidates[0] if candidates else ""


def discover(index: str, mapping: Mapping, docs: list[Mapping], scripts: bool = True) -> Fields:
    """The roles of an operator's index from its mapping (`properties`) and a few hundred sampled
    `_source` documents; literal values come from the samples, so queries match real data."""
    leaves = [(n, t, p) for n, t, p in _flatten(mapping.get("properties") or {})]
    top = [(n, t) for n, t, p in leaves if not p]
    texts = [n for n, t in top if t in ("text", "match_only_text")]
    keywords = [n for n, t in top if t in ("keyword", "constant_keyword", "wildcard") and t != "constant_keyword"]
    numbers = [n for n, t in top if t in _NUMBER_TYPES]
    dates = [n for n, t in top if t in ("date", "date_nanos")]
    distinct = {n: len(set(map(str, _values(docs, n)))) for n in keywords}
    sampled = max(len(docs), 1)
    low = [n for n in keywords if 1 < distinct[n] <= max(sampled // 4, 2)]
    high = [n for n in keywords if distinct[n] >= sampled * 0.6]
    longest = sorted(high, key=lambda n: -sum(len(str(v)) for v in _values(docs, n)))
    fields = Fields(index=index, scripts=scripts)
    text = _choose(texts, "text")
    if text:
        counts: dict[str, int] = {}
        for value in _values(docs, text):
            for token in _TOKEN.findall(str(value).lower()):
                counts[token] = counts.get(token, 0) + 1
        ranked = sorted(counts, key=lambda t: (-counts[t], t))
        words = tuple(ranked[10:50]) or tuple(ranked[:40])
        rare = tuple(t for t in ranked[len(ranked) // 2:] if len(t) >= 5)[:40]
        fields = replace(fields, text=text, text2=_choose([t for t in texts if t != text], "text"),
                         words=words, rare_words=rare or words)
    keyword = _choose(low, "keyword")
    if keyword:
        fields = replace(fields, keyword=keyword, keywords=tuple(sorted(set(map(str, _values(docs, keyword)))))[:20])
    keyword_high = _choose([n for n in high if n not in longest[:1]] or high, "keyword_high")
    if keyword_high:
        fields = replace(fields, keyword_high=keyword_high,
                         high_values=tuple(sorted(set(map(str, _values(docs, keyword_high)))))[:60])
    keyword_path = _choose(longest, "keyword_path")
    if keyword_path:
        paths = tuple(v for v in sorted(set(map(str, _values(docs, keyword_path)))) if len(v) >= 8)[:40]
        if paths:
            fields = replace(fields, keyword_path=keyword_path, path_values=paths)
    number = _choose(numbers, "number")
    if number:
        values = sorted(float(v) for v in _values(docs, number) if isinstance(v, (int, float)))
        if values:
            fields = replace(fields, number=number, number_range=(values[len(values) // 20],
                                                                  values[len(values) * 19 // 20] or 1.0))
    date = _choose(dates, "date")
    if date:
        stamps = sorted(_epoch_ms(v) for v in _values(docs, date))
        stamps = [s for s in stamps if s is not None]
        if len(stamps) >= 2 and stamps[-1] > stamps[0]:
            fields = replace(fields, date=date, date_range=(stamps[0], stamps[-1]))
    for path in [n for n, t, p in leaves if t == "nested"]:
        inner = [(n, t) for n, t, p in leaves if p == path and n != path]
        nk = next((n for n, t in inner if t == "keyword"), "")
        nn = next((n for n, t in inner if t in _NUMBER_TYPES), "")
        values = tuple(sorted(set(map(str, _values(docs, nk)))))[:30] if nk else ()
        if nk and values:
            fields = replace(fields, nested=path, nested_keyword=nk, nested_number=nn, nested_values=values)
            break
    return fields


def _epoch_ms(value: Any) -> int | None:
    """Epoch milliseconds of a sampled date value (epoch ms number, or an ISO 8601 string)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        from datetime import datetime, timezone

        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return int(value) if value.isdigit() else None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return int(parsed.timestamp() * 1000)
    return None

