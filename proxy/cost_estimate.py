"""What a request will cost the cluster, estimated before it is sent, and the fingerprint of its shape.

`CostModel.estimate` scores a parsed call and body: a base per endpoint plus weights for what makes
Elasticsearch slow (DESIGN, "Cost model"). The same single walk over the body feeds the fingerprint:
the query's shape (endpoint, clause and aggregation types, field names, sizes bucketed by powers of
two, wildcard positions) with literal values removed, hashed with blake2b so it is stable across
processes. `IndexSizes` holds the documents per index the cluster poller last saw; given one, the
estimate scales its data-proportional weights by the size of the indices a call reaches.
Pure: no I/O, no clock.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import orjson

from .cost_aggs import aggs_cost
from .cost_query import MAX_DEPTH, SEARCH_EXTRAS, count_of, query_cost, query_text_cost, size_bucket
from .cost_weights import DATA_SCALED, DICTIONARY_SCALED, Weights

if TYPE_CHECKING:
    from .esapi import Body, EsCall

_DIGITS = re.compile(r"[0-9]+")


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
        self.agg_depth_factors = tuple(weights.agg_depth_factor**i for i in range(MAX_DEPTH + 1))


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
            q = query_cost(w, query, parts, 1) if query is not None else w.match_all
            cost = (w.count + q * _terminate_factor(w, call.params, doc)) * factor
            if call.params.get("q"):
                cost += query_text_cost(w, call.params["q"], call.params.get("df") is None, True, parts) * factor
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
            cost = w.explain + (query_cost(w, query, parts, 1) if query is not None else 0.0)
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
        size = count_of(get("size"), 10.0, cap)
        start = count_of(get("from"), 0.0, cap)
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
                size = count_of(params["size"], 10.0, cap)
            if "from" in params:
                start = count_of(params["from"], 0.0, cap)
            if params.get("q"):
                flat += query_text_cost(w, params["q"], params.get("df") is None, True, parts)
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
        q = query_cost(w, query, parts, 1) if query is not None else w.match_all
        cost += q * _terminate_factor(w, params, doc) if "terminate_after" in doc or params else q
        for key, value in doc.items():
            handler = SEARCH_EXTRAS.get(key)
            if handler is not None:
                parts.append(key)
                cost += handler(w, value, size, parts)
        aggs = get("aggs")
        if aggs is None:
            aggs = get("aggregations")
        if aggs is not None:
            cost += aggs_cost(w, aggs, parts, 1, 1.0, query)
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
        q = query_cost(w, query, parts, 1) if query is not None else w.match_all
        if call.params.get("q"):
            q += query_text_cost(w, call.params["q"], call.params.get("df") is None, True, parts)
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
                cost += query_cost(w, query, parts, 1) * w.by_query_factor
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
    n = count_of(value, 0.0, w.max_count)
    return w.terminate_after_factor if 0 < n <= 10_000 else 1.0


def _digest(parts: list[str]) -> int:
    """Stable 64-bit hash of the shape tokens (blake2b, not Python's per-process hash())."""
    data = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")

