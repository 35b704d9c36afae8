"""Property fuzzing of what untrusted requests reach first: esapi, cost and the grants (10,000 examples each).

Every input ends in a value or a Refusal with a 4xx status, never another exception; and a
request the grants let through touches no index outside the tenant's patterns, judged by an
oracle written separately from proxy/tenants.py. Longer, coverage-guided runs: tests/fuzz/README.md.
"""
from __future__ import annotations

import gzip
import math
import zlib
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import esapi
from proxy.config import HardLimits, hash_secret, parse_config
from proxy.cost import CostModel, Weights
from proxy.errors import BadRequest, Forbidden, Refusal
from proxy.idbinding import IdBinder
from proxy.tenants import Directory, authorize
from tests.fuzz.oracle import EVERYTHING, expression_ok, name_ok

CI = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
LIMITS = HardLimits(max_inflated_bytes=64 * 1024, max_json_depth=20, max_ndjson_lines=50)
MODEL = CostModel(Weights())
ACME = Directory(parse_config({
    "upstream": {"nodes": ["http://127.0.0.1:9200"]},
    "plans": {"p": {}},
    "tenants": {"acme": {"plan": "p", "api_keys": [hash_secret("k")], "indices": ["acme-*", "shared-acme"]}},
})).tenants["acme"]
BINDER = IdBinder(b"k" * 32)


# ---- requests built together with the names they touch ----------------------------------------

NAMES = st.one_of(
    st.sampled_from([
        "acme-a", "acme-*", "acme-", "acme", "acm*", "*", "_all", "-acme-a", "-globex-a", "globex-a", "shared-acme",
        "shared-acme*", "remote:acme-a", "acme-a:x", "<acme-{now/d}>", "<globex-{now/d}>", "acme-a/../globex",
        "acme-\u2063", "", " acme-a", "acme-a ", ".security", "+acme-a", "acme-a,globex-b", "acme-*,-acme-b",
        "ACME-a", "acme-a\x00", "acme-a\n", "<acme-{now/d}|globex>", "*:acme-a", "acme-a::failures",
    ]),
    st.text(alphabet="acmeglobx-*:,<>{}/. +_", max_size=12).filter(lambda s: not s.startswith("_") or s == "_all"),
)
EXPRESSIONS = st.lists(NAMES, min_size=1, max_size=3)


def in_path(names: list[str]) -> str:
    return ",".join(quote(n, safe="*<>:+") for n in names)


def nd(lines: list) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def named(expression: list[str]) -> bool:
    return any(part for name in expression for part in name.split(","))


@st.composite
def requests(draw):
    """(method, target, content type, body bytes, [expressions touched], [names touched]).

    A path without an index reaches every index unless the body names them: EVERYTHING stands for that.
    """
    e = draw(EXPRESSIONS)
    path_default = e if named(e) else EVERYTHING
    shape = draw(st.sampled_from([
        "search", "doc", "create", "alias", "clone", "cat", "health", "resolve", "msearch", "msearch_path", "bulk",
        "bulk_path", "mget", "mget_path", "reindex", "aliases", "sql", "esql", "docref", "create_aliases", "param",
    ]))
    j, n = "application/json", "application/x-ndjson"
    if shape == "search":
        return "POST", f"/{in_path(e)}/_search", j, b"{}", [path_default], []
    if shape == "doc":
        return draw(st.sampled_from(["GET", "PUT", "DELETE"])), f"/{in_path(e)}/_doc/1", j, b"{}", [path_default], []
    if shape == "create":
        return "PUT", f"/{in_path(e)}", j, b"", [path_default], []
    if shape in ("alias", "clone"):
        target = draw(EXPRESSIONS)
        api = "_alias" if shape == "alias" else draw(st.sampled_from(["_clone", "_shrink", "_split", "_rollover"]))
        parts = [p for t in target for p in t.split(",") if p]
        return "PUT" if shape == "alias" else "POST", f"/{in_path(e)}/{api}/{in_path(target)}", j, b"", [path_default], parts
    if shape in ("cat", "health", "resolve"):
        prefix = {"cat": "/_cat/indices/", "health": "/_cluster/health/", "resolve": "/_resolve/index/"}[shape]
        # GET /_cluster/health/ without an index is the one open cluster call
        return "GET", prefix + in_path(e), j, b"", [path_default] if named(e) or shape != "health" else [], []
    if shape in ("msearch", "msearch_path"):
        headers = draw(st.lists(st.one_of(st.none(), EXPRESSIONS, NAMES), min_size=1, max_size=3))
        lines, exprs = [], []
        for h in headers:
            if h is None:
                lines += [{}, {}]
                exprs.append(path_default if shape == "msearch_path" else EVERYTHING)
            else:
                lines += [{draw(st.sampled_from(["index", "indices"])): h}, {}]
                exprs.append(h if isinstance(h, list) else [h])
        path = f"/{in_path(e)}/_msearch" if shape == "msearch_path" else "/_msearch"
        return "POST", path, n, nd(lines), exprs + ([e] if shape == "msearch_path" and named(e) else []), []
    if shape in ("bulk", "bulk_path"):
        targets = draw(st.lists(st.one_of(st.none(), NAMES), min_size=1, max_size=3))
        lines, names, exprs = [], [], []
        for t in targets:
            op = draw(st.sampled_from(["index", "create", "delete", "update"]))
            lines.append({op: {} if t is None else {"_index": t, "_id": "1"}})
            if op != "delete":
                lines.append({"a": 1})
            if t is None:
                exprs.append(path_default if shape == "bulk_path" else EVERYTHING)
            else:
                names.append(t)
        path = f"/{in_path(e)}/_bulk" if shape == "bulk_path" else "/_bulk"
        return "POST", path, n, nd(lines), exprs + ([e] if shape == "bulk_path" and named(e) else []), names
    if shape in ("mget", "mget_path"):
        targets = draw(st.lists(st.one_of(st.none(), NAMES), min_size=1, max_size=3))
        docs = [{"_id": "1"} if t is None else {"_index": t, "_id": "1"} for t in targets]
        exprs = [path_default if shape == "mget_path" else EVERYTHING for t in targets if t is None]
        path = f"/{in_path(e)}/_mget" if shape == "mget_path" else "/_mget"
        return "POST", path, j, orjson.dumps({"docs": docs}), exprs + ([e] if shape == "mget_path" and named(e) else []), \
            [t for t in targets if t is not None]
    if shape == "reindex":
        dest = draw(NAMES)
        return "POST", "/_reindex", j, orjson.dumps({"source": {"index": e}, "dest": {"index": dest}}), [path_default], [dest]
    if shape == "aliases":
        alias = draw(NAMES)
        op = draw(st.sampled_from(["add", "remove", "remove_index"]))
        spec = {"index": e} if op == "remove_index" else {"indices": e, "alias": alias}
        return "POST", "/_aliases", j, orjson.dumps({"actions": [{op: spec}]}), [path_default], \
            [] if op == "remove_index" else [alias]
    if shape in ("sql", "esql"):
        names = [x for x in e if '"' not in x and "\\" not in x]
        if not names:
            names = ["acme-a"]
        quoted = ", ".join('"' + x + '"' for x in names)
        query = f"SELECT * FROM {quoted} LIMIT 5" if shape == "sql" else f"FROM {quoted} | LIMIT 5"
        return "POST", "/_sql" if shape == "sql" else "/_query", j, orjson.dumps({"query": query}), [names], []
    if shape == "docref":
        other = draw(NAMES)
        body = {"query": {"terms": {"f": {draw(st.sampled_from(["index", "_index"])): other, "id": "1", "path": "p"}}}}
        return "POST", f"/{in_path(e)}/_search", j, orjson.dumps(body), [path_default], [other]
    if shape == "create_aliases":
        alias = draw(NAMES)
        return "PUT", f"/{in_path(e)}", j, orjson.dumps({"aliases": {alias: {}}}), [path_default], [alias]
    other = draw(EXPRESSIONS)  # "param": ?index= next to the path's own
    target = f"/{in_path(e)}/_search?index={quote(','.join(other), safe='')}"
    return "POST", target, j, b"{}", [path_default, other if named(other) else EVERYTHING], []


def run_grants(method: str, target: str, ctype: str, raw: bytes) -> esapi.EsCall | None:
    """Both grant phases as flow runs them; None when refused (only ever 400 / 403 / 406 / 413)."""
    try:
        call = esapi.parse_call(method, target)
        authorize(ACME, call, None)
        body = esapi.decode_body(call, raw, ctype, None, LIMITS)
        authorize(ACME, call, body or esapi.NO_BODY)
        BINDER.rebind("acme", call, body, target)
    except Refusal as refusal:
        assert refusal.status in (400, 403, 406, 413), refusal
        return None
    return call


@CI
@given(requests())
def test_the_grants_never_let_an_index_outside_the_tenants_patterns_through(request):
    method, target, ctype, raw, expressions, names = request
    if run_grants(method, target, ctype, raw) is None:
        return
    for expression in expressions:
        assert expression_ok(expression), (target, raw, expression)
    for name in names:
        assert name_ok(name), (target, raw, name)


# ---- decode_body and cost on arbitrary bytes ---------------------------------------------------

CALLS = [esapi.parse_call(m, t) for m, t in [
    ("POST", "/acme-a/_search"), ("POST", "/_msearch"), ("POST", "/acme-a/_bulk"), ("POST", "/_mget"),
    ("POST", "/_reindex"), ("POST", "/_aliases"), ("PUT", "/acme-a"), ("POST", "/_sql"), ("POST", "/_query"),
    ("POST", "/acme-a/_doc"), ("POST", "/_search/scroll"), ("DELETE", "/_pit"), ("POST", "/acme-a/_count"),
    ("POST", "/acme-a/_search/template"), ("POST", "/acme-a/_msearch/template"), ("PUT", "/acme-a/_mapping"),
    ("POST", "/_text_structure/find_structure"), ("POST", "/acme-a/_delete_by_query"), ("GET", "/acme-a/_search?scroll=1m"),
]]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.sampled_from(["acme-a", "globex-a", "*", "_all", "sg1.x.y", "SELECT * FROM x"]) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["query", "index", "_index", "id", "pit", "docs", "source", "dest", "actions", "aliases",
                         "add", "bool", "must", "terms", "scroll_id", "size", "aggs", "x"]), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["binary", "json", "ndjson", "gzip", "deflate", "truncated"]))
    if kind == "binary":
        return draw(st.binary(max_size=300)), None
    if kind == "json":
        return orjson.dumps(draw(JSON)), None
    if kind == "ndjson":
        return b"\n".join(orjson.dumps(x) for x in draw(st.lists(JSON, max_size=5))) + draw(st.sampled_from([b"", b"\n"])), None
    data = orjson.dumps(draw(JSON))
    if kind == "gzip":
        return gzip.compress(data), "gzip"
    if kind == "deflate":
        return zlib.compress(data), draw(st.sampled_from(["deflate", "x-deflate"]))
    packed = gzip.compress(data)
    return packed[: draw(st.integers(0, len(packed)))], "gzip"


CONTENT_TYPES = st.one_of(
    st.none(), st.sampled_from(["application/json", "application/x-ndjson", "application/json; charset=UTF-8",
                                "text/plain", "application/smile", "application/vnd.elasticsearch+json;compatible-with=8"]),
    st.text(max_size=12),
)
ENCODINGS = st.one_of(st.none(), st.sampled_from(["identity", "gzip", "deflate", "br", "gzip, deflate", ""]), st.text(max_size=6))


@CI
@given(st.sampled_from(CALLS), bodies(), CONTENT_TYPES, ENCODINGS)
def test_decode_body_and_cost_take_any_bytes(call, body, ctype, override):
    raw, encoding = body
    try:
        decoded = esapi.decode_body(call, raw, ctype, override if override is not None else encoding, LIMITS)
        authorize(ACME, call, decoded or esapi.NO_BODY)
    except Refusal as refusal:
        assert 400 <= refusal.status < 500, refusal
        return
    estimate = MODEL.estimate(call, decoded)
    assert math.isfinite(estimate.cost) and estimate.cost > 0
    assert 0 <= estimate.fingerprint < 2**64


# ---- parse_call on any text ---------------------------------------------------------------------

URL_BITS = st.sampled_from([
    "", "_search", "_msearch", "_bulk", "_mget", "_doc", "_cat", "indices", "_cluster", "health", "settings", "_nodes",
    "hot_threads", "_alias", "_aliases", "_clone", "_rollover", "_sql", "_query", "_plugins", "_ppl", "_async_search",
    "status", "_pit", "scroll", "point_in_time", "_all", "*", "acme-a", "acme-*", "-acme-b", "globex-a", "..", ".",
    "%2e%2e", "%2F", "%zz", "%00", "%C3%28", ",", "?", "&", "=", "size=abc", "scroll=1m", "index=globex-a", "é",
])


@CI
@given(st.one_of(st.text(max_size=24), st.lists(URL_BITS, max_size=7).map(lambda bits: "/" + "/".join(bits))),
       st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "get"]))
def test_parse_call_and_the_path_grant_take_any_text(target, method):
    try:
        call = esapi.parse_call(method, target)
    except BadRequest as refusal:
        assert refusal.status == 400
        return
    assert all(call.indices) and all(call.targets)
    try:
        authorize(ACME, call, None)
    except Forbidden:
        return
    if call.indices and not call.cluster:
        assert expression_ok(list(call.indices)), target
    for name in call.targets:
        assert name_ok(name), target
