"""Guardrails: degrade a search instead of refusing it (issue 21, item 6).

A plan's `guardrails` bound what one search may ask of the cluster: how many hits (`max_size`), how
deep it pages (`max_from`), how many buckets a terms aggregation returns (`max_terms_agg_size`), how
long it may run (`timeout`, injected into the search) and how many documents a shard collects
(`terminate_after`, injected), and whether it may use leading wildcards, scripts or regular
expressions. Each guardrail's mode is `cap` (rewrite the request within bounds: every search in an
`_msearch`, the body and the query-string parameters alike) or `refuse` (a 400 naming the guardrail).

Where there is no lesser version of a request, `cap` refuses too: a script query or aggregation (only
`script_fields` and script sorts can be dropped) and a regular expression. A leading wildcard is capped
by dropping the leading wildcard characters (`*error` → `error`, a prefix no longer: fewer matches, far
less work).

Pure: `guard` takes the parsed request and returns what to change (`Outcome`); it changes nothing
it was given. flow.py applies the outcome (or, in shadow mode, only counts it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote_plus

import orjson

from .errors import IllegalArgument

#: the call kinds whose bodies are searches the guardrails read
GUARDED = frozenset({"search", "msearch", "async_search"})
#: the aggregation types whose `size` max_terms_agg_size bounds
_TERMS_AGGS = ("terms", "significant_terms", "multi_terms")
#: a leading wildcard in query_string syntax: a term that starts with * or ? (after start, space, ( or field:)
_QS_LEADING = re.compile(r"(^|[\s(:+\-!])[*?]+(?=[^\s*?)])")
#: a regular expression in query_string syntax: /.../
_QS_REGEXP = re.compile(r"(^|[\s(:])/[^/]*/")
_TIME = re.compile(r"\s*(\d+)\s*(nanos|micros|ms|s|m|h|d)\s*\Z")
_UNIT_MS = {"nanos": 1e-6, "micros": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3, "d": 86400e3}


class GuardrailRefused(IllegalArgument):
    """A search a guardrail in `refuse` mode (or one that cannot be capped) turns away."""

    label = "guardrail"

    def __init__(self, reason: str, guardrail: str):
        super().__init__(reason)
        self.guardrail = guardrail


@dataclass
class Outcome:
    """What the guardrails did to one request: `changes` ("size 10000->500"), and the rewritten
    target and body (None: unchanged). `hits` names each guardrail that fired (for the counters)."""

    changes: list[str] = field(default_factory=list)
    hits: list[str] = field(default_factory=list)
    target: str | None = None
    data: bytes | None = None
    json: Any = None
    lines: tuple | None = None

    def header(self) -> bytes:
        """The X-Sluicegate-Degraded header line (empty when nothing changed)."""
        if not self.changes:
            return b""
        said = ", ".join(dict.fromkeys(_printable(change) for change in self.changes if change))
        return b"X-Sluicegate-Degraded: %s\r\n" % said.encode("utf-8")


def _printable(change: str) -> str:
    """One change as a header may carry it: no control characters (a query text could hold a CR LF), at
    most 120 characters."""
    text = _CONTROL.sub(" ", change)
    return text if len(text) <= 120 else text[:117] + "..."


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def time_ms(value: Any) -> float | None:
    """An ES time value ("30s", "500ms") in ms; None if it is not one."""
    if not isinstance(value, str):
        return None
    match = _TIME.match(value.lower())
    return int(match.group(1)) * _UNIT_MS[match.group(2)] if match else None


class _Guard:
    """One request's pass over its searches: records changes, raises on a refusal."""

    def __init__(self, rails, tenant: str):
        self.rails = rails
        self.tenant = tenant
        self.out = Outcome()

    def mode(self, name: str) -> str:
        return self.rails.modes.get(name, self.rails.mode)

    def hit(self, name: str, change: str, refusal: str, cappable: bool = True) -> bool:
        """A guardrail fired: True to cap (the caller rewrites), or raise to refuse."""
        if self.mode(name) == "refuse" or not cappable:
            raise GuardrailRefused(f"tenant '{self.tenant}': guardrail [{name}]: {refusal}", name)
        self.out.changes.append(change)
        self.out.hits.append(name)
        return True

    # ---- one search body (a dict, rewritten in place: the caller hands a copy) ----
    def search(self, body: dict, params: dict) -> None:
        r = self.rails
        for key, limit, name in (("size", r.max_size, "max_size"), ("from", r.max_from, "max_from")):
            if limit is None:
                continue
            value = body.get(key)
            if isinstance(value, int) and value > limit:
                self.hit(name, f"{key} {value}->{limit}", f"{key} {value} is over the plan's limit of {limit}")
                body[key] = limit
        if r.max_terms_agg_size is not None:
            for aggs_key in ("aggs", "aggregations"):
                if isinstance(body.get(aggs_key), dict):
                    self.aggs(body[aggs_key])
        if r.timeout is not None and "timeout" not in params:
            self.limit_time(body, "timeout", r.timeout, "timeout")
        if r.terminate_after is not None and "terminate_after" not in params:
            value = body.get("terminate_after")
            if not isinstance(value, int) or value <= 0 or value > r.terminate_after:
                was = "" if value is None else str(value)
                self.hit("terminate_after", f"terminate_after {was}->{r.terminate_after}",
                         f"terminate_after {was or 'unset'} is over the plan's limit of {r.terminate_after}")
                body["terminate_after"] = r.terminate_after
        if not r.allow_scripts:
            self.scripts(body)
        for key in ("query", "post_filter", "knn", "rescore", "suggest", "aggs", "aggregations"):
            if key in body:
                body[key] = self.query(body[key])

    def limit_time(self, holder: dict, key: str, limit: str, name: str, said: str = " ") -> None:
        value = holder.get(key)
        ms, limit_ms = time_ms(value), time_ms(limit)
        if value is None or ms is None or ms <= 0 or (limit_ms is not None and ms > limit_ms):
            was = "" if value is None else str(value)
            self.hit(name, f"{key}{said}{was}->{limit}", f"{key} {was or 'unset'} is over the plan's limit of {limit}")
            holder[key] = limit

    def aggs(self, aggs: dict) -> None:
        limit = self.rails.max_terms_agg_size
        for agg in aggs.values():
            if not isinstance(agg, dict):
                continue
            for kind in _TERMS_AGGS:
                spec = agg.get(kind)
                if isinstance(spec, dict):
                    size = spec.get("size")
                    if isinstance(size, int) and size > limit:
                        self.hit("max_terms_agg_size", f"terms size {size}->{limit}",
                                 f"terms aggregation size {size} is over the plan's limit of {limit}")
                        spec["size"] = limit
                        shard = spec.get("shard_size")
                        if isinstance(shard, int) and shard > limit:
                            spec["shard_size"] = limit
            for sub in ("aggs", "aggregations"):
                if isinstance(agg.get(sub), dict):
                    self.aggs(agg[sub])

    def scripts(self, body: dict) -> None:
        """Drop script_fields and script sorts (cap), or refuse; scripts elsewhere are found by `query`."""
        if body.get("script_fields"):
            self.hit("allow_scripts", "script_fields dropped", "script_fields are not allowed")
            del body["script_fields"]
        sort = body.get("sort")
        if isinstance(sort, list) and any(isinstance(s, dict) and "_script" in s for s in sort):
            self.hit("allow_scripts", "script sort dropped", "script sorts are not allowed")
            kept = [s for s in sort if not (isinstance(s, dict) and "_script" in s)]
            if kept:
                body["sort"] = kept
            else:
                del body["sort"]
        elif isinstance(sort, dict) and "_script" in sort:
            self.hit("allow_scripts", "script sort dropped", "script sorts are not allowed")
            del body["sort"]
        if isinstance(body.get("runtime_mappings"), dict) and body["runtime_mappings"]:
            self.hit("allow_scripts", "", "runtime_mappings (scripts) are not allowed", cappable=False)

    def query(self, node: Any) -> Any:
        """Walk a query (or aggregation) tree; the node, rewritten where a guardrail caps it."""
        r = self.rails
        if isinstance(node, list):
            return [self.query(item) for item in node]
        if not isinstance(node, dict):
            return node
        for key, value in list(node.items()):
            if key in ("script", "script_score", "scripted_metric", "bucket_script", "bucket_selector") \
                    and not r.allow_scripts and value is not None:
                self.hit("allow_scripts", "", f"scripts ([{key}]) are not allowed", cappable=False)
            elif key == "regexp" and not r.allow_regexp:
                self.hit("allow_regexp", "", "regexp queries are not allowed", cappable=False)
            elif key == "wildcard" and not r.allow_leading_wildcards and isinstance(value, dict):
                node[key] = {f: self.wildcard(v) for f, v in value.items()}
                continue
            elif key in ("query_string", "simple_query_string") and isinstance(value, dict) \
                    and isinstance(value.get("query"), str):
                value["query"] = self.query_text(value["query"], simple=key == "simple_query_string")
                continue
            node[key] = self.query(value)
        return node

    def wildcard(self, spec: Any) -> Any:
        """A wildcard query's field spec (`"*x"` or `{"value": "*x", ...}`), its leading wildcards capped."""
        pattern_key = None
        if isinstance(spec, dict):
            pattern_key = "value" if "value" in spec else "wildcard" if "wildcard" in spec else None
            pattern = spec.get(pattern_key) if pattern_key else None
        else:
            pattern = spec
        if not isinstance(pattern, str) or not pattern or pattern[0] not in "*?":
            return spec
        stripped = pattern.lstrip("*?")
        self.hit("allow_leading_wildcards", f"wildcard {pattern}->{stripped}",
                 f"the wildcard [{pattern}] starts with a wildcard", cappable=bool(stripped))
        if isinstance(spec, dict):
            return {**spec, pattern_key: stripped}
        return stripped

    def query_text(self, text: str, simple: bool = False) -> str:
        """A query_string (or `q=`) text: leading wildcards capped, regular expressions refused."""
        r = self.rails
        if not r.allow_regexp and not simple and _QS_REGEXP.search(text):
            self.hit("allow_regexp", "", "regular expressions in query_string are not allowed", cappable=False)
        if not r.allow_leading_wildcards and _QS_LEADING.search(text):
            capped = _QS_LEADING.sub(lambda m: m.group(1), text)
            self.hit("allow_leading_wildcards", f"query {text}->{capped}",
                     f"the query [{text}] has a term that starts with a wildcard", cappable=bool(capped.strip()))
            return capped
        return text

    # ---- the query string ----
    def params(self, target: str, params: dict) -> str | None:
        """The target with its query-string parameters capped (None: unchanged)."""
        r = self.rails
        changed: dict[str, str] = {}
        for key, limit, name in (("size", r.max_size, "max_size"), ("from", r.max_from, "max_from"),
                                 ("terminate_after", r.terminate_after, "terminate_after")):
            value = params.get(key)
            if limit is not None and value is not None and value.lstrip("+").isdigit() and int(value) > limit:
                self.hit(name, f"{key}={value}->{limit}", f"{key}={value} is over the plan's limit of {limit}")
                changed[key] = str(limit)
        if r.timeout is not None and "timeout" in params:
            holder = {"timeout": params["timeout"]}
            self.limit_time(holder, "timeout", r.timeout, "timeout", "=")
            if holder["timeout"] != params["timeout"]:
                changed["timeout"] = holder["timeout"]
        if "q" in params:
            capped = self.query_text(params["q"])
            if capped != params["q"]:
                changed["q"] = capped
        return _with_params(target, changed) if changed else None


def _with_params(target: str, changed: dict[str, str]) -> str:
    """`target` with the values of the query-string parameters in `changed` replaced."""
    path, _, query = target.partition("?")
    parts = []
    for part in query.split("&"):
        name = unquote_plus(part.partition("=")[0])
        parts.append(f"{quote(name)}={quote(changed[name], safe='')}" if name in changed else part)
    return path + "?" + "&".join(parts)


def guard(rails, tenant: str, kind: str, target: str, params: dict, json: Any, lines: tuple | None) -> Outcome | None:
    """Apply `rails` (a plan's GuardrailsConfig) to one search-class request of `tenant`.

    `kind` is the call's kind (GUARDED ones only), `params` its query-string parameters, `json` its
    decoded body (a search) or `lines` (an _msearch's header and body lines). Returns None when no
    guardrail fired, else the Outcome: the rewritten target and body where something was capped.
    Raises GuardrailRefused for a guardrail in refuse mode (or one that cannot be capped).
    """
    g = _Guard(rails, tenant)
    new_target = g.params(target, params)
    if kind == "msearch":
        if lines:
            new = [dict(line) if isinstance(line, dict) else line for line in lines]
            for i in range(1, len(new), 2):  # header, body, header, body...
                if isinstance(new[i], dict):
                    new[i] = _copy(new[i])
                    g.search(new[i], {})
            if g.out.changes:
                g.out.lines = tuple(new)
                g.out.data = b"".join(orjson.dumps(line) + b"\n" for line in new)
    else:
        body = _copy(json) if isinstance(json, dict) else {}
        g.search(body, params)
        if g.out.changes and (json is not None or body):
            if body != json:
                g.out.json = body
                g.out.data = orjson.dumps(body)
    if new_target is not None:
        g.out.target = new_target
    return g.out if g.out.changes else None


def _copy(doc: Any) -> Any:
    """A deep copy of a decoded JSON document (dicts, lists and scalars only)."""
    return orjson.loads(orjson.dumps(doc))
