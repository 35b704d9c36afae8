"""The cost and shape of a search body's aggregations: own cost by type, times nesting, plus buckets.

`aggs_cost` walks an aggs object; a date_histogram's bucket count comes from its interval and the
time range of the search's query. Pure: no I/O, no clock.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from .cost_query import MAX_DEPTH, count_of, highlight_cost, query_cost, script_fields_cost, size_bucket
from .cost_weights import Weights

_INTERVAL = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w|M|q|y)\Z")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
           "M": 2629746.0, "q": 7889238.0, "y": 31556952.0}
_CALENDAR_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "week": 604800.0,
               "month": 2629746.0, "quarter": 7889238.0, "year": 31556952.0}

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


def aggs_cost(w: Weights, aggs: Any, parts: list[str], depth: int, parent_buckets: float, query: Any) -> float:
    """Cost of an aggs object at nesting `depth` under `parent_buckets` buckets; appends its shape.

    `query` is the search's query: its time range tells how many buckets a date_histogram makes.
    """
    if type(aggs) is not dict:
        return 0.0
    if depth > MAX_DEPTH:
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
            cost += aggs_cost(w, sub, parts, depth + 1, total if total < w.max_buckets else w.max_buckets, query)
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
        size = count_of(body.get("size"), 10.0, cap)
        shard = max(count_of(body.get("shard_size"), size * 1.5 + 10.0, w.max_count), size)
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
        threshold = count_of(body.get("precision_threshold"), 3000.0, 40_000.0)
        extra = w.cardinality * threshold / 40_000.0
    elif atype in _PERCENTILE_AGGS:
        base = w.percentiles
    elif atype == "top_hits":
        base = w.top_hits
        size = count_of(body.get("size"), 3.0, w.max_count)
        parts.append(f"s{size_bucket(size)}")
        extra = w.top_hits_hit * size * min(parent, cap)
        if body.get("highlight") is not None:
            extra += highlight_cost(w, body["highlight"], size, parts) * min(parent, cap)
        if body.get("script_fields") is not None:
            extra += script_fields_cost(w, body["script_fields"], size, parts)
    elif atype == "composite":
        base = w.composite
        size = count_of(body.get("size"), 10.0, cap)
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
            extra += query_cost(w, flt, parts, depth + 1)
            buckets += 1.0
        buckets = max(buckets - 1.0, 1.0)
    elif atype == "adjacency_matrix":
        base = w.range_agg
        filters = body.get("filters")
        n = len(filters) if type(filters) is dict else 0
        buckets = max(n * (n + 1) / 2.0, 1.0)
        if type(filters) is dict:
            for flt in filters.values():
                extra += query_cost(w, flt, parts, depth + 1)
    elif atype in _SINGLE_BUCKET:
        base = w.range_agg
        if atype == "filter":
            extra = query_cost(w, body, parts, depth + 1)
        elif atype == "nested" or atype == "reverse_nested" or atype == "children" or atype == "parent":
            path = body.get("path") if atype != "children" else body.get("type")
            if type(path) is str:
                parts.append(path)
    elif atype in _GRID_AGGS:
        base = w.geo_grid
        buckets = count_of(body.get("size"), 10_000.0, cap) or 1.0
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
    own = base * w.agg_depth_factors[depth - 1 if depth <= MAX_DEPTH else MAX_DEPTH] + extra
    own += w.agg_bucket * (total if total < cap else cap)
    return own, buckets


def _histogram_buckets(w: Weights, atype: str, body: dict, parts: list[str], query: Any) -> float:
    """Buckets a (date_)histogram will make: its span over its interval, clamped to max_buckets."""
    cap = w.max_buckets
    if atype == "auto_date_histogram":
        n = count_of(body.get("buckets"), 10.0, cap) or 1.0
        parts.append(f"n{size_bucket(n)}")
        return n
    if atype == "histogram":
        interval = count_of(body.get("interval"), 0.0, 1e300)
        bounds = body.get("extended_bounds") or body.get("hard_bounds")
        n = w.histogram_buckets
        if interval > 0 and type(bounds) is dict:
            low, high = count_of(bounds.get("min"), 0.0, 1e300), count_of(bounds.get("max"), 0.0, 1e300)
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

