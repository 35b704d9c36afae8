"""Credentials → tenant, and the index and API grants over whole requests (path, then body)."""
from __future__ import annotations

import base64

import orjson
import pytest

from proxy import esapi
from proxy.config import HardLimits, hash_secret, parse_config
from proxy.errors import BadRequest, Forbidden, Refusal, Unauthorized
from proxy.tenants import Directory, _check_index, authorize


@pytest.fixture
def directory() -> Directory:
    return Directory(parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": {"p": {}},
        "tenants": {
            "acme": {"plan": "p", "api_keys": [hash_secret("acme-key")], "users": {"app": hash_secret("pw")},
                     "indices": ["acme-*", "shared-acme"]},
            "globex": {"plan": "p", "api_keys": [hash_secret("globex-key")], "indices": ["globex-*"]},
        },
    }))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_api_key_and_basic_identify_their_tenant(directory):
    assert directory.identify("ApiKey acme-key", "/").name == "acme"
    assert directory.identify("apikey globex-key", "/").name == "globex"  # scheme is case-insensitive
    assert directory.identify(basic("app", "pw"), "/").name == "acme"


@pytest.mark.parametrize("header", [
    None, "", "ApiKey", "ApiKey wrong", "Bearer acme-key", basic("app", "wrong"), basic("nobody", "pw"),
    "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(), "ApiKey \udcff",
])
def test_anything_else_is_401_without_naming_a_secret(directory, header):
    with pytest.raises(Unauthorized) as info:
        directory.identify(header, "/acme-x/_search")
    assert info.value.status == 401
    assert "acme-key" not in info.value.reason
    assert "WWW-Authenticate" in info.value.headers


def test_only_credentials_that_identified_a_tenant_are_remembered_and_they_stay_bounded(directory, monkeypatch):
    from proxy import tenants

    for _ in range(3):
        assert directory.identify("ApiKey acme-key", "/").name == "acme"
        with pytest.raises(Unauthorized):
            directory.identify(basic("app", "wrong"), "/")  # a remembered user with a wrong password
        with pytest.raises(Unauthorized):
            directory.identify("ApiKey nope", "/")
    assert list(directory._known) == ["ApiKey acme-key"]
    directory.identify("ApiKey " + " " * tenants.KNOWN_CREDENTIAL_CHARS + "acme-key", "/")  # valid, too long to keep
    assert len(directory._known) == 1
    monkeypatch.setattr(tenants, "KNOWN_CREDENTIALS", 4)
    for spaces in range(1, 10):  # many spellings of one valid key
        assert directory.identify("ApiKey" + " " * spaces + "globex-key", "/").name == "globex"
        assert len(directory._known) <= 4


@pytest.mark.parametrize("index,allowed", [
    ("acme-logs", True), ("acme-*", True), ("acme-logs-*", True), ("shared-acme", True),
    ("-globex-x", True),  # an exclusion only narrows
    ("<acme-{now/d}>", True), ("<globex-{now/d}>", False),
    ("globex-logs", False), ("acme", False), ("acm*", False), ("*", False), ("_all", False),
    ("shared-acme*", False), ("", False),
])
def test_index_grant(directory, index, allowed):
    view = directory.tenants["acme"]

    class Call:
        api = "search"

    if allowed:
        _check_index(view, Call, index)
    else:
        with pytest.raises(Forbidden):
            _check_index(view, Call, index)


# ---- grants over whole requests -----------------------------------------------------------

LIMITS = HardLimits()


@pytest.fixture
def grants() -> Directory:
    return Directory(parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": {
            "p": {},
            "ops": {"cluster_apis": ["cat.*", "cluster.state"]},
            "readonly": {"resources": ["search", "read"]},
        },
        "tenants": {
            "acme": {"plan": "p", "api_keys": [hash_secret("acme-key")], "indices": ["acme-*", "shared-acme"]},
            "ops": {"plan": "ops", "api_keys": [hash_secret("ops-key")], "indices": ["ops-*"]},
            "ro": {"plan": "readonly", "api_keys": [hash_secret("ro-key")], "indices": ["ro-*"]},
        },
    }))


def check(directory: Directory, method: str, target: str, body=None, tenant: str = "acme",
          content_type: str | None = None) -> None:
    """Both grant phases, as flow runs them: the path, then the decoded body."""
    view = directory.tenants[tenant]
    call = esapi.parse_call(method, target)
    authorize(view, call, None)
    raw = orjson.dumps(body) if isinstance(body, dict) else body or b""
    ctype = content_type or ("application/x-ndjson" if call.kind in ("bulk", "msearch", "msearch_template")
                             else "application/json")
    decoded = esapi.decode_body(call, raw, ctype, None, LIMITS)
    authorize(view, call, decoded or esapi.NO_BODY)


def nd(*lines) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


ALLOWED = [
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("GET", "/_cluster/health", None),
    ("GET", "/_cluster/health/acme-logs", None),
    ("GET", "/_cat/indices/acme-*", None),
    ("POST", "/acme-logs/_search", {"query": {"match_all": {}}}),
    ("POST", "/acme-*/_search", None),
    ("POST", "/acme-logs-*,-acme-logs-old/_search", None),
    ("GET", "/%3Cacme-%7Bnow%2Fd%7D%3E/_search", None),
    ("POST", "/shared-acme/_count", None),
    ("PUT", "/acme-new", {"aliases": {"acme-alias": {}}, "mappings": {}}),
    ("PUT", "/acme-x/_alias/acme-alias", None),
    ("POST", "/acme-x/_clone/acme-y", None),
    ("POST", "/acme-alias/_rollover/acme-000002", {"aliases": {"acme-current": {}}}),
    ("POST", "/_aliases", {"actions": [{"add": {"index": "acme-x", "alias": "acme-a"}},
                                       {"remove": {"indices": ["acme-y"], "aliases": ["acme-b"]}},
                                       {"remove_index": {"index": "acme-old"}}]}),
    ("POST", "/_reindex", {"source": {"index": ["acme-a", "acme-b"]}, "dest": {"index": "acme-c"}}),
    ("POST", "/_msearch", nd({"index": "acme-a"}, {}, {"indices": ["acme-b"]}, {"query": {"match_all": {}}})),
    ("POST", "/acme-a/_msearch", nd({}, {}, {"index": "acme-b"}, {})),
    ("POST", "/_bulk", nd({"index": {"_index": "acme-a"}}, {"x": 1}, {"delete": {"_index": "acme-b", "_id": "1"}})),
    ("POST", "/acme-a/_bulk", nd({"index": {}}, {"x": 1}, {"create": {"_index": "acme-b"}}, {"y": 2})),
    ("POST", "/_mget", {"docs": [{"_index": "acme-a", "_id": "1"}, {"_index": "shared-acme", "_id": "2"}]}),
    ("POST", "/acme-a/_mget", {"ids": ["1", "2"]}),
    ("POST", "/_sql", {"query": "SELECT * FROM \"acme-logs\" WHERE a = 1"}),
    ("POST", "/_query", {"query": "FROM acme-logs, acme-metrics METADATA _id | LIMIT 10"}),
    ("POST", "/_plugins/_ppl", {"query": "source=acme-logs | where a = 1"}),
    ("POST", "/acme-logs/_eql/search", {"query": "process where true"}),
    ("POST", "/acme-a/_search", {"query": {"terms": {"user": {"index": "acme-users", "id": "1", "path": "f"}}}}),
    ("POST", "/acme-a/_search/template", {"source": {"query": {"match": {"f": "{{q}}"}}}, "params": {"q": "x"}}),
    ("POST", "/acme-a/_search/template", {"id": "stored-template", "params": {"q": "x"}}),
    ("POST", "/_search", {"pit": {"id": "sg1.x.y", "keep_alive": "1m"}}),  # the id itself is idbinding's to check
    ("POST", "/_search/scroll", {"scroll_id": "anything"}),
    ("DELETE", "/acme-a/_doc/1", None),
    ("POST", "/acme-a/_delete_by_query", {"query": {"match_all": {}}}),
    ("GET", "/_resolve/index/acme-*", None),
    ("GET", "/_data_stream/acme-stream", None),
]


@pytest.mark.parametrize("method,target,body", ALLOWED, ids=[f"{m} {t}" for m, t, _ in ALLOWED])
def test_calls_inside_the_grant_pass(grants, method, target, body):
    check(grants, method, target, body)


DENIED = [
    # path expressions
    ("GET", "/globex-logs/_search", None),
    ("GET", "/_all/_search", None),
    ("GET", "/*/_search", None),
    ("GET", "/_search", None),
    ("GET", "/acme-*,globex-*/_search", None),
    ("GET", "/-acme-x/_search", None),  # a leading exclusion once meant "everything but"
    ("GET", "/acme*/_search", None),
    ("GET", "/remote:acme-x/_search", None),
    ("GET", "/acme-x%2F..%2Fglobex/_search", None),
    ("GET", "/%3Cglobex-%7Bnow%2Fd%7D%3E/_search", None),
    ("GET", "/_count", None),
    ("POST", "/_refresh", None),
    ("PUT", "/_settings", {"index": {"number_of_replicas": 0}}),
    ("GET", "/_cluster/health/globex-x", None),
    ("GET", "/_cluster/health?level=indices", None),
    ("GET", "/_cat/indices", None),
    ("GET", "/_cat/indices/globex-*", None),
    ("GET", "/_field_caps?fields=*", None),
    ("GET", "/_resolve/index/*", None),
    ("GET", "/globex-x/_doc/1", None),
    ("POST", "/acme-a/_search?index=globex-x", None),
    # cluster-level
    ("PUT", "/_cluster/settings", {"persistent": {}}),
    ("GET", "/_nodes/hot_threads", None),
    ("GET", "/_nodes/_all/hot_threads", None),
    ("PUT", "/_snapshot/repo/snap", None),
    ("GET", "/_security/user", None),
    ("PUT", "/_ingest/pipeline/p", {"processors": []}),
    ("PUT", "/_nodes/n1/shutdown", None),
    ("GET", "/_tasks", None),
    ("POST", "/_tasks/n1:1/_cancel", None),
    ("PUT", "/_index_template/t", {"index_patterns": ["acme-*"]}),
    ("PUT", "/_component_template/t", {"template": {}}),
    ("PUT", "/_ilm/policy/p", {"policy": {}}),
    ("PUT", "/_scripts/s", {"script": {}}),
    ("POST", "/_reindex/r1/_rethrottle", None),
    ("GET", "/_search/point_in_time/_all", None),
    # aliases and targets
    ("PUT", "/acme-x/_alias/globex-alias", None),
    ("PUT", "/acme-new", {"aliases": {"globex-alias": {}}}),
    ("POST", "/acme-x/_clone/globex-x", None),
    ("POST", "/acme-x/_shrink/globex-x", None),
    ("POST", "/acme-x/_split/globex-x", None),
    ("POST", "/acme-alias/_rollover/globex-new", None),
    ("POST", "/_aliases", {"actions": [{"add": {"index": "globex-x", "alias": "acme-a"}}]}),
    ("POST", "/_aliases", {"actions": [{"add": {"index": "acme-x", "alias": "globex-a"}}]}),
    ("POST", "/_aliases", {"actions": [{"remove_index": {"index": "globex-x"}}]}),
    ("POST", "/_aliases", {"actions": [{"add": {"index": "acme-x"}}]}),
    ("POST", "/_aliases", {"actions": [{"swap": {"index": "acme-x", "alias": "acme-y"}}]}),
    ("PUT", "/_alias/acme-a", {"index": "globex-x"}),
    ("GET", "/_alias", None),
    # bodies
    ("POST", "/_msearch", nd({"index": "globex-x"}, {})),
    ("POST", "/_msearch", nd({}, {})),
    ("POST", "/acme-a/_msearch", nd({}, {}, {"indices": ["acme-b", "globex-c"]}, {})),
    ("POST", "/acme-a/_msearch", nd({"index": []}, {})),
    ("POST", "/acme-a/_msearch", nd({}, {"pit": {"id": "x"}})),
    ("POST", "/_bulk", nd({"index": {"_index": "globex-x"}}, {"a": 1})),
    ("POST", "/_bulk", nd({"index": {}}, {"a": 1})),
    ("POST", "/acme-a/_bulk", nd({"delete": {"_index": "globex-x", "_id": "1"}})),
    ("POST", "/acme-a/_bulk", nd({"index": {"_index": "acme-x,globex-y"}}, {"a": 1})),
    ("POST", "/_mget", {"docs": [{"_index": "globex-x", "_id": "1"}]}),
    ("POST", "/_mget", {"docs": [{"_id": "1"}]}),
    ("POST", "/_mget", {"ids": ["1"]}),
    ("POST", "/acme-a/_mget", {"docs": [{"_index": "globex-x", "_id": "1"}]}),
    ("POST", "/acme-a/_mtermvectors", {"docs": [{"_index": "globex-x", "_id": "1"}]}),
    ("POST", "/_reindex", {"source": {"index": "globex-x"}, "dest": {"index": "acme-x"}}),
    ("POST", "/_reindex", {"source": {"index": "acme-x"}, "dest": {"index": "globex-x"}}),
    ("POST", "/_reindex", {"source": {"index": "acme-x", "remote": {"host": "http://h:9200"}}, "dest": {"index": "acme-y"}}),
    ("POST", "/_reindex", {"source": {"index": "acme-x"}, "dest": {"index": "acme-y"}, "script": {"source": "ctx._index='x'"}}),
    ("POST", "/_reindex", {"source": {"index": "acme-x"}}),
    ("POST", "/_sql", {"query": "SELECT * FROM globex-logs"}),
    ("POST", "/_sql", {"query": "SELECT * FROM acme-a JOIN globex-b"}),
    ("POST", "/_sql", {"query": "SELECT * FROM acme-a WHERE x IN (SELECT y FROM globex-b)"}),
    ("POST", "/_sql", {"query": "SHOW TABLES"}),
    ("POST", "/_sql", {"cursor": "abc"}),
    ("POST", "/_sql", {"query": "SELECT * FROM acme-a", "catalog": "remote"}),
    ("POST", "/_sql/close", {"cursor": "abc"}),
    ("POST", "/_query", {"query": "FROM globex-logs | LIMIT 1"}),
    ("POST", "/_query", {"query": "FROM acme-logs | LOOKUP JOIN globex-users ON id"}),
    ("POST", "/_query", {"query": "FROM acme-logs | ENRICH policy"}),
    ("GET", "/_query/async/abc", None),
    ("POST", "/_plugins/_ppl", {"query": "source=globex-logs"}),
    ("POST", "/_plugins/_sql", {"query": "SELECT * FROM globex-logs"}),
    ("POST", "/_eql/search", {"query": "any where true"}),
    ("GET", "/_eql/search/abc", None),
    ("POST", "/acme-a/_search", {"query": {"terms": {"user": {"index": "globex-users", "id": "1", "path": "f"}}}}),
    ("POST", "/acme-a/_search", {"query": {"more_like_this": {"like": [{"_index": "globex-x", "_id": "1"}]}}}),
    ("POST", "/acme-a/_search", {"query": {"geo_shape": {"f": {"indexed_shape": {"index": "globex-s", "id": "1"}}}}}),
    ("POST", "/acme-a/_search", {"query": {"percolate": {"field": "q", "index": "globex-x", "id": "1"}}}),
    ("POST", "/acme-a/_search", {"runtime_mappings": {"f": {"type": "lookup", "target_index": "globex-x"}}}),
    ("PUT", "/acme-a/_mapping", {"runtime": {"f": {"type": "lookup", "target_index": "globex-x"}}}),
    ("POST", "/acme-a/_search/template",
     {"source": "{\"query\": {\"terms\": {\"f\": {\"index\": \"{{i}}\", \"id\": \"1\"}}}}", "params": {"i": "globex"}}),
    ("POST", "/acme-a/_search/template", {"source": "{\"query\": {\"{{k}}\": {}}}", "params": {"k": "x"}}),
    ("POST", "/acme-a/_search/template",
     {"source": "{\"query\": {{#toJson}}q{{/toJson}}}", "params": {"q": {"terms": {"f": {"index": "globex"}}}}}),
    ("POST", "/_search", {"query": {"match_all": {}}}),
    ("POST", "/_search", {"pit": "not-an-object"}),
    ("POST", "/_plugins/_asynchronous_search?index=globex-x", None),
    ("GET", "/_plugins/_asynchronous_search/abc", None),
    ("POST", "/_render/template", {"id": "t"}),
]


@pytest.mark.parametrize("method,target,body", DENIED, ids=[f"{m} {t} {i}" for i, (m, t, _) in enumerate(DENIED)])
def test_calls_outside_the_grant_are_403(grants, method, target, body):
    with pytest.raises(Forbidden) as info:
        check(grants, method, target, body)
    assert info.value.status == 403 and info.value.etype == "security_exception"
    assert "globex-key" not in info.value.reason


def test_cluster_apis_granted_by_the_plan_pass_with_suffix_patterns(grants):
    check(grants, "GET", "/_cat/nodes", tenant="ops")
    check(grants, "GET", "/_cat/shards", tenant="ops")
    check(grants, "GET", "/_cluster/state", tenant="ops")
    with pytest.raises(Forbidden, match=r"cluster\.settings"):
        check(grants, "GET", "/_cluster/settings", tenant="ops")
    with pytest.raises(Forbidden, match=r"cat\.nodes"):
        check(grants, "GET", "/_cat/nodes")


def test_plan_resources_gate_resource_classes(grants):
    check(grants, "POST", "/ro-a/_search", {}, tenant="ro")
    check(grants, "GET", "/ro-a/_doc/1", tenant="ro")
    check(grants, "GET", "/", tenant="ro")  # discovery stays open
    check(grants, "GET", "/_cluster/health", tenant="ro")
    for method, target in [("POST", "/ro-a/_doc"), ("PUT", "/ro-a"), ("POST", "/_bulk")]:
        with pytest.raises(Forbidden, match="may not make"):
            check(grants, method, target, tenant="ro")


def test_a_refusal_names_the_allowed_patterns_and_never_narrows(grants):
    with pytest.raises(Forbidden) as info:
        check(grants, "GET", "/*/_search")
    assert "acme-*" in info.value.reason and "shared-acme" in info.value.reason


@pytest.mark.parametrize("body", [
    b'{"index":{"_index":"acme-a","_index":"globex-b"}}\n{}\n',
    b'{"index":{"_index":"globex-b","_index":"acme-a"}}\n{}\n',
    b'{"index":{"\\u005findex":"globex-b","_index":"acme-a"}}\n{}\n',
])
def test_a_bulk_action_with_a_repeated_index_key_is_400(grants, body):
    with pytest.raises(BadRequest, match="duplicate"):
        check(grants, "POST", "/_bulk", body)


def test_duplicate_keys_in_msearch_headers_and_reindex_are_400(grants):
    with pytest.raises(BadRequest):
        check(grants, "POST", "/_msearch", b'{"index":"globex-b","index":"acme-a"}\n{}\n')
    with pytest.raises(BadRequest):
        check(grants, "POST", "/_reindex",
              b'{"source":{"index":"globex-a","index":"acme-a"},"dest":{"index":"acme-b"}}')


def test_grant_refusals_are_refusals_not_crashes(grants):
    for body in (b"[]", b"1", b'"x"', b"null", b'{"docs": 5}', b'{"docs": [1, "x", null]}'):
        try:
            check(grants, "POST", "/_mget", body)
        except Refusal as refusal:
            assert refusal.status in (400, 403)


@pytest.mark.parametrize("pattern", ["acme-?", "acme?-*"])
def test_config_refuses_question_marks_in_tenant_patterns(pattern):
    from proxy.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({
            "upstream": {"nodes": ["http://127.0.0.1:9200"]}, "plans": {"p": {}},
            "tenants": {"acme": {"plan": "p", "api_keys": [hash_secret("k")], "indices": [pattern]}},
        })
    assert any(path == "tenants.acme.indices" and "'?'" in msg for path, msg in info.value.errors)


@pytest.mark.parametrize("target", ["/%20-/_search", "/%20-globex-a/_search"])
def test_a_space_before_an_exclusion_does_not_make_it_an_inclusion(grants, target):
    # found by tests/fuzz: " -x" was stripped to the exclusion "-x" and let through with nothing included
    with pytest.raises(Forbidden):
        check(grants, "POST", target, {})


@pytest.mark.parametrize("body", [b"false", b"1", b'"text"', b"null"])
def test_a_scalar_search_body_is_judged_not_crashed_on(grants, body):
    # found by tests/fuzz: the document-reference walk iterated over a scalar body
    check(grants, "POST", "/acme-a/_search", body)


# ---- mutual TLS: a client certificate identifies its tenant ---------------------------------

from proxy.certnames import certificate_name  # noqa: E402


@pytest.fixture
def mtls_directory() -> Directory:
    return Directory(parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "listen_tls": {"cert_file": "/c.pem", "key_file": "/k.pem", "client_ca_file": "/ca.pem"},
        "plans": {"p": {}},
        "tenants": {
            "acme": {"plan": "p", "api_keys": [hash_secret("acme-key")], "indices": ["acme-*"],
                     "client_cert_subjects": ["CN=search,O=Acme"]},
            "globex": {"plan": "p", "indices": ["globex-*"], "client_cert_subjects": ["URI:spiffe://globex/app"]},
        },
    }))


def test_a_certificate_naming_a_tenant_identifies_it_without_credentials(mtls_directory):
    acme = (certificate_name("O=Acme,CN=search"), "DNS:search.acme.internal")
    assert mtls_directory.identify(None, "/", acme).name == "acme"
    globex = (certificate_name("CN=app"), "URI:spiffe://globex/app")
    assert mtls_directory.identify(None, "/", globex).name == "globex"
    # the certificate wins: a header that names another tenant does not change who is asking
    assert mtls_directory.identify("ApiKey acme-key", "/", globex).name == "globex"


def test_a_certificate_naming_no_tenant_leaves_it_to_the_header(mtls_directory):
    stranger = (certificate_name("CN=someone-else"),)
    assert mtls_directory.identify("ApiKey acme-key", "/", stranger).name == "acme"
    with pytest.raises(Unauthorized, match="client certificate is not mapped to a tenant"):
        mtls_directory.identify(None, "/x", stranger)


def test_a_certificate_naming_two_tenants_identifies_neither(mtls_directory):
    both = (certificate_name("CN=search,O=Acme"), "URI:spiffe://globex/app")
    with pytest.raises(Unauthorized, match="more than one tenant"):
        mtls_directory.identify("ApiKey acme-key", "/", both)
