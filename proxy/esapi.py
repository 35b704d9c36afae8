"""What an Elasticsearch / OpenSearch request is: the URL grammar and the body, decoded only as far as needed.

`parse_call` turns a method and a raw request target into an `EsCall`: the endpoint kind, its
resource class (search / read / write / admin, as DESIGN's cost model lists them), the index
expression, the document id, the decoded query parameters and the dotted API name used in
grants and logs. `decode_body` reads the body the way Elasticsearch would (Content-Type,
Content-Encoding, JSON or NDJSON) under the hard limits, and parses only what cost or grants
need. Both are pure: values in, values out, and every malformed input becomes a `Refusal`.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from .config import HardLimits
from .errors import BadRequest, BodyTooLarge, IllegalArgument, InvalidParameter, NotAcceptable

SEARCH, READ, WRITE, ADMIN = "search", "read", "write", "admin"


@dataclass(frozen=True, slots=True)
class EsCall:
    """One request, as the cost model and the grants see it."""

    method: str
    kind: str
    resource: str
    indices: tuple[str, ...]
    doc_id: str | None
    params: Mapping[str, str]
    cluster: bool
    api: str
    #: names the path makes the call touch besides `indices`: alias names, a resize or rollover target
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: the bytes as received, inflated, and decoded where it had to be."""

    raw: bytes
    data: bytes
    json: Any
    lines: tuple[Any, ...] | None
    ndjson_lines: int


#: the body phase of the grant check for a request that sent no body (decode_body returns None for it)
NO_BODY = Body(b"", b"", None, None, 0)


# ---- the URL ----------------------------------------------------------------------------------

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Java's Integer/Long.parseLong grammar: an optional sign, then decimal digits of any script (Character.digit
# takes "١٢" as 12, as do real Elasticsearch and OpenSearch nodes); Python's int() also takes "1_0" and " 1".
_INT = re.compile(r"[+-]?\d+\Z")
_INT_MAX = 2**31 - 1
_LONG_MAX = 2**63 - 1
#: TimeValue.parseTimeValue's units, in the order it tries them
_TIME_UNITS = ("nanos", "micros", "ms", "s", "m", "h", "d")
# Java's Double.parseDouble (ASCII digits, an optional exponent and type suffix), hexadecimal aside
_JAVA_DOUBLE = re.compile(r"[+-]?(?:NaN|Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fFdD]?)\Z")
#: what Java's String.trim() removes: every char up to and including the space
_JAVA_BLANK = "".join(map(chr, range(33)))

#: integer query parameters that Elasticsearch parses with paramAsInt on search-class calls (400 if not an int)
_INT_PARAMS = frozenset({
    "size", "from", "terminate_after", "max_docs", "scroll_size", "max_concurrent_searches",
    "max_concurrent_shard_requests", "pre_filter_shard_size", "batched_reduce_size",
})
#: of those, the ones Elasticsearch also refuses when negative
_NON_NEGATIVE = frozenset({"size", "from", "terminate_after", "max_docs", "scroll_size"})
#: time-valued parameters whose value the cost model reads
_TIME_PARAMS = frozenset({"scroll", "timeout", "keep_alive", "wait_for_completion_timeout"})


def _decode(part: str, plus: bool) -> str:
    """Percent-decode one path segment or query component to text (strict UTF-8, no NUL)."""
    if plus and "+" in part:
        part = part.replace("+", " ")  # form encoding: ES's decodeQueryString does the same
    if "%" in part:
        if _BAD_ESCAPE.search(part):
            raise BadRequest(f"invalid percent-encoding in [{_clip(part)}]")
        try:
            text = unquote_to_bytes(part).decode("utf-8")
        except UnicodeError:
            raise BadRequest(f"[{_clip(part)}] does not decode to valid UTF-8") from None
    else:
        text = part
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeError:
                raise BadRequest("the request target is not valid UTF-8") from None
    if "\x00" in text:
        raise BadRequest("the request target contains a NUL byte")
    return text


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _query_params(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        params[_decode(name, True)] = _decode(value, True)  # last value wins, as in ES
    return params


def _split_indices(expr: str) -> tuple[str, ...]:
    return tuple(name for name in expr.split(",") if name)


#: parsed calls by (method, target); applications repeat a few targets, so most requests skip parsing
_CALLS: dict[tuple[str, str], EsCall] = {}
_CALLS_MAX = 4096


def parse_call(method: str, raw_path: str) -> EsCall:
    """Parse the request target (percent-encoded path, optional ?query) of an ES/OpenSearch call.

    Raises BadRequest (or its subclass InvalidParameter) for anything unparseable: bad
    percent-encoding, invalid UTF-8, NUL bytes, or a size/from/scroll value ES would refuse.
    The result is shared between requests with the same target: treat it as read-only.
    """
    key = (method, raw_path)
    call = _CALLS.get(key)
    if call is None:
        call = _parse_call(method, raw_path)
        if len(_CALLS) >= _CALLS_MAX:
            _CALLS.clear()  # bounded whatever clients send; refilling is cheap
        _CALLS[key] = call
    return call


def _parse_call(method: str, raw_path: str) -> EsCall:
    method = method.upper()
    if not raw_path.startswith("/"):
        # absolute-form (http://host/...), authority-form (CONNECT) or '*': not an Elasticsearch request
        raise BadRequest(f"the request target [{_clip(raw_path)}] must be an absolute path")
    path, _, query = raw_path.partition("?")
    segments = [_decode(seg, False) for seg in path.split("/") if seg]
    if "." in segments or ".." in segments:
        # ES does not normalise dot segments, but something between the proxy and the node might
        raise BadRequest(f"the path [{_clip(path)}] contains a [.] or [..] segment")
    params = _query_params(query) if query else {}
    kind, resource, indices, doc_id, cluster, api = _route(method, segments)
    if params and (resource == SEARCH or kind in _BY_QUERY):
        _check_params(params)
    targets = _path_targets(kind, segments)
    return EsCall(method, kind, resource, indices, doc_id, params, cluster, api, targets)


def _path_targets(kind: str, segs: list[str]) -> tuple[str, ...]:
    """Names after the API segment that the call creates or points at: /{index}/_alias/{name}, /{index}/_clone/{target}."""
    if kind == "aliases":
        at = 1 if segs[0] in ("_alias", "_aliases") else 2
        return _split_indices(segs[at]) if len(segs) > at else ()
    if kind in ("resize", "rollover") and len(segs) >= 3:
        return _split_indices(segs[2])
    return ()


def _check_params(params: dict[str, str]) -> None:
    """Refuse (400) the numeric and time parameters that Elasticsearch itself would refuse, in its words
    (checked against real Elasticsearch 8.19 and OpenSearch 2.19 nodes, which agree on them)."""
    for name, value in params.items():
        if name in _INT_PARAMS:
            if not _java_int(value, _INT_MAX):
                raise InvalidParameter(f"Failed to parse int parameter [{name}] with value [{_clip(value)}]",
                                       _number_format(value))
            if name in _NON_NEGATIVE and int(value) < 0:
                raise InvalidParameter(f"[{name}] parameter cannot be negative, found [{value}]")
        elif name in _TIME_PARAMS:
            _check_time(name, value)


def _java_int(value: str, limit: int) -> bool:
    """Whether Java's Integer.parseInt (limit 2^31-1) or Long.parseLong (2^63-1) takes `value`
    (and Python's int() refuses 5000 digits: the length is judged first)."""
    return bool(_INT.match(value)) and len(value.lstrip("+-").lstrip("0")) <= 19 and abs(int(value)) <= limit


def _number_format(text: str) -> dict:
    """The `caused_by` ES reports for a number Java could not parse."""
    return {"type": "number_format_exception", "reason": f'For input string: "{_clip(text)}"'}


def _check_time(name: str, value: str) -> None:
    """TimeValue.parseTimeValue, which both Elasticsearch and OpenSearch use for `scroll`, `timeout`...:
    a unit after a whole number, or -1, or 0. Refuses what it refuses, with its messages."""
    normalized = value.lower().strip(_JAVA_BLANK)
    for unit in _TIME_UNITS:
        if normalized.endswith(unit):
            number = normalized[: -len(unit)].strip(_JAVA_BLANK)
            if _java_int(number, _LONG_MAX):
                if int(number) < -1:
                    raise InvalidParameter(f"failed to parse setting [{name}] with value [{_clip(value)}] as a time "
                                           "value: negative durations are not supported")
                return
            if _JAVA_DOUBLE.match(number):
                raise InvalidParameter(f"failed to parse [{_clip(value)}], fractional time values are not supported",
                                       _number_format(number))
            raise InvalidParameter(f"failed to parse [{_clip(value)}]", _number_format(number))
    if normalized not in ("-1", "0"):
        raise InvalidParameter(f"failed to parse setting [{name}] with value [{_clip(value)}] as a time value: "
                               "unit is missing or unrecognized")


Route = tuple[str, str, tuple[str, ...], "str | None", bool, str]

_BY_QUERY = frozenset({"delete_by_query", "update_by_query", "reindex"})

#: /{index}/{api}: APIs whose meaning does not depend on the method or on a later segment
_INDEX_APIS: dict[str, tuple[str, str, str]] = {
    "_count": ("count", SEARCH, "count"),
    "_async_search": ("async_search", SEARCH, "async_search.submit"),
    "_knn_search": ("knn_search", SEARCH, "knn_search"),
    "_field_caps": ("field_caps", SEARCH, "field_caps"),
    "_pit": ("open_pit", SEARCH, "open_point_in_time"),
    "_terms_enum": ("terms_enum", SEARCH, "terms_enum"),
    "_search_shards": ("search_shards", SEARCH, "search_shards"),
    "_rank_eval": ("rank_eval", SEARCH, "rank_eval"),
    "_mvt": ("search_mvt", SEARCH, "search_mvt"),
    "_rollup_search": ("rollup_search", SEARCH, "rollup.rollup_search"),
    "_graph": ("graph_explore", SEARCH, "graph.explore"),
    "_mget": ("mget", READ, "mget"),
    "_termvectors": ("termvectors", READ, "termvectors"),
    "_mtermvectors": ("mtermvectors", READ, "mtermvectors"),
    "_bulk": ("bulk", WRITE, "bulk"),
    "_delete_by_query": ("delete_by_query", ADMIN, "delete_by_query"),
    "_update_by_query": ("update_by_query", ADMIN, "update_by_query"),
    "_mapping": ("mapping", ADMIN, "indices.mapping"),
    "_mappings": ("mapping", ADMIN, "indices.mapping"),
    "_settings": ("settings", ADMIN, "indices.settings"),
    "_alias": ("aliases", ADMIN, "indices.aliases"),
    "_aliases": ("aliases", ADMIN, "indices.aliases"),
    "_refresh": ("refresh", ADMIN, "indices.refresh"),
    "_flush": ("flush", ADMIN, "indices.flush"),
    "_forcemerge": ("forcemerge", ADMIN, "indices.forcemerge"),
    "_cache": ("clear_cache", ADMIN, "indices.clear_cache"),
    "_stats": ("index_stats", ADMIN, "indices.stats"),
    "_segments": ("segments", ADMIN, "indices.segments"),
    "_recovery": ("recovery", ADMIN, "indices.recovery"),
    "_shard_stores": ("shard_stores", ADMIN, "indices.shard_stores"),
    "_open": ("index_open", ADMIN, "indices.open"),
    "_close": ("index_close", ADMIN, "indices.close"),
    "_block": ("index_block", ADMIN, "indices.add_block"),
    "_rollover": ("rollover", ADMIN, "indices.rollover"),
    "_shrink": ("resize", ADMIN, "indices.shrink"),
    "_split": ("resize", ADMIN, "indices.split"),
    "_clone": ("resize", ADMIN, "indices.clone"),
    "_analyze": ("analyze", ADMIN, "indices.analyze"),
    "_disk_usage": ("disk_usage", ADMIN, "indices.disk_usage"),
    "_field_usage_stats": ("field_usage_stats", ADMIN, "indices.field_usage_stats"),
    "_ilm": ("ilm", ADMIN, "ilm"),
    "_ccr": ("ccr", ADMIN, "ccr"),
    "_lifecycle": ("lifecycle", ADMIN, "indices.lifecycle"),
    "_upgrade": ("index_upgrade", ADMIN, "indices.upgrade"),
    "_freeze": ("index_freeze", ADMIN, "indices.freeze"),
    "_unfreeze": ("index_freeze", ADMIN, "indices.unfreeze"),
}

#: /{api}/...: cluster-level families (not scoped to an index); api = family[.sub-resource]
_CLUSTER_FAMILIES: dict[str, tuple[str, str, bool]] = {
    # first segment: (kind, api family, whether the next segment names a sub-resource)
    "_snapshot": ("snapshot", "snapshot", False),
    "_slm": ("snapshot", "slm", True),
    "_tasks": ("tasks", "tasks", False),
    "_ingest": ("ingest", "ingest", True),
    "_security": ("security", "security", True),
    "_scripts": ("scripts", "scripts", False),
    "_script_context": ("scripts", "scripts.context", False),
    "_script_language": ("scripts", "scripts.language", False),
    "_license": ("license", "license", True),
    "_xpack": ("license", "xpack", True),
    "_features": ("features", "features", True),
    "_autoscaling": ("autoscaling", "autoscaling", True),
    "_migration": ("migration", "migration", True),
    "_ml": ("ml", "ml", True),
    "_watcher": ("watcher", "watcher", True),
    "_transform": ("transform", "transform", False),
    "_ilm": ("ilm", "ilm", True),
    "_enrich": ("enrich", "enrich", True),
    "_ccr": ("ccr", "ccr", True),
    "_index_template": ("index_template", "indices.index_template", False),
    "_component_template": ("index_template", "cluster.component_template", False),
    "_template": ("index_template", "indices.template", False),
    "_remote": ("cluster_remote_info", "cluster.remote_info", False),
    "_rollup": ("rollup", "rollup", True),
    "_text_structure": ("text_structure", "text_structure", True),
    "_inference": ("inference", "inference", False),
    "_connector": ("connector", "connector", False),
    "_application": ("search_application", "search_application", True),
    "_query_rules": ("query_rules", "query_rules", False),
    "_synonyms": ("synonyms", "synonyms", False),
    "_fleet": ("fleet", "fleet", True),
    "_logstash": ("logstash", "logstash", True),
    "_searchable_snapshots": ("searchable_snapshots", "searchable_snapshots", True),
    "_health_report": ("health_report", "health_report", False),
    "_dangling": ("dangling_indices", "dangling_indices", False),
    "_internal": ("internal", "internal", True),
    "_opendistro": ("plugins", "plugins", True),
    "_plugins": ("plugins", "plugins", True),
    "_cat": ("cat", "cat", True),
}

#: /_cat/{what}/{target}: the cat APIs whose last segment is an index expression
_CAT_INDEXED = frozenset({"indices", "shards", "count", "segments", "recovery"})
#: /_nodes/... actions (the optional node id comes before them)
_NODE_ACTIONS = {
    "stats": "nodes_stats", "hot_threads": "nodes_hot_threads", "hotthreads": "nodes_hot_threads",
    "usage": "nodes_usage", "reload_secure_settings": "nodes_reload_secure_settings",
    "shutdown": "nodes_shutdown", "_repositories_metering": "nodes_metering",
}
_CLUSTER_KINDS = {
    "health": "cluster_health", "settings": "cluster_settings", "state": "cluster_state",
    "stats": "cluster_stats", "reroute": "cluster_reroute", "pending_tasks": "cluster_pending_tasks",
    "allocation": "cluster_allocation_explain", "voting_config_exclusions": "cluster_voting_config",
}
#: OpenSearch /_plugins/{name} (and /_opendistro/{name}) calls that query data rather than administer
_PLUGIN_SEARCH = {"_sql": "sql", "_ppl": "sql", "_asynchronous_search": "async_search"}


def _route(method: str, segs: list[str]) -> Route:
    """(kind, resource, indices, doc_id, cluster, api) for a decoded path."""
    if not segs:
        return "info", READ, (), None, False, "info"
    head = segs[0]
    if head[0] != "_" or head == "_all":
        return _index_route(method, _split_indices(head), segs[1:])
    return _top_route(method, head, segs[1:])


def _index_route(method: str, indices: tuple[str, ...], rest: list[str]) -> Route:
    """/{index}[/{api}[/...]]."""
    if not rest:
        if method == "PUT":
            return "index_create", ADMIN, indices, None, False, "indices.create"
        if method == "DELETE":
            return "index_delete", ADMIN, indices, None, False, "indices.delete"
        if method == "HEAD":
            return "index_exists", ADMIN, indices, None, False, "indices.exists"
        if method == "GET":
            return "index_get", ADMIN, indices, None, False, "indices.get"
        return "other", ADMIN, indices, None, False, "other"
    api, more = rest[0], rest[1:]
    doc_id = more[0] if len(more) == 1 else None
    if api == "_search":
        if not more:
            return "search", SEARCH, indices, None, False, "search"
        if more == ["template"]:
            return "search_template", SEARCH, indices, None, False, "search_template"
        if more == ["point_in_time"]:  # OpenSearch
            return "open_pit", SEARCH, indices, None, False, "open_point_in_time"
    elif api == "_msearch":
        if not more:
            return "msearch", SEARCH, indices, None, False, "msearch"
        if more == ["template"]:
            return "msearch_template", SEARCH, indices, None, False, "msearch_template"
    elif api == "_doc":
        if not more and method == "POST":
            return "doc_index", WRITE, indices, None, False, "index"
        if doc_id is not None:
            if method in ("GET", "HEAD"):
                return "doc_get", READ, indices, doc_id, False, "get"
            if method in ("PUT", "POST"):
                return "doc_index", WRITE, indices, doc_id, False, "index"
            if method == "DELETE":
                return "doc_delete", WRITE, indices, doc_id, False, "delete"
    elif api == "_source" and doc_id is not None:
        return "doc_source", READ, indices, doc_id, False, "get_source"
    elif api == "_create" and doc_id is not None:
        return "doc_create", WRITE, indices, doc_id, False, "create"
    elif api == "_update" and doc_id is not None:
        return "doc_update", WRITE, indices, doc_id, False, "update"
    elif api == "_explain" and doc_id is not None:
        return "explain", SEARCH, indices, doc_id, False, "explain"
    elif api == "_validate":
        return "validate_query", SEARCH, indices, None, False, "indices.validate_query"
    elif api == "_eql" and more[:1] == ["search"]:
        return "eql", SEARCH, indices, None, False, "eql.search"
    elif api == "_termvectors":
        return "termvectors", READ, indices, doc_id, False, "termvectors"
    else:
        entry = _INDEX_APIS.get(api)
        if entry is not None:
            return entry[0], entry[1], indices, None, False, entry[2]
    return "other", ADMIN, indices, None, False, "other"


def _top_route(method: str, head: str, rest: list[str]) -> Route:
    """/_{api}/...: calls whose path names no index up front."""
    sub = rest[0] if rest else None
    if head == "_search":
        if sub is None:
            return "search", SEARCH, (), None, False, "search"
        if sub == "scroll":
            if method == "DELETE":
                return "clear_scroll", SEARCH, (), None, False, "clear_scroll"
            return "scroll", SEARCH, (), None, False, "scroll"
        if sub == "template":
            return "search_template", SEARCH, (), None, False, "search_template"
        if sub == "point_in_time":  # OpenSearch: DELETE closes, GET lists
            if method == "DELETE":
                return "close_pit", SEARCH, (), None, False, "close_point_in_time"
            return "pit_list", ADMIN, (), None, True, "get_all_pits"
    elif head == "_msearch":
        if sub is None:
            return "msearch", SEARCH, (), None, False, "msearch"
        if sub == "template":
            return "msearch_template", SEARCH, (), None, False, "msearch_template"
    elif head == "_count":
        return "count", SEARCH, (), None, False, "count"
    elif head == "_render":
        return "render_search_template", SEARCH, (), None, False, "render_search_template"
    elif head == "_async_search":
        if sub is None:
            return "async_search", SEARCH, (), None, False, "async_search.submit"
        if method == "DELETE":
            return "async_search_delete", SEARCH, (), rest[-1], False, "async_search.delete"
        api = "async_search.status" if sub == "status" else "async_search.get"
        return "async_search_get", SEARCH, (), rest[-1], False, api
    elif head == "_pit":
        return "close_pit", SEARCH, (), None, False, "close_point_in_time"
    elif head == "_sql":
        api = {"close": "sql.clear_cursor", "translate": "sql.translate", "async": "sql.get_async"}.get(sub or "", "sql.query")
        return "sql", SEARCH, (), None, False, api
    elif head == "_query":
        return "esql", SEARCH, (), None, False, "esql.async_query" if sub == "async" else "esql.query"
    elif head == "_eql":
        api = "eql.delete" if method == "DELETE" else "eql.get_status" if "status" in rest else "eql.get"
        return "eql", SEARCH, (), rest[-1] if len(rest) >= 2 else None, False, api
    elif head == "_field_caps":
        return "field_caps", SEARCH, (), None, False, "field_caps"
    elif head == "_validate":
        return "validate_query", SEARCH, (), None, False, "indices.validate_query"
    elif head == "_mget":
        return "mget", READ, (), None, False, "mget"
    elif head == "_mtermvectors":
        return "mtermvectors", READ, (), None, False, "mtermvectors"
    elif head == "_bulk":
        return "bulk", WRITE, (), None, False, "bulk"
    elif head in ("_reindex", "_delete_by_query", "_update_by_query"):
        if sub is not None:  # /_reindex/{task_id}/_rethrottle
            return "rethrottle", ADMIN, (), None, True, head[1:] + ".rethrottle"
        if head == "_reindex":
            return "reindex", ADMIN, (), None, False, "reindex"
    elif head == "_cluster":
        kind = _CLUSTER_KINDS.get(sub or "", "cluster")
        indices: tuple[str, ...] = ()
        if sub == "health" and len(rest) == 2:
            indices = _split_indices(rest[1])
        elif sub == "state" and len(rest) == 3:
            indices = _split_indices(rest[2])
        api = "cluster." + (sub.lstrip("_") if sub else "info")
        return kind, ADMIN, indices, None, True, api
    elif head == "_nodes":
        for seg in rest:
            if seg in _NODE_ACTIONS:
                kind = _NODE_ACTIONS[seg]
                return kind, ADMIN, (), None, True, "nodes." + kind[len("nodes_"):]
        return "nodes_info", ADMIN, (), None, True, "nodes.info"
    elif head == "_cat":
        indices = _split_indices(rest[1]) if sub in _CAT_INDEXED and len(rest) == 2 else ()
        return "cat", ADMIN, indices, None, True, "cat." + sub if sub else "cat"
    elif head in ("_mapping", "_mappings"):
        return "mapping", ADMIN, (), None, False, "indices.mapping"
    elif head == "_settings":
        return "settings", ADMIN, (), None, False, "indices.settings"
    elif head in ("_alias", "_aliases"):
        return "aliases", ADMIN, (), None, False, "indices.aliases"
    elif head == "_data_stream":
        if sub is None or sub.startswith("_"):
            return "data_stream", ADMIN, (), None, False, "indices.data_stream"
        return "data_stream", ADMIN, _split_indices(sub), None, False, "indices.data_stream"
    elif head == "_resolve":
        names = _split_indices(rest[1]) if len(rest) >= 2 else ()
        return "resolve_index", ADMIN, names, None, False, "indices.resolve_index"
    elif head == "_analyze":
        return "analyze", ADMIN, (), None, True, "indices.analyze"
    family = _CLUSTER_FAMILIES.get(head)
    if family is not None:
        kind, api, has_sub = family
        if head in ("_plugins", "_opendistro") and sub in _PLUGIN_SEARCH:
            return _PLUGIN_SEARCH[sub], SEARCH, (), None, False, "plugins." + sub.lstrip("_")
        if head == "_plugins" and sub == "_security" or head == "_opendistro" and sub == "_security":
            kind = "security"
        if has_sub and sub:
            api = f"{api}.{sub.lstrip('_')}"
        return kind, ADMIN, (), None, True, api
    entry = _INDEX_APIS.get(head)
    if entry is not None:  # /_refresh, /_stats, /_flush ...: the same API over every index
        return entry[0], entry[1], (), None, False, entry[2]
    return "other", ADMIN, (), None, True, "other." + head.lstrip("_")


# ---- the body ---------------------------------------------------------------------------------

#: kinds whose JSON body the cost model or the grants read
_JSON_KINDS = frozenset({
    "search", "count", "scroll", "clear_scroll", "search_template", "async_search", "sql", "esql", "eql",
    "knn_search", "field_caps", "explain", "validate_query", "terms_enum", "rank_eval", "search_mvt",
    "rollup_search", "graph_explore", "open_pit", "render_search_template",
    "delete_by_query", "update_by_query", "reindex", "mget", "mtermvectors",
    # the grants read these: alias names, lookup runtime fields, the ids of a point in time
    "index_create", "aliases", "resize", "rollover", "mapping", "close_pit",
})
#: kinds whose body is newline-delimited JSON
_NDJSON_KINDS = frozenset({"msearch", "msearch_template", "bulk"})
#: kinds that take a body in any format (ES's own handlers accept more than JSON there)
_ANY_CONTENT = frozenset({"other", "text_structure", "ml", "plugins"})
#: media types ES 8 reads as JSON (XContentType.JSON's header values)
_JSON_TYPES = frozenset({
    "application/json", "application/x-ndjson", "application/*",
    "application/vnd.elasticsearch+json", "application/vnd.elasticsearch+x-ndjson",
})
#: media types ES reads but this proxy does not: fine to forward, not to cost
_OTHER_XCONTENT = frozenset({
    "application/smile", "application/cbor", "application/yaml",
    "application/vnd.elasticsearch+smile", "application/vnd.elasticsearch+cbor", "application/vnd.elasticsearch+yaml",
})
_BULK_OPS = frozenset({"index", "create", "update", "delete"})
#: inflate in steps of at most this many bytes, so a bomb never gets far past the limit and the loop is
#: never held for long (64 KiB of a gzip bomb: ~45 µs here)
_INFLATE_STEP = 64 * 1024


def decode_body(
    call: EsCall, raw: bytes, content_type: str | None, content_encoding: str | None, limits: HardLimits,
    inflated: bytes | None = None,
) -> Body | None:
    """The body of `call`, inflated (bounded by limits.max_inflated_bytes) and parsed where it must be;
    `inflated`, when given, is `raw` already inflated (see inflate_steps).

    None for an empty body. Refusals: 406 for a Content-Type ES would not accept, 413 when the
    inflated size passes the limit, 400 for corrupt compression, malformed JSON/NDJSON where it
    must be parsed, or a document nested deeper than limits.max_json_depth or longer than
    limits.max_ndjson_lines.
    """
    if not raw:
        source = call.params.get("source") if call.params else None
        if source and (call.kind in _JSON_KINDS or call.kind in _NDJSON_KINDS):
            # GET ...?source=<json>&source_content_type=application/json: the body rides in the URL
            data = source.encode("utf-8", "surrogatepass")
            return _parse(call, b"", data, limits)
        return None
    must_parse = call.kind in _JSON_KINDS or call.kind in _NDJSON_KINDS
    _check_content_type(call, content_type, must_parse)
    if inflated is not None:
        data = inflated
    else:
        data = _inflate(raw, content_encoding, limits, must_parse) if content_encoding else raw
    if not must_parse or (content_type is not None and _media_type(content_type) in _OTHER_XCONTENT):
        return Body(raw, data, None, None, 0)
    return _parse(call, raw, data, limits)


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _check_content_type(call: EsCall, content_type: str | None, must_parse: bool) -> None:
    """Refuse (406) what ES refuses; refuse bodies in formats the proxy cannot cost."""
    if call.kind in _ANY_CONTENT:
        return
    if content_type is None:
        raise NotAcceptable("Content-Type header [] is not supported")  # as ES and OpenSearch word it
    media = _media_type(content_type)
    if media in _JSON_TYPES:
        return
    if media in _OTHER_XCONTENT:
        if must_parse:
            raise NotAcceptable(
                f"Content-Type header [{_clip(content_type)}] is not supported by this proxy for [{call.api}]: "
                "it reads the body to cost it and understands JSON only", flat=False,
            )
        return
    raise NotAcceptable(f"Content-Type header [{_clip(content_type)}] is not supported")


#: a compressed body may always inflate to this many bytes, whatever limits.max_inflate_ratio says
_INFLATE_FLOOR = 1 << 20


def inflate_steps(call: EsCall, raw: bytes, content_type: str | None, content_encoding: str, limits: HardLimits):
    """A generator that inflates `raw` as decode_body would (its 406, 413 and 400 included), yielding after
    each _INFLATE_STEP of output so that its caller can let others run; its return value is the inflated bytes
    (pass them to decode_body as `inflated`)."""
    must_parse = call.kind in _JSON_KINDS or call.kind in _NDJSON_KINDS
    _check_content_type(call, content_type, must_parse)
    return (yield from _inflate_gen(raw, content_encoding, limits, must_parse))


def _inflate(raw: bytes, content_encoding: str, limits: HardLimits, must_parse: bool) -> bytes:
    """_inflate_gen at one go."""
    steps = _inflate_gen(raw, content_encoding, limits, must_parse)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _inflate_gen(raw: bytes, content_encoding: str, limits: HardLimits, must_parse: bool):
    """Undo Content-Encoding (gzip / deflate / identity, applied right to left), never past
    limits.max_inflated_bytes, nor past limits.max_inflate_ratio times the body's size (1 MiB at least);
    yields between steps, returns the bytes."""
    limit = limits.max_inflated_bytes
    by_ratio = max(_INFLATE_FLOOR, int(len(raw) * limits.max_inflate_ratio))
    ratio = by_ratio < limit
    if ratio:
        limit = by_ratio
    data = raw
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",")]):
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip"):
            data = yield from _inflate_stream(data, 31, limit, "gzip", ratio)
        elif coding in ("deflate", "x-deflate"):
            # RFC 9110 deflate is zlib-wrapped, but many clients send raw deflate: the header tells them apart.
            wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            data = yield from _inflate_stream(data, 15 if wrapped else -15, limit, "deflate", ratio)
        elif must_parse:
            raise BadRequest(f"Content-Encoding [{_clip(coding)}] is not supported: send gzip, deflate or identity")
        else:
            return raw  # nothing to read here: ES gets the bytes as they came and decides
    return data


def _inflate_stream(data: bytes, wbits: int, limit: int, name: str, ratio: bool = False):
    out: list[bytes] = []
    total = 0
    pending = data
    try:
        while pending:  # a gzip body may hold several members back to back
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof:
                chunk = inflater.decompress(pending, min(_INFLATE_STEP, limit - total + 1))
                pending = inflater.unconsumed_tail
                if chunk:
                    total += len(chunk)
                    if total > limit:
                        refusal = BodyTooLarge(
                            f"the {name} request body inflates to more than {limit} bytes "
                            + ("(limits.max_inflate_ratio times its size)" if ratio else "(limits.max_inflated_bytes)"))
                        refusal.inflated = total  # type: ignore[attr-defined]  # the work done, for the tenant's bill
                        raise refusal
                    out.append(chunk)
                    yield
                elif not pending:
                    break
            if not inflater.eof:
                raise BadRequest(f"the {name} request body is truncated")
            pending = inflater.unused_data
            if pending and (wbits != 31 or pending[:2] != b"\x1f\x8b"):
                raise BadRequest(f"the {name} request body has trailing bytes after the compressed stream")
    except zlib.error as exc:
        raise BadRequest(f"the {name} request body is corrupt: {exc}") from None
    return b"".join(out)


def _parse(call: EsCall, raw: bytes, data: bytes, limits: HardLimits) -> Body:
    if call.kind in _NDJSON_KINDS:
        if call.kind == "bulk":
            return _parse_bulk(call, raw, data, limits)
        return _parse_msearch(call, raw, data, limits)
    if not data.strip():
        return Body(raw, data, None, None, 0)
    what = f"the [{call.api}] request body"
    doc = _loads(data, what)
    _check_depth(doc, data, limits.max_json_depth, what)
    return Body(raw, data, doc, None, 0)


def _loads(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None


def _check_depth(doc: Any, data: bytes, limit: int, what: str) -> None:
    """Refuse (400) a document nested deeper than `limit` (the top-level object is depth 1)."""
    if data.count(b"{") + data.count(b"[") <= limit:
        return  # cannot be deeper than its number of brackets: skip the walk
    stack = [(doc, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            raise BadRequest(f"{what} nests deeper than {limit} levels (limits.max_json_depth)")
        children = node.values() if type(node) is dict else node
        for child in children:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))


def _split_lines(call: EsCall, data: bytes, limit: int) -> list[bytes]:
    lines = data.split(b"\n")
    if len(lines) > limit:
        count = sum(1 for line in lines if line and not line.isspace())
        if count > limit:
            raise IllegalArgument(
                f"the [{call.api}] body has {count} lines, more than the {limit} allowed (limits.max_ndjson_lines)"
            )
    return lines


def _parse_msearch(call: EsCall, raw: bytes, data: bytes, limits: HardLimits) -> Body:
    """Every header and body line, in ES's positions: a blank line is an empty header or body."""
    lines = _split_lines(call, data, limits.max_ndjson_lines)
    first = 1 if lines and lines[0] == b"" else 0  # ES skips (deprecated) one leading empty line
    last = len(lines)
    while last > first and (not lines[last - 1] or lines[last - 1].isspace()):
        last -= 1  # blank lines after the final search are no search
    decoded: list[Any] = []
    count = 0
    for number in range(first, last):
        line = lines[number]
        if not line or line.isspace():
            decoded.append({})
            continue
        count += 1
        what = f"line {number + 1} of the [{call.api}] body"
        doc = _loads(line, what)
        _check_depth(doc, line, limits.max_json_depth, what)
        if (number - first) % 2 == 0 and (line.count(b"index") > 1 or b"\\" in line):
            check_unique_keys(line)  # a header's index is what the grant reads: no second, hidden one
        decoded.append(doc)
    return Body(raw, data, None, tuple(decoded), count)


def _parse_bulk(call: EsCall, raw: bytes, data: bytes, limits: HardLimits) -> Body:
    """The action/metadata lines only; the document source line after index/create/update is skipped."""
    lines = _split_lines(call, data, limits.max_ndjson_lines)
    actions: list[Any] = []
    count = 0
    number, total = 0, len(lines)
    while number < total:
        line = lines[number]
        number += 1
        if not line or line.isspace():
            continue  # ES skips blank lines where an action is expected
        count += 1
        what = f"line {number} of the [{call.api}] body"
        action = _loads(line, what)
        if type(action) is not dict or len(action) != 1:
            raise BadRequest(f"Malformed action/metadata line [{number}], expected an object with one of "
                             "[create], [delete], [index] or [update]")
        op, meta = next(iter(action.items()))
        if op not in _BULK_OPS or type(meta) is not dict:
            raise BadRequest(f"Malformed action/metadata line [{number}], expected field [create], [delete], "
                             f"[index] or [update] holding an object, but found [{_clip(op)}]")
        _check_depth(action, line, limits.max_json_depth, what)
        if line.count(b"index") > 2 or b"\\" in line:
            check_unique_keys(line)  # the action's _index is what the grant reads: no second, hidden one
        actions.append(action)
        if op != "delete" and number < total:
            source = lines[number]  # the document: forwarded as is, never decoded
            number += 1
            if source and not source.isspace():
                count += 1
    return Body(raw, data, None, tuple(actions), count)


# ---- names inside bodies ----------------------------------------------------------------------


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen = dict(pairs)
    if len(seen) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for k in keys if keys.count(k) > 1)
        raise BadRequest(f"duplicate key [{_clip(dup)}] in a JSON object")
    return seen


def check_unique_keys(data: bytes, ndjson: bool = False) -> None:
    """Refuse (400) JSON with a repeated object key.

    Where a body names indices, the proxy and the cluster must read the same name; ES and
    OpenSearch refuse duplicate keys themselves, and so does the proxy rather than guess which wins.
    Slow (the stdlib parser): call it only on bodies that name indices.
    """
    import json

    parts = data.split(b"\n") if ndjson else (data,)
    try:
        for part in parts:
            if part.strip():
                json.loads(part, object_pairs_hook=_unique_pairs)
    except (ValueError, RecursionError):
        raise BadRequest("a JSON body that names indices could not be read strictly") from None
