"""A request as a slow log would show it, without the data: literals become `?`.

`example(method, target, call, body)` renders one line such as

    POST /acme-logs/_search?q=? {"query":{"wildcard":{"message":"*?"}},"size":10}

for the cockpit's costliest shapes (NDJSON bodies: one line per line, the first few). What stays is
what makes a query expensive and is not the tenant's data: field and index names, clause and
aggregation types, the shape of wildcard patterns (`*?` is a leading wildcard), and the numbers
that size the work (`size`, `from`, `k`, intervals...).
Every other string, number and boolean becomes `?`; a document id in the path too. Long arrays,
deep nesting and long bodies are cut, so the work is bounded whatever the body: it runs once per
new shape, not per request.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .esapi import Body, EsCall

#: keys whose scalar value names a field or an index, or sizes the work, rather than carrying data (kept as sent)
SHAPE_KEYS = frozenset({
    "field", "fields", "default_field", "path", "index", "_index", "_source", "sort", "analyzer", "lang",
    "size", "from", "k", "num_candidates", "shard_size", "precision_threshold", "terminate_after",
    "min_doc_count", "interval", "fixed_interval", "calendar_interval", "track_total_hits", "max_expansions",
    "fuzziness", "prefix_length", "slop", "max_determinized_states", "analyze_wildcard", "allow_leading_wildcard",
    "max_concurrent_searches", "max_concurrent_shard_requests", "batched_reduce_size", "pre_filter_shard_size",
    "scroll", "keep_alive", "timeout", "search_type", "request_cache", "explain", "profile", "version",
    "seq_no_primary_term", "track_scores", "rest_total_hits_as_int", "typed_keys", "ignore_unavailable",
    "allow_no_indices", "expand_wildcards", "wait_for_completion", "refresh", "filter_path", "format", "pretty",
    "default_operator", "operator", "score_mode", "boost_mode", "mode", "order", "missing_bucket", "type",
})
#: at most this many characters in an example; longer ones end with "…"
MAX_CHARS = 1000
#: at most this many JSON values visited per example (bounds the work for a huge body)
MAX_NODES = 2000
_MAX_DEPTH = 12
_MAX_ITEMS = 5  # array items and NDJSON lines shown; the rest are counted
_MAX_KEY = 64


class _Budget:
    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes = MAX_NODES


def example(method: str, target: str, call: EsCall | None, body: Body | None, max_chars: int = MAX_CHARS) -> str:
    """One redacted line for this request: method, path (document id redacted), query parameters with
    their values redacted, and the body with its literals redacted (at most `max_chars` characters)."""
    path, _, query = target.partition("?")
    if call is not None and call.doc_id:
        path = _redact_doc_id(path, call.doc_id)
    line = f"{method} {path}"
    if query:
        line += "?" + "&".join(_param(part) for part in query.split("&") if part)
    if body is not None and len(line) < max_chars:
        line += " " + _body(body, _Budget())
    return _clip(line, max_chars)


def redact_json(value: Any) -> str:
    """A decoded JSON value rendered compactly with its literals redacted (see the module doc)."""
    return _value(value, None, 0, _Budget())


def _redact_doc_id(path: str, doc_id: str) -> str:
    segments = path.split("/")
    for i in range(len(segments) - 1, -1, -1):
        if segments[i] and unquote(segments[i]) == doc_id:
            segments[i] = "?"
            break
    return "/".join(segments)


def _param(part: str) -> str:
    name, eq, value = part.partition("=")
    name = _clip(name, _MAX_KEY)
    if not eq:
        return name
    return f"{name}={_clip(value, 32)}" if name in SHAPE_KEYS else f"{name}=?"


def _body(body: Body, budget: _Budget) -> str:
    if body.lines is not None:  # NDJSON: _msearch, _bulk
        shown = [_value(line, None, 0, budget) for line in body.lines[:_MAX_ITEMS]]
        rest = len(body.lines) - len(shown)
        return "\n".join(shown) + (f"\n… +{rest} lines" if rest > 0 else "")
    if body.json is not None:
        return _value(body.json, None, 0, budget)
    return f"<{len(body.data)} bytes>" if body.data else ""


def _value(value: Any, key: str | None, depth: int, budget: _Budget) -> str:
    budget.nodes -= 1
    if budget.nodes < 0:
        return "…"
    kind = type(value)
    if kind is dict:
        if depth >= _MAX_DEPTH:
            return "{…}"
        items = []
        for k, v in value.items():
            if budget.nodes < 0:
                items.append("…")
                break
            items.append(f"{_key(k)}:{_value(v, k, depth + 1, budget)}")
        return "{" + ",".join(items) + "}"
    if kind is list:
        if depth >= _MAX_DEPTH:
            return "[…]"
        shown = [_value(v, key, depth + 1, budget) for v in value[:_MAX_ITEMS]]
        rest = len(value) - len(shown)
        return "[" + ",".join(shown) + (f",…+{rest}" if rest > 0 else "") + "]"
    if key in SHAPE_KEYS and (kind is int or kind is float or kind is bool or kind is str and len(value) <= 32):
        return _literal(value)
    if kind is str:
        return _pattern(value)
    return "?"


def _key(key: str) -> str:
    return _literal(_clip(key, _MAX_KEY))


def _literal(value: Any) -> str:
    if type(value) is str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _pattern(text: str) -> str:
    """A string as `?`, keeping where its `*` wildcards sit ("*rror" -> "*?", "ab*c*" -> "?*?*")."""
    if "*" not in text:
        return "?"
    out = []
    for i, piece in enumerate(text[:256].split("*")):
        if i:
            out.append("*")
        if piece:
            out.append("?")
    return '"' + "".join(out) + '"'


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
