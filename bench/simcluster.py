#!/usr/bin/env python3
"""A simulated Elasticsearch cluster: the stand-in for a real cluster in every Sluicegate test,
the demo and the benchmarks.

N nodes run in one process (uvloop), each an aiohttp low-level server on its own port. They
share one in-memory catalog of indices and documents and answer the Elasticsearch REST API
closely enough that elasticsearch-py 9 and opensearch-py work against them unchanged.

What makes it a *cluster* and not a mock is the cost side:

* every node has a `search` and a `write` thread pool (`threads` slots, a bounded queue);
  a task that finds all threads busy and the queue full is rejected with HTTP 429
  `es_rejected_execution_exception`, exactly as ES does;
* every index has `number_of_shards` shards and a copy of every shard on every live node
  (like `auto_expand_replicas: 0-all`); a search fans out one shard task per shard, each on
  the live node whose search pool has the most free capacity (ties round-robin), so losing
  one node of three removes a third of the search capacity;
* each shard task holds its thread for a service time computed from the request's real
  features and the documents it touches (see "Service-time model"), spent *awaiting*, so the
  simulation models a remote cluster without eating the CPU of the proxy running beside it;
* `took` is honest wall time from receipt to response, queue wait included.

`--virtual-docs N` (or index setting `index.sim.virtual_docs`) adds N notional documents to
each index: they cost service time as if they were there, and index statistics (`_stats`,
`_cat/indices`) count them, as a real cluster's would; searches never return or count them.
The model never looks at `proxy/`: the proxy has to learn these costs from the outside.

Run:  python bench/simcluster.py --nodes 3 --port 0   (prints one JSON line with the node URLs)
Use:  cluster = SimCluster(nodes=3); await cluster.start(); ...; await cluster.stop()
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import fnmatch
import functools
import hashlib
import math
import os
import random
import re
import signal
import sys
import time
import zlib
from collections import deque
from typing import Any, Callable
from urllib.parse import unquote

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

# ============================================================================================
# Identity and ES-shaped errors
# ============================================================================================

CLUSTER_NAME = "sluicegate-sim"
CLUSTER_UUID = "c1uSt3rSimU1dXbG9jYWw"
ES_VERSION = {
    "number": "9.1.0",
    "build_flavor": "default",
    "build_type": "tar",
    "build_hash": "5e94b71d0e36e4c4a3ee0a1e5e2ab3bfc3c2e0b9",
    "build_date": "2025-07-24T22:05:04.526302670Z",
    "build_snapshot": False,
    "lucene_version": "10.2.2",
    "minimum_wire_compatibility_version": "8.19.0",
    "minimum_index_compatibility_version": "8.0.0",
}
MAX_BODY_BYTES = 100 * 1024 * 1024  # ES's http.max_content_length
MAX_RESULT_WINDOW = 10_000  # index.max_result_window
MAX_SCROLL_CONTEXTS = 500  # search.max_open_scroll_context
DEFAULT_TRACK_TOTAL_HITS = 10_000


class EsError(Exception):
    """An error that becomes an Elasticsearch-shaped JSON response."""

    def __init__(self, status: int, kind: str, reason: str, root: dict | None = None, flat: bool = False,
                 **extra: Any):
        super().__init__(reason)
        self.status = status
        self.kind = kind
        self.reason = reason
        self.extra = extra
        self.root = root  # a different root cause (ES wraps e.g. shard failures)
        self.flat = flat  # routing errors: ES answers {"error": "<message>", "status": N}

    def cause(self) -> dict:
        """The `{type, reason, ...}` object ES puts in root_cause and in bulk items."""
        return {"type": self.kind, "reason": self.reason, **self.extra}

    def body(self) -> dict:
        if self.flat:
            return {"error": self.reason, "status": self.status}
        root = self.root or self.cause()
        return {"error": {"root_cause": [root], **self.cause()}, "status": self.status}


def index_not_found(name: str) -> EsError:
    return EsError(404, "index_not_found_exception", f"no such index [{name}]", index_uuid="_na_",
                   **{"resource.type": "index_or_alias", "resource.id": name}, index=name)


def parse_error(exc: Exception | str) -> EsError:
    return EsError(400, "x_content_parse_exception", f"[1:1] {exc}")


def illegal_argument(reason: str) -> EsError:
    return EsError(400, "illegal_argument_exception", reason)


def rejected_execution(pool_name: str, queue_capacity: int, threads: int, active: int, queued: int,
                       completed: int) -> EsError:
    """ES's message when a fixed thread pool's queue is full (EsAbortPolicy)."""
    reason = (
        f"rejected execution of TimedRunnable{{original=ActionRunnable#wrap[shard task]}} on "
        f"EsThreadPoolExecutor[name = {pool_name}, queue capacity = {queue_capacity}, "
        f"task execution EWMA = 1ms, total task execution time = 1s, "
        f"org.elasticsearch.common.util.concurrent.EsThreadPoolExecutor@{zlib.crc32(pool_name.encode()):x}"
        f"[Running, pool size = {threads}, active threads = {active}, queued tasks = {queued}, "
        f"completed tasks = {completed}]]"
    )
    return EsError(429, "es_rejected_execution_exception", reason)


def loads_json(raw: bytes, what: str = "request body") -> Any:
    """Parse JSON or raise ES's 400 parse error."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise parse_error(f"Failed to parse {what}: {exc}") from None


def body_object(raw: bytes) -> dict:
    """A request body that must be a JSON object (empty body = {})."""
    if not raw or not raw.strip():
        return {}
    value = loads_json(raw)
    if not isinstance(value, dict):
        raise parse_error("request body must be a JSON object")
    return value


# ============================================================================================
# Small value helpers: settings, durations, booleans, tokens, field values
# ============================================================================================

_TOKEN_RE = re.compile(r"\w+")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(nanos|micros|ms|s|m|h|d)?\s*$")
_DURATION_S = {"nanos": 1e-9, "micros": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1e-3}
_DATE_MATH_RE = re.compile(r"^now(?:([+-])(\d+)([smhdwMy]))?(?:/[smhdwMy])?$")
_DATE_MATH_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "M": 30 * 86400, "y": 365 * 86400}
_COMPAT_RE = re.compile(r"compatible-with=(\d+)")


def flatten_settings(settings: dict, prefix: str = "") -> dict[str, Any]:
    """{"index": {"number_of_shards": 2}} -> {"index.number_of_shards": 2}."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def index_setting(flat: dict[str, Any], name: str) -> Any:
    """A setting given as `index.<name>` or `<name>`."""
    return flat.get(f"index.{name}", flat.get(name))


def parse_duration_s(text: Any, default_s: float) -> float:
    """'1m', '30s', '500ms' -> seconds; bare numbers are milliseconds (as in ES)."""
    if text in (None, ""):
        return default_s
    match = _DURATION_RE.match(str(text))
    if not match:
        raise illegal_argument(f"failed to parse setting [keep_alive] with value [{text}] as a time value")
    return float(match.group(1)) * _DURATION_S[match.group(2)]


def truthy(value: Any) -> bool:
    """ES boolean params: '', 'true' and True are true."""
    return value is True or (isinstance(value, str) and value.lower() in ("", "true"))


def int_param(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise illegal_argument(f"Failed to parse int parameter [{name}] with value [{value}]") from None


def tokens_of(value: Any) -> list[str]:
    """Lower-cased word tokens of a field value (a crude standard analyzer)."""
    if value is None:
        return []
    if value is True or value is False:
        return ["true" if value else "false"]
    return _TOKEN_RE.findall(str(value).lower())


def field_values(source: Any, path: str) -> list:
    """All values at a dotted path, flattening lists (objects in arrays, like ES); `x.keyword` reads `x`."""
    values = _walk(source, path.split("."))
    if not values and path.endswith(".keyword"):
        values = _walk(source, path[:-8].split("."))
    return values


def _walk(node: Any, keys: list[str]) -> list:
    if not keys:
        if isinstance(node, list):
            return [v for v in node if v is not None]
        return [] if node is None else [node]
    if isinstance(node, list):
        out: list = []
        for item in node:
            out.extend(_walk(item, keys))
        return out
    if not isinstance(node, dict):
        return []
    head = keys[0]
    if head in node:
        return _walk(node[head], keys[1:])
    # A field whose own name contains dots ({"a.b": 1}) is reached by joining the remaining keys.
    for take in range(2, len(keys) + 1):
        joined = ".".join(keys[:take])
        if joined in node:
            return _walk(node[joined], keys[take:])
    return []


def date_math(value: Any) -> Any:
    """Resolve 'now-1d' style date math to an ISO-8601 UTC string; other values pass through."""
    if isinstance(value, str) and value.startswith("now"):
        match = _DATE_MATH_RE.match(value)
        if match:
            seconds = time.time()
            if match.group(1):
                delta = int(match.group(2)) * _DATE_MATH_S[match.group(3)]
                seconds += delta if match.group(1) == "+" else -delta
            return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def comparable(value: Any) -> tuple:
    """A sort key that orders numbers before strings and never compares across types."""
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


def format_bytes(size: int) -> str:
    """ES's human byte sizes: 225b, 4.5kb, 10mb."""
    for unit, scale in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10)):
        if size >= scale:
            text = f"{size / scale:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{size}b"


# ============================================================================================
# Model: documents, shards, indices, index expressions
# ============================================================================================


class Doc:
    """One stored document; replaced (never mutated) by each write, so cached tokens stay valid."""

    __slots__ = ("id", "source", "version", "seq_no", "size", "_tokens")

    def __init__(self, doc_id: str, source: dict, version: int, seq_no: int, size: int):
        self.id = doc_id
        self.source = source
        self.version = version
        self.seq_no = seq_no
        self.size = size  # bytes of the JSON source, for write cost and store.size
        self._tokens: dict[str, list[str]] | None = None

    def values(self, field: str) -> list:
        if field == "_id":
            return [self.id]
        if field in ("*", "_all"):  # query_string's default field: every value in the document
            return leaf_values(self.source)
        return field_values(self.source, field)

    def tokens(self, field: str) -> list[str]:
        """The field's analysed tokens, cached per document."""
        cache = self._tokens
        if cache is None:
            cache = self._tokens = {}
        found = cache.get(field)
        if found is None:
            found = []
            for value in self.values(field):
                found.extend(tokens_of(value))
            cache[field] = found
        return found


class Index:
    """An index: `number_of_shards` primary shards (dicts id -> Doc), each copied on every live node."""

    def __init__(self, name: str, number_of_shards: int, virtual_docs: int, settings: dict | None = None,
                 mappings: dict | None = None):
        self.name = name
        self.uuid = base64.urlsafe_b64encode(hashlib.sha1(f"{name}/{time.time_ns()}".encode()).digest()[:16]).decode()[:22]
        self.number_of_shards = number_of_shards
        self.virtual_docs = virtual_docs  # notional docs per index: cost only, never returned
        self.shards: list[dict[str, Doc]] = [{} for _ in range(number_of_shards)]
        self.seq_nos = [0] * number_of_shards  # next _seq_no per shard
        self.created_ms = int(time.time() * 1000)
        self.settings = settings or {}
        self.mappings = mappings or {}
        self.route_seed = zlib.crc32(name.encode())  # which node holds each primary

    def shard_of(self, doc_id: str) -> int:
        """Routing: hash of the id modulo the shard count (ES uses murmur3; any stable hash will do)."""
        if self.number_of_shards == 1:
            return 0
        return zlib.crc32(doc_id.encode()) % self.number_of_shards

    def get(self, doc_id: str) -> Doc | None:
        return self.shards[self.shard_of(doc_id)].get(doc_id)

    def next_seq_no(self, shard: int) -> int:
        seq_no = self.seq_nos[shard]
        self.seq_nos[shard] = seq_no + 1
        return seq_no

    @property
    def doc_count(self) -> int:
        return sum(len(shard) for shard in self.shards)

    @property
    def stats_docs(self) -> int:
        """Documents as index statistics report them: the real ones and the virtual ones."""
        return self.doc_count + self.virtual_docs

    @property
    def store_bytes(self) -> int:
        return sum(doc.size for shard in self.shards for doc in shard.values())

    def virtual_per_shard(self) -> float:
        return self.virtual_docs / self.number_of_shards


_INVALID_INDEX_CHARS = set('\\/*?"<>| ,#:')


def validate_index_name(name: str) -> None:
    """ES's rules for concrete index names (invalid_index_name_exception)."""
    problem = None
    if not name:
        problem = "must not be empty"
    elif name != name.lower():
        problem = "must be lowercase"
    elif name[0] in "_-+":
        problem = "must not start with '_', '-', or '+'"
    elif any(ch in _INVALID_INDEX_CHARS for ch in name):
        problem = 'must not contain the following characters [ , ", *, \\, <, |, ,, >, /, ?, #, :]'
    elif name in (".", "..") or len(name.encode()) > 255:
        problem = "must not be '.' or '..' or longer than 255 bytes"
    if problem:
        raise EsError(400, "invalid_index_name_exception", f"Invalid index name [{name}], {problem}",
                      index_uuid="_na_", index=name)


class Catalog:
    """All indices of the cluster, and ES index-expression resolution."""

    def __init__(self, default_virtual_docs: int):
        self.indices: dict[str, Index] = {}
        self.default_virtual_docs = default_virtual_docs

    def create(self, name: str, body: dict | None = None) -> Index:
        """PUT /{index}: 400 resource_already_exists_exception if it exists."""
        validate_index_name(name)
        if name in self.indices:
            existing = self.indices[name]
            raise EsError(400, "resource_already_exists_exception", f"index [{name}/{existing.uuid}] already exists",
                          index_uuid=existing.uuid, index=name)
        body = body or {}
        flat = flatten_settings(body.get("settings") or {})
        flat.update({k: v for k, v in body.items() if k.startswith(("index.", "number_of_"))})
        shards = int_param(index_setting(flat, "number_of_shards"), "index.number_of_shards", 1)
        if not 1 <= shards <= 1024:
            raise illegal_argument(f"Failed to parse value [{shards}] for setting [index.number_of_shards] must be >= 1")
        virtual = int_param(index_setting(flat, "sim.virtual_docs"), "index.sim.virtual_docs", self.default_virtual_docs)
        index = Index(name, shards, max(0, virtual), flat, body.get("mappings") or {})
        self.indices[name] = index
        return index

    def for_write(self, name: str) -> Index:
        """The index a document write goes to, auto-created like ES (action.auto_create_index)."""
        index = self.indices.get(name)
        return index if index is not None else self.create(name)

    def concrete(self, name: str) -> Index:
        index = self.indices.get(name)
        if index is None:
            raise index_not_found(name)
        return index

    def resolve(self, expression: str | None, ignore_unavailable: bool = False) -> list[Index]:
        """Comma lists, wildcards, `_all`, and `-exclusions` (which remove earlier matches)."""
        if expression in (None, "", "_all", "*"):
            return [index for name, index in sorted(self.indices.items()) if not name.startswith(".")]
        chosen: dict[str, Index] = {}
        for position, part in enumerate(expression.split(",")):
            part = part.strip()
            if not part:
                continue
            if part.startswith("-") and position > 0:
                pattern = part[1:]
                for name in [n for n in chosen if fnmatch.fnmatchcase(n, pattern)]:
                    del chosen[name]
            elif part == "_all":
                chosen.update((n, i) for n, i in self.indices.items() if not n.startswith("."))
            elif "*" in part or "?" in part:
                hidden_ok = part.startswith(".")
                for name in sorted(self.indices):
                    if fnmatch.fnmatchcase(name, part) and (hidden_ok or not name.startswith(".")):
                        chosen[name] = self.indices[name]
            elif part in self.indices:
                chosen[part] = self.indices[part]
            elif not ignore_unavailable:
                raise index_not_found(part)
        return list(chosen.values())


# ============================================================================================
# Matching: a query compiles once into a function Doc -> score (float) or None (no match)
# ============================================================================================

Matcher = Callable[[Doc], "float | None"]
_QS_TOKEN_RE = re.compile(r'"[^"]*"|\S+')


def match_all_docs(doc: Doc) -> float:
    return 1.0


def match_no_docs(doc: Doc) -> None:
    return None


def leaf_values(node: Any) -> list:
    """Every scalar in a source document (what a `*` field expands to)."""
    if isinstance(node, dict):
        out: list = []
        for value in node.values():
            out.extend(leaf_values(value))
        return out
    if isinstance(node, list):
        out = []
        for value in node:
            out.extend(leaf_values(value))
        return out
    return [] if node is None else [node]


def _equals(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, (int, float)) and isinstance(wanted, (int, float)) and not isinstance(stored, bool):
        return stored == wanted
    return str(stored).lower() == str(wanted).lower()


def _single_field(kind: str, spec: Any, value_key: str) -> tuple[str, Any, dict]:
    """`{field: value}` or `{field: {value_key: value, ...options}}` -> (field, value, options)."""
    if not isinstance(spec, dict):
        raise EsError(400, "parsing_exception", f"[{kind}] query malformed, no start_object after query name")
    fields = [k for k in spec if k not in ("boost", "_name")]
    if len(fields) != 1:
        raise EsError(400, "parsing_exception", f"[{kind}] query doesn't support multiple fields, found {fields}")
    field = fields[0]
    value = spec[field]
    options: dict = {}
    if isinstance(value, dict):
        options = value
        if value_key not in value and not (kind == "wildcard" and "wildcard" in value):
            raise EsError(400, "parsing_exception", f"[{kind}] query does not support [{next(iter(value), '')}]")
        value = value.get(value_key, value.get("wildcard"))
    return field, value, options


def _boost(options: dict, spec: Any = None) -> float:
    boost = options.get("boost", spec.get("boost", 1.0) if isinstance(spec, dict) else 1.0)
    return float(boost)


def _term_query(spec: Any) -> Matcher:
    field, wanted, options = _single_field("term", spec, "value")
    boost, needle = _boost(options, spec), str(wanted).lower()

    def term(doc: Doc) -> float | None:
        if any(_equals(v, wanted) for v in doc.values(field)) or needle in doc.tokens(field):
            return boost
        return None
    return term


def _terms_query(spec: Any) -> Matcher:
    fields = [k for k in spec if k not in ("boost", "_name")] if isinstance(spec, dict) else []
    if len(fields) != 1 or not isinstance(spec[fields[0]], list):
        raise EsError(400, "parsing_exception", "[terms] query requires one field with an array of values")
    field, wanted = fields[0], spec[fields[0]]
    needles = {str(v).lower() for v in wanted}
    boost = _boost({}, spec)

    def terms(doc: Doc) -> float | None:
        for value in doc.values(field):
            if str(value).lower() in needles:
                return boost
        return boost if needles.intersection(doc.tokens(field)) else None
    return terms


def _match_tokens(fields: list[str], text: Any, operator: str, boost: float, last_prefix: bool = False) -> Matcher:
    wanted = tokens_of(text)
    if not wanted:
        return match_no_docs
    need_all = str(operator).lower() == "and"

    def match(doc: Doc) -> float | None:
        best = 0
        for field in fields:
            have = doc.tokens(field)
            hits = sum(1 for t in wanted[:-1] if t in have) if last_prefix else sum(1 for t in wanted if t in have)
            if last_prefix:
                hits += any(h.startswith(wanted[-1]) for h in have)
            if hits > best and (not need_all or hits == len(wanted)):
                best = hits
        return best * boost if best else None
    return match


def _phrase(fields: list[str], text: Any, boost: float, last_prefix: bool = False) -> Matcher:
    wanted = tokens_of(text)
    if not wanted:
        return match_no_docs
    span = len(wanted)

    def phrase(doc: Doc) -> float | None:
        for field in fields:
            have = doc.tokens(field)
            for start in range(len(have) - span + 1):
                window = have[start:start + span]
                if window[:-1] == wanted[:-1] and (window[-1].startswith(wanted[-1]) if last_prefix else window[-1] == wanted[-1]):
                    return boost * span
        return None
    return phrase


def _match_query(kind: str) -> Callable[[Any], Matcher]:
    def build(spec: Any) -> Matcher:
        field, text, options = _single_field(kind, spec, "query")
        boost = _boost(options, spec)
        if kind == "match_phrase":
            return _phrase([field], text, boost)
        if kind == "match_phrase_prefix":
            return _phrase([field], text, boost, last_prefix=True)
        return _match_tokens([field], text, options.get("operator", "or"), boost, last_prefix=kind == "match_bool_prefix")
    return build


def _multi_match_query(spec: Any) -> Matcher:
    if not isinstance(spec, dict) or "query" not in spec:
        raise EsError(400, "parsing_exception", "[multi_match] requires query value")
    fields = [f.split("^", 1)[0] for f in spec.get("fields") or ["*"]]
    boost = float(spec.get("boost", 1.0))
    if spec.get("type") in ("phrase", "phrase_prefix"):
        return _phrase(fields, spec["query"], boost, last_prefix=spec.get("type") == "phrase_prefix")
    return _match_tokens(fields, spec["query"], spec.get("operator", "or"), boost, spec.get("type") == "bool_prefix")


def _range_query(spec: Any) -> Matcher:
    fields = [k for k in spec if k not in ("boost", "_name")] if isinstance(spec, dict) else []
    if len(fields) != 1 or not isinstance(spec[fields[0]], dict):
        raise EsError(400, "parsing_exception", "[range] query malformed, no start_object after query name")
    field, bounds = fields[0], spec[fields[0]]
    checks = []
    for key, test in (("gt", lambda a, b: a > b), ("gte", lambda a, b: a >= b), ("lt", lambda a, b: a < b),
                      ("lte", lambda a, b: a <= b), ("from", lambda a, b: a >= b), ("to", lambda a, b: a <= b)):
        if bounds.get(key) is not None:
            checks.append((test, date_math(bounds[key])))
    boost = float(bounds.get("boost", 1.0))

    def in_range(doc: Doc) -> float | None:
        for value in doc.values(field):
            if all(_compare(test, value, bound) for test, bound in checks):
                return boost
        return None
    return in_range


def _compare(test: Callable[[Any, Any], bool], value: Any, bound: Any) -> bool:
    """Numbers compare as numbers (numeric strings too), everything else as strings."""
    if isinstance(bound, (int, float)) or isinstance(value, (int, float)):
        try:
            return test(float(value), float(bound))
        except (TypeError, ValueError):
            return False
    return test(str(value), str(bound))


def _pattern_query(kind: str) -> Callable[[Any], Matcher]:
    """prefix / wildcard / regexp / fuzzy: tested against whole values and against tokens."""
    def build(spec: Any) -> Matcher:
        field, value, options = _single_field(kind, spec, "value")
        boost, text = _boost(options, spec), str(value).lower()
        if kind == "prefix":
            test: Callable[[str], bool] = lambda s: s.startswith(text)  # noqa: E731
        elif kind == "wildcard":
            test = _wildcard_regex(text).match
        elif kind == "regexp":
            try:
                test = _regexp(text).fullmatch
            except re.error as exc:
                raise illegal_argument(f"invalid regular expression [{value}]: {exc}") from None
        else:
            distance = _fuzziness(options.get("fuzziness", "AUTO"), text)
            test = lambda s: _within_edits(s, text, distance)  # noqa: E731

        def pattern(doc: Doc) -> float | None:
            if any(test(str(v).lower()) for v in doc.values(field)) or any(test(t) for t in doc.tokens(field)):
                return boost
            return None
        return pattern
    return build


@functools.lru_cache(maxsize=1024)
def _wildcard_regex(pattern: str) -> re.Pattern:
    """Compiled once per distinct wildcard pattern, not per request."""
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _regexp(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _fuzziness(setting: Any, text: str) -> int:
    """ES's AUTO: 0 edits below 3 characters, 1 up to 5, else 2."""
    if str(setting).upper().startswith("AUTO"):
        return 0 if len(text) < 3 else 1 if len(text) <= 5 else 2
    return min(2, int_param(setting, "fuzziness", 2))


def _within_edits(a: str, b: str, limit: int) -> bool:
    """Levenshtein distance(a, b) <= limit, with an early exit."""
    if abs(len(a) - len(b)) > limit:
        return False
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return False
        previous = current
    return previous[-1] <= limit


def _ids_query(spec: Any) -> Matcher:
    wanted = {str(v) for v in (spec or {}).get("values", [])}
    return lambda doc: 1.0 if doc.id in wanted else None


def _exists_query(spec: Any) -> Matcher:
    field = (spec or {}).get("field")
    if not field:
        raise EsError(400, "parsing_exception", "[exists] must be provided with a [field]")
    return lambda doc: 1.0 if doc.values(field) else None


def _clauses(value: Any) -> list[Matcher]:
    if value is None:
        return []
    return [compile_query(q) for q in (value if isinstance(value, list) else [value])]


def _bool_query(spec: Any) -> Matcher:
    spec = spec or {}
    must, filters = _clauses(spec.get("must")), _clauses(spec.get("filter"))
    should, must_not = _clauses(spec.get("should")), _clauses(spec.get("must_not"))
    default_msm = 0 if (must or filters) else 1
    minimum = spec.get("minimum_should_match", default_msm)
    if isinstance(minimum, str):
        minimum = int(minimum.rstrip("%")) * len(should) // 100 if minimum.endswith("%") else int(minimum)
    minimum = min(int(minimum), len(should))
    boost = float(spec.get("boost", 1.0))

    def boolean(doc: Doc) -> float | None:
        score = 0.0
        for clause in must:
            s = clause(doc)
            if s is None:
                return None
            score += s
        for clause in filters:
            if clause(doc) is None:
                return None
        for clause in must_not:
            if clause(doc) is not None:
                return None
        matched = 0
        for clause in should:
            s = clause(doc)
            if s is not None:
                matched += 1
                score += s
        if matched < minimum:
            return None
        return score * boost if (must or should) else 0.0
    return boolean


def _inner_query(key: str, default_all: bool = False) -> Callable[[Any], Matcher]:
    """Wrappers scored by one inner query: nested, function_score, script_score, has_child/has_parent.
    Joins are not modelled: has_child/has_parent test the inner query on the document itself."""
    def build(spec: Any) -> Matcher:
        spec = spec or {}
        if key not in spec and not default_all:
            raise EsError(400, "parsing_exception", f"[{key}] query is required")
        return compile_query(spec.get(key)) if spec.get(key) is not None else match_all_docs
    return build


def _constant_score_query(spec: Any) -> Matcher:
    inner, boost = compile_query((spec or {}).get("filter")), float((spec or {}).get("boost", 1.0))
    return lambda doc: boost if inner(doc) is not None else None


def _dis_max_query(spec: Any) -> Matcher:
    queries = _clauses((spec or {}).get("queries"))

    def dis_max(doc: Doc) -> float | None:
        scores = [s for s in (q(doc) for q in queries) if s is not None]
        return max(scores) if scores else None
    return dis_max


def _boosting_query(spec: Any) -> Matcher:
    positive, negative = compile_query(spec.get("positive")), compile_query(spec.get("negative"))
    factor = float(spec.get("negative_boost", 0.5))

    def boosting(doc: Doc) -> float | None:
        score = positive(doc)
        if score is not None and negative(doc) is not None:
            score *= factor
        return score
    return boosting


def _more_like_this_query(spec: Any) -> Matcher:
    like = spec.get("like", "")
    text = " ".join(str(x) for x in like) if isinstance(like, list) else str(like)
    return _match_tokens(spec.get("fields") or ["*"], text, "or", 1.0)


def _query_string_query(spec: Any) -> Matcher:
    """Lucene syntax, simply: terms, field:value, "phrases", wildcards, /regexp/, fuzzy~, +/-, AND/OR/NOT."""
    if isinstance(spec, str):
        spec = {"query": spec}
    if "query" not in spec:
        raise EsError(400, "parsing_exception", "[query_string] must be provided with a [query]")
    fields = [f.split("^", 1)[0] for f in spec.get("fields") or [spec.get("default_field", "*")]]
    require_all = str(spec.get("default_operator", "or")).lower() == "and"
    required, optional, excluded = [], [], []
    negate_next = False
    for raw in _QS_TOKEN_RE.findall(str(spec["query"])):
        if raw in ("AND", "&&"):
            continue
        if raw in ("OR", "||"):
            continue
        if raw in ("NOT", "!"):
            negate_next = True
            continue
        sign = raw[0] if raw[0] in "+-" and len(raw) > 1 else ""
        matcher = _query_string_term(raw[len(sign):], fields)
        if sign == "-" or negate_next:
            excluded.append(matcher)
        elif sign == "+" or require_all:
            required.append(matcher)
        else:
            optional.append(matcher)
        negate_next = False

    def query_string(doc: Doc) -> float | None:
        score = 0.0
        for clause in required:
            s = clause(doc)
            if s is None:
                return None
            score += s
        if any(clause(doc) is not None for clause in excluded):
            return None
        hits = [s for s in (clause(doc) for clause in optional) if s is not None]
        if optional and not hits and not required:
            return None
        return score + sum(hits) if (required or optional) else 1.0
    return query_string


def _query_string_term(term: str, fields: list[str]) -> Matcher:
    field_list = fields
    if ":" in term and not term.startswith('"'):
        name, term = term.split(":", 1)
        field_list = [name]
    if term.startswith('"') and term.endswith('"') and len(term) > 1:
        return _phrase(field_list, term[1:-1], 1.0)
    parts: list[Matcher]
    if len(term) > 2 and term.startswith("/") and term.endswith("/"):
        parts = [_pattern_query("regexp")({f: term[1:-1]}) for f in field_list]
    elif "*" in term or "?" in term:
        parts = [_pattern_query("wildcard")({f: term}) for f in field_list]
    elif "~" in term:
        word, _, edits = term.partition("~")
        parts = [_pattern_query("fuzzy")({f: {"value": word, "fuzziness": edits or "AUTO"}}) for f in field_list]
    else:
        return _match_tokens(field_list, term, "and", 1.0)
    return lambda doc: next((s for s in (p(doc) for p in parts) if s is not None), None)


def _match_all_query(spec: Any) -> Matcher:
    boost = float((spec or {}).get("boost", 1.0))
    return match_all_docs if boost == 1.0 else (lambda doc: boost)


# Queries ES accepts that the simulation does not evaluate (geo, scripts, vectors, ...): every doc matches.
_UNEVALUATED_QUERIES = ("script", "knn", "geo_distance", "geo_bounding_box", "geo_polygon", "geo_shape", "shape",
                        "distance_feature", "rank_feature", "percolate", "wrapper", "pinned", "intervals",
                        "span_term", "span_near", "span_or", "span_first", "span_multi", "sparse_vector",
                        "text_expansion", "semantic", "rule")

QUERY_BUILDERS: dict[str, Callable[[Any], Matcher]] = {
    "match_all": _match_all_query,
    "match_none": lambda spec: match_no_docs,
    "term": _term_query,
    "terms": _terms_query,
    "terms_set": lambda spec: _terms_query({f: v.get("terms", []) for f, v in spec.items() if isinstance(v, dict)}),
    "match": _match_query("match"),
    "match_phrase": _match_query("match_phrase"),
    "match_phrase_prefix": _match_query("match_phrase_prefix"),
    "match_bool_prefix": _match_query("match_bool_prefix"),
    "multi_match": _multi_match_query,
    "combined_fields": _multi_match_query,
    "range": _range_query,
    "prefix": _pattern_query("prefix"),
    "wildcard": _pattern_query("wildcard"),
    "regexp": _pattern_query("regexp"),
    "fuzzy": _pattern_query("fuzzy"),
    "ids": _ids_query,
    "exists": _exists_query,
    "bool": _bool_query,
    "constant_score": _constant_score_query,
    "dis_max": _dis_max_query,
    "boosting": _boosting_query,
    "function_score": _inner_query("query", default_all=True),
    "script_score": _inner_query("query"),
    "nested": _inner_query("query"),
    "has_child": _inner_query("query"),
    "has_parent": _inner_query("query"),
    "more_like_this": _more_like_this_query,
    "query_string": _query_string_query,
    "simple_query_string": _query_string_query,
    **{name: (lambda spec: match_all_docs) for name in _UNEVALUATED_QUERIES},
}


def compile_query(query: Any) -> Matcher:
    """Compile an ES query clause; unknown clause names get ES's 400 parsing_exception."""
    if query is None:
        return match_all_docs
    if not isinstance(query, dict) or len(query) != 1:
        raise EsError(400, "parsing_exception", "[_na] query malformed, must start with start_object"
                      if not isinstance(query, dict) else "[_na] query malformed, expected one query name")
    (kind, spec), = query.items()
    builder = QUERY_BUILDERS.get(kind)
    if builder is None:
        raise EsError(400, "parsing_exception", f"unknown query [{kind}]", line=1, col=1)
    try:
        return builder(spec)
    except EsError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise EsError(400, "parsing_exception", f"[{kind}] malformed query: {exc}", line=1, col=1) from None


# ============================================================================================
# Search results: sort, _source filtering, aggregations
# ============================================================================================

Hit = tuple  # (score: float, doc: Doc, index: Index)


def parse_sort(sort: Any) -> list[tuple[str, bool]]:
    """ES sort syntax -> [(field, descending)]; `_score` defaults to descending, fields to ascending."""
    if sort is None:
        return []
    items = sort if isinstance(sort, list) else [sort]
    keys: list[tuple[str, bool]] = []
    for item in items:
        if isinstance(item, str):
            field, _, order = item.partition(":")
            keys.append((field, order == "desc" if order else field == "_score"))
        elif isinstance(item, dict):
            for field, options in item.items():
                order = options.get("order") if isinstance(options, dict) else options
                keys.append((field, (order or ("desc" if field == "_score" else "asc")) == "desc"))
        else:
            raise EsError(400, "parsing_exception", f"malformed sort format, got [{item!r}]")
    return keys


def sort_hits(hits: list[Hit], keys: list[tuple[str, bool]]) -> None:
    """Stable multi-key sort in place; missing values sort last in both directions (ES's default)."""
    for field, descending in reversed(keys):
        if field == "_score":
            hits.sort(key=lambda h: h[0], reverse=descending)
        elif field == "_doc":
            hits.sort(key=lambda h: h[1].seq_no, reverse=descending)
        elif field == "_script":
            continue  # scripts are costed, not run
        else:
            def key(hit: Hit, field: str = field, descending: bool = descending) -> tuple:
                values = hit[1].values(field)
                if not values:
                    return (0, (0, 0)) if descending else (1, (0, 0))
                value = max(values, key=comparable) if descending else min(values, key=comparable)
                return (1 if descending else 0, comparable(value))
            hits.sort(key=key, reverse=descending)


def sort_values(hit: Hit, keys: list[tuple[str, bool]]) -> list:
    out: list = []
    for field, descending in keys:
        if field == "_score":
            out.append(hit[0])
        elif field == "_doc":
            out.append(hit[1].seq_no)
        elif field == "_script":
            out.append(0)
        else:
            values = hit[1].values(field)
            out.append((max if descending else min)(values, key=comparable) if values else None)
    return out


def _after(values: list, search_after: Any, keys: list[tuple[str, bool]]) -> bool:
    """Does a hit with these sort values come strictly after `search_after` in the sort order?"""
    if not isinstance(search_after, list) or not keys:
        return True
    for value, bound, (_, descending) in zip(values, search_after, keys):
        if value is None or bound is None:
            if value is bound:
                continue
            return value is None  # missing values sort last
        a, b = comparable(value), comparable(bound)
        if a != b:
            return (a < b) if descending else (a > b)
    return False


def source_filter(spec: Any, params: Any = None) -> tuple[bool, list[str], list[str]]:
    """(_source wanted?, includes, excludes) from the body's `_source` and the URI parameters."""
    includes: list[str] = []
    excludes: list[str] = []
    wanted = True
    if params is not None:
        if "_source" in params:
            value = params["_source"]
            if value in ("false", "true", ""):
                wanted = value != "false"
            else:
                includes = value.split(",")
        if params.get("_source_includes"):
            includes = params["_source_includes"].split(",")
        if params.get("_source_excludes"):
            excludes = params["_source_excludes"].split(",")
    if spec is False:
        wanted = False
    elif isinstance(spec, str):
        includes = [spec]
    elif isinstance(spec, list):
        includes = [str(s) for s in spec]
    elif isinstance(spec, dict):
        inc, exc = spec.get("includes", spec.get("include", [])), spec.get("excludes", spec.get("exclude", []))
        includes = [inc] if isinstance(inc, str) else list(inc)
        excludes = [exc] if isinstance(exc, str) else list(exc)
    return wanted, includes, excludes


def filter_source(source: dict, includes: list[str], excludes: list[str], prefix: str = "") -> dict:
    """Keep included dotted paths (wildcards allowed), drop excluded ones."""
    if not includes and not excludes:
        return source
    out: dict = {}
    for key, value in source.items():
        path = prefix + key
        if any(fnmatch.fnmatchcase(path, p) for p in excludes):
            continue
        whole = not includes or any(fnmatch.fnmatchcase(path, p) or path.startswith(p + ".") for p in includes)
        if whole and not (isinstance(value, dict) and excludes):
            out[key] = value
        elif isinstance(value, dict) and (whole or any(p.startswith(path + ".") or "*" in p for p in includes)):
            inner = filter_source(value, [] if whole else includes, excludes, path + ".")
            if inner or whole:
                out[key] = inner
    return out


_BUCKET_AGGS = {"histogram", "date_histogram", "auto_date_histogram", "range", "date_range", "ip_range",
                "composite", "significant_terms", "significant_text", "multi_terms", "rare_terms", "geohash_grid",
                "geotile_grid", "geohex_grid", "adjacency_matrix", "variable_width_histogram", "time_series",
                "categorize_text", "frequent_item_sets", "diversified_sampler"}
_SINGLE_BUCKET_AGGS = {"filter", "global", "nested", "reverse_nested", "missing", "sampler", "random_sampler",
                       "children", "parent"}
_NUMERIC_METRICS = {"avg": lambda v: sum(v) / len(v) if v else None, "sum": lambda v: float(sum(v)),
                    "min": lambda v: float(min(v)) if v else None, "max": lambda v: float(max(v)) if v else None,
                    "median_absolute_deviation": lambda v: None, "weighted_avg": lambda v: sum(v) / len(v) if v else None}


def agg_parts(name: str, spec: Any) -> tuple[str, dict, dict]:
    """An aggregation entry -> (type, its body, its sub-aggregations)."""
    if not isinstance(spec, dict):
        raise EsError(400, "parsing_exception", f"Expected [START_OBJECT] under [{name}], but got a value")
    kinds = [k for k in spec if k not in ("aggs", "aggregations", "meta")]
    if len(kinds) != 1:
        raise EsError(400, "parsing_exception", f"Expected exactly one aggregation type under [{name}], found {kinds}")
    body = spec[kinds[0]]
    return kinds[0], body if isinstance(body, dict) else {}, spec.get("aggs") or spec.get("aggregations") or {}


def _numbers(docs: list[Doc], field: str | None) -> list[float]:
    out: list[float] = []
    if not field:
        return out
    for doc in docs:
        for value in doc.values(field):
            if isinstance(value, bool):
                out.append(float(value))
            elif isinstance(value, (int, float)):
                out.append(float(value))
            else:
                try:
                    out.append(float(value))
                except (TypeError, ValueError):
                    pass
    return out


def aggregate(aggs: dict, docs: list[Doc], all_docs: Callable[[], list[Doc]]) -> dict:
    """Results of an `aggs` object over the matching documents (real docs only)."""
    if not isinstance(aggs, dict):
        raise EsError(400, "parsing_exception", "[aggs] must be an object")
    results: dict = {}
    for name, spec in aggs.items():
        kind, body, sub = agg_parts(name, spec)
        field = body.get("field")
        if kind == "terms":
            results[name] = _terms_agg(body, docs, sub, all_docs)
        elif kind in _NUMERIC_METRICS:
            results[name] = {"value": _NUMERIC_METRICS[kind](_numbers(docs, field))}
        elif kind == "value_count":
            results[name] = {"value": sum(len(doc.values(field)) for doc in docs) if field else 0}
        elif kind == "cardinality":
            results[name] = {"value": len({str(v) for doc in docs for v in doc.values(field)}) if field else 0}
        elif kind in ("stats", "extended_stats"):
            values = _numbers(docs, field)
            results[name] = {"count": len(values), "min": min(values) if values else None,
                             "max": max(values) if values else None, "avg": sum(values) / len(values) if values else None,
                             "sum": float(sum(values))}
        elif kind in ("percentiles", "percentile_ranks"):
            values = sorted(_numbers(docs, field))
            wanted = body.get("percents") or [1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0]
            results[name] = {"values": {str(float(p)): (values[min(len(values) - 1, int(len(values) * p / 100))]
                                                        if values else None) for p in wanted}}
        elif kind in _SINGLE_BUCKET_AGGS:
            subset = docs
            if kind == "global":
                subset = all_docs()
            elif kind == "filter":
                matcher = compile_query(body)
                subset = [doc for doc in docs if matcher(doc) is not None]
            elif kind == "missing":
                subset = [doc for doc in docs if not doc.values(field)] if field else []
            results[name] = {"doc_count": len(subset), **aggregate(sub, subset, all_docs)}
        elif kind == "filters":
            named = body.get("filters") or {}
            buckets = {key: [doc for doc in docs if compile_query(q)(doc) is not None] for key, q in named.items()} \
                if isinstance(named, dict) else {}
            results[name] = {"buckets": {k: {"doc_count": len(v), **aggregate(sub, v, all_docs)} for k, v in buckets.items()}}
        elif kind == "top_hits":
            size = int(body.get("size", 3))
            results[name] = {"hits": {"total": {"value": len(docs), "relation": "eq"}, "max_score": 1.0 if docs else None,
                                      "hits": [{"_id": d.id, "_score": 1.0, "_source": d.source} for d in docs[:size]]}}
        elif kind in _BUCKET_AGGS:
            results[name] = {"buckets": []}
        else:
            results[name] = {"value": None}
    return results


def _terms_agg(body: dict, docs: list[Doc], sub: dict, all_docs: Callable[[], list[Doc]]) -> dict:
    field, size = body.get("field"), int(body.get("size", 10))
    members: dict[Any, list[Doc]] = {}
    for doc in docs:
        seen = set()
        for value in doc.values(field) if field else ():
            key = int(value) if isinstance(value, bool) else value
            if isinstance(key, (dict, list)) or key in seen:
                continue
            seen.add(key)
            members.setdefault(key, []).append(doc)
    order = body.get("order") or {"_count": "desc"}
    order = order[0] if isinstance(order, list) and order else order
    (order_by, direction), = order.items() if isinstance(order, dict) and len(order) == 1 else (("_count", "desc"),)
    ranked = sorted(members.items(), key=lambda kv: comparable(kv[0]))
    if order_by in ("_key", "_term"):
        ranked.sort(key=lambda kv: comparable(kv[0]), reverse=direction == "desc")
    else:
        ranked.sort(key=lambda kv: len(kv[1]), reverse=direction != "asc")
    ranked = [kv for kv in ranked if len(kv[1]) >= int(body.get("min_doc_count", 1))]
    shown, rest = ranked[:size], ranked[size:]
    buckets = []
    for key, bucket_docs in shown:
        bucket = {"key": key, "doc_count": len(bucket_docs)}
        if isinstance(key, int) and any(isinstance(v, bool) for v in bucket_docs[0].values(field)):
            bucket["key_as_string"] = "true" if key else "false"
        bucket.update(aggregate(sub, bucket_docs, all_docs))
        buckets.append(bucket)
    return {"doc_count_error_upper_bound": 0, "sum_other_doc_count": sum(len(v) for _, v in rest), "buckets": buckets}


# ============================================================================================
# Service-time model
#
# Each shard task holds one thread of a node's pool for a service time computed from the
# request's features and the documents it touches on that shard:
#   n = docs in the shard = (real docs + virtual docs) / number_of_shards
#   m = matching docs     = real matches on the shard + virtual docs on the shard × selectivity
# search shard ms = SHARD_BASE + query work(n) + collection(m) + sort(m) + aggs(m, n)
#                   + top-N queue(from+size) + fetch(hits) × (1 + highlight + script_fields)
# write shard ms  = WRITE_BASE + actions × WRITE_PER_ACTION + bytes / WRITE_BYTES_PER_MS
# then × time_scale × (1 ± jitter). Magnitudes target a single-shard index of 1M docs.
# ============================================================================================

# --- cost constants: milliseconds of one thread at time_scale 1 -------------------------
SHARD_BASE_MS = 0.25              # per shard task: parse, rewrite, acquire a searcher, reduce
TERM_SEEK_MS = 0.02               # per term looked up in the term dictionary
POSTING_PER_DOC_MS = 0.00002      # per posting a clause iterates (20 ns)
COLLECT_PER_DOC_MS = 0.0001       # per matching doc scored + collected      (1M matches ≈ 100 ms)
SKIP_PER_DOC_MS = 0.00001         # per match past track_total_hits: block-max WAND skips blocks
RANGE_BKD_MS = 0.1                # per range clause: visit the BKD tree
TERMDICT_SCAN_PER_DOC_MS = 0.0004  # leading wildcard: walk the whole term dictionary (~1 term/doc): 1M ≈ 400 ms
REGEXP_SCAN_PER_DOC_MS = 0.0005   # regexp: automaton ∩ the whole term dictionary: 1M ≈ 500 ms
FUZZY_SCAN_PER_DOC_MS = 0.00012   # fuzzy, per allowed edit: Levenshtein automaton ∩ term dictionary
PREFIX_SCAN_PER_DOC_MS = 0.00002  # prefix / trailing wildcard: seek to the prefix, walk its terms only
PHRASE_PER_DOC_MS = 0.0002        # match_phrase: read positions of each candidate doc
SCRIPT_PER_DOC_MS = 0.001         # painless per doc (script query, script_score, script sort/agg): 1M ≈ 1 s
FUNCTION_PER_DOC_MS = 0.00005     # function_score non-script function (decay, field_value_factor) per doc
NESTED_FACTOR = 3.0               # nested query: hidden child docs per parent + block join
JOIN_FACTOR = 5.0                 # has_child / has_parent: the inner query over the other side, ×
JOIN_PER_DOC_MS = 0.0002          # ... plus a global-ordinals join per doc
KNN_PER_CANDIDATE_MS = 0.001      # HNSW: per num_candidates × log2(n)
UNMODELLED_PER_DOC_MS = 0.00005   # geo / span / vector clauses the model does not itemise
AGG_PER_DOC_MS = 0.00008          # per matching doc per aggregation: doc values + bucket ordinal
AGG_DEPTH_FACTOR = 2.0            # a sub-aggregation at depth d costs × AGG_DEPTH_FACTOR**d per doc
TERMS_BUCKET_MS = 0.001           # terms: per shard bucket × log2(buckets); shard_size = size × 1.5 + 10
CARDINALITY_FACTOR = 3.0          # cardinality: HyperLogLog++ hashing, × per-doc agg cost
PERCENTILES_FACTOR = 4.0          # percentiles: t-digest insertion, × per-doc agg cost
TOPN_PER_HIT_MS = 0.0001          # query phase priority queue per (from + size) slot × log2
FETCH_PER_HIT_MS = 0.02           # fetch phase per hit returned: stored fields + _source decompression
HIGHLIGHT_PER_HIT_MS = 0.1        # per hit per highlighted field: re-analyse the text
SCRIPT_FIELD_PER_HIT_MS = 0.01    # per hit per script_field
SORT_FIELD_PER_DOC_MS = 0.00003   # field sort / collapse: doc values per match; also disables WAND skipping
RESCORE_PER_DOC_MS = 0.002        # rescore: per doc of the rescore window
DBQ_PER_MATCH_MS = 0.005          # delete_by_query: scroll + per-match bookkeeping before the deletes
WRITE_BASE_MS = 0.2               # per shard-level write task: translog append + sync
WRITE_PER_ACTION_MS = 0.05        # per bulk action / document write
WRITE_BYTES_PER_MS = 10_000       # source bytes parsed + indexed per ms (10 MB/s)

# --- selectivity: the fraction of *virtual* docs a clause matches (real docs are matched for real)
SEL_TERM = 0.01          # a term / one match token
SEL_PHRASE = 0.005       # a phrase
SEL_RANGE = 0.25         # a range
SEL_EXISTS = 0.9         # exists
SEL_PATTERN = 0.05       # prefix / wildcard / regexp
SEL_FUZZY = 0.02         # fuzzy
SEL_SCRIPT = 0.5         # a script filter
SEL_UNMODELLED = 0.1     # anything else
STAR_FIELDS = 5          # a query over `*` (all fields) searches this many fields


_SCORE_FUNCTIONS = ("script_score", "field_value_factor", "gauss", "linear", "exp", "random_score", "weight")


def _text_terms(spec: Any, kind: str) -> tuple[int, dict]:
    """Number of analysed terms in a full-text clause, and its options."""
    if not isinstance(spec, dict) or not spec:
        return 1, {}
    key = next((k for k in spec if k not in ("boost", "_name")), None)
    value = spec.get(key)
    options = value if isinstance(value, dict) else {}
    text = options.get("query", options.get("value")) if options else value
    return max(1, len(tokens_of(text))), options


def _pattern_cost(text: str, kind: str, n: float, fuzziness: Any = "AUTO") -> float:
    """Term-dictionary work of a multi-term clause: leading wildcards and regexps walk all of it."""
    if kind == "regexp":
        return REGEXP_SCAN_PER_DOC_MS * n
    if kind == "fuzzy":
        return FUZZY_SCAN_PER_DOC_MS * n * max(1, _fuzziness(fuzziness, text.lower()))
    if kind == "wildcard" and text[:1] in ("*", "?"):
        return TERMDICT_SCAN_PER_DOC_MS * n
    return PREFIX_SCAN_PER_DOC_MS * n


def query_work(query: Any, n: float) -> tuple[float, float]:
    """(ms of term-dictionary + postings work for one shard of n docs, fraction of docs matched)."""
    if not query:
        return 0.0, 1.0
    (kind, spec), = query.items()
    if kind == "match_all":
        return 0.0, 1.0
    if kind == "match_none":
        return 0.0, 0.0
    if kind in ("term", "ids", "terms", "terms_set"):
        values = spec.get("values", []) if kind == "ids" else next(
            (v for k, v in spec.items() if k not in ("boost", "_name")), [])
        count = len(values) if isinstance(values, list) else 1
        selectivity = min(1.0, count / max(n, 1.0)) if kind == "ids" else min(1.0, SEL_TERM * count)
        return count * TERM_SEEK_MS + POSTING_PER_DOC_MS * n * selectivity, selectivity
    if kind in ("match", "match_phrase", "match_phrase_prefix", "match_bool_prefix"):
        terms, options = _text_terms(spec, kind)
        work = terms * (TERM_SEEK_MS + POSTING_PER_DOC_MS * n * SEL_TERM)
        if options.get("fuzziness") not in (None, 0, "0"):
            work += terms * FUZZY_SCAN_PER_DOC_MS * n
        if kind == "match":
            and_op = str(options.get("operator", "or")).lower() == "and"
            return work, SEL_TERM if and_op else min(1.0, SEL_TERM * terms)
        return work + PHRASE_PER_DOC_MS * n * SEL_TERM, SEL_PHRASE
    if kind in ("multi_match", "combined_fields"):
        fields = spec.get("fields") or ["*"]
        width = sum(STAR_FIELDS if "*" in f else 1 for f in fields)
        terms = max(1, len(tokens_of(spec.get("query"))))
        work = width * terms * (TERM_SEEK_MS + POSTING_PER_DOC_MS * n * SEL_TERM)
        return work, min(1.0, SEL_TERM * terms * width)
    if kind == "range":
        return RANGE_BKD_MS + POSTING_PER_DOC_MS * n * SEL_RANGE, SEL_RANGE
    if kind == "exists":
        return POSTING_PER_DOC_MS * n * SEL_EXISTS, SEL_EXISTS
    if kind in ("prefix", "wildcard", "regexp", "fuzzy"):
        field, value, options = _single_field(kind, spec, "value")
        selectivity = SEL_FUZZY if kind == "fuzzy" else SEL_PATTERN
        work = _pattern_cost(str(value), kind, n, options.get("fuzziness", "AUTO"))
        return work + POSTING_PER_DOC_MS * n * selectivity, selectivity
    if kind in ("query_string", "simple_query_string"):
        return _query_string_work(spec if isinstance(spec, dict) else {"query": spec}, n)
    if kind == "bool":
        return _bool_work(spec or {}, n)
    if kind == "constant_score":
        return query_work(spec.get("filter"), n)
    if kind == "dis_max":
        parts = [query_work(q, n) for q in spec.get("queries", [])]
        return sum(w for w, _ in parts), 1.0 - math.prod(1.0 - s for _, s in parts)
    if kind == "boosting":
        (wp, sp), (wn, _) = query_work(spec.get("positive"), n), query_work(spec.get("negative"), n)
        return wp + wn, sp
    if kind in ("function_score", "script_score"):
        work, selectivity = query_work(spec.get("query"), n)
        functions = spec.get("functions") or ([spec] if kind == "script_score" or any(k in spec for k in _SCORE_FUNCTIONS) else [])
        for function in functions:
            scripted = kind == "script_score" or "script_score" in function
            work += n * selectivity * (SCRIPT_PER_DOC_MS if scripted else FUNCTION_PER_DOC_MS)
        return work, selectivity
    if kind == "script":
        return SCRIPT_PER_DOC_MS * n, SEL_SCRIPT
    if kind == "nested":
        work, selectivity = query_work(spec.get("query"), n)
        return work * NESTED_FACTOR, selectivity
    if kind in ("has_child", "has_parent"):
        work, selectivity = query_work(spec.get("query"), n)
        return work * JOIN_FACTOR + JOIN_PER_DOC_MS * n, selectivity
    if kind == "more_like_this":
        like = spec.get("like", "")
        terms = max(1, len(tokens_of(" ".join(map(str, like)) if isinstance(like, list) else like)))
        return terms * (TERM_SEEK_MS * 5 + POSTING_PER_DOC_MS * n * SEL_TERM), min(1.0, SEL_TERM * terms)
    if kind == "knn":
        return knn_work(spec, n)
    return UNMODELLED_PER_DOC_MS * n, SEL_UNMODELLED


def knn_work(spec: dict, n: float) -> tuple[float, float]:
    candidates = int(spec.get("num_candidates", max(10, int(spec.get("k", 10)) * 2)))
    return candidates * math.log2(n + 2) * KNN_PER_CANDIDATE_MS, min(1.0, int(spec.get("k", 10)) / max(n, 1.0))


def _bool_work(spec: dict, n: float) -> tuple[float, float]:
    work, selectivity = 0.0, 1.0
    for key in ("must", "filter"):
        for clause in _as_list(spec.get(key)):
            w, s = query_work(clause, n)
            work, selectivity = work + w, selectivity * s
    should = [query_work(c, n) for c in _as_list(spec.get("should"))]
    work += sum(w for w, _ in should)
    if should and not (spec.get("must") or spec.get("filter")):
        selectivity = 1.0 - math.prod(1.0 - s for _, s in should)
    for clause in _as_list(spec.get("must_not")):
        w, s = query_work(clause, n)
        work, selectivity = work + w, selectivity * (1.0 - s)
    return work, selectivity


def _as_list(value: Any) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _query_string_work(spec: dict, n: float) -> tuple[float, float]:
    """A query_string costs what its terms cost; a leading-wildcard term counts as a leading wildcard."""
    fields = spec.get("fields") or [spec.get("default_field", "*")]
    width = sum(STAR_FIELDS if "*" in str(f) else 1 for f in fields)
    work, miss = 0.0, 1.0
    for raw in _QS_TOKEN_RE.findall(str(spec.get("query", ""))):
        if raw in ("AND", "OR", "NOT", "&&", "||", "!"):
            continue
        term = raw.lstrip("+-")
        term_width = width
        if ":" in term and not term.startswith('"'):
            term_width, term = 1, term.split(":", 1)[1]
        if len(term) > 2 and term.startswith("/") and term.endswith("/"):
            cost, selectivity = _pattern_cost(term, "regexp", n), SEL_PATTERN
        elif "*" in term or "?" in term:
            cost, selectivity = _pattern_cost(term, "wildcard", n), SEL_PATTERN
        elif "~" in term and not term.startswith('"'):
            word, _, edits = term.partition("~")
            cost, selectivity = _pattern_cost(word, "fuzzy", n, edits or "AUTO"), SEL_FUZZY
        elif term.startswith('"'):
            words = max(1, len(tokens_of(term)))
            cost = words * TERM_SEEK_MS + PHRASE_PER_DOC_MS * n * SEL_TERM
            selectivity = SEL_PHRASE
        else:
            cost, selectivity = TERM_SEEK_MS, SEL_TERM
        work += term_width * (cost + POSTING_PER_DOC_MS * n * selectivity)
        miss *= 1.0 - min(1.0, selectivity * term_width)
    return work, 1.0 - miss


def aggs_ms(aggs: dict, docs: float, n: float, depth: int = 0) -> float:
    """Aggregation work on one shard: per doc touched × aggregation, terms buckets × log, sub-aggs deeper."""
    total = 0.0
    for name, spec in aggs.items():
        kind, body, sub = agg_parts(name, spec)
        touched = n if kind == "global" else docs
        per_doc = AGG_PER_DOC_MS * AGG_DEPTH_FACTOR ** depth
        if kind == "cardinality":
            per_doc *= CARDINALITY_FACTOR
        elif kind in ("percentiles", "percentile_ranks", "median_absolute_deviation"):
            per_doc *= PERCENTILES_FACTOR
        if "script" in body:
            per_doc += SCRIPT_PER_DOC_MS
        total += touched * per_doc
        if kind in ("terms", "multi_terms", "significant_terms", "rare_terms", "composite"):
            size = int(body.get("size", 10))
            shard_size = int(body.get("shard_size", size * 1.5 + 10))
            buckets = min(shard_size, touched)
            total += buckets * math.log2(buckets + 1) * TERMS_BUCKET_MS
        elif kind == "top_hits":
            total += int(body.get("size", 3)) * FETCH_PER_HIT_MS
        elif kind == "filter":
            work, selectivity = query_work(body, n)
            total += work
            touched *= selectivity
        if sub:
            total += aggs_ms(sub, touched, n, depth + 1)
    return total


def write_ms(actions: int, nbytes: int) -> float:
    """Service time of one shard-level write task (index/create/update/delete actions + their bytes)."""
    return WRITE_BASE_MS + actions * WRITE_PER_ACTION_MS + nbytes / WRITE_BYTES_PER_MS


_SEARCH_BODY_KEYS = {
    "query", "from", "size", "sort", "aggs", "aggregations", "_source", "track_total_hits", "highlight",
    "script_fields", "runtime_mappings", "rescore", "collapse", "post_filter", "knn", "min_score", "timeout",
    "terminate_after", "explain", "version", "seq_no_primary_term", "stored_fields", "docvalue_fields",
    "fields", "search_after", "pit", "suggest", "profile", "track_scores", "indices_boost", "stats", "ext",
    "slice", "rank", "retriever", "sub_searches", "allow_partial_search_results", "scroll",
}


class SearchRequest:
    """A parsed `_search` (body + URI params): what it matches, what it returns, what each shard costs."""

    def __init__(self, body: dict, params: Any):
        unknown = [k for k in body if k not in _SEARCH_BODY_KEYS]
        if unknown:
            raise EsError(400, "parsing_exception", f"Unknown key for a START_OBJECT in [{unknown[0]}].", line=1, col=1)
        query = body.get("query")
        if params.get("q"):
            query = {"query_string": {"query": params["q"], "default_field": params.get("df", "*"),
                                      "default_operator": params.get("default_operator", "or")}}
        self.query = query
        self.matcher = compile_query(query)
        self.post_filter = compile_query(body["post_filter"]) if body.get("post_filter") else None
        self.from_ = int_param(params.get("from", body.get("from")), "from", 0)
        self.size = int_param(params.get("size", body.get("size")), "size", 10)
        if self.from_ < 0 or self.size < 0:
            raise illegal_argument(f"[{'from' if self.from_ < 0 else 'size'}] parameter cannot be negative")
        sort = params["sort"].split(",") if params.get("sort") else body.get("sort")
        self.sort_keys = parse_sort(sort)
        self.field_sort = any(f not in ("_score",) for f, _ in self.sort_keys)
        self.aggs = body.get("aggs") or body.get("aggregations") or {}
        if not isinstance(self.aggs, dict):
            raise EsError(400, "parsing_exception", "[aggs] must be an object")
        for name, spec in self.aggs.items():
            agg_parts(name, spec)  # validate before any thread time is spent
        tth = params.get("track_total_hits", body.get("track_total_hits", DEFAULT_TRACK_TOTAL_HITS))
        if isinstance(tth, str):
            tth = True if tth == "true" else False if tth == "false" else int_param(tth, "track_total_hits", 10_000)
        self.track_total_hits: bool | int = tth
        highlight = body.get("highlight") or {}
        self.highlight_fields = len(highlight.get("fields") or {}) if isinstance(highlight, dict) else 0
        self.script_fields = len(body.get("script_fields") or {})
        self.runtime_fields = len(body.get("runtime_mappings") or {})
        rescores = body.get("rescore") or []
        self.rescore_window = sum(int(r.get("window_size", 10)) for r in _as_list(rescores) if isinstance(r, dict))
        self.collapse = bool(body.get("collapse"))
        self.knn = _as_list(body.get("knn"))
        self.min_score = body.get("min_score")
        self.search_after = body.get("search_after")
        self.source = source_filter(body.get("_source"), params)
        self.seq_no_primary_term = bool(body.get("seq_no_primary_term")) or truthy(params.get("seq_no_primary_term", "false"))
        self.version = bool(body.get("version")) or truthy(params.get("version", "false"))
        self.scroll = params.get("scroll")
        self._work: dict[float, tuple[float, float]] = {}
        self._post_filter_query = body.get("post_filter")

    def work(self, n: float) -> tuple[float, float]:
        """(query work in ms, selectivity) for a shard of n docs; cached per shard size."""
        cached = self._work.get(n)
        if cached is None:
            work, selectivity = query_work(self.query, n)
            for knn in self.knn:
                knn_ms, knn_sel = knn_work(knn, n)
                work += knn_ms
                selectivity = knn_sel if self.query is None else min(1.0, selectivity + knn_sel)
            if self._post_filter_query:
                work += query_work(self._post_filter_query, n)[0]
            cached = self._work[n] = (work, selectivity)
        return cached

    def matches(self, real_matches: int, virtual_docs: float, n: float) -> float:
        """Docs matched on a shard: the real ones plus the virtual docs × the query's selectivity."""
        return real_matches + virtual_docs * self.work(n)[1]

    def shard_ms(self, n: float, m: float, fetched: float) -> float:
        """One query+fetch shard task, ms at time_scale 1: n docs in the shard, m matching, `fetched` hits returned."""
        work = self.work(n)[0]
        window = self.from_ + self.size
        tth = self.track_total_hits
        exhaustive = bool(self.aggs) or self.field_sort or tth is True or self.collapse
        limit = 0 if tth is False else int(tth)
        full = m if exhaustive else min(m, max(limit, window))
        service = SHARD_BASE_MS + work + full * COLLECT_PER_DOC_MS + (m - full) * SKIP_PER_DOC_MS
        for field, _ in self.sort_keys:
            if field == "_script":
                service += m * SCRIPT_PER_DOC_MS
            elif field not in ("_score", "_doc"):
                service += m * SORT_FIELD_PER_DOC_MS
        if self.collapse:
            service += m * SORT_FIELD_PER_DOC_MS
        service += m * SCRIPT_PER_DOC_MS * self.runtime_fields
        service += aggs_ms(self.aggs, m, n)
        top = min(m, window)
        service += top * math.log2(top + 1) * TOPN_PER_HIT_MS
        service += fetched * (FETCH_PER_HIT_MS + self.highlight_fields * HIGHLIGHT_PER_HIT_MS
                              + self.script_fields * SCRIPT_FIELD_PER_HIT_MS)
        service += min(self.rescore_window, m) * RESCORE_PER_DOC_MS
        return service

    def count_ms(self, n: float, m: float) -> float:
        """A `_count` shard task: the query, counting matches without scoring them."""
        return SHARD_BASE_MS + self.work(n)[0] + m * SKIP_PER_DOC_MS

    def scroll_page_ms(self, m: float, fetched: float) -> float:
        """A scroll page on one shard: resume collection past the last hit, fetch this page."""
        return SHARD_BASE_MS + m * SKIP_PER_DOC_MS + fetched * (FETCH_PER_HIT_MS + self.highlight_fields * HIGHLIGHT_PER_HIT_MS)

    def delete_by_query_ms(self, n: float, m: float) -> float:
        """The search side of delete_by_query: the query, then scroll through every match."""
        return SHARD_BASE_MS + self.work(n)[0] + m * (COLLECT_PER_DOC_MS + DBQ_PER_MATCH_MS)


# ============================================================================================
# Thread pools and nodes
# ============================================================================================


class PoolRejected(Exception):
    """All threads busy and the queue full: the task is refused (ES's EsAbortPolicy)."""

    def __init__(self, error: EsError):
        super().__init__(error.reason)
        self.error = error


class NodeGone(Exception):
    """The node holding a queued task stopped; the task moves to another copy of its shard."""


class ThreadPool:
    """A fixed ES thread pool: `threads` slots and a queue of at most `queue_capacity` waiting tasks.

    A task's service time is *awaited* while its slot is held, so a busy pool costs no CPU."""

    def __init__(self, node_name: str, kind: str, threads: int, queue_capacity: int):
        self.name = f"{node_name}/{kind}"
        self.threads = threads
        self.queue_capacity = queue_capacity
        self.active = 0
        self.waiting: deque[asyncio.Future] = deque()
        self.completed = 0
        self.rejected = 0
        self.largest = 0
        self._carry_ms = 0.0  # the event loop sleeps in whole milliseconds; carry the remainder to the next task

    @property
    def free(self) -> int:
        """Free threads plus free queue places."""
        return self.threads + self.queue_capacity - self.active - len(self.waiting)

    def enter(self) -> asyncio.Future | None:
        """Take a thread now (None), or a queue place (a future resolved when a thread is handed over).
        Raises PoolRejected when the queue is full. Synchronous, so a fan-out is admitted atomically."""
        if self.active < self.threads:
            self.active += 1
            if self.active > self.largest:
                self.largest = self.active
            return None
        if len(self.waiting) >= self.queue_capacity:
            self.rejected += 1
            raise PoolRejected(rejected_execution(self.name, self.queue_capacity, self.threads, self.active,
                                                  len(self.waiting), self.completed))
        ticket = asyncio.get_running_loop().create_future()
        self.waiting.append(ticket)
        return ticket

    async def run(self, ticket: asyncio.Future | None, service_ms: float) -> None:
        """Wait for the thread (if queued), hold it for `service_ms` milliseconds, hand it on."""
        if ticket is not None:
            try:
                await ticket
            except asyncio.CancelledError:
                if ticket.done() and not ticket.cancelled() and ticket.exception() is None:
                    self._release()  # the thread was handed to us just as we were cancelled
                elif ticket in self.waiting:
                    self.waiting.remove(ticket)
                raise
        try:
            self._carry_ms += service_ms
            whole_ms = math.floor(self._carry_ms + 0.5)
            self._carry_ms -= whole_ms
            if whole_ms > 0:
                await asyncio.sleep(whole_ms / 1000.0)
        finally:
            self.completed += 1
            self._release()

    def _release(self) -> None:
        while self.waiting:
            ticket = self.waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)  # hand the thread straight to the next queued task
                return
        self.active -= 1

    def close(self) -> None:
        """The node stopped: queued tasks leave for another copy; running ones finish."""
        while self.waiting:
            ticket = self.waiting.popleft()
            if not ticket.done():
                ticket.set_exception(NodeGone())

    def stats(self) -> dict:
        """ES's `_nodes/stats/thread_pool` entry for this pool. Like a real pool, it starts its threads
        on demand: `threads` is how many it has started (the most ever busy at once), not its size."""
        return {"threads": min(self.threads, self.largest), "queue": len(self.waiting), "active": self.active,
                "rejected": self.rejected, "largest": self.largest, "completed": self.completed}


class Node:
    """One simulated node: an HTTP listener on its own port, a search and a write pool."""

    ROLES = ["data", "data_content", "data_hot", "ingest", "master", "remote_cluster_client"]

    def __init__(self, number: int, host: str, port: int, pool_sizes: dict[str, tuple[int, int]]):
        self.number = number
        self.name = f"node-{number}"
        self.id = base64.urlsafe_b64encode(hashlib.sha1(f"{CLUSTER_UUID}/{self.name}".encode()).digest()).decode()[:22]
        self.host = host
        self.port = port
        self.pool_sizes = pool_sizes
        self.pools = self.new_pools()
        self.live = False
        self.server: asyncio.AbstractServer | None = None
        self.http: web.Server | None = None
        #: set while the node is hung (like a SIGSTOPped process): it accepts and reads, answers nothing
        self.hung: asyncio.Event | None = None
        self.scheme = "http"

    def new_pools(self) -> dict[str, ThreadPool]:
        """Fresh pools: a restarted node's counters start at zero, like a restarted ES node's."""
        return {kind: ThreadPool(self.name, kind, threads, queue) for kind, (threads, queue) in self.pool_sizes.items()}

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def describe(self) -> dict:
        """The node's entry in `_nodes` info."""
        address = f"{self.host}:{self.port}"
        return {"name": self.name, "transport_address": address, "host": self.host, "ip": self.host,
                "version": ES_VERSION["number"], "build_flavor": "default", "build_type": "tar",
                "build_hash": ES_VERSION["build_hash"], "roles": self.ROLES, "attributes": {},
                "http": {"bound_address": [address], "publish_address": address, "max_content_length_in_bytes": MAX_BODY_BYTES},
                "thread_pool": {kind: {"type": "fixed", "size": pool.threads, "queue_size": pool.queue_capacity}
                                for kind, pool in self.pools.items()}}


class ScrollContext:
    """An open scroll: the sorted matching docs at the time of the first search, and where we are."""

    __slots__ = ("id", "hits", "position", "request", "keep_alive_s", "expires_at", "shards")

    def __init__(self, scroll_id: str, hits: list, request: SearchRequest, keep_alive_s: float,
                 shards: list[tuple[str, float]]):
        self.id = scroll_id
        self.hits = hits
        self.position = 0
        self.request = request
        self.keep_alive_s = keep_alive_s
        self.expires_at = time.monotonic() + keep_alive_s
        self.shards = shards  # (index name, matching docs on the shard incl. virtual), for page costs


class ScrollStore:
    """Open scroll contexts, bounded like search.max_open_scroll_context and expired after keep-alive."""

    def __init__(self, limit: int = MAX_SCROLL_CONTEXTS):
        self.limit = limit
        self.contexts: dict[str, ScrollContext] = {}
        self._opened = 0

    def expire(self) -> None:
        now = time.monotonic()
        for scroll_id in [s for s, ctx in self.contexts.items() if ctx.expires_at <= now]:
            del self.contexts[scroll_id]

    def open(self, hits: list, request: SearchRequest, keep_alive_s: float, shards: list) -> ScrollContext:
        self.expire()
        if len(self.contexts) >= self.limit:
            raise EsError(500, "exception", f"Trying to create too many scroll contexts. Must be less than or equal to: "
                          f"[{self.limit}]. This limit can be set by changing the [search.max_open_scroll_context] setting.")
        self._opened += 1
        raw = f"simscroll:{self._opened}:{os.urandom(6).hex()}".encode()
        scroll_id = base64.urlsafe_b64encode(b"\x00\x01" + raw).decode().rstrip("=")
        context = self.contexts[scroll_id] = ScrollContext(scroll_id, hits, request, keep_alive_s, shards)
        return context

    def get(self, scroll_id: str) -> ScrollContext:
        self.expire()
        context = self.contexts.get(scroll_id)
        if context is None:
            raise EsError(404, "search_context_missing_exception", f"No search context found for id [{scroll_id}]")
        return context

    def clear(self, scroll_ids: list[str]) -> int:
        if scroll_ids == ["_all"]:
            freed = len(self.contexts)
            self.contexts.clear()
            return freed
        return sum(1 for s in scroll_ids if self.contexts.pop(s, None) is not None)


# ============================================================================================
# The cluster: lifecycle, shard-task placement, accounting
# ============================================================================================

ShardTask = tuple  # (index name, service ms before time_scale, primary route or None)


class SimCluster:
    """N simulated nodes in this process sharing one catalog. Service times are in ms × `time_scale`."""

    def __init__(self, nodes: int = 3, threads: int = 4, queue: int = 100, write_threads: int = 4,
                 write_queue: int = 1000, virtual_docs: int = 0, time_scale: float = 1.0, instant: bool = False,
                 host: str = "127.0.0.1", port: int = 0, jitter: float = 0.02, seed: int = 1,
                 ssl_context: Any = None, authorization: str | None = None):
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        pool_sizes = {"search": (threads, queue), "write": (write_threads, write_queue)}
        self.nodes = [Node(i, host, port + i if port else 0, pool_sizes) for i in range(nodes)]
        #: HTTPS on every node (an ssl.SSLContext), and the one Authorization value every request must carry
        self.ssl_context = ssl_context
        self.authorization = authorization
        for node in self.nodes:
            node.scheme = "https" if ssl_context is not None else "http"
        self.catalog = Catalog(virtual_docs)
        self.time_scale = time_scale
        self.instant = instant
        self.jitter = jitter
        self.scrolls = ScrollStore()
        self._random = random.Random(seed)  # deterministic jitter
        self._round_robin = 0
        self._live: list[Node] = []
        self.index_stats: dict[str, dict] = {}
        self.total_thread_ms = 0.0
        self.rejected = 0
        self.requests = 0

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def live_nodes(self) -> list[Node]:
        return self._live

    async def start(self) -> None:
        """Listen on every node; with port=0 each node takes a free port and keeps it across restarts."""
        for node in self.nodes:
            await self._listen(node)

    async def stop(self) -> None:
        for node in self.nodes:
            if node.live:
                await self._close(node)

    async def stop_node(self, i: int) -> None:
        """Close node i's listener and its open connections; it leaves health, _nodes and capacity."""
        node = self.nodes[i]
        if node.live:
            await self._close(node)

    async def start_node(self, i: int) -> None:
        """Listen again on the node's port, with fresh pools."""
        node = self.nodes[i]
        if not node.live:
            node.pools = node.new_pools()
            await self._listen(node)

    async def _listen(self, node: Node) -> None:
        loop = asyncio.get_running_loop()

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            return BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY_BYTES)

        node.http = web.Server(functools.partial(self.handle, node), request_factory=make_request, access_log=None)
        node.server = await loop.create_server(node.http, node.host, node.port, reuse_address=True, backlog=2048,
                                               ssl=self.ssl_context)
        node.port = node.server.sockets[0].getsockname()[1]
        node.live = True
        self._live = [n for n in self.nodes if n.live]

    async def _close(self, node: Node) -> None:
        node.live = False
        self._live = [n for n in self.nodes if n.live]
        if node.server is not None:
            node.server.close()
        if node.http is not None:
            for connection in list(node.http.connections):
                connection.force_close()  # refuse the node's keep-alive clients too, like a dead process
        if node.server is not None:
            await node.server.wait_closed()
        for pool in node.pools.values():
            pool.close()

    # --- placement and execution -------------------------------------------------------------

    def _place(self, kind: str, route: int | None) -> ThreadPool | None:
        """The pool a shard task runs on: a write goes to its primary's node; a search to the live node
        whose pool has the most free capacity (every node holds a copy of every shard), ties round-robin."""
        live = self._live
        if not live:
            return None
        if route is not None:
            return live[route % len(live)].pools[kind]
        count = len(live)
        self._round_robin = start = (self._round_robin + 1) % count
        best, best_free = live[start].pools[kind], -1
        for k in range(count):
            pool = live[(start + k) % count].pools[kind]
            free = pool.free
            if free > best_free:
                best, best_free = pool, free
        return best

    def _admit(self, kind: str, index_name: str, route: int | None) -> tuple[ThreadPool, Any] | EsError:
        pool = self._place(kind, route)
        if pool is None:
            return EsError(503, "no_shard_available_action_exception", "no live node holds a copy of the shard")
        try:
            return pool, pool.enter()
        except PoolRejected as rejected:
            self.rejected += 1
            self.stats_for(index_name)["rejected"] += 1
            return rejected.error

    async def run_tasks(self, kind: str, tasks: list[ShardTask]) -> list[EsError | None]:
        """Run shard tasks on `kind` pools; each outcome is None (done) or the error that failed it.
        All tasks are admitted before any runs, as a coordinating node sends its shard requests at once."""
        if self.instant or not tasks:
            return [None] * len(tasks)
        outcomes: list[EsError | None] = [None] * len(tasks)
        running = []
        for position, (index_name, service_ms, route) in enumerate(tasks):
            admitted = self._admit(kind, index_name, route)
            if isinstance(admitted, EsError):
                outcomes[position] = admitted
                continue
            scaled_ms = service_ms * self.time_scale
            if self.jitter:
                scaled_ms *= 1.0 + self.jitter * (2.0 * self._random.random() - 1.0)
            running.append((position, self._execute(kind, index_name, route, *admitted, scaled_ms)))
        if len(running) == 1:
            position, coroutine = running[0]
            outcomes[position] = await coroutine
        elif running:
            results = await asyncio.gather(*(coroutine for _, coroutine in running))
            for (position, _), result in zip(running, results):
                outcomes[position] = result
        return outcomes

    async def _execute(self, kind: str, index_name: str, route: int | None, pool: ThreadPool,
                       ticket: asyncio.Future | None, scaled_ms: float) -> EsError | None:
        while True:
            try:
                await pool.run(ticket, scaled_ms)
                break
            except NodeGone:
                admitted = self._admit(kind, index_name, route)
                if isinstance(admitted, EsError):
                    return admitted
                pool, ticket = admitted
        self.total_thread_ms += scaled_ms
        self.stats_for(index_name)["thread_ms"] += scaled_ms
        return None

    # --- statistics ----------------------------------------------------------------------------

    def stats_for(self, index_name: str) -> dict:
        entry = self.index_stats.get(index_name)
        if entry is None:
            entry = self.index_stats[index_name] = {"requests": 0, "thread_ms": 0.0, "rejected": 0}
        return entry

    def count_requests(self, index_names: list[str]) -> None:
        self.requests += 1
        for name in index_names:
            self.stats_for(name)["requests"] += 1

    def stats(self) -> dict:
        """Per index: requests, thread_ms (search + write thread time, ms, scaled), rejected shard tasks;
        per node: pool stats; cluster: live nodes, total thread ms, rejections."""
        return {
            "indices": {name: dict(entry) for name, entry in sorted(self.index_stats.items())},
            "nodes": [{"name": node.name, "id": node.id, "url": node.url, "live": node.live,
                       **{kind: {**pool.stats(), "queue_capacity": pool.queue_capacity}
                          for kind, pool in node.pools.items()}} for node in self.nodes],
            "cluster": {"live_nodes": len(self._live), "total_thread_ms": self.total_thread_ms,
                        "rejected": self.rejected, "requests": self.requests, "indices": len(self.catalog.indices),
                        "open_scroll_contexts": len(self.scrolls.contexts), "time_scale": self.time_scale,
                        "instant": self.instant},
        }

    def reset_stats(self) -> None:
        self.index_stats.clear()
        self.total_thread_ms = 0.0
        self.rejected = 0
        self.requests = 0
        for node in self.nodes:
            for pool in node.pools.values():
                pool.completed = pool.rejected = 0
                pool.largest = pool.active

    # --- search, count, msearch, scroll ----------------------------------------------------------

    @staticmethod
    def took_ms(started: float) -> int:
        """Honest wall time since the request was received, ms."""
        return int((time.monotonic() - started) * 1000)

    @staticmethod
    def match_shard(index: Index, shard: dict[str, Doc], request: SearchRequest) -> list[Hit]:
        matcher = request.matcher
        if matcher is match_all_docs:
            hits = [(1.0, doc, index) for doc in shard.values()]
        else:
            hits = []
            for doc in shard.values():
                score = matcher(doc)
                if score is not None:
                    hits.append((score, doc, index))
        if request.min_score is not None:
            hits = [h for h in hits if h[0] >= float(request.min_score)]
        return hits

    @staticmethod
    def shards_header(total: int, failures: list[tuple[str, int, EsError]]) -> dict:
        header = {"total": total, "successful": total - len(failures), "skipped": 0, "failed": len(failures)}
        if failures:
            header["failures"] = [{"shard": shard, "index": name, "status": error.status, "reason": error.cause()}
                                  for name, shard, error in failures]
        return header

    def _failures(self, outcomes: list[EsError | None], labels: list[tuple[str, int]]) -> list[tuple[str, int, EsError]]:
        """Failed shard tasks; when every shard failed the request fails with the first shard's error."""
        failures = [(labels[i][0], labels[i][1], error) for i, error in enumerate(outcomes) if error is not None]
        if failures and len(failures) == len(outcomes):
            raise failures[0][2]
        return failures

    async def search(self, indices: list[Index], request: SearchRequest, started: float) -> dict:
        """Fan out one shard task per shard, wait for them, merge: ES's query-then-fetch, simply."""
        if request.scroll is None and request.from_ + request.size > MAX_RESULT_WINDOW:
            raise EsError(400, "search_phase_execution_exception", "all shards failed", phase="query", grouped=True,
                          root={"type": "illegal_argument_exception", "reason":
                                f"Result window is too large, from + size must be less than or equal to: "
                                f"[{MAX_RESULT_WINDOW}] but was [{request.from_ + request.size}]. See the scroll api "
                                f"for a more efficient way to request large data sets."})
        self.count_requests([index.name for index in indices])
        shard_hits, shape, labels = [], [], []
        for index in indices:
            virtual = index.virtual_per_shard()
            for number, shard in enumerate(index.shards):
                hits = self.match_shard(index, shard, request)
                n = len(shard) + virtual
                shard_hits.append(hits)
                shape.append((index.name, n, request.matches(len(hits), virtual, n)))
                labels.append((index.name, number))
        total_m = sum(m for _, _, m in shape)
        returned = min(request.size, max(0.0, total_m - (0 if request.scroll else request.from_)))
        tasks = [(name, request.shard_ms(n, m, returned * m / total_m if total_m else 0.0), None) for name, n, m in shape]
        outcomes = await self.run_tasks("search", tasks)
        failures = self._failures(outcomes, labels)
        hits = [hit for outcome, found in zip(outcomes, shard_hits) if outcome is None for hit in found]
        agg_docs = [hit[1] for hit in hits]
        if request.post_filter is not None:
            hits = [hit for hit in hits if request.post_filter(hit[1]) is not None]
        if request.sort_keys:
            sort_hits(hits, request.sort_keys)
        else:
            hits.sort(key=lambda hit: hit[0], reverse=True)
        if request.search_after is not None:
            hits = [hit for hit in hits if _after(sort_values(hit, request.sort_keys), request.search_after, request.sort_keys)]
        scroll_id = None
        if request.scroll is not None:
            keep_alive = parse_duration_s(request.scroll, 60.0)
            live_shards = [(name, m) for (name, _, m), outcome in zip(shape, outcomes) if outcome is None]
            context = self.scrolls.open(hits, request, keep_alive, live_shards)
            page = hits[:request.size]
            context.position = len(page)
            scroll_id = context.id
        else:
            page = hits[request.from_:request.from_ + request.size]
        max_score = max((hit[0] for hit in hits), default=None)
        body = self.search_body(request, page, len(hits), self.took_ms(started), self.shards_header(len(tasks), failures),
                                max_score)
        if request.aggs:
            body["aggregations"] = aggregate(request.aggs, agg_docs,
                                             lambda: [d for index in indices for shard in index.shards for d in shard.values()])
        if scroll_id is not None:
            body = {"_scroll_id": scroll_id, **body}
        return body

    def search_body(self, request: SearchRequest, page: list[Hit], total: int, took: int, shards: dict,
                    max_score: float | None = None) -> dict:
        tth = request.track_total_hits
        scored = not request.field_sort or any(f == "_score" for f, _ in request.sort_keys)
        hits: dict[str, Any] = {}
        if tth is not False:
            limit = total if tth is True else int(tth)
            hits["total"] = {"value": min(total, limit), "relation": "gte" if total > limit else "eq"}
        if max_score is None:
            max_score = max((h[0] for h in page), default=None)
        hits["max_score"] = max_score if scored else None
        wanted, includes, excludes = request.source
        rendered = []
        for hit in page:
            score, doc, index = hit
            entry: dict[str, Any] = {"_index": index.name, "_id": doc.id, "_score": score if scored else None}
            if request.version:
                entry["_version"] = doc.version
            if request.seq_no_primary_term:
                entry["_seq_no"], entry["_primary_term"] = doc.seq_no, 1
            if wanted:
                entry["_source"] = filter_source(doc.source, includes, excludes)
            if request.sort_keys:
                entry["sort"] = sort_values(hit, request.sort_keys)
            rendered.append(entry)
        hits["hits"] = rendered
        return {"took": took, "timed_out": False, "_shards": shards, "hits": hits}

    async def scroll_page(self, scroll_id: str, keep_alive: Any, started: float) -> dict:
        """POST /_search/scroll: the next page of an open scroll; each shard pays to resume and fetch."""
        context = self.scrolls.get(scroll_id)
        if keep_alive:
            context.keep_alive_s = parse_duration_s(keep_alive, context.keep_alive_s)
        context.expires_at = time.monotonic() + context.keep_alive_s
        request = context.request
        page = context.hits[context.position:context.position + request.size]
        context.position += len(page)
        self.count_requests(sorted({name for name, _ in context.shards}))
        total_m = sum(m for _, m in context.shards)
        tasks = [(name, request.scroll_page_ms(m, len(page) * m / total_m if total_m else 0.0), None)
                 for name, m in context.shards]
        outcomes = await self.run_tasks("search", tasks)
        failures = self._failures(outcomes, [(name, i) for i, (name, _) in enumerate(context.shards)])
        body = self.search_body(request, page, len(context.hits), self.took_ms(started),
                                self.shards_header(len(tasks), failures))
        return {"_scroll_id": context.id, **body}

    async def count(self, indices: list[Index], request: SearchRequest, started: float) -> dict:
        self.count_requests([index.name for index in indices])
        counts, tasks, labels = [], [], []
        for index in indices:
            virtual = index.virtual_per_shard()
            for number, shard in enumerate(index.shards):
                real = len(self.match_shard(index, shard, request))
                n = len(shard) + virtual
                counts.append(real)
                tasks.append((index.name, request.count_ms(n, request.matches(real, virtual, n)), None))
                labels.append((index.name, number))
        outcomes = await self.run_tasks("search", tasks)
        failures = self._failures(outcomes, labels)
        total = sum(c for c, outcome in zip(counts, outcomes) if outcome is None)
        return {"count": total, "_shards": self.shards_header(len(tasks), failures)}

    async def msearch(self, default_expression: str | None, raw: bytes, params: Any, started: float) -> dict:
        """NDJSON header/body pairs, run concurrently; each response carries its own status."""
        lines = [line for line in raw.split(b"\n") if line.strip()]
        if len(lines) % 2:
            raise illegal_argument("The msearch request must be terminated by a newline [\\n]"
                                   if raw and not raw.endswith(b"\n") else "msearch: a header line without a body")
        pairs = [(loads_json(lines[i], "msearch header"), loads_json(lines[i + 1], "msearch body"))
                 for i in range(0, len(lines), 2)]

        async def one(header: Any, body: Any) -> dict:
            begun = time.monotonic()
            try:
                if not isinstance(header, dict) or not isinstance(body, dict):
                    raise parse_error("msearch lines must be JSON objects")
                target = header.get("index", default_expression)
                if isinstance(target, list):
                    target = ",".join(target)
                indices = self.catalog.resolve(target, truthy(header.get("ignore_unavailable", "false")))
                result = await self.search(indices, SearchRequest(body, {}), begun)
                return {**result, "status": 200}
            except EsError as error:
                return {"error": error.body()["error"], "status": error.status}

        responses = await asyncio.gather(*(one(h, b) for h, b in pairs))
        return {"took": self.took_ms(started), "responses": list(responses)}

    # --- HTTP: one handler per node, ES-shaped responses -------------------------------------------

    async def handle(self, node: Node, request: BaseRequest) -> web.Response:
        """Every request on every node lands here; `took` counts from this moment."""
        if node.hung is not None:  # a hung node answers nothing until it is resumed
            await node.hung.wait()
        started = time.monotonic()
        method = request.method
        try:
            if self.authorization is not None and request.headers.get("Authorization") != self.authorization:
                raise EsError(401, "security_exception", "unable to authenticate user for REST request "
                              f"[{request.path}]" if "Authorization" in request.headers
                              else f"missing authentication credentials for REST request [{request.path}]")
            status, payload = await self.dispatch(node, request, method, started)
        except EsError as error:
            status, payload = error.status, error.body()
        except web.HTTPRequestEntityTooLarge:
            status, payload = 413, EsError(413, "content_too_long_exception",
                                           f"request body is too large; max is [{MAX_BODY_BYTES}] bytes").body()
        except Exception as exc:  # noqa: BLE001 - a bug in the simulation still answers like ES, and says so
            print(f"simcluster: {method} {request.path_qs}: {exc!r}", file=sys.stderr)
            status, payload = 500, EsError(500, "exception", f"simcluster internal error: {exc!r}").body()
        return respond(request, method, status, payload)

    async def dispatch(self, node: Node, request: BaseRequest, method: str, started: float) -> tuple[int, Any]:
        path = request.raw_path.split("?", 1)[0]
        parts = [unquote(p) if "%" in p else p for p in path.split("/") if p]
        params = request.query
        raw = b""
        if request.can_read_body:
            raw = await request.read()
            if raw:
                check_content_type(request.headers.get("Content-Type"))
        elif "source" in params:
            raw = params["source"].encode()  # GET with ?source= instead of a body
        if not parts:
            allow(method, path, "GET", "HEAD")
            return 200, None if method == "HEAD" else self.root_info(node)
        head = parts[0]
        if head.startswith("_") and head != "_all":
            route = SYSTEM_ROUTES.get(head)
            if route is None:
                raise no_handler(path, method)
            return await route(self, node, method, path, parts, params, raw, started)
        return await self.index_route(method, path, parts, params, raw, started)

    def root_info(self, node: Node) -> dict:
        return {"name": node.name, "cluster_name": CLUSTER_NAME, "cluster_uuid": CLUSTER_UUID,
                "version": ES_VERSION, "tagline": "You Know, for Search"}

    async def index_route(self, method: str, path: str, parts: list[str], params: Any, raw: bytes,
                          started: float) -> tuple[int, Any]:
        """/{index}, /{index}/_search, /{index}/_doc/{id}, ..."""
        expression = parts[0]
        if len(parts) == 1:
            allow(method, path, "GET", "HEAD", "PUT", "DELETE")
            return self.index_admin(method, expression, params, raw)
        action = parts[1]
        if action in ("_doc", "_create", "_update", "_source") and len(parts) <= 3:
            return await self.document_route(method, path, action, expression, parts[2] if len(parts) == 3 else None,
                                             params, raw, started)
        if len(parts) == 3 and action == "_stats":
            allow(method, path, "GET")
            return 200, index_stats(self, self.catalog.resolve(expression), params)
        if len(parts) != 2:
            raise no_handler(path, method)
        if action == "_search":
            allow(method, path, "GET", "POST")
            return 200, await self.search_endpoint(expression, params, raw, started)
        if action == "_count":
            allow(method, path, "GET", "POST")
            return 200, await self.count_endpoint(expression, params, raw, started)
        if action == "_msearch":
            allow(method, path, "GET", "POST")
            return 200, await self.msearch(expression, raw, params, started)
        if action == "_bulk":
            allow(method, path, "POST", "PUT")
            return 200, await self.bulk(expression, raw, params, started)
        if action == "_mget":
            allow(method, path, "GET", "POST")
            return 200, self.mget(expression, body_object(raw), params)
        if action == "_refresh":
            allow(method, path, "GET", "POST")
            return 200, self.refresh(expression, params)
        if action == "_delete_by_query":
            allow(method, path, "POST")
            return 200, await self.delete_by_query(expression, body_object(raw), params, started)
        if action == "_stats":
            allow(method, path, "GET")
            return 200, index_stats(self, self.catalog.resolve(expression), params)
        if action in ("_settings", "_mapping", "_mappings"):
            allow(method, path, "GET", "PUT")
            return 200, self.settings_or_mapping(method, action, expression, body_object(raw))
        raise no_handler(path, method)

    async def search_endpoint(self, expression: str | None, params: Any, raw: bytes, started: float) -> dict:
        request = SearchRequest(body_object(raw), params)
        indices = self.catalog.resolve(expression, truthy(params.get("ignore_unavailable", "false")))
        result = await self.search(indices, request, started)
        if truthy(params.get("rest_total_hits_as_int", "false")) and "total" in result["hits"]:
            result["hits"]["total"] = result["hits"]["total"]["value"]
        return result

    async def count_endpoint(self, expression: str | None, params: Any, raw: bytes, started: float) -> dict:
        body = body_object(raw)
        unknown = [k for k in body if k != "query"]
        if unknown:
            raise EsError(400, "parsing_exception", f"request does not support [{unknown[0]}]", line=1, col=1)
        request = SearchRequest(body, {k: v for k, v in params.items() if k in ("q", "df", "default_operator")})
        indices = self.catalog.resolve(expression, truthy(params.get("ignore_unavailable", "false")))
        return await self.count(indices, request, started)

    async def scroll_endpoint(self, method: str, parts: list[str], params: Any, raw: bytes, started: float) -> tuple[int, Any]:
        body = body_object(raw)
        from_path = [parts[2]] if len(parts) > 2 else []
        if method == "DELETE":
            ids = body.get("scroll_id", params.get("scroll_id", ",".join(from_path)))
            ids = ids if isinstance(ids, list) else [s for s in str(ids).split(",") if s]
            if not ids:
                raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: no scroll ids specified;")
            freed = self.scrolls.clear(ids)
            return (200 if freed else 404), {"succeeded": True, "num_freed": freed}
        scroll_id = body.get("scroll_id") or params.get("scroll_id") or (from_path[0] if from_path else None)
        if not scroll_id:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: scrollId is missing;")
        result = await self.scroll_page(str(scroll_id), body.get("scroll", params.get("scroll")), started)
        return 200, result

    def index_admin(self, method: str, expression: str, params: Any, raw: bytes) -> tuple[int, Any]:
        """PUT (create), DELETE, HEAD (exists) and GET (settings + mappings) of an index."""
        if method == "PUT":
            index = self.catalog.create(expression, body_object(raw))
            self.count_requests([index.name])
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": index.name}
        if method == "DELETE":
            names = expression.split(",")
            if any("*" in n or "?" in n or n == "_all" for n in names):
                raise illegal_argument("Wildcard expressions or all indices are not allowed")
            indices = [self.catalog.concrete(n) for n in names]
            for index in indices:
                del self.catalog.indices[index.name]
            self.count_requests([index.name for index in indices])
            return 200, {"acknowledged": True}
        if method == "HEAD":
            try:
                found = self.catalog.resolve(expression)
            except EsError:
                found = []
            return (200 if found else 404), None
        indices = self.catalog.resolve(expression, truthy(params.get("ignore_unavailable", "false")))
        return 200, {index.name: {"aliases": {}, "mappings": index.mappings, "settings": self.index_settings(index)}
                     for index in indices}

    def index_settings(self, index: Index) -> dict:
        replicas = max(0, len(self._live) - 1)
        return {"index": {"number_of_shards": str(index.number_of_shards), "number_of_replicas": str(replicas),
                          "auto_expand_replicas": "0-all", "uuid": index.uuid, "provided_name": index.name,
                          "creation_date": str(index.created_ms), "version": {"created": "9009000"},
                          "sim": {"virtual_docs": str(index.virtual_docs)}}}

    def settings_or_mapping(self, method: str, action: str, expression: str, body: dict) -> dict:
        indices = self.catalog.resolve(expression)
        if method == "PUT" and action == "_settings":
            flat = flatten_settings(body)
            virtual = index_setting(flat, "sim.virtual_docs")
            for index in indices:
                if virtual is not None:
                    index.virtual_docs = max(0, int_param(virtual, "index.sim.virtual_docs", 0))
            return {"acknowledged": True}
        if method == "PUT":
            for index in indices:
                index.mappings = {**index.mappings, **body}
            return {"acknowledged": True}
        if action == "_settings":
            return {index.name: {"settings": self.index_settings(index)} for index in indices}
        return {index.name: {"mappings": index.mappings} for index in indices}

    # --- writes: documents, bulk, mget, refresh, delete_by_query ------------------------------------

    async def write(self, ops: list[WriteOp]) -> list[dict]:
        """Run writes on their primaries' write pools (one task per index shard, cost ∝ actions + bytes),
        then apply them in request order. Returns one bulk item (with `status`) per op."""
        items: list[dict | None] = [None] * len(ops)
        groups: dict[tuple[str, int], list[int]] = {}
        for position, op in enumerate(ops):
            if op.error is not None:
                items[position] = op.error_item(op.error)
                continue
            try:
                op.index = self.catalog.concrete(op.index_name) if op.action == "delete" else \
                    self.catalog.for_write(op.index_name)
            except EsError as error:
                items[position] = op.error_item(error)
                continue
            if op.doc_id is None:
                op.doc_id = new_doc_id()
            op.shard = op.index.shard_of(op.doc_id)
            groups.setdefault((op.index.name, op.shard), []).append(position)
        self.count_requests(sorted({name for name, _ in groups}))
        keys = list(groups)
        tasks = []
        for name, shard in keys:
            members = groups[(name, shard)]
            index = ops[members[0]].index
            tasks.append((name, write_ms(len(members), sum(ops[p].nbytes for p in members)), index.route_seed + shard))
        outcomes = await self.run_tasks("write", tasks)
        for key, outcome in zip(keys, outcomes):
            for position in groups[key]:
                items[position] = ops[position].error_item(outcome) if outcome else self.apply(ops[position])
        return items  # type: ignore[return-value]

    def apply(self, op: WriteOp) -> dict:
        """Apply one write to its shard (visible to search at once) and describe it as a bulk item."""
        index, shard = op.index, op.shard
        docs = index.shards[shard]
        existing = docs.get(op.doc_id)
        if op.if_seq_no is not None and (existing is None or existing.seq_no != op.if_seq_no or op.if_primary_term != 1):
            current = (f"current document has seqNo [{existing.seq_no}] and primary term [1]" if existing
                       else "but no document was found")
            return op.error_item(EsError(409, "version_conflict_engine_exception",
                                         f"[{op.doc_id}]: version conflict, required seqNo [{op.if_seq_no}], primary "
                                         f"term [{op.if_primary_term}]. {current}", index_uuid=index.uuid,
                                         shard=str(shard), index=index.name))
        source: dict | None = None
        if op.action == "create" and existing is not None:
            return op.error_item(EsError(409, "version_conflict_engine_exception",
                                         f"[{op.doc_id}]: version conflict, document already exists (current version "
                                         f"[{existing.version}])", index_uuid=index.uuid, shard=str(shard), index=index.name))
        if op.action in ("index", "create"):
            source = op.source
        elif op.action == "update":
            update = op.source
            if existing is None:
                if update.get("doc_as_upsert") and isinstance(update.get("doc"), dict):
                    source = update["doc"]
                elif isinstance(update.get("upsert"), dict):
                    source = update["upsert"]
                else:
                    return op.error_item(EsError(404, "document_missing_exception", f"[{op.doc_id}]: document missing",
                                                 index_uuid=index.uuid, shard=str(shard), index=index.name))
            elif isinstance(update.get("doc"), dict):
                source = deep_merge(existing.source, update["doc"])
                if source == existing.source and update.get("detect_noop", True):
                    return op.item(existing.version, existing.seq_no, "noop", 200, len(self._live))
            else:
                return op.error_item(illegal_argument("simcluster does not run painless: use a partial `doc` update"))
        elif existing is None:  # delete of a missing doc
            return op.item(1, index.next_seq_no(shard), "not_found", 404, len(self._live))
        seq_no = index.next_seq_no(shard)
        version = existing.version + 1 if existing else 1
        if source is None:
            del docs[op.doc_id]
            return op.item(version, seq_no, "deleted", 200, len(self._live))
        size = op.nbytes if op.action != "update" else len(orjson.dumps(source))
        docs[op.doc_id] = Doc(op.doc_id, source, version, seq_no, size)
        created = existing is None
        return op.item(version, seq_no, "created" if created else "updated", 201 if created else 200, len(self._live))

    async def write_one(self, op: WriteOp, params: Any) -> tuple[int, dict]:
        """A single-document write: the bulk item without `status`, or its error as an ES error body."""
        item = (await self.write([op]))[0]
        status = item.pop("status")
        if "error" in item:
            cause = dict(item["error"])
            raise EsError(status, cause.pop("type"), cause.pop("reason"), **cause)
        if params.get("refresh") in ("", "true"):
            item["forced_refresh"] = True
        return status, item

    async def document_route(self, method: str, path: str, action: str, expression: str, doc_id: str | None,
                             params: Any, raw: bytes, started: float) -> tuple[int, Any]:
        """/{index}/_doc[/{id}], /_create/{id}, /_update/{id}, /_source/{id}."""
        if action == "_doc" and doc_id is None:
            allow(method, path, "POST")
            return await self.write_one(WriteOp.document("index", expression, None, raw, params), params)
        if doc_id is None:
            raise no_handler(path, method)
        if action == "_doc" and method in ("GET", "HEAD"):
            return self.get_doc(expression, doc_id, params, source_only=False, head=method == "HEAD")
        if action == "_source":
            allow(method, path, "GET", "HEAD")
            return self.get_doc(expression, doc_id, params, source_only=True, head=method == "HEAD")
        if action == "_doc" and method == "DELETE":
            return await self.write_one(WriteOp.document("delete", expression, doc_id, b"", params), params)
        if action == "_doc":
            allow(method, path, "GET", "HEAD", "PUT", "POST", "DELETE")
            kind = "create" if params.get("op_type") == "create" else "index"
            return await self.write_one(WriteOp.document(kind, expression, doc_id, raw, params), params)
        if action == "_create":
            allow(method, path, "PUT", "POST")
            return await self.write_one(WriteOp.document("create", expression, doc_id, raw, params), params)
        allow(method, path, "POST")
        return await self.write_one(WriteOp.document("update", expression, doc_id, raw, params), params)

    def get_doc(self, expression: str, doc_id: str, params: Any, source_only: bool, head: bool) -> tuple[int, Any]:
        index = self.catalog.concrete(expression)
        self.count_requests([index.name])
        doc = index.get(doc_id)
        if doc is None:
            if source_only:
                raise EsError(404, "resource_not_found_exception", f"Document not found [{index.name}]/[{doc_id}]")
            return 404, None if head else {"_index": index.name, "_id": doc_id, "found": False}
        if head:
            return 200, None
        wanted, includes, excludes = source_filter(None, params)
        if source_only:
            return 200, filter_source(doc.source, includes, excludes)
        return 200, doc_body(index, doc, wanted, includes, excludes)

    def mget(self, expression: str | None, body: dict, params: Any) -> dict:
        wanted_docs = body.get("docs")
        if wanted_docs is None and "ids" in body:
            wanted_docs = [{"_id": i} for i in body["ids"]]
        if not wanted_docs:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: no documents to get;")
        out, names = [], set()
        for spec in wanted_docs:
            name, doc_id = spec.get("_index", expression), str(spec.get("_id"))
            if not name:
                raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: index is missing for doc 0;")
            index = self.catalog.indices.get(name)
            if index is None:
                out.append({"_index": name, "_id": doc_id, "error": index_not_found(name).cause()})
                continue
            names.add(name)
            doc = index.get(doc_id)
            wanted, includes, excludes = source_filter(spec.get("_source"), params)
            out.append(doc_body(index, doc, wanted, includes, excludes) if doc else
                       {"_index": name, "_id": doc_id, "found": False})
        self.count_requests(sorted(names))
        return {"docs": out}

    def refresh(self, expression: str | None, params: Any) -> dict:
        """Writes are visible at once; refresh is accepted and costs nothing."""
        indices = self.catalog.resolve(expression, truthy(params.get("ignore_unavailable", "false")))
        copies = sum(index.number_of_shards for index in indices) * max(1, len(self._live))
        return {"_shards": {"total": copies, "successful": copies, "failed": 0}}

    async def bulk(self, expression: str | None, raw: bytes, params: Any, started: float) -> dict:
        """NDJSON action/source pairs -> per-item results, `errors`, honest `took`."""
        ops: list[WriteOp] = []
        lines = raw.split(b"\n")
        position = 0
        while position < len(lines):
            line = lines[position].strip()
            position += 1
            if not line:
                continue
            try:
                action_line = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise illegal_argument(f"Malformed action/metadata line [{position}], expected START_OBJECT or "
                                       f"END_OBJECT but found [VALUE_STRING]") from None
            if not isinstance(action_line, dict) or len(action_line) != 1:
                raise illegal_argument(f"Malformed action/metadata line [{position}], expected a single action")
            (action, meta), = action_line.items()
            if action not in ("index", "create", "update", "delete") or not isinstance(meta, dict):
                raise illegal_argument(f"Malformed action/metadata line [{position}], expected one of "
                                       f"[create, delete, index, update] but found [{action}]")
            name = meta.get("_index") or expression
            if not name:
                raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: index is missing;")
            doc_id = None if meta.get("_id") is None else str(meta["_id"])
            if action in ("update", "delete") and doc_id is None:
                raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: id is missing;")
            if action == "delete":
                ops.append(WriteOp(action, name, doc_id, {}, len(line), meta))
                continue
            if position >= len(lines) or not lines[position].strip():
                raise illegal_argument("The bulk request must be terminated by a newline [\\n]")
            source_line = lines[position]
            position += 1
            op = WriteOp(action, name, doc_id, {}, len(source_line), meta)
            try:
                source = orjson.loads(source_line)
                if not isinstance(source, dict):
                    raise ValueError("not an object")
                op.source = source
            except ValueError as exc:
                op.error = EsError(400, "document_parsing_exception", f"[1:1] failed to parse: {exc}")
            ops.append(op)
        if not ops:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
        items = await self.write(ops)
        return {"errors": any("error" in item for item in items), "took": self.took_ms(started),
                "items": [{op.action: item} for op, item in zip(ops, items)]}

    async def delete_by_query(self, expression: str, body: dict, params: Any, started: float) -> dict:
        """Search-class cost on the search pools to find the matches, then the deletes on the write pools."""
        if "query" not in body and not params.get("q"):
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: query is missing;")
        request = SearchRequest({"query": body.get("query")}, {k: v for k, v in params.items() if k in ("q", "df")})
        indices = self.catalog.resolve(expression, truthy(params.get("ignore_unavailable", "false")))
        self.count_requests([index.name for index in indices])
        found, tasks, labels = [], [], []
        for index in indices:
            virtual = index.virtual_per_shard()
            for number, shard in enumerate(index.shards):
                hits = self.match_shard(index, shard, request)
                n = len(shard) + virtual
                found.append(hits)
                tasks.append((index.name, request.delete_by_query_ms(n, request.matches(len(hits), virtual, n)), None))
                labels.append((index.name, number))
        outcomes = await self.run_tasks("search", tasks)
        self._failures(outcomes, labels)
        victims = [hit for outcome, hits in zip(outcomes, found) if outcome is None for hit in hits]
        max_docs = body.get("max_docs", params.get("max_docs"))
        if max_docs is not None:
            victims = victims[:int_param(max_docs, "max_docs", len(victims))]
        ops = [WriteOp("delete", index.name, doc.id, {}, 64, {}) for _, doc, index in victims]
        items = await self.write(ops) if ops else []
        failures = [{"index": op.index_name, "id": op.doc_id, "cause": item["error"], "status": item["status"]}
                    for op, item in zip(ops, items) if "error" in item]
        return {"took": self.took_ms(started), "timed_out": False, "total": len(victims),
                "deleted": sum(1 for item in items if item.get("result") == "deleted"),
                "batches": math.ceil(len(victims) / 1000) if victims else 0, "version_conflicts": 0, "noops": 0,
                "retries": {"bulk": 0, "search": 0}, "throttled_millis": 0, "requests_per_second": -1.0,
                "throttled_until_millis": 0, "failures": failures}


# ============================================================================================
# Write operations and HTTP helpers
# ============================================================================================


class WriteOp:
    """One document write (a bulk action or a single-document API call)."""

    __slots__ = ("action", "index_name", "doc_id", "source", "nbytes", "if_seq_no", "if_primary_term",
                 "error", "index", "shard")

    def __init__(self, action: str, index_name: str, doc_id: str | None, source: dict, nbytes: int, meta: dict):
        self.action = action
        self.index_name = index_name
        self.doc_id = doc_id
        self.source = source  # the document, or the update body ({"doc": ...})
        self.nbytes = nbytes
        self.if_seq_no = None if meta.get("if_seq_no") is None else int(meta["if_seq_no"])
        self.if_primary_term = int(meta.get("if_primary_term", 1))
        self.error: EsError | None = None
        self.index: Index | None = None
        self.shard = 0

    @classmethod
    def document(cls, action: str, index_name: str, doc_id: str | None, raw: bytes, params: Any) -> WriteOp:
        """A single-document API call; its body must be a JSON object (none for delete)."""
        if "*" in index_name or "," in index_name:
            validate_index_name(index_name)
        source = {} if action == "delete" else body_object(raw)
        if action in ("index", "create", "update") and not raw.strip():
            raise EsError(400, "parse_exception", "request body is required")
        return cls(action, index_name, doc_id, source, len(raw), params)

    def item(self, version: int, seq_no: int, result: str, status: int, copies: int) -> dict:
        copies = max(1, copies)
        return {"_index": self.index.name if self.index else self.index_name, "_id": self.doc_id, "_version": version,
                "result": result, "_shards": {"total": copies, "successful": copies, "failed": 0},
                "_seq_no": seq_no, "_primary_term": 1, "status": status}

    def error_item(self, error: EsError) -> dict:
        return {"_index": self.index_name, "_id": self.doc_id, "status": error.status, "error": error.cause()}


def new_doc_id() -> str:
    """A 20-character URL-safe id, like ES's auto-generated ones."""
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def deep_merge(base: dict, patch: dict) -> dict:
    """A partial-document update: objects merge recursively, everything else is replaced."""
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def doc_body(index: Index, doc: Doc, wanted: bool, includes: list[str], excludes: list[str]) -> dict:
    body = {"_index": index.name, "_id": doc.id, "_version": doc.version, "_seq_no": doc.seq_no,
            "_primary_term": 1, "found": True}
    if wanted:
        body["_source"] = filter_source(doc.source, includes, excludes)
    return body


def no_handler(path: str, method: str) -> EsError:
    """ES answers an unregistered route with 400 and a flat error string (RestController.handleBadRequest)."""
    return EsError(400, "no_handler", f"no handler found for uri [{path}] and method [{method}]", flat=True)


def allow(method: str, path: str, *methods: str) -> None:
    """405 with ES's flat message when the route exists but not for this method."""
    if method not in methods:
        raise EsError(405, "method_not_allowed", f"Incorrect HTTP method for uri [{path}] and method [{method}], "
                      f"allowed: [{', '.join(sorted(methods))}]", flat=True)


_BODY_TYPES = ("application/json", "application/x-ndjson", "application/vnd.elasticsearch+json",
               "application/vnd.elasticsearch+x-ndjson")


def check_content_type(content_type: str | None) -> None:
    """ES refuses bodies it cannot parse with 406, and a body without a Content-Type too (real 8.19 and
    OpenSearch 2.19 nodes answer `Content-Type header [] is not supported`)."""
    if content_type is None:
        raise EsError(406, "content_type", "Content-Type header [] is not supported", flat=True)
    mimetype = content_type.split(";", 1)[0].strip().lower()
    if mimetype and mimetype not in _BODY_TYPES:
        raise EsError(406, "content_type", f"Content-Type header [{content_type}] is not supported", flat=True)


_CONTENT_TYPES: dict[str, str] = {}
_TEXT_TYPE = "text/plain; charset=UTF-8"


def json_content_type(accept: str) -> str:
    """application/json, or ES's vendor type echoing the client's compatible-with version."""
    found = _CONTENT_TYPES.get(accept)
    if found is None:
        found = "application/json"
        if "vnd.elasticsearch" in accept:
            version = _COMPAT_RE.search(accept)
            found = f"application/vnd.elasticsearch+json;compatible-with={version.group(1) if version else 9}"
        if len(_CONTENT_TYPES) < 256:
            _CONTENT_TYPES[accept] = found
    return found


def streamed_by_es8(method: str, path: str) -> bool:
    """Whether a real Elasticsearch 8.19 node answers this call (when it succeeds) with a chunked body and no
    Content-Length: searches, scroll pages, multi-searches, the _cat APIs and the task list do; documents,
    counts, cluster health and the like come with a Content-Length. A proxy in front sees both."""
    if method in ("HEAD", "DELETE"):
        return False
    parts = [p for p in path.split("/") if p]
    if not parts:
        return False
    if parts[0] == "_cat" or parts == ["_tasks"] or parts[:2] == ["_search", "scroll"]:
        return True
    return parts[-1] in ("_search", "_msearch")


def respond(request: BaseRequest, method: str, status: int, payload: Any) -> web.Response:
    """Serialise with orjson; every response says X-Elastic-Product: Elasticsearch; HEAD has no body.
    Framed as ES 8.19 frames it: chunked where it streams its answer (`streamed_by_es8`)."""
    if isinstance(payload, str):
        body, content_type = payload.encode(), _TEXT_TYPE
    else:
        body = b"" if payload is None else orjson.dumps(payload)
        content_type = json_content_type(request.headers.get("Accept", ""))
    if method == "HEAD":
        body = b""
    response = web.Response(body=body, status=status,
                            headers={"Content-Type": content_type, "X-Elastic-Product": "Elasticsearch"})
    if 200 <= status < 300 and streamed_by_es8(method, request.path):
        response.enable_chunked_encoding()
    return response


# ============================================================================================
# System endpoints: /_search, /_bulk, /_cluster, /_nodes, /_cat, /_sim, ...
# ============================================================================================


async def _search_route(cluster: SimCluster, node: Node, method: str, path: str, parts: list[str], params: Any,
                        raw: bytes, started: float) -> tuple[int, Any]:
    if len(parts) == 1:
        allow(method, path, "GET", "POST")
        return 200, await cluster.search_endpoint(None, params, raw, started)
    if parts[1] == "scroll" and len(parts) <= 3:
        allow(method, path, "GET", "POST", "DELETE")
        return await cluster.scroll_endpoint(method, parts, params, raw, started)
    raise no_handler(path, method)


def _top_level(methods: tuple[str, ...], call: Callable) -> Callable:
    """A route that exists only as /_name (no further path segments)."""
    async def route(cluster: SimCluster, node: Node, method: str, path: str, parts: list[str], params: Any,
                    raw: bytes, started: float) -> tuple[int, Any]:
        if len(parts) != 1:
            raise no_handler(path, method)
        allow(method, path, *methods)
        result = call(cluster, params, raw, started)
        return 200, (await result if asyncio.iscoroutine(result) else result)
    return route


def health(cluster: SimCluster, indices: list[Index]) -> dict:
    """Green while any node lives: every shard has a copy on every live node (auto_expand_replicas 0-all)."""
    live = len(cluster.live_nodes)
    primaries = sum(index.number_of_shards for index in indices)
    return {"cluster_name": CLUSTER_NAME, "status": "green", "timed_out": False, "number_of_nodes": live,
            "number_of_data_nodes": live, "active_primary_shards": primaries, "active_shards": primaries * live,
            "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": 0, "unassigned_primary_shards": 0,
            "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0, "number_of_in_flight_fetch": 0,
            "task_max_waiting_in_queue_millis": 0, "active_shards_percent_as_number": 100.0}


async def _cluster_route(cluster: SimCluster, node: Node, method: str, path: str, parts: list[str], params: Any,
                         raw: bytes, started: float) -> tuple[int, Any]:
    if len(parts) >= 2 and parts[1] == "health" and len(parts) <= 3:
        allow(method, path, "GET")
        indices = cluster.catalog.resolve(parts[2] if len(parts) == 3 else None)
        return 200, health(cluster, indices)
    if parts[1:] == ["settings"]:
        allow(method, path, "GET", "PUT")
        return 200, {"persistent": {}, "transient": {}} if method == "GET" else {"acknowledged": True, "persistent": {}, "transient": {}}
    raise no_handler(path, method)


async def _nodes_route(cluster: SimCluster, node: Node, method: str, path: str, parts: list[str], params: Any,
                       raw: bytes, started: float) -> tuple[int, Any]:
    """/_nodes[/{filter}][/{metrics}] (info) and /_nodes[/{filter}]/stats[/{metrics}] (thread pools)."""
    allow(method, path, "GET")
    live = cluster.live_nodes
    header = {"_nodes": {"total": len(live), "successful": len(live), "failed": 0}, "cluster_name": CLUSTER_NAME}
    if "stats" in parts:
        now_ms = int(time.time() * 1000)
        nodes = {}
        for member in live:
            info = member.describe()
            nodes[member.id] = {"timestamp": now_ms, "name": member.name, "transport_address": info["transport_address"],
                                "host": member.host, "ip": info["ip"], "roles": Node.ROLES, "attributes": {},
                                "thread_pool": {kind: pool.stats() for kind, pool in member.pools.items()}}
        return 200, {**header, "nodes": nodes}
    return 200, {**header, "nodes": {member.id: member.describe() for member in live}}


def index_stats(cluster: SimCluster, indices: list[Index], params: Any) -> dict:
    """GET [/{index}]/_stats[/{metric}]: the docs metric (virtual docs included), honouring `filter_path`."""
    copies = max(1, len(cluster.live_nodes))

    def docs(index_list: list[Index], times: int) -> dict:
        return {"docs": {"count": sum(i.stats_docs for i in index_list) * times, "deleted": 0}}

    shards = sum(i.number_of_shards for i in indices) * copies
    body = {
        "_shards": {"total": shards, "successful": shards, "failed": 0},
        "_all": {"primaries": docs(indices, 1), "total": docs(indices, copies)},
        "indices": {i.name: {"uuid": i.uuid, "health": "green", "status": "open", "primaries": docs([i], 1),
                             "total": docs([i], copies)} for i in indices},
    }
    return filter_path(body, params.get("filter_path"))


def filter_path(body: Any, spec: str | None) -> Any:
    """ES's `filter_path`: keep only the dotted paths listed (comma-separated; `*` matches one key)."""
    if not spec:
        return body
    paths = [p.split(".") for p in spec.split(",") if p]

    def keep(node: Any, rests: list[list[str]]) -> Any:
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            deeper = [rest[1:] for rest in rests if rest and fnmatch.fnmatchcase(key, rest[0])]
            if not deeper:
                continue
            out[key] = value if any(not rest for rest in deeper) else keep(value, deeper)
            if out[key] == {}:
                del out[key]
        return out

    return keep(body, paths)


def cat_table(rows: list[dict], columns: list[str], params: Any) -> tuple[int, Any]:
    """ES's _cat output: aligned text (`v` adds the header, `h` picks columns, `s` sorts) or `format=json`."""
    if params.get("h"):
        wanted = [c.strip() for c in params["h"].split(",")]
        columns = [c for pattern in wanted for c in columns if fnmatch.fnmatchcase(c, pattern)] or wanted
    for spec in reversed(params["s"].split(",") if params.get("s") else []):
        column, _, order = spec.partition(":")
        rows.sort(key=lambda row: comparable(_numeric(row.get(column, ""))), reverse=order == "desc")
    if params.get("format") == "json":
        return 200, [{c: row.get(c) for c in columns} for row in rows]
    table = ([columns] if "v" in params else []) + [[str(row.get(c, "")) for c in columns] for row in rows]
    if not table:
        return 200, ""
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    numeric = [bool(rows) and all(_numeric(row.get(c, "")) != row.get(c, "") for row in rows) for c in columns]
    text = []
    for line in table:
        cells = [cell.rjust(w) if numeric[i] else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        text.append(" ".join(cells).rstrip())
    return 200, "\n".join(text) + "\n"


_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)(b|kb|mb|gb|tb)?$")


def _numeric(value: str) -> Any:
    """'1000' -> 1000, '4.5kb' -> 4608.0; anything else unchanged (for sorting and alignment)."""
    match = _SIZE_RE.match(value or "")
    if not match:
        return value
    scale = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40, None: 1}[match.group(2)]
    number = float(match.group(1)) * scale
    return int(number) if number.is_integer() else number


async def _cat_route(cluster: SimCluster, node: Node, method: str, path: str, parts: list[str], params: Any,
                     raw: bytes, started: float) -> tuple[int, Any]:
    allow(method, path, "GET")
    what = parts[1] if len(parts) > 1 else ""
    target = parts[2] if len(parts) > 2 else None
    live = cluster.live_nodes
    raw_bytes = params.get("bytes") == "b"
    size = (lambda n: str(n)) if raw_bytes else format_bytes
    now = int(time.time())
    clock = time.strftime("%H:%M:%S", time.gmtime(now))
    if what == "indices":
        rows = []
        for index in cluster.catalog.resolve(target):
            primary = index.store_bytes
            rows.append({"health": "green", "status": "open", "index": index.name, "uuid": index.uuid,
                         "pri": str(index.number_of_shards), "rep": str(max(0, len(live) - 1)),
                         "docs.count": str(index.stats_docs), "docs.deleted": "0",
                         "store.size": size(primary * max(1, len(live))), "pri.store.size": size(primary),
                         "dataset.size": size(primary)})
        return cat_table(rows, ["health", "status", "index", "uuid", "pri", "rep", "docs.count", "docs.deleted",
                                "store.size", "pri.store.size", "dataset.size"], params)
    if what == "health":
        h = health(cluster, cluster.catalog.resolve(None))
        row = {"epoch": str(now), "timestamp": clock, "cluster": CLUSTER_NAME, "status": "green",
               "node.total": str(len(live)), "node.data": str(len(live)), "shards": str(h["active_shards"]),
               "pri": str(h["active_primary_shards"]), "relo": "0", "init": "0", "unassign": "0", "unassign.pri": "0",
               "pending_tasks": "0", "max_task_wait_time": "-", "active_shards_percent": "100.0%"}
        return cat_table([row], list(row), params)
    if what == "count":
        total = sum(index.doc_count for index in cluster.catalog.resolve(target))
        row = {"epoch": str(now), "timestamp": clock, "count": str(total)}
        return cat_table([row], list(row), params)
    if what == "nodes":
        rows = [{"ip": member.host, "port": str(member.port), "node.role": "cdhilmrstw",
                 "master": "*" if member is live[0] else "-", "name": member.name,
                 "search.active": str(member.pools["search"].active), "search.queue": str(len(member.pools["search"].waiting)),
                 "search.rejected": str(member.pools["search"].rejected)} for member in live]
        return cat_table(rows, ["ip", "port", "node.role", "master", "name"], params)
    raise no_handler(path, method)


async def _stats_route(cluster: SimCluster, method: str, path: str, parts: list[str], params: Any) -> tuple[int, Any]:
    if len(parts) > 2:
        raise no_handler(path, method)
    allow(method, path, "GET")
    return 200, index_stats(cluster, cluster.catalog.resolve(None), params)


async def _sim_route(cluster: SimCluster, node: Node, method: str, path: str, parts: list[str], params: Any,
                     raw: bytes, started: float) -> tuple[int, Any]:
    """Control for subprocess users: stats, reset, stop/start a node, hang/resume one (it accepts and reads
    requests but answers none, as a SIGSTOPped process does, until resumed)."""
    if parts[1:] == ["stats"]:
        allow(method, path, "GET")
        return 200, cluster.stats()
    if parts[1:] == ["_reset_stats"]:
        allow(method, path, "POST")
        cluster.reset_stats()
        return 200, {"acknowledged": True}
    if len(parts) == 4 and parts[1] == "nodes" and parts[3] in ("_hang", "_resume"):
        allow(method, path, "POST")
        try:
            target = cluster.nodes[int(parts[2])]
        except (ValueError, IndexError):
            raise EsError(404, "resource_not_found_exception", f"no node [{parts[2]}]") from None
        if target is node:
            raise illegal_argument("ask another node to hang or resume this one")
        if parts[3] == "_hang" and target.hung is None:
            target.hung = asyncio.Event()
        elif parts[3] == "_resume" and target.hung is not None:
            target.hung.set()
            target.hung = None
        return 200, {"acknowledged": True, "node": target.name, "hung": target.hung is not None}
    if len(parts) == 4 and parts[1] == "nodes" and parts[3] in ("_stop", "_start"):
        allow(method, path, "POST")
        try:
            target = cluster.nodes[int(parts[2])]
        except (ValueError, IndexError):
            raise EsError(404, "resource_not_found_exception", f"no node [{parts[2]}]") from None
        if parts[3] == "_start":
            await cluster.start_node(target.number)
        elif target is node:  # stopping the node that carries this request: answer first
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, lambda: loop.create_task(cluster.stop_node(target.number)))
        else:
            await cluster.stop_node(target.number)
        return 200, {"acknowledged": True, "node": target.name, "url": target.url, "live_nodes": len(cluster.live_nodes)}
    raise no_handler(path, method)


SYSTEM_ROUTES: dict[str, Callable] = {
    "_search": _search_route,
    "_msearch": _top_level(("GET", "POST"), lambda c, p, r, s: c.msearch(None, r, p, s)),
    "_count": _top_level(("GET", "POST"), lambda c, p, r, s: c.count_endpoint(None, p, r, s)),
    "_bulk": _top_level(("POST", "PUT"), lambda c, p, r, s: c.bulk(None, r, p, s)),
    "_mget": _top_level(("GET", "POST"), lambda c, p, r, s: c.mget(None, body_object(r), p)),
    "_refresh": _top_level(("GET", "POST"), lambda c, p, r, s: c.refresh(None, p)),
    "_cluster": _cluster_route,
    "_nodes": _nodes_route,
    "_cat": _cat_route,
    "_stats": lambda c, n, m, path, parts, params, r, s: _stats_route(c, m, path, parts, params),
    "_sim": _sim_route,
}


# ============================================================================================
# CLI
# ============================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A simulated Elasticsearch cluster (N nodes in one process).")
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument("--port", type=int, default=0, help="first node's port; 0 = free ports (default)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, default=4, help="search threads per node")
    parser.add_argument("--queue", type=int, default=100, help="search queue capacity per node")
    parser.add_argument("--write-threads", type=int, default=4, help="write threads per node")
    parser.add_argument("--write-queue", type=int, default=1000, help="write queue capacity per node")
    parser.add_argument("--virtual-docs", type=int, default=0, help="notional docs added to every index (cost only)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every service time by this")
    parser.add_argument("--instant", action="store_true", help="zero service time, no pool accounting")
    parser.add_argument("--jitter", type=float, default=0.02, help="± fraction of deterministic service-time jitter")
    parser.add_argument("--seed", type=int, default=1, help="seed of the jitter")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and --tls-key)")
    parser.add_argument("--tls-key", help="the certificate's PEM key")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM)")
    parser.add_argument("--require-authorization", help="answer 401 to a request without exactly this Authorization value")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    """Start the nodes, print one JSON line with their URLs, serve until SIGTERM/SIGINT."""
    context = None
    if args.tls_cert:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            context.load_verify_locations(cafile=args.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    cluster = SimCluster(nodes=args.nodes, threads=args.threads, queue=args.queue, write_threads=args.write_threads,
                         write_queue=args.write_queue, virtual_docs=args.virtual_docs, time_scale=args.time_scale,
                         instant=args.instant, host=args.host, port=args.port, jitter=args.jitter, seed=args.seed,
                         ssl_context=context, authorization=args.require_authorization)
    await cluster.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    sys.stdout.write(orjson.dumps({"nodes": cluster.node_urls}).decode() + "\n")
    sys.stdout.flush()
    await stopping.wait()
    await cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, just slower
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
