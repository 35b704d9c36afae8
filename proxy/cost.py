"""What a request will cost the cluster, what it did cost, and what its shape has cost before.

One cost unit is one estimated millisecond of cluster search-thread time. `CostModel.estimate`
scores a parsed call and body before it is sent: a base per endpoint plus weights for what
makes Elasticsearch slow (DESIGN, "Cost model"). The same single walk over the body feeds the
fingerprint: the query's shape (endpoint, clause and aggregation types, field names, sizes
bucketed by powers of two, wildcard positions) with literal values removed, hashed with
blake2b so it is stable across processes. `observed_cost` reads what the request really cost
from the first bytes of the response, and `LearnedCosts` keeps an EWMA of that per
(tenant, fingerprint). `IndexSizes` holds the documents per index the cluster poller last saw;
given one, the estimate scales its data-proportional weights by the size of the indices a call
reaches. Everything here is pure: no I/O, no clock.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .esapi import Body, EsCall


def _w(default: float, description: str, ge: float = 0.0) -> Any:
    return Field(default, ge=ge, description=description)


class Weights(BaseModel):
    """Every weight of the cost estimate. Units: cost units (≈ ms of one search thread) unless a multiplier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- endpoints -------------------------------------------------------------------------
    search: float = _w(1.0, "cost units: one _search / async search before its query, hits and aggregations")
    count: float = _w(0.5, "cost units: one _count before its query (no hits, no aggregations)")
    msearch: float = _w(0.5, "cost units: _msearch overhead on top of the sum of its searches")
    scroll: float = _w(2.0, "cost units: one scroll page (the next batch of an open scroll)")
    search_light: float = _w(0.1, "cost units: clear_scroll, open/close PIT, fetching an async search result")
    template_opaque: float = _w(5.0, "cost units: a search template whose query cannot be read (stored or mustache)")
    sql: float = _w(10.0, "cost units: one SQL / PPL query (its plan is not read)")
    esql: float = _w(10.0, "cost units: one ES|QL query (its plan is not read)")
    eql: float = _w(10.0, "cost units: one EQL search")
    eql_sequence: float = _w(20.0, "cost units: extra for an EQL sequence query")
    field_caps: float = _w(1.0, "cost units: one _field_caps")
    explain: float = _w(1.0, "cost units: one _explain before its query")
    validate_query: float = _w(0.5, "cost units: one _validate/query (rewrites, does not run)")
    terms_enum: float = _w(1.0, "cost units: one _terms_enum")
    rank_eval: float = _w(20.0, "cost units: one _rank_eval (runs many searches)")
    search_mvt: float = _w(10.0, "cost units: one vector-tile search")
    graph_explore: float = _w(20.0, "cost units: one graph explore")
    doc_get: float = _w(0.2, "cost units: one GET of a document or its _source")
    mget: float = _w(0.2, "cost units: _mget overhead")
    mget_doc: float = _w(0.1, "cost units: each document of an _mget / _mtermvectors")
    termvectors: float = _w(1.0, "cost units: one _termvectors")
    doc_index: float = _w(0.5, "cost units: indexing or creating one document")
    doc_update: float = _w(1.0, "cost units: one _update (a get and a re-index)")
    doc_delete: float = _w(0.3, "cost units: deleting one document")
    write_per_kb: float = _w(0.02, "cost units per KiB of (inflated) document or bulk body")
    bulk: float = _w(1.0, "cost units: _bulk overhead")
    bulk_index: float = _w(0.05, "cost units: each index/create action of a _bulk")
    bulk_update: float = _w(0.1, "cost units: each update action of a _bulk")
    bulk_delete: float = _w(0.03, "cost units: each delete action of a _bulk")
    forced_refresh: float = _w(5.0, "cost units: a write with refresh=true forces a refresh of the shards it touched")
    by_query: float = _w(20.0, "cost units: _delete_by_query / _update_by_query before their query")
    by_query_factor: float = _w(5.0, "multiplier on the query of a by-query call (it visits every match)", ge=1.0)
    reindex: float = _w(30.0, "cost units: _reindex before its source query")
    admin_read: float = _w(0.5, "cost units: an admin GET/HEAD (mappings, settings, _cat, _cluster/health ...)")
    admin_write: float = _w(2.0, "cost units: an admin change (put mapping, settings, aliases, templates ...)")
    admin_heavy: float = _w(10.0, "cost units: create/delete/open/close/resize an index, forcemerge, snapshots, hot threads")
    info: float = _w(0.1, "cost units: GET / (cluster name and version)")
    other: float = _w(1.0, "cost units: any endpoint the proxy does not recognise")
    # -- index expression ------------------------------------------------------------------
    index_wildcard: float = _w(3.0, "multiplier: each wildcard index expression (logs-*) counts as this many indices", ge=1.0)
    index_all: float = _w(10.0, "multiplier: _all, * or no index at all (every index of the cluster)", ge=1.0)
    index_factor_max: float = _w(50.0, "multiplier: the most an index expression can multiply a search by", ge=1.0)
    routing_factor: float = _w(0.5, "multiplier: a search with ?routing= reaches one shard per index")
    # -- hits ------------------------------------------------------------------------------
    hit: float = _w(0.02, "cost units per hit returned (fetch phase: size)")
    hit_depth: float = _w(0.005, "cost units per hit collected (query phase: from + size, per shard)")
    scroll_context: float = _w(2.0, "cost units: opening a scroll context (?scroll=)")
    sort_field: float = _w(5.0, "cost units: each sort field (a field sort reads doc values of every match; data-scaled)")
    sort_script: float = _w(100.0, "cost units: a _script sort (runs per matching document; data-scaled)")
    script_field: float = _w(2.0, "cost units: each script field")
    script_field_hit: float = _w(0.05, "cost units per hit for each script field")
    runtime_field: float = _w(50.0, "cost units: each runtime_mappings field (computed per document; data-scaled)")
    highlight: float = _w(1.0, "cost units: highlighting at all")
    highlight_field: float = _w(0.5, "cost units: each highlighted field")
    highlight_hit: float = _w(0.05, "cost units per hit highlighted")
    track_total_hits: float = _w(2.0, "cost units: track_total_hits=true (no early termination; data-scaled)")
    rescore: float = _w(2.0, "cost units: each rescore, plus its query")
    rescore_hit: float = _w(0.01, "cost units per document of a rescore window")
    collapse: float = _w(2.0, "cost units: field collapsing (data-scaled)")
    inner_hits: float = _w(2.0, "cost units: inner_hits of a join, nested query or collapse")
    knn: float = _w(5.0, "cost units: each kNN search, plus its filter")
    knn_candidate: float = _w(0.01, "cost units per kNN num_candidates")
    suggest: float = _w(5.0, "cost units: each suggester")
    dfs_factor: float = _w(1.5, "multiplier: search_type=dfs_query_then_fetch (an extra round trip to every shard)", ge=1.0)
    profile_factor: float = _w(2.0, "multiplier: profile=true", ge=1.0)
    terminate_after_factor: float = _w(0.5, "multiplier on the query: terminate_after stops each shard early")
    # -- query clauses ---------------------------------------------------------------------
    match_all: float = _w(0.05, "cost units: match_all / match_none")
    term: float = _w(0.2, "cost units: term, ids, a terms clause before its values")
    terms_value: float = _w(0.002, "cost units per value of a terms clause")
    terms_lookup: float = _w(2.0, "cost units: a terms lookup (fetches a document first)")
    range: float = _w(0.5, "cost units: range, exists")
    match: float = _w(1.0, "cost units: match (and each field of multi_match)")
    match_phrase: float = _w(2.0, "cost units: match_phrase, combined_fields, match_bool_prefix")
    query_string: float = _w(3.0, "cost units: query_string / simple_query_string before its wildcards")
    all_fields: float = _w(5.0, "cost units: a query_string/multi_match over every field (no fields, or '*')")
    prefix: float = _w(3.0, "cost units: prefix, match_phrase_prefix (term-dictionary-scaled)")
    wildcard_trailing: float = _w(3.0, "cost units: a wildcard only at the end (foo*): a prefix walk (term-dictionary-scaled)")
    wildcard_inner: float = _w(10.0, "cost units: a wildcard inside the pattern (f*o): walks the terms after its prefix "
                               "(term-dictionary-scaled)")
    wildcard_leading: float = _w(50.0, "cost units: a leading wildcard (*foo, ?foo): walks every term of the field "
                                 "(term-dictionary-scaled)")
    regexp: float = _w(30.0, "cost units: regexp (a leading .* costs wildcard_leading on top; term-dictionary-scaled)")
    fuzzy: float = _w(10.0, "cost units: fuzzy, or fuzziness on a match (term-dictionary-scaled)")
    fuzzy_expansion: float = _w(0.05, "cost units per max_expansions of a fuzzy query")
    case_insensitive_factor: float = _w(2.0, "multiplier: case_insensitive wildcard/prefix/regexp/term", ge=1.0)
    script: float = _w(100.0, "cost units: a script query, script_score, or script function (runs per document; "
                               "data-scaled: ~1 µs of painless per document)")
    function_score: float = _w(2.0, "cost units: function_score before its functions")
    function: float = _w(1.0, "cost units: each non-script function of function_score")
    nested: float = _w(5.0, "cost units: a nested query")
    nested_factor: float = _w(2.0, "multiplier on the query inside nested", ge=1.0)
    join: float = _w(20.0, "cost units: has_child / has_parent (global ordinals join; data-scaled)")
    join_factor: float = _w(3.0, "multiplier on the query inside has_child / has_parent", ge=1.0)
    geo: float = _w(3.0, "cost units: geo_* and shape queries")
    more_like_this: float = _w(20.0, "cost units: more_like_this")
    percolate: float = _w(30.0, "cost units: percolate")
    wrapper: float = _w(20.0, "cost units: wrapper (a base64 query the proxy cannot read)")
    span: float = _w(3.0, "cost units: each span_* / intervals clause")
    semantic: float = _w(20.0, "cost units: semantic, sparse_vector, text_expansion and other model-backed queries")
    compound: float = _w(0.1, "cost units: bool, dis_max, constant_score, boosting before their clauses")
    clause_unknown: float = _w(2.0, "cost units: a query clause the proxy does not know")
    deep_nesting: float = _w(1000.0, "cost units: a query or aggregation subtree nested too deep to walk (over 40 levels)")
    # -- aggregations ----------------------------------------------------------------------
    agg_bucket: float = _w(0.01, "cost units per bucket (product of bucket counts down the nesting)")
    agg_shard_bucket: float = _w(0.01, "cost units per shard_size bucket of a terms-like aggregation")
    max_buckets: float = _w(65536.0, "buckets: the most one response can hold (search.max_buckets)", ge=1.0)
    agg_depth_factor: float = _w(1.5, "multiplier per nesting level on an aggregation's own cost", ge=1.0)
    terms_agg: float = _w(10.0, "cost units: terms / multi_terms / rare_terms (data-scaled, as are the aggregation "
                                  "weights below: each runs over every matching document)")
    histogram_agg: float = _w(8.0, "cost units: histogram / date_histogram / auto_date_histogram")
    histogram_buckets: float = _w(50.0, "buckets: assumed for a histogram whose range is not in the request", ge=1.0)
    date_histogram_span_s: float = _w(7 * 86400.0, "seconds: time span a date_histogram is assumed to cover", ge=1.0)
    range_agg: float = _w(3.0, "cost units: range / date_range / filters / filter / missing / nested-type aggs")
    metric_agg: float = _w(5.0, "cost units: avg / sum / min / max / stats / value_count and other single metrics")
    cardinality: float = _w(25.0, "cost units: cardinality (HyperLogLog per bucket)")
    percentiles: float = _w(30.0, "cost units: percentiles / percentile_ranks / median_absolute_deviation / boxplot")
    top_hits: float = _w(5.0, "cost units: top_hits (a fetch per bucket)")
    top_hits_hit: float = _w(0.05, "cost units per hit fetched by top_hits in each bucket")
    composite: float = _w(10.0, "cost units: composite, plus each source")
    significant_terms: float = _w(40.0, "cost units: significant_terms / significant_text (background frequencies)")
    scripted_metric: float = _w(200.0, "cost units: scripted_metric")
    agg_script: float = _w(100.0, "cost units: any aggregation with a script")
    pipeline_agg: float = _w(0.2, "cost units: pipeline aggregations (run on the reduced buckets)")
    geo_grid: float = _w(10.0, "cost units: geohash / geotile / geohex grid")
    agg_unknown: float = _w(5.0, "cost units: an aggregation type the proxy does not know")
    # -- index size ------------------------------------------------------------------------
    reference_docs: float = _w(
        100_000.0, "documents: the index size the weights above are calibrated for; with polled document counts, "
        "the data-scaled weights scale by the targeted indices' documents over this", ge=1.0)
    term_dictionary_exponent: float = _w(
        0.7, "exponent: a term dictionary grows as documents ** this (Heaps' law; 0.4-0.6 for prose, higher for "
        "log fields full of ids and numbers); the term-dictionary-scaled weights scale with it", ge=0.0)
    max_size_scale: float = _w(10_000.0, "multiplier: the most an index's size can scale the data-scaled weights by", ge=1.0)
    # -- bounds ----------------------------------------------------------------------------
    min_cost: float = _w(0.01, "cost units: the least any request costs", ge=1e-9)
    max_cost: float = _w(1e7, "cost units: the most one request is charged (absurd inputs are clamped here)", ge=1.0)
    max_count: float = _w(1e6, "documents/hits: size, from, k and similar counts are clamped here", ge=1.0)


#: weights of work done per document the query reaches (scans, scripts, aggregations, sorts): linear in documents
DATA_SCALED = (
    "sort_field", "sort_script", "runtime_field", "track_total_hits", "collapse", "script", "join",
    "terms_agg", "histogram_agg", "range_agg", "metric_agg", "cardinality", "percentiles", "composite",
    "significant_terms", "scripted_metric", "agg_script", "geo_grid", "agg_unknown",
)
#: weights of walks over a term dictionary (multi-term expansion): its size grows sublinearly with documents
DICTIONARY_SCALED = ("wildcard_trailing", "wildcard_inner", "wildcard_leading", "regexp", "fuzzy", "prefix")


class _Table:
    """The weights copied into slots: a pydantic attribute read costs several times a slot read on the hot path.

    `data` and `dictionary` multiply the DATA_SCALED and DICTIONARY_SCALED weights: the table for indices of a
    given size relative to `reference_docs`.
    """

    __slots__ = (*Weights.model_fields, "agg_depth_factors")

    def __init__(self, weights: Weights, data: float = 1.0, dictionary: float = 1.0) -> None:
        for name in Weights.model_fields:
            setattr(self, name, getattr(weights, name))
        for name in DATA_SCALED:
            setattr(self, name, getattr(weights, name) * data)
        for name in DICTIONARY_SCALED:
            setattr(self, name, getattr(weights, name) * dictionary)
        # agg_depth_factor ** (depth - 1), looked up rather than computed per aggregation
        self.agg_depth_factors = tuple(weights.agg_depth_factor**i for i in range(_MAX_DEPTH + 1))


class IndexSizes:
    """Documents per concrete index (primaries), as last polled from the cluster (proxy/clusterhealth.py).

    Never mutated: the poller builds a new one and swaps the reference. `CostModel.estimate` resolves a call's
    index expression against these names, the way Elasticsearch does (comma lists, * and ? wildcards, `_all`,
    `-exclusions`; hidden `.names` only for patterns that start with a dot).
    """

    __slots__ = ("docs",)

    def __init__(self, docs: dict[str, int]) -> None:
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def reach(self, indices: tuple[str, ...]) -> list[int | None]:
        """Documents of each index the expression reaches; None for a concrete name not polled (an alias, a
        data stream, an index created since the last poll). A wildcard that matches nothing reaches nothing."""
        chosen: dict[str, int | None] = {}
        docs = self.docs
        for position, name in enumerate(indices or ("_all",)):
            if name[:1] == "-" and position > 0:
                pattern = name[1:]
                for known in [n for n in chosen if fnmatchcase(n, pattern)]:
                    del chosen[known]
            elif name == "_all" or name == "*":
                chosen.update((n, d) for n, d in docs.items() if n[:1] != ".")
            elif "*" in name or "?" in name:
                hidden = name[:1] == "."
                chosen.update((n, d) for n, d in docs.items() if fnmatchcase(n, name) and (hidden or n[:1] != "."))
            else:
                chosen[name] = docs.get(name)
        return list(chosen.values())


@dataclass(frozen=True, slots=True)
class Estimate:
    """The estimated cost of one request (cost units, > 0) and the 64-bit fingerprint of its shape."""

    cost: float
    fingerprint: int


# ---- shape helpers ----------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
# query_string syntax: phrases first (wildcards inside quotes are literal), then the terms
_QS_PHRASE = re.compile(r'"(?:[^"\\]|\\.)*"?')
_QS_TOKEN = re.compile(r'[^\s()\[\]{}"]+')
_INTERVAL = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w|M|q|y)\Z")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
           "M": 2629746.0, "q": 7889238.0, "y": 31556952.0}
_CALENDAR_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "week": 604800.0,
               "month": 2629746.0, "quarter": 7889238.0, "year": 31556952.0}
_MAX_DEPTH = 40  # walk no deeper: beyond it charge deep_nesting (and stay clear of Python's recursion limit)
_QS_MAX_TOKENS = 256

NO_WILDCARD, TRAILING, INNER, LEADING = 0, 1, 2, 3
_WILDCARD_TAG = ("", "w>", "w=", "w<")


def wildcard_position(pattern: str) -> int:
    """Where a wildcard pattern's first * or ? sits: NO_WILDCARD, TRAILING (foo*), INNER (f*o) or LEADING (*foo)."""
    star, qmark = pattern.find("*"), pattern.find("?")
    first = star if qmark < 0 else qmark if star < 0 else min(star, qmark)
    if first < 0:
        return NO_WILDCARD
    if first == 0:
        return LEADING
    body = pattern.rstrip("*?")
    return INNER if "*" in body or "?" in body else TRAILING


def size_bucket(n: float) -> int:
    """Powers-of-two bucket of a count: 0→0, 1→1, 2-3→2, 4-7→3, 8-15→4 (10 and 12 share one, 1000 does not)."""
    return int(n).bit_length() if n >= 1 else 0


def _count(value: Any, default: float, cap: float) -> float:
    """A count from hostile JSON: ints, finite floats and numeric strings; anything else is the default."""
    if value is None:
        return default
    t = type(value)
    if t is int:
        n = float(value) if -1e300 < value < 1e300 else cap
    elif t is float:
        n = value if value == value else default
    elif t is str:
        try:
            n = float(value)
        except ValueError:
            return default
        if n != n:
            return default
    else:
        return default
    return 0.0 if n < 0 else cap if n > cap else n


@lru_cache(maxsize=4096)
def _index_shape(name: str) -> str:
    return _DIGITS.sub("#", name)


# ---- the estimate -----------------------------------------------------------------------------

#: kinds whose body is a search request (query, hits, aggregations)
_SEARCH_BODY = frozenset({"search", "async_search", "rollup_search", "knn_search"})
_LIGHT = frozenset({"clear_scroll", "close_pit", "open_pit", "async_search_get", "async_search_delete",
                    "render_search_template", "search_shards"})
_HEAVY_ADMIN = frozenset({
    "index_create", "index_delete", "index_open", "index_close", "resize", "rollover", "forcemerge",
    "snapshot", "nodes_hot_threads", "cluster_reroute", "index_freeze", "index_upgrade", "clear_cache",
})
_FLAT_SEARCH = {
    "field_caps": "field_caps", "validate_query": "validate_query", "terms_enum": "terms_enum",
    "rank_eval": "rank_eval", "search_mvt": "search_mvt", "graph_explore": "graph_explore",
    "sql": "sql", "esql": "esql", "termvectors": "termvectors",
}
_WRITE_DOC = {"doc_index": "doc_index", "doc_create": "doc_index", "doc_update": "doc_update", "doc_delete": "doc_delete"}
#: query parameters that change the cost of a search, hence part of its shape
_SHAPE_PARAMS = ("search_type", "routing", "terminate_after", "track_total_hits", "request_cache", "expand_wildcards")


class CostModel:
    """Estimates the cost of a call before it is sent, from its path, parameters and body."""

    __slots__ = ("weights", "w", "_tables", "_sized", "_sized_for")

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self.w: Weights = _Table(weights)  # type: ignore[assignment]  # same attributes, read faster
        self._tables: dict[tuple[float, float], Weights] = {(1.0, 1.0): self.w}  # by (data, dictionary) scale
        self._sized: dict[tuple[str, ...], Weights] = {}  # index expression -> its table, for `_sized_for`
        self._sized_for: IndexSizes | None = None

    def estimate(self, call: EsCall, body: Body | None, sizes: IndexSizes | None = None) -> Estimate:
        """Cost units (> 0, clamped to [min_cost, max_cost]) and shape fingerprint of one call.

        `sizes`: the cluster's documents per index, if polled; searches and counts of indices of known size
        scale their data-proportional weights by it (the fingerprint does not change).
        """
        w = self.w
        kind = call.kind
        parts: list[str] = [kind]
        doc = body.json if body is not None else None
        if kind in _SEARCH_BODY:
            cost = self._search(call.params, call.indices, doc, parts, sizes)
        elif kind == "msearch" or kind == "msearch_template":
            cost = self._msearch(call, body, parts, sizes)
        elif kind == "count":
            factor = self._index_factor(call.indices, call.params, parts)
            if sizes is not None:
                w = self._table(call.indices, sizes)
            query = doc.get("query") if type(doc) is dict else None
            q = _query(w, query, parts, 1) if query is not None else w.match_all
            cost = (w.count + q * _terminate_factor(w, call.params, doc)) * factor
            if call.params.get("q"):
                cost += _query_text(w, call.params["q"], call.params.get("df") is None, True, parts) * factor
        elif kind == "scroll":
            cost = w.scroll
        elif kind == "search_template":
            cost = self._template_doc(call.params, call.indices, doc, parts, sizes)
        elif kind == "eql":
            cost = w.eql if call.api == "eql.search" else w.search_light
            if type(doc) is dict and type(doc.get("query")) is str and "sequence" in doc["query"].lower():
                cost += w.eql_sequence
                parts.append("sequence")
            cost *= self._index_factor(call.indices, call.params, parts) if call.api == "eql.search" else 1.0
        elif kind == "explain":
            query = doc.get("query") if type(doc) is dict else None
            cost = w.explain + (_query(w, query, parts, 1) if query is not None else 0.0)
        elif kind in _FLAT_SEARCH:
            cost = getattr(w, _FLAT_SEARCH[kind])
            if kind == "sql" and call.api != "sql.query" and call.api != "plugins.sql" and call.api != "plugins.ppl":
                cost = w.search_light
            elif kind == "field_caps" and "*" in call.params.get("fields", ""):
                cost += w.all_fields
            if kind != "sql" and kind != "esql":
                cost *= self._index_factor(call.indices, call.params, parts)
        elif kind in _LIGHT:
            cost = w.search_light
        elif kind == "doc_get" or kind == "doc_source":
            cost = w.doc_get
        elif kind == "mget" or kind == "mtermvectors":
            cost = self._mget(doc, parts)
        elif kind in _WRITE_DOC:
            cost = getattr(w, _WRITE_DOC[kind]) + (w.write_per_kb * len(body.data) / 1024.0 if body is not None else 0.0)
            cost += _refresh(w, call.params)
        elif kind == "bulk":
            cost = self._bulk(call, body, parts)
        elif kind in ("delete_by_query", "update_by_query"):
            cost = self._by_query(call, doc, parts)
        elif kind == "reindex":
            cost = self._reindex(doc, parts)
        elif kind == "info":
            cost = w.info
        elif call.resource == "admin":
            cost = self._admin(call, parts)
        else:
            cost = w.other
        if not cost >= w.min_cost:  # also catches NaN
            cost = w.min_cost
        elif cost > w.max_cost:
            cost = w.max_cost
        return Estimate(cost, _digest(parts))

    # -- index size -----------------------------------------------------------------------

    def _table(self, indices: tuple[str, ...], sizes: IndexSizes) -> Weights:
        """The weights for a call on `indices`, scaled by their polled size; memoised per index expression."""
        if sizes is not self._sized_for:  # a new poll: forget what the old one said
            self._sized.clear()
            self._sized_for = sizes
        table = self._sized.get(indices)
        if table is None:
            if len(self._sized) >= 4096:
                self._sized.clear()
            table = self._sized[indices] = self._table_for(self.size_scale(indices, sizes))
        return table

    def size_scale(self, indices: tuple[str, ...], sizes: IndexSizes) -> tuple[float, float]:
        """(data, dictionary) multipliers of the scaled weights for a call on `indices`.

        Per index reached: documents / reference_docs (data), and that ** term_dictionary_exponent (its term
        dictionary). Summed over the indices, then divided by what the index expression already multiplies
        the whole estimate by (1 per concrete name, index_wildcard per pattern ...), so that the data part
        is proportional to the documents reached. An index of unknown size counts as reference_docs.
        """
        weights = self.weights
        reached = sizes.reach(indices)
        if reached and all(docs is None for docs in reached):
            return 1.0, 1.0  # nothing known about these names: the weights as calibrated
        reference, exponent = weights.reference_docs, weights.term_dictionary_exponent
        data = dictionary = 0.0
        for docs in reached:
            ratio = 1.0 if docs is None else docs / reference
            data += ratio
            dictionary += ratio**exponent
        factor = _expression_factor(weights, indices)
        return data / factor, dictionary / factor

    def _table_for(self, scale: tuple[float, float]) -> Weights:
        top = self.weights.max_size_scale
        key = (_quantize(scale[0], top), _quantize(scale[1], top))
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= 256:
                self._tables = {(1.0, 1.0): self.w}
            table = self._tables[key] = _Table(self.weights, *key)  # type: ignore[assignment]
        return table

    # -- search ---------------------------------------------------------------------------

    def _index_factor(self, indices: tuple[str, ...], params: Any, parts: list[str]) -> float:
        """How many indices' worth of shards an index expression reaches, as a multiplier ≥ 1 (or < 1 with routing)."""
        w = self.w
        factor = 0.0
        for name in indices:
            if name[:1] == "-":
                parts.append(name)  # an exclusion narrows; its shape still tells searches apart
                continue
            if name == "_all" or name == "*":
                factor += w.index_all
                parts.append(name)
            elif "*" in name or "?" in name:
                factor += w.index_wildcard
                parts.append(_index_shape(name))
            else:
                factor += 1.0
                parts.append(_index_shape(name))
        if factor == 0.0:
            factor = w.index_all
            parts.append("_all")
        if factor > w.index_factor_max:
            factor = w.index_factor_max
        if params and params.get("routing"):
            factor *= w.routing_factor
        return factor

    def _search(
        self, params: Any, indices: tuple[str, ...], doc: Any, parts: list[str], sizes: IndexSizes | None = None
    ) -> float:
        """One search request: (base + query + hits + extras + aggregations) × index factor."""
        w = self.w
        cap = w.max_count
        if type(doc) is not dict:
            doc = {}
        get = doc.get
        if "pit" in doc:
            factor = 1.0  # a point in time fixes its indices; the path names none
            parts.append("pit")
        else:
            factor = self._index_factor(indices, params, parts)
            if sizes is not None:
                w = self._table(indices, sizes)
        size = _count(get("size"), 10.0, cap)
        start = _count(get("from"), 0.0, cap)
        flat = 0.0  # what the URL parameters add
        multiplier = w.dfs_factor if get("search_type") == "dfs_query_then_fetch" else 1.0
        if get("profile") is True:
            multiplier *= w.profile_factor
        if params:
            for name in _SHAPE_PARAMS:
                value = params.get(name)
                if value is not None:
                    parts.append(f"{name}={_index_shape(value) if name == 'routing' else value}"[:64])
            if "size" in params:  # the URL wins over the body, as in ES
                size = _count(params["size"], 10.0, cap)
            if "from" in params:
                start = _count(params["from"], 0.0, cap)
            if params.get("q"):
                flat += _query_text(w, params["q"], params.get("df") is None, True, parts)
            if params.get("scroll"):
                flat += w.scroll_context
                parts.append("scroll")
            if params.get("track_total_hits") == "true":
                flat += w.track_total_hits
            if params.get("search_type") == "dfs_query_then_fetch" and multiplier == 1.0:
                multiplier = w.dfs_factor
            if params.get("profile") == "true":
                multiplier *= w.profile_factor
        parts.append(f"s{size_bucket(size)}f{size_bucket(start)}")
        cost = w.search + w.hit * size + w.hit_depth * (start + size) + flat

        query = get("query")
        q = _query(w, query, parts, 1) if query is not None else w.match_all
        cost += q * _terminate_factor(w, params, doc) if "terminate_after" in doc or params else q
        for key, value in doc.items():
            handler = _SEARCH_EXTRAS.get(key)
            if handler is not None:
                parts.append(key)
                cost += handler(w, value, size, parts)
        aggs = get("aggs")
        if aggs is None:
            aggs = get("aggregations")
        if aggs is not None:
            cost += _aggs(w, aggs, parts, 1, 1.0, query)
        return cost * multiplier * factor

    def _msearch(self, call: EsCall, body: Body | None, parts: list[str], sizes: IndexSizes | None) -> float:
        """The sum of the searches: each header's index expression and parameters, each body's query."""
        w = self.w
        lines = body.lines if body is not None and body.lines is not None else ()
        cost = w.msearch
        shapes: set[int] = set()
        template = call.kind == "msearch_template"
        for i in range(0, len(lines) - 1, 2):
            header, search = lines[i], lines[i + 1]
            sub: list[str] = []
            indices = call.indices
            params: dict[str, str] = {}
            if type(header) is dict:
                names = header.get("index")
                if type(names) is str:
                    indices = tuple(n for n in names.split(",") if n)
                elif type(names) is list:
                    indices = tuple(n for n in names if type(n) is str and n)
                for name in _SHAPE_PARAMS:
                    value = header.get(name)
                    if type(value) is str:
                        params[name] = value
            if template:
                cost += self._template_doc(params, indices, search, sub, sizes)
            else:
                cost += self._search(params, indices, search, sub, sizes)
            shapes.add(_digest(sub))
        searches = len(lines) // 2
        parts.append(f"n{size_bucket(searches)}")
        parts.extend(str(s) for s in sorted(shapes)[:64])
        return cost

    def _template_doc(
        self, params: Any, indices: tuple[str, ...], doc: Any, parts: list[str], sizes: IndexSizes | None = None
    ) -> float:
        """A search template: costed like its search when the inline source is readable JSON."""
        w = self.w
        source = doc.get("source") if type(doc) is dict else None
        if type(source) is str:
            try:  # only inline templates pay for a second parse: their source is a string
                source = orjson.loads(source)
            except (ValueError, TypeError):
                source = None
        if type(source) is dict:
            parts.append("inline")
            return self._search(params, indices, source, parts, sizes)
        parts.append("opaque")
        return w.template_opaque * self._index_factor(indices, params, parts)

    # -- reads, writes, admin ---------------------------------------------------------------

    def _mget(self, doc: Any, parts: list[str]) -> float:
        w = self.w
        n = 0
        if type(doc) is dict:
            docs, ids = doc.get("docs"), doc.get("ids")
            n = (len(docs) if type(docs) is list else 0) + (len(ids) if type(ids) is list else 0)
        parts.append(f"n{size_bucket(n)}")
        return w.mget + w.mget_doc * n

    def _bulk(self, call: EsCall, body: Body | None, parts: list[str]) -> float:
        """Per action (by op type) plus per KiB of the inflated body."""
        w = self.w
        cost = w.bulk + _refresh(w, call.params)
        for name in call.indices:
            parts.append(_index_shape(name))
        if body is None:
            return cost
        cost += w.write_per_kb * len(body.data) / 1024.0
        ops = {"index": 0, "create": 0, "update": 0, "delete": 0}
        names: set[Any] = set()
        for action in body.lines or ():
            if type(action) is not dict:
                continue
            for op, meta in action.items():
                if op in ops:
                    ops[op] += 1
                    if type(meta) is dict:
                        names.add(meta.get("_index"))
        targets = sorted({_index_shape(n) for n in names if type(n) is str})[:32]
        cost += (ops["index"] + ops["create"]) * w.bulk_index + ops["update"] * w.bulk_update + ops["delete"] * w.bulk_delete
        parts.extend(f"{op}{size_bucket(n)}" for op, n in ops.items())
        parts.append(f"kb{size_bucket(len(body.data) >> 10)}")
        parts.extend(targets)
        return cost

    def _by_query(self, call: EsCall, doc: Any, parts: list[str]) -> float:
        """_delete_by_query / _update_by_query: heavy base, and the query they visit every match of."""
        w = self.w
        factor = self._index_factor(call.indices, call.params, parts)
        query = doc.get("query") if type(doc) is dict else None
        q = _query(w, query, parts, 1) if query is not None else w.match_all
        if call.params.get("q"):
            q += _query_text(w, call.params["q"], call.params.get("df") is None, True, parts)
        cost = w.by_query + q * w.by_query_factor
        if type(doc) is dict and doc.get("script") is not None:
            cost += w.script
            parts.append("script")
        return cost * factor + _refresh(w, call.params)

    def _reindex(self, doc: Any, parts: list[str]) -> float:
        w = self.w
        cost = w.reindex
        if type(doc) is not dict:
            return cost
        source = doc.get("source")
        factor = 1.0
        if type(source) is dict:
            names = source.get("index")
            indices = tuple(n for n in names.split(",") if n) if type(names) is str else (
                tuple(n for n in names if type(n) is str and n) if type(names) is list else ()
            )
            factor = self._index_factor(indices, None, parts)
            query = source.get("query")
            if query is not None:
                cost += _query(w, query, parts, 1) * w.by_query_factor
            if source.get("remote") is not None:
                parts.append("remote")
        if doc.get("script") is not None:
            cost += w.script
            parts.append("script")
        return cost * factor

    def _admin(self, call: EsCall, parts: list[str]) -> float:
        """A flat cost by weight class, times the index expression for index-scoped calls."""
        w = self.w
        parts.append(call.api)
        parts.append(call.method)
        if call.kind in _HEAVY_ADMIN and (call.method not in ("GET", "HEAD") or call.kind == "nodes_hot_threads"):
            cost = w.admin_heavy
        elif call.method in ("GET", "HEAD"):
            cost = w.admin_read
        else:
            cost = w.admin_write
        if call.kind == "other":
            cost = max(cost, w.other)
        if call.indices and not call.cluster:
            cost *= self._index_factor(call.indices, None, parts)
        return cost


def _expression_factor(w: Weights, indices: tuple[str, ...]) -> float:
    """What `CostModel._index_factor` multiplies a search by for this expression, before routing."""
    factor = 0.0
    for name in indices:
        if name[:1] == "-":
            continue
        factor += w.index_all if name == "_all" or name == "*" else w.index_wildcard if "*" in name or "?" in name else 1.0
    return min(factor or w.index_all, w.index_factor_max)


def _quantize(scale: float, top: float) -> float:
    """A scale rounded to a quarter power of two (±9 %), within [1/top, top]: few distinct tables."""
    if not scale > 0.0:
        return 1.0 / top
    scale = 2.0 ** (round(math.log2(scale) * 4.0) / 4.0)
    return top if scale > top else 1.0 / top if scale < 1.0 / top else scale


def _refresh(w: Weights, params: Any) -> float:
    return w.forced_refresh if params and params.get("refresh") in ("", "true") else 0.0


def _terminate_factor(w: Weights, params: Any, doc: Any) -> float:
    value = params.get("terminate_after") if params else None
    if value is None and type(doc) is dict:
        value = doc.get("terminate_after")
    if value is None:
        return 1.0
    n = _count(value, 0.0, w.max_count)
    return w.terminate_after_factor if 0 < n <= 10_000 else 1.0


def _digest(parts: list[str]) -> int:
    """Stable 64-bit hash of the shape tokens (blake2b, not Python's per-process hash())."""
    data = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


# ---- query clauses ----------------------------------------------------------------------------


def _query(w: Weights, q: Any, parts: list[str], depth: int) -> float:
    """Cost of one query clause object {type: body}, walking compound clauses; appends its shape."""
    if type(q) is not dict:
        parts.append("?")
        return w.clause_unknown
    if depth > _MAX_DEPTH:
        parts.append("…")
        return w.deep_nesting
    cost = 0.0
    for ctype, body in q.items():
        parts.append(ctype)
        handler = _CLAUSES.get(ctype)
        if handler is not None:
            cost += handler(w, body, parts, depth)
        else:
            cost += _unknown_clause(w, ctype, body, parts, depth)
    return cost


def _clauses(w: Weights, value: Any, parts: list[str], depth: int) -> float:
    """A clause or a list of clauses (bool occurrences, dis_max queries)."""
    if type(value) is list:
        parts.append("[")
        cost = 0.0
        for q in value:
            cost += _query(w, q, parts, depth + 1)
        parts.append("]")
        return cost
    return _query(w, value, parts, depth + 1)


def _field(body: Any, parts: list[str]) -> tuple[Any, Any]:
    """(value, options) of a single-field clause {field: value} or {field: {value/query: v, ...}}."""
    if type(body) is not dict:
        return body, None
    for field, value in body.items():
        if field == "boost" or field == "_name":
            continue
        parts.append(str(field))
        if type(value) is dict:
            inner = value.get("value")
            if inner is None:
                inner = value.get("query")
            return inner, value
        return value, None
    return None, None


def _bool(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    cost = w.compound
    if type(body) is not dict:
        return cost
    inner = depth + 1
    for occur in ("must", "filter", "should", "must_not"):
        value = body.get(occur)
        if value is None:
            continue
        parts.append(occur)
        if type(value) is list:  # _clauses inlined: bool is the hottest compound clause
            parts.append("[")
            for q in value:
                cost += _query(w, q, parts, inner)
            parts.append("]")
        else:
            cost += _query(w, value, parts, inner)
    return cost


def _dis_max(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    queries = body.get("queries") if type(body) is dict else None
    return w.compound + (_clauses(w, queries, parts, depth) if queries is not None else 0.0)


def _inner(key: str):
    """A clause whose cost is that of the query under `key` (constant_score.filter ...)."""

    def handler(w: Weights, body: Any, parts: list[str], depth: int) -> float:
        inner = body.get(key) if type(body) is dict else None
        return w.compound + (_query(w, inner, parts, depth + 1) if inner is not None else 0.0)

    return handler


def _boosting(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    cost = w.compound
    if type(body) is dict:
        for key in ("positive", "negative"):
            if body.get(key) is not None:
                parts.append(key)
                cost += _query(w, body[key], parts, depth + 1)
    return cost


def _join(base: str, factor: str, type_key: str):
    """nested / has_child / has_parent: flat cost plus the inner query times a factor."""

    def handler(w: Weights, body: Any, parts: list[str], depth: int) -> float:
        cost = getattr(w, base)
        if type(body) is not dict:
            return cost
        target = body.get(type_key)
        if type(target) is str:
            parts.append(target)
        inner = body.get("query")
        if inner is not None:
            cost += _query(w, inner, parts, depth + 1) * getattr(w, factor)
        if body.get("inner_hits") is not None:
            parts.append("inner_hits")
            cost += w.inner_hits
        return cost

    return handler


def _function_score(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    cost = w.function_score
    if type(body) is not dict:
        return cost
    inner = body.get("query")
    if inner is not None:
        cost += _query(w, inner, parts, depth + 1)
    functions = body.get("functions")
    for fn in functions if type(functions) is list else (body,):
        if type(fn) is not dict:
            continue
        for key, value in fn.items():
            if key == "script_score":
                parts.append(key)
                cost += w.script
            elif key == "filter":
                parts.append(key)
                cost += _query(w, value, parts, depth + 1)
            elif key in ("random_score", "field_value_factor", "gauss", "linear", "exp", "weight"):
                parts.append(key)
                cost += w.function
    return cost


def _script_score(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    inner = body.get("query") if type(body) is dict else None
    return w.script + (_query(w, inner, parts, depth + 1) if inner is not None else 0.0)


def _flat(name: str):
    def handler(w: Weights, body: Any, parts: list[str], depth: int) -> float:
        return getattr(w, name)

    return handler


def _term(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _, options = _field(body, parts)
    if options is not None and options.get("case_insensitive") is True:
        return w.term * w.case_insensitive_factor
    return w.term


def _terms(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    if type(body) is not dict:
        return w.term
    cost = w.term
    for field, values in body.items():
        if field == "boost" or field == "_name":
            continue
        parts.append(str(field))
        if type(values) is list:
            parts.append(f"n{size_bucket(len(values))}")
            cost += w.terms_value * len(values)
        elif type(values) is dict:
            parts.append("lookup")
            cost += w.terms_lookup
    return cost


def _exists(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    field = body.get("field") if type(body) is dict else None
    parts.append(field if type(field) is str else "?")  # here the value *is* the field name
    return w.range  # visits every document's doc values or norms, like an open range


def _range(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _, options = _field(body, parts)
    if options is not None:
        parts.extend(k for k in options if k in ("gt", "gte", "lt", "lte", "from", "to"))
    return w.range


def _pattern_cost(w: Weights, pattern: Any, parts: list[str]) -> float:
    position = wildcard_position(pattern) if type(pattern) is str else NO_WILDCARD
    parts.append(_WILDCARD_TAG[position])
    if position == LEADING:
        return w.wildcard_leading
    if position == INNER:
        return w.wildcard_inner
    return w.wildcard_trailing  # a wildcard query always walks terms, even with no * at all


def _wildcard(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    value, options = _field(body, parts)
    if options is not None and value is None:
        value = options.get("wildcard")
    cost = _pattern_cost(w, value, parts)
    if options is not None and options.get("case_insensitive") is True:
        cost *= w.case_insensitive_factor
    return cost


def _prefix(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _, options = _field(body, parts)
    if options is not None and options.get("case_insensitive") is True:
        return w.prefix * w.case_insensitive_factor
    return w.prefix


def _regexp(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    value, options = _field(body, parts)
    cost = w.regexp
    if type(value) is str and value[:1] in (".", "(", "["):
        parts.append("w<")  # the automaton cannot seek to a prefix: every term is visited
        cost += w.wildcard_leading
    if options is not None and options.get("case_insensitive") is True:
        cost *= w.case_insensitive_factor
    return cost


def _fuzzy(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _, options = _field(body, parts)
    expansions = _count(options.get("max_expansions"), 50.0, w.max_count) if options is not None else 50.0
    return w.fuzzy + w.fuzzy_expansion * expansions


def _match(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _, options = _field(body, parts)
    if options is not None and options.get("fuzziness") not in (None, 0, "0"):
        parts.append("fuzzy")
        return w.match + w.fuzzy + w.fuzzy_expansion * _count(options.get("max_expansions"), 50.0, w.max_count)
    return w.match


def _phrase(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _field(body, parts)
    return w.match_phrase


def _phrase_prefix(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _field(body, parts)
    return w.match_phrase + w.prefix


def _fields_cost(w: Weights, fields: Any, parts: list[str]) -> tuple[float, bool]:
    """(number of fields, whether any is a wildcard) of a fields list; appends the names."""
    if type(fields) is not list:
        return 0.0, False
    wild = False
    for f in fields:
        if type(f) is str:
            parts.append(f)
            wild = wild or "*" in f
    return float(len(fields)), wild


def _multi_match(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    if type(body) is not dict:
        return w.match
    n, wild = _fields_cost(w, body.get("fields"), parts)
    mtype = body.get("type")
    per_field = w.match_phrase + w.prefix if mtype == "phrase_prefix" else w.match_phrase if mtype == "phrase" else w.match
    if type(mtype) is str:
        parts.append(mtype[:32])
    cost = per_field * max(n, 1.0) + (w.all_fields if wild or n == 0 else 0.0)
    if body.get("fuzziness") not in (None, 0, "0"):
        parts.append("fuzzy")
        cost += w.fuzzy * max(n, 1.0)
    return cost


def _query_string(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    if type(body) is not dict:
        return w.query_string
    n, wild = _fields_cost(w, body.get("fields"), parts)
    default = body.get("default_field")
    if type(default) is str:
        parts.append(default)
        wild = wild or "*" in default
    all_fields = wild or (n == 0 and default is None)
    leading_ok = body.get("allow_leading_wildcard") is not False
    text = body.get("query")
    cost = w.query_string + (w.all_fields if all_fields else 0.0)
    if type(text) is str:
        cost += _query_text(w, text, False, leading_ok, parts)
    return cost


def _query_text(w: Weights, text: str, all_fields: bool, leading_ok: bool, parts: list[str]) -> float:
    """Cost of the wildcards, regexps and fuzzy terms in query_string syntax (also ?q=), by position."""
    cost = w.all_fields if all_fields else 0.0
    text = _QS_PHRASE.sub(" ", text.replace("\\\\", "").replace("\\*", "").replace("\\?", ""))
    classes = [0, 0, 0, 0, 0, 0]  # none, trailing, inner, leading, regexp, fuzzy
    for i, match in enumerate(_QS_TOKEN.finditer(text)):
        if i >= _QS_MAX_TOKENS:
            break
        token = match.group()
        value = token.rpartition(":")[2] if ":" in token else token
        if not value:
            continue
        if value[0] == "/" and len(value) > 1:
            classes[4] += 1
            if value[1:2] == ".":
                classes[3] += 1
            continue
        if "~" in value and value[0] != "~":
            classes[5] += 1
            value = value.partition("~")[0]
        position = wildcard_position(value)
        if position == LEADING and not leading_ok:
            continue  # ES refuses the query outright: nothing runs
        classes[position] += 1
    cost += (classes[1] * w.wildcard_trailing + classes[2] * w.wildcard_inner + classes[3] * w.wildcard_leading
             + classes[4] * w.regexp + classes[5] * w.fuzzy)
    parts.append("qs" + "".join(str(min(c, 9)) for c in classes[1:]))
    return cost


def _knn_clause(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    return _knn(w, body, 0.0, parts, depth)


def _knn(w: Weights, value: Any, size: float, parts: list[str], depth: int = 1) -> float:
    """Each kNN search: flat + num_candidates + k hits + its filter."""
    cost = 0.0
    for spec in value if type(value) is list else (value,):
        cost += w.knn
        if type(spec) is not dict:
            continue
        field = spec.get("field")
        if type(field) is str:
            parts.append(field)
        k = _count(spec.get("k"), size or 10.0, w.max_count)
        candidates = _count(spec.get("num_candidates"), max(1.5 * k, 100.0), w.max_count)
        parts.append(f"k{size_bucket(k)}c{size_bucket(candidates)}")
        cost += w.knn_candidate * max(candidates, k) + w.hit * k
        flt = spec.get("filter")
        if flt is not None:
            cost += _clauses(w, flt, parts, depth)
    return cost


def _unknown_clause(w: Weights, ctype: Any, body: Any, parts: list[str], depth: int) -> float:
    """A clause type the proxy does not know: a flat cost, plus any query it wraps."""
    base = _FLAT_CLAUSES.get(ctype)
    cost = getattr(w, base) if base is not None else w.clause_unknown
    if type(body) is dict:
        for key in ("query", "filter", "organic", "positive", "negative"):
            inner = body.get(key)
            if type(inner) is dict:
                cost += _query(w, inner, parts, depth + 1)
    return cost


_FLAT_CLAUSES = {
    "geo_shape": "geo", "geo_distance": "geo", "geo_bounding_box": "geo", "geo_polygon": "geo", "shape": "geo",
    "geo_grid": "geo", "more_like_this": "more_like_this", "percolate": "percolate", "wrapper": "wrapper",
    "span_term": "span", "span_near": "span", "span_or": "span", "span_not": "span", "span_first": "span",
    "span_multi": "span", "span_containing": "span", "span_within": "span", "span_field_masking": "span",
    "intervals": "span", "semantic": "semantic", "sparse_vector": "semantic", "text_expansion": "semantic",
    "weighted_tokens": "semantic", "neural": "semantic", "neural_sparse": "semantic", "hybrid": "semantic",
    "rule": "compound", "pinned": "compound", "rank_feature": "term", "distance_feature": "range",
    "parent_id": "term", "terms_set": "match", "combined_fields": "match_phrase", "match_bool_prefix": "match_phrase",
}

_CLAUSES = {
    "bool": _bool,
    "dis_max": _dis_max,
    "constant_score": _inner("filter"),
    "boosting": _boosting,
    "function_score": _function_score,
    "script_score": _script_score,
    "script": _flat("script"),
    "nested": _join("nested", "nested_factor", "path"),
    "has_child": _join("join", "join_factor", "type"),
    "has_parent": _join("join", "join_factor", "parent_type"),
    "match_all": _flat("match_all"),
    "match_none": _flat("match_all"),
    "term": _term,
    "ids": _flat("term"),
    "exists": _exists,
    "terms": _terms,
    "range": _range,
    "match": _match,
    "match_phrase": _phrase,
    "match_phrase_prefix": _phrase_prefix,
    "multi_match": _multi_match,
    "query_string": _query_string,
    "simple_query_string": _query_string,
    "prefix": _prefix,
    "wildcard": _wildcard,
    "regexp": _regexp,
    "fuzzy": _fuzzy,
    "knn": _knn_clause,
}


# ---- search extras ----------------------------------------------------------------------------


def _sort(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    cost = 0.0
    for entry in value if type(value) is list else (value,):
        if type(entry) is str:
            parts.append(entry)
            cost += 0.0 if entry == "_score" else w.sort_field
        elif type(entry) is dict:
            for key in entry:
                parts.append(str(key))
                cost += w.sort_script if key == "_script" else w.geo if key == "_geo_distance" else (
                    0.0 if key == "_score" else w.sort_field
                )
    return cost


def _script_fields(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    n = len(value) if type(value) is dict else 0
    parts.append(f"n{size_bucket(n)}")
    return n * (w.script_field + w.script_field_hit * size)


def _runtime_mappings(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    if type(value) is not dict:
        return 0.0
    parts.extend(str(k) for k in value)
    return len(value) * w.runtime_field


def _highlight(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    fields = value.get("fields") if type(value) is dict else None
    n = 0
    if type(fields) is dict:
        n = len(fields)
        parts.extend(str(f) for f in fields)
    elif type(fields) is list:
        n = len(fields)
        for f in fields:
            if type(f) is dict:
                parts.extend(str(k) for k in f)
    return w.highlight + w.highlight_field * n + w.highlight_hit * size * max(n, 1)


def _track_total_hits(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    if value is True:
        parts.append("true")
        return w.track_total_hits
    if type(value) is int and value > 10_000:
        parts.append(f"n{size_bucket(value)}")
        return w.track_total_hits * min(value, w.max_count) / w.max_count
    return 0.0


def _rescore(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    cost = 0.0
    for spec in value if type(value) is list else (value,):
        cost += w.rescore
        if type(spec) is not dict:
            continue
        window = _count(spec.get("window_size"), 10.0, w.max_count)
        parts.append(f"r{size_bucket(window)}")
        cost += w.rescore_hit * window
        query = spec.get("query")
        inner = query.get("rescore_query") if type(query) is dict else None
        if inner is not None:
            cost += _query(w, inner, parts, 2)
    return cost


def _collapse(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    cost = w.collapse
    if type(value) is dict:
        field = value.get("field")
        if type(field) is str:
            parts.append(field)
        if value.get("inner_hits") is not None:
            parts.append("inner_hits")
            cost += w.inner_hits
    return cost


def _post_filter(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    return _query(w, value, parts, 1)


def _suggest(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    return w.suggest * (len(value) if type(value) is dict else 1)


def _knn_extra(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    return _knn(w, value, size, parts)


def _fields_extra(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    n = len(value) if type(value) is list else 0
    parts.append(f"n{size_bucket(n)}")
    return w.sort_field * 0.5 * n


_SEARCH_EXTRAS = {
    "sort": _sort,
    "script_fields": _script_fields,
    "runtime_mappings": _runtime_mappings,
    "highlight": _highlight,
    "track_total_hits": _track_total_hits,
    "rescore": _rescore,
    "collapse": _collapse,
    "post_filter": _post_filter,
    "suggest": _suggest,
    "knn": _knn_extra,
    "docvalue_fields": _fields_extra,
    "stored_fields": _fields_extra,
}


# ---- aggregations -----------------------------------------------------------------------------

_METRIC_AGGS = frozenset({
    "avg", "sum", "min", "max", "stats", "extended_stats", "value_count", "weighted_avg", "geo_bounds",
    "geo_centroid", "string_stats", "rate", "t_test", "matrix_stats", "top_metrics", "geo_line",
})
_PERCENTILE_AGGS = frozenset({"percentiles", "percentile_ranks", "median_absolute_deviation", "boxplot"})
_SINGLE_BUCKET = frozenset({
    "filter", "missing", "nested", "reverse_nested", "global", "children", "parent", "sampler",
    "diversified_sampler", "random_sampler",
})
_RANGE_AGGS = frozenset({"range", "date_range", "ip_range", "geo_distance"})
_TERMS_AGGS = frozenset({"terms", "multi_terms", "rare_terms"})
_SIGNIFICANT = frozenset({"significant_terms", "significant_text"})
_GRID_AGGS = frozenset({"geohash_grid", "geotile_grid", "geohex_grid"})


def _aggs(w: Weights, aggs: Any, parts: list[str], depth: int, parent_buckets: float, query: Any) -> float:
    """Cost of an aggs object at nesting `depth` under `parent_buckets` buckets; appends its shape.

    `query` is the search's query: its time range tells how many buckets a date_histogram makes.
    """
    if type(aggs) is not dict:
        return 0.0
    if depth > _MAX_DEPTH:
        parts.append("…")
        return w.deep_nesting
    parts.append("{")
    cost = 0.0
    for spec in aggs.values():
        if type(spec) is not dict:
            continue
        atype, abody, sub = None, None, None
        for key, value in spec.items():
            if key == "aggs" or key == "aggregations":
                sub = value
            elif key != "meta":
                atype, abody = key, value
        if atype is None:
            continue
        parts.append(str(atype))
        own, buckets = _agg(w, atype, abody, parts, depth, parent_buckets, query)
        cost += own
        if sub is not None:
            total = parent_buckets * buckets
            cost += _aggs(w, sub, parts, depth + 1, total if total < w.max_buckets else w.max_buckets, query)
    parts.append("}")
    return cost


def _agg(
    w: Weights, atype: str, body: Any, parts: list[str], depth: int, parent: float, query: Any
) -> tuple[float, float]:
    """(own cost, buckets it creates per parent bucket) of one aggregation."""
    if type(body) is not dict:
        body = {}
    field = body.get("field")
    if type(field) is str:
        parts.append(field)
    cap = w.max_buckets
    buckets = 1.0
    extra = 0.0
    if atype in _TERMS_AGGS or atype in _SIGNIFICANT:
        size = _count(body.get("size"), 10.0, cap)
        shard = max(_count(body.get("shard_size"), size * 1.5 + 10.0, w.max_count), size)
        parts.append(f"s{size_bucket(size)}h{size_bucket(shard)}")
        base = w.significant_terms if atype in _SIGNIFICANT else w.terms_agg
        buckets = max(size, 1.0)
        extra = w.agg_shard_bucket * shard * min(parent, cap)
        if atype == "multi_terms":
            terms = body.get("terms")
            extra += w.terms_agg * (len(terms) if type(terms) is list else 1)
        order = body.get("order")
        if body.get("min_doc_count") == 0:
            parts.append("min0")
            extra += w.terms_agg * 5
        if type(order) is dict and any(type(k) is str and not k.startswith("_") for k in order):
            parts.append("order")  # ordered by a sub-aggregation: shards cannot prune
            extra += w.terms_agg
    elif atype == "date_histogram" or atype == "histogram" or atype == "auto_date_histogram":
        base = w.histogram_agg
        buckets = _histogram_buckets(w, atype, body, parts, query)
    elif atype in _METRIC_AGGS:
        base = w.metric_agg
    elif atype == "cardinality":
        base = w.cardinality
        threshold = _count(body.get("precision_threshold"), 3000.0, 40_000.0)
        extra = w.cardinality * threshold / 40_000.0
    elif atype in _PERCENTILE_AGGS:
        base = w.percentiles
    elif atype == "top_hits":
        base = w.top_hits
        size = _count(body.get("size"), 3.0, w.max_count)
        parts.append(f"s{size_bucket(size)}")
        extra = w.top_hits_hit * size * min(parent, cap)
        if body.get("highlight") is not None:
            extra += _highlight(w, body["highlight"], size, parts) * min(parent, cap)
        if body.get("script_fields") is not None:
            extra += _script_fields(w, body["script_fields"], size, parts)
    elif atype == "composite":
        base = w.composite
        size = _count(body.get("size"), 10.0, cap)
        sources = body.get("sources")
        n = len(sources) if type(sources) is list else 1
        parts.append(f"s{size_bucket(size)}n{n}")
        buckets = max(size, 1.0)
        extra = w.composite * n
        if type(sources) is list:
            for src in sources:
                if type(src) is dict:
                    for spec in src.values():
                        if type(spec) is dict:
                            for kind_, opts in spec.items():
                                parts.append(str(kind_))
                                if type(opts) is dict and opts.get("script") is not None:
                                    extra += w.agg_script
    elif atype in _RANGE_AGGS:
        base = w.range_agg
        ranges = body.get("ranges")
        buckets = float(len(ranges)) if type(ranges) is list and ranges else 1.0
        parts.append(f"n{size_bucket(buckets)}")
    elif atype == "filters":
        base = w.range_agg
        filters = body.get("filters")
        items = filters.values() if type(filters) is dict else filters if type(filters) is list else ()
        for flt in items:
            extra += _query(w, flt, parts, depth + 1)
            buckets += 1.0
        buckets = max(buckets - 1.0, 1.0)
    elif atype == "adjacency_matrix":
        base = w.range_agg
        filters = body.get("filters")
        n = len(filters) if type(filters) is dict else 0
        buckets = max(n * (n + 1) / 2.0, 1.0)
        if type(filters) is dict:
            for flt in filters.values():
                extra += _query(w, flt, parts, depth + 1)
    elif atype in _SINGLE_BUCKET:
        base = w.range_agg
        if atype == "filter":
            extra = _query(w, body, parts, depth + 1)
        elif atype == "nested" or atype == "reverse_nested" or atype == "children" or atype == "parent":
            path = body.get("path") if atype != "children" else body.get("type")
            if type(path) is str:
                parts.append(path)
    elif atype in _GRID_AGGS:
        base = w.geo_grid
        buckets = _count(body.get("size"), 10_000.0, cap) or 1.0
        parts.append(f"s{size_bucket(buckets)}")
    elif atype == "scripted_metric":
        base = w.scripted_metric
    elif "buckets_path" in body:
        base = w.pipeline_agg
        extra = w.pipeline_agg if body.get("script") is not None else 0.0
        return base + extra, 1.0
    else:
        base = w.agg_unknown
    if body.get("script") is not None:
        parts.append("script")
        extra += w.agg_script
    total = parent * buckets
    own = base * w.agg_depth_factors[depth - 1 if depth <= _MAX_DEPTH else _MAX_DEPTH] + extra
    own += w.agg_bucket * (total if total < cap else cap)
    return own, buckets


def _histogram_buckets(w: Weights, atype: str, body: dict, parts: list[str], query: Any) -> float:
    """Buckets a (date_)histogram will make: its span over its interval, clamped to max_buckets."""
    cap = w.max_buckets
    if atype == "auto_date_histogram":
        n = _count(body.get("buckets"), 10.0, cap) or 1.0
        parts.append(f"n{size_bucket(n)}")
        return n
    if atype == "histogram":
        interval = _count(body.get("interval"), 0.0, 1e300)
        bounds = body.get("extended_bounds") or body.get("hard_bounds")
        n = w.histogram_buckets
        if interval > 0 and type(bounds) is dict:
            low, high = _count(bounds.get("min"), 0.0, 1e300), _count(bounds.get("max"), 0.0, 1e300)
            if high > low:
                n = (high - low) / interval + 1.0
        n = min(max(n, 1.0), cap)
        parts.append(f"n{size_bucket(n)}")
        return n
    seconds = 0.0
    for key in ("calendar_interval", "fixed_interval", "interval"):
        value = body.get(key)
        if type(value) is str:
            parts.append(f"{key}={value[:16]}")
            seconds = _interval_seconds(value)
            break
    if seconds <= 0.0:
        return w.histogram_buckets
    bounds = body.get("extended_bounds") or body.get("hard_bounds")
    if type(bounds) is dict and type(bounds.get("min")) is int and type(bounds.get("max")) is int:
        span = max((bounds["max"] - bounds["min"]) / 1000.0, seconds)  # epoch milliseconds
    else:
        span = _time_span(query) or w.date_histogram_span_s
    n = span / seconds
    return min(max(n, 1.0), cap)


def _time_span(query: Any) -> float | None:
    """Seconds a query's top-level time range covers ("gte": "now-15m"), or None when it doesn't say."""
    if type(query) is not dict:
        return None
    inner = query.get("bool")
    if type(inner) is not dict:
        return _range_span(query)
    for occur in ("filter", "must"):
        value = inner.get(occur)
        if value is not None:
            for clause in value if type(value) is list else (value,):
                span = _range_span(clause)
                if span:
                    return span
    return None


def _range_span(clause: Any) -> float | None:
    spec = clause.get("range") if type(clause) is dict else None
    if type(spec) is dict:
        for options in spec.values():
            if type(options) is dict:
                low = options.get("gte") or options.get("gt") or options.get("from")
                if type(low) is str and low.startswith("now-"):
                    return _interval_seconds(low[4:].partition("/")[0]) or None
    return None


@lru_cache(maxsize=1024)
def _interval_seconds(value: str) -> float:
    named = _CALENDAR_S.get(value)
    if named is not None:
        return named
    match = _INTERVAL.match(value)
    if match is None:
        return 0.0
    return float(match.group(1)) * _UNIT_S[match.group(2)]


# ---- after the response -----------------------------------------------------------------------

# The top-level keys of a response head, one token at a time: strings (skipped whole) and brackets.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_COLON_INT = re.compile(rb"\s*:\s*(-?[0-9]+)(?=[\s,}\]])")
_SHARD_FIELD = re.compile(rb'"(total|skipped|failed)"\s*:\s*([0-9]+)(?=[\s,}])')


def observed_cost(head: bytes) -> float | None:
    """Observed cost units from the first bytes of an ES JSON response: took_ms × max(1, shards searched).

    Shards searched is _shards.total - skipped - failed when the top-level _shards object appears
    in `head` (a shard the node rejected under load did no work: real clusters answer 200 with the
    rejected shards as failures); without it (bulk, msearch) the cost is took alone. None when the head has no
    complete top-level "took" (count, errors, truncated heads). A took of 0 means under 1 ms: 0.5.
    """
    fast = _SEARCH_HEAD.match(head)
    if fast is not None:  # how Elasticsearch begins every search response: one match, no scan
        took, total, skipped, failed = fast.groups()
        return _took_ms(int(took)) * max(1, int(total) - int(skipped) - int(failed))
    try:
        return _observed(head)
    except Exception:  # a cost reading must never break a response
        return None


_SEARCH_HEAD = re.compile(
    rb'\{"took":(\d{1,12}),"timed_out":(?:true|false),(?:"terminated_early":(?:true|false),)?'
    rb'(?:"num_reduce_phases":\d+,)?"_shards":\{"total":(\d{1,9}),"successful":\d+,"skipped":(\d{1,9}),'
    rb'"failed":(\d{1,9})[,}]'
)


def _observed(head: bytes) -> float | None:
    took: int | None = None
    depth = 0
    for match in _TOKEN.finditer(head):
        token = match.group()
        first = token[0]
        if first == 0x7B or first == 0x5B:  # { [
            depth += 1
        elif first == 0x7D or first == 0x5D:  # } ]
            depth -= 1
        elif depth == 1 and token == b'"took"':
            number = _COLON_INT.match(head, match.end())
            if number is None:
                return None
            took = int(number.group(1))
        elif depth == 1 and token == b'"_shards"' and took is not None:
            end = head.find(b"}", match.end())
            if end < 0:
                break  # cut inside _shards: fall back to took alone
            fields = dict(_SHARD_FIELD.findall(head, match.end(), end))
            total = int(fields.get(b"total", b"1"))
            skipped = int(fields.get(b"skipped", b"0"))
            failed = int(fields.get(b"failed", b"0"))
            return _took_ms(took) * max(1, total - skipped - failed)
    return None if took is None else _took_ms(took)


def _bounded(observed: float, ewma: float, max_rise: float) -> float:
    """An observation as it may count against an EWMA: at most max_rise × the EWMA (or × 1 unit, from ~0)."""
    top = (ewma if ewma > 1.0 else 1.0) * max_rise
    return observed if observed < top else top


def _took_ms(took: int) -> float:
    return 0.5 if took <= 0 else float(took)


class LearnedCosts:
    """EWMA of observed cost per (tenant, fingerprint) in a bounded LRU.

    One LRU for all tenants, bounded at `max_entries`; a tenant's entries are never read or
    written by another tenant's lookups. Costs are in cost units.

    Beside it, an EWMA per fingerprint over every tenant (`shape`), also bounded at `max_entries`:
    the admission gate's guess for a shape a tenant has never run. It is never a tenant's bill,
    nor shown to a tenant: that would tell one tenant what another's queries cost.

    After the first observation, one observation counts as at most `max_rise` × the current EWMA:
    an observed cost includes the time the shard tasks queued in the cluster, so while the cluster
    is saturated (a storm's onset, a client that bypasses the proxy) a cheap shape would otherwise
    be learned as expensive and its tenant throttled long after the cluster recovered. A real rise
    is still learned, in a few observations (each may grow the EWMA by 1 + alpha × (max_rise - 1)).
    """

    __slots__ = ("max_entries", "alpha", "max_rise", "_entries", "_shapes")

    def __init__(self, max_entries: int, alpha: float, max_rise: float = math.inf) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if not max_rise >= 1.0:
            raise ValueError("max_rise must be at least 1")
        self.max_entries = max_entries
        self.alpha = alpha
        self.max_rise = max_rise
        #: (tenant, fingerprint) -> [ewma cost units, samples]; most recently used last
        self._entries: OrderedDict[tuple[str, int], list] = OrderedDict()
        #: fingerprint -> [ewma cost units over all tenants, samples]; most recently observed last
        self._shapes: OrderedDict[int, list] = OrderedDict()

    def get(self, tenant: str, fingerprint: int) -> float | None:
        """The learned cost of this shape for this tenant (cost units), or None if never observed."""
        entry = self._entries.get((tenant, fingerprint))
        if entry is None:
            return None
        self._entries.move_to_end((tenant, fingerprint))
        return entry[0]

    def observe(self, tenant: str, fingerprint: int, observed: float) -> float:
        """Fold one observed cost (cost units) into the EWMA and return it; the first observation sets it.

        A non-finite or negative observation is ignored (the current value, or 0.0, is returned); a later
        one above `max_rise` × the EWMA counts as that much.
        """
        return self.merge(tenant, fingerprint, observed, 1)

    def merge(self, tenant: str, fingerprint: int, observed: float, count: int) -> float:
        """Fold `count` observations made elsewhere (another instance), whose mean is `observed` cost
        units, into the EWMA as if they had been observed here, one by one, each equal to the mean:
        ewma += (1 - (1 - alpha) ** count) * (observed - ewma). The first ones set it. Returns it.

        count = 1 is exactly `observe`. A count below 1 or a non-finite or negative mean is ignored.
        The per-shape EWMA over every tenant (`shape`) takes them too.
        """
        if count < 1 or not (observed >= 0.0 and math.isfinite(observed)):
            entry = self._entries.get((tenant, fingerprint))
            return entry[0] if entry is not None else 0.0
        self._fold(self._shapes, fingerprint, observed, count)
        return self._fold(self._entries, (tenant, fingerprint), observed, count)

    def _fold(self, table: OrderedDict, key: object, observed: float, count: int) -> float:
        entry = table.get(key)
        if entry is None:
            table[key] = [float(observed), count]
            if len(table) > self.max_entries:
                table.popitem(last=False)
            return float(observed)
        weight = self.alpha if count == 1 else 1.0 - (1.0 - self.alpha) ** count
        entry[0] += weight * (_bounded(observed, entry[0], self.max_rise) - entry[0])
        entry[1] += count
        table.move_to_end(key)
        return entry[0]

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, fingerprint: int) -> float | None:
        """The learned cost of this shape over every tenant (cost units), or None if nobody ran it.

        For admission's counting only: never charge it to a tenant or show it to one."""
        entry = self._shapes.get(fingerprint)
        return None if entry is None else entry[0]

    def for_tenant(self, tenant: str, limit: int = 20) -> list[tuple[int, float, int]]:
        """Up to `limit` (fingerprint, ewma cost units, samples) of one tenant, most recently used first."""
        out: list[tuple[int, float, int]] = []
        if limit <= 0:
            return out
        for (name, fingerprint), (ewma, samples) in reversed(self._entries.items()):
            if name == tenant:
                out.append((fingerprint, ewma, samples))
                if len(out) >= limit:
                    break
        return out
