"""The cost and shape of a search body's query clauses and search-level extras (sort, highlight ...).

Each handler takes the weights table, the clause's body, the list of shape tokens it appends to
(literal values left out) and the nesting depth, and returns cost units. `query_cost` walks one
clause object; `SEARCH_EXTRAS` maps a search body's other top-level keys to their handlers.
Pure: no I/O, no clock.
"""
from __future__ import annotations

import re
from typing import Any

from .cost_weights import Weights

# query_string syntax: phrases first (wildcards inside quotes are literal), then the terms
_QS_PHRASE = re.compile(r'"(?:[^"\\]|\\.)*"?')
_QS_TOKEN = re.compile(r'[^\s()\[\]{}"]+')
MAX_DEPTH = 40  # walk no deeper: beyond it charge deep_nesting (and stay clear of Python's recursion limit)
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


def count_of(value: Any, default: float, cap: float) -> float:
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


# ---- query clauses ----------------------------------------------------------------------------


def query_cost(w: Weights, q: Any, parts: list[str], depth: int) -> float:
    """Cost of one query clause object {type: body}, walking compound clauses; appends its shape."""
    if type(q) is not dict:
        parts.append("?")
        return w.clause_unknown
    if depth > MAX_DEPTH:
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
            cost += query_cost(w, q, parts, depth + 1)
        parts.append("]")
        return cost
    return query_cost(w, value, parts, depth + 1)


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
                cost += query_cost(w, q, parts, inner)
            parts.append("]")
        else:
            cost += query_cost(w, value, parts, inner)
    return cost


def _dis_max(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    queries = body.get("queries") if type(body) is dict else None
    return w.compound + (_clauses(w, queries, parts, depth) if queries is not None else 0.0)


def _inner(key: str):
    """A clause whose cost is that of the query under `key` (constant_score.filter ...)."""

    def handler(w: Weights, body: Any, parts: list[str], depth: int) -> float:
        inner = body.get(key) if type(body) is dict else None
        return w.compound + (query_cost(w, inner, parts, depth + 1) if inner is not None else 0.0)

    return handler


def _boosting(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    cost = w.compound
    if type(body) is dict:
        for key in ("positive", "negative"):
            if body.get(key) is not None:
                parts.append(key)
                cost += query_cost(w, body[key], parts, depth + 1)
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
            cost += query_cost(w, inner, parts, depth + 1) * getattr(w, factor)
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
        cost += query_cost(w, inner, parts, depth + 1)
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
                cost += query_cost(w, value, parts, depth + 1)
            elif key in ("random_score", "field_value_factor", "gauss", "linear", "exp", "weight"):
                parts.append(key)
                cost += w.function
    return cost


def _script_score(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    inner = body.get("query") if type(body) is dict else None
    return w.script + (query_cost(w, inner, parts, depth + 1) if inner is not None else 0.0)


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
    expansions = count_of(options.get("max_expansions"), 50.0, w.max_count) if options is not None else 50.0
    return w.fuzzy + w.fuzzy_expansion * expansions


def _match(w: Weights, body: Any, parts: list[str], depth: int) -> float:
    _, options = _field(body, parts)
    if options is not None and options.get("fuzziness") not in (None, 0, "0"):
        parts.append("fuzzy")
        return w.match + w.fuzzy + w.fuzzy_expansion * count_of(options.get("max_expansions"), 50.0, w.max_count)
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
        cost += query_text_cost(w, text, False, leading_ok, parts)
    return cost


def query_text_cost(w: Weights, text: str, all_fields: bool, leading_ok: bool, parts: list[str]) -> float:
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
        k = count_of(spec.get("k"), size or 10.0, w.max_count)
        candidates = count_of(spec.get("num_candidates"), max(1.5 * k, 100.0), w.max_count)
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
                cost += query_cost(w, inner, parts, depth + 1)
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


def script_fields_cost(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    n = len(value) if type(value) is dict else 0
    parts.append(f"n{size_bucket(n)}")
    return n * (w.script_field + w.script_field_hit * size)


def _runtime_mappings(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    if type(value) is not dict:
        return 0.0
    parts.extend(str(k) for k in value)
    return len(value) * w.runtime_field


def highlight_cost(w: Weights, value: Any, size: float, parts: list[str]) -> float:
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
        window = count_of(spec.get("window_size"), 10.0, w.max_count)
        parts.append(f"r{size_bucket(window)}")
        cost += w.rescore_hit * window
        query = spec.get("query")
        inner = query.get("rescore_query") if type(query) is dict else None
        if inner is not None:
            cost += query_cost(w, inner, parts, 2)
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
    return query_cost(w, value, parts, 1)


def _suggest(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    return w.suggest * (len(value) if type(value) is dict else 1)


def _knn_extra(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    return _knn(w, value, size, parts)


def _fields_extra(w: Weights, value: Any, size: float, parts: list[str]) -> float:
    n = len(value) if type(value) is list else 0
    parts.append(f"n{size_bucket(n)}")
    return w.sort_field * 0.5 * n


SEARCH_EXTRAS = {
    "sort": _sort,
    "script_fields": script_fields_cost,
    "runtime_mappings": _runtime_mappings,
    "highlight": highlight_cost,
    "track_total_hits": _track_total_hits,
    "rescore": _rescore,
    "collapse": _collapse,
    "post_filter": _post_filter,
    "suggest": _suggest,
    "knn": _knn_extra,
    "docvalue_fields": _fields_extra,
    "stored_fields": _fields_extra,
}

