"""The weights of the cost estimate: what each part of a request costs the cluster, in cost units.

One cost unit is one estimated millisecond of cluster search-thread time. The weights are the
`cost.weights` section of the config (a frozen pydantic model); `sluicegate calibrate` fits them to
a real cluster. `DATA_SCALED` and `DICTIONARY_SCALED` name the weights that grow with the size of
the indices a call reaches (proxy/cost_estimate.py scales them).

The defaults of the additive weights the battery exercises are a calibration against real
OpenSearch 2.19.6 and Elasticsearch 8.19.21 (docs/DESIGN.md, "Cost truth"): `bench/accuracy.py
--load bench/results/accuracy-calibration.json --fit` prints them again from the measurements.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _w(default: float, description: str, ge: float = 0.0) -> Any:
    return Field(default, ge=ge, description=description)


class Weights(BaseModel):
    """Every weight of the cost estimate. Units: cost units (≈ ms of one search thread) unless a multiplier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- endpoints -------------------------------------------------------------------------
    search: float = _w(8.51, "cost units: one _search / async search before its query, hits and aggregations")
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
    write_per_kb: float = _w(0.0213, "cost units per KiB of (inflated) document or bulk body")
    bulk: float = _w(34.6, "cost units: _bulk overhead")
    bulk_index: float = _w(0.0726, "cost units: each index/create action of a _bulk")
    bulk_update: float = _w(0.349, "cost units: each update action of a _bulk")
    bulk_delete: float = _w(0.0339, "cost units: each delete action of a _bulk")
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
    hit: float = _w(0.069, "cost units per hit returned (fetch phase: size)")
    hit_depth: float = _w(0.019, "cost units per hit collected (query phase: from + size, per shard)")
    scroll_context: float = _w(2.0, "cost units: opening a scroll context (?scroll=)")
    sort_field: float = _w(1.77, "cost units: each sort field (a field sort reads doc values of every match; data-scaled)")
    sort_script: float = _w(8.0, "cost units: a _script sort (runs per matching document; data-scaled)")
    script_field: float = _w(1.05, "cost units: each script field")
    script_field_hit: float = _w(0.0172, "cost units per hit for each script field")
    runtime_field: float = _w(50.0, "cost units: each runtime_mappings field (computed per document; data-scaled)")
    highlight: float = _w(1.09, "cost units: highlighting at all")
    highlight_field: float = _w(0.52, "cost units: each highlighted field")
    highlight_hit: float = _w(0.684, "cost units per hit highlighted")
    track_total_hits: float = _w(0.935, "cost units: track_total_hits=true (no early termination; data-scaled)")
    rescore: float = _w(2.28, "cost units: each rescore, plus its query")
    rescore_hit: float = _w(0.0159, "cost units per document of a rescore window")
    collapse: float = _w(0.904, "cost units: field collapsing (data-scaled)")
    inner_hits: float = _w(2.0, "cost units: inner_hits of a join, nested query or collapse")
    knn: float = _w(5.0, "cost units: each kNN search, plus its filter")
    knn_candidate: float = _w(0.01, "cost units per kNN num_candidates")
    suggest: float = _w(5.0, "cost units: each suggester")
    dfs_factor: float = _w(1.5, "multiplier: search_type=dfs_query_then_fetch (an extra round trip to every shard)", ge=1.0)
    profile_factor: float = _w(2.0, "multiplier: profile=true", ge=1.0)
    terminate_after_factor: float = _w(0.5, "multiplier on the query: terminate_after stops each shard early")
    # -- query clauses ---------------------------------------------------------------------
    match_all: float = _w(0.0602, "cost units: match_all / match_none")
    term: float = _w(0.0896, "cost units: term, ids, a terms clause before its values")
    terms_value: float = _w(0.0019, "cost units per value of a terms clause")
    terms_lookup: float = _w(2.0, "cost units: a terms lookup (fetches a document first)")
    range: float = _w(2.61, "cost units: range, exists")
    match: float = _w(6.29, "cost units: match (and each field of multi_match)")
    match_phrase: float = _w(7.41, "cost units: match_phrase, combined_fields, match_bool_prefix")
    query_string: float = _w(15.1, "cost units: query_string / simple_query_string before its wildcards")
    all_fields: float = _w(5.99, "cost units: a query_string/multi_match over every field (no fields, or '*')")
    prefix: float = _w(0.942, "cost units: prefix, match_phrase_prefix (term-dictionary-scaled)")
    wildcard_trailing: float = _w(0.197, "cost units: a wildcard only at the end (foo*): a prefix walk (term-dictionary-scaled)")
    wildcard_inner: float = _w(1.91, "cost units: a wildcard inside the pattern (f*o): walks the terms after its prefix "
                               "(term-dictionary-scaled)")
    wildcard_leading: float = _w(4.0, "cost units: a leading wildcard (*foo, ?foo): walks every term of the field "
                                 "(term-dictionary-scaled)")
    regexp: float = _w(1.95, "cost units: regexp (a leading .* costs wildcard_leading on top; term-dictionary-scaled)")
    fuzzy: float = _w(4.93, "cost units: fuzzy, or fuzziness on a match (term-dictionary-scaled)")
    fuzzy_expansion: float = _w(0.0384, "cost units per max_expansions of a fuzzy query")
    case_insensitive_factor: float = _w(2.0, "multiplier: case_insensitive wildcard/prefix/regexp/term", ge=1.0)
    script: float = _w(8.27, "cost units: a script query, script_score, or script function (runs per document; "
                               "data-scaled: ~0.1 µs of painless per Lucene document on the reference clusters)")
    function_score: float = _w(10.2, "cost units: function_score before its functions")
    function: float = _w(1.21, "cost units: each non-script function of function_score")
    nested: float = _w(18.3, "cost units: a nested query")
    nested_factor: float = _w(2.0, "multiplier on the query inside nested", ge=1.0)
    join: float = _w(20.0, "cost units: has_child / has_parent (global ordinals join; data-scaled)")
    join_factor: float = _w(3.0, "multiplier on the query inside has_child / has_parent", ge=1.0)
    geo: float = _w(3.0, "cost units: geo_* and shape queries")
    more_like_this: float = _w(20.0, "cost units: more_like_this")
    percolate: float = _w(30.0, "cost units: percolate")
    wrapper: float = _w(20.0, "cost units: wrapper (a base64 query the proxy cannot read)")
    span: float = _w(3.0, "cost units: each span_* / intervals clause")
    semantic: float = _w(20.0, "cost units: semantic, sparse_vector, text_expansion and other model-backed queries")
    compound: float = _w(0.0896, "cost units: bool, dis_max, constant_score, boosting before their clauses")
    clause_unknown: float = _w(2.0, "cost units: a query clause the proxy does not know")
    deep_nesting: float = _w(1000.0, "cost units: a query or aggregation subtree nested too deep to walk (over 40 levels)")
    # -- aggregations ----------------------------------------------------------------------
    agg_bucket: float = _w(0.00854, "cost units per bucket (product of bucket counts down the nesting)")
    agg_shard_bucket: float = _w(0.0338, "cost units per shard_size bucket of a terms-like aggregation")
    max_buckets: float = _w(65536.0, "buckets: the most one response can hold (search.max_buckets)", ge=1.0)
    agg_depth_factor: float = _w(1.5, "multiplier per nesting level on an aggregation's own cost", ge=1.0)
    terms_agg: float = _w(3.67, "cost units: terms / multi_terms / rare_terms (data-scaled, as are the aggregation "
                                  "weights below: each runs over every matching document)")
    histogram_agg: float = _w(6.48, "cost units: histogram / date_histogram / auto_date_histogram")
    histogram_buckets: float = _w(50.0, "buckets: assumed for a histogram whose range is not in the request", ge=1.0)
    date_histogram_span_s: float = _w(7 * 86400.0, "seconds: time span a date_histogram is assumed to cover", ge=1.0)
    range_agg: float = _w(3.46, "cost units: range / date_range / filters / filter / missing / nested-type aggs")
    metric_agg: float = _w(2.89, "cost units: avg / sum / min / max / stats / value_count and other single metrics")
    cardinality: float = _w(18.0, "cost units: cardinality (HyperLogLog per bucket)")
    percentiles: float = _w(46.0, "cost units: percentiles / percentile_ranks / median_absolute_deviation / boxplot")
    top_hits: float = _w(18.7, "cost units: top_hits (a fetch per bucket)")
    top_hits_hit: float = _w(0.054, "cost units per hit fetched by top_hits in each bucket")
    composite: float = _w(3.55, "cost units: composite, plus each source")
    significant_terms: float = _w(9.17, "cost units: significant_terms / significant_text (background frequencies)")
    scripted_metric: float = _w(200.0, "cost units: scripted_metric")
    agg_script: float = _w(32.4, "cost units: any aggregation with a script")
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
