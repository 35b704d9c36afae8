"""Runaway control against a recording upstream (issue 21): the tenant in X-Opaque-Id, guardrails,
cancellation. The same behaviour on real clusters is in tests/real/test_runaway_real.py."""
from __future__ import annotations

import re

import orjson
import pytest
import urllib3

from tests.processes import make_config, tenant
from tests.upstreams import RecordingUpstream

HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))
ACME = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}


@pytest.fixture
def upstream():
    server = RecordingUpstream().start()
    yield server
    server.stop()


def searches(upstream: RecordingUpstream):
    return [seen for seen in upstream.seen if seen.path_qs.startswith("/acme-")]


def test_the_forwarded_opaque_id_names_the_tenant_and_the_client_gets_its_own_back(procs, upstream):
    proxy = procs.proxy(make_config([upstream.url], access_log={"path": "-", "sample": 1.0}))
    # The client's own id: forwarded after the tenant, and echoed back unchanged.
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=b"{}", headers={**ACME, "X-Opaque-Id": "dash-42"})
    assert r.status == 200
    assert r.headers["X-Opaque-Id"] == "dash-42"
    assert searches(upstream)[-1].headers["X-Opaque-Id"] == "acme;dash-42"
    # A client that poses as another tenant is still forwarded under its own: the prefix is the proxy's.
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=b"{}", headers={**ACME, "X-Opaque-Id": "globex;x"})
    assert r.headers["X-Opaque-Id"] == "globex;x"
    assert searches(upstream)[-1].headers["X-Opaque-Id"] == "acme;globex;x"
    # No id of its own: the proxy's request id is forwarded, and nothing is echoed back.
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=b"{}", headers=ACME)
    assert "X-Opaque-Id" not in r.headers
    forwarded = searches(upstream)[-1].headers["X-Opaque-Id"]
    tenant_name, request_id = forwarded.split(";", 1)
    assert tenant_name == "acme" and re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", request_id)
    # A refusal echoes the client's id too (as the engines do on their errors).
    r = HTTP.request("POST", proxy.url + "/globex-logs/_search", body=b"{}", headers={**ACME, "X-Opaque-Id": "q1"})
    assert r.status == 403 and r.headers["X-Opaque-Id"] == "q1"
    proxy.stop()
    logged = [line["request_id"] for line in proxy.access_log()]
    assert logged[:3] == ["dash-42", "globex;x", request_id]


def test_a_tenant_name_that_could_not_lead_an_opaque_id_is_a_config_error():
    from proxy.config import ConfigError, parse_config
    config = make_config(["http://127.0.0.1:9200"], tenants={"acme;globex": tenant("acme")})
    with pytest.raises(ConfigError, match="tenant names"):
        parse_config(config)


def plan(**extra) -> dict:
    bucket = {"rate": 1e6, "burst": 1e7}
    return {"search": bucket, "read": bucket, "write": bucket, "admin": bucket,
            "max_concurrent": 32, "max_queue": 64, "max_wait_ms": 2000, **extra}


RAILS = {"max_size": 500, "max_from": 100, "max_terms_agg_size": 10, "timeout": "30s", "terminate_after": 10000,
         "allow_leading_wildcards": False, "allow_scripts": False, "allow_regexp": False}


def test_guardrails_in_cap_mode_rewrite_what_the_cluster_receives_and_say_so(procs, upstream):
    proxy = procs.proxy(make_config([upstream.url], plans={"standard": plan(guardrails=RAILS)}))
    search = {"size": 10000, "from": 5, "query": {"wildcard": {"msg": "*err"}},
              "aggs": {"a": {"terms": {"field": "n", "size": 100}}}}
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search?size=9999", body=orjson.dumps(search), headers=ACME)
    assert r.status == 200
    assert r.headers["X-Sluicegate-Degraded"] == (
        "size=9999->500, size 10000->500, terms size 100->10, timeout ->30s, terminate_after ->10000, wildcard *err->err")
    seen = searches(upstream)[-1]
    assert seen.path_qs == "/acme-logs/_search?size=500"
    assert orjson.loads(seen.body) == {"size": 500, "from": 5, "query": {"wildcard": {"msg": "err"}},
                                       "aggs": {"a": {"terms": {"field": "n", "size": 10}}},
                                       "timeout": "30s", "terminate_after": 10000}
    # every search of an _msearch, and a gzip-compressed body is forwarded as the rewritten JSON
    import gzip
    lines = b'{"index":"acme-logs"}\n{"size":100000}\n{"index":"acme-logs"}\n{"from":5000}\n'
    r = HTTP.request("POST", proxy.url + "/_msearch", body=gzip.compress(lines),
                     headers={**ACME, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})
    assert r.status == 200, r.data
    seen = upstream.seen[-1]
    assert "Content-Encoding" not in seen.headers
    sent = [orjson.loads(line) for line in seen.body.splitlines()]
    assert sent[1] == {"size": 500, "timeout": "30s", "terminate_after": 10000}
    assert sent[3] == {"from": 100, "timeout": "30s", "terminate_after": 10000}
    # A search within every bound is forwarded as it came (but for the injected timeout and terminate_after).
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=b'{"size":5,"timeout":"1s","terminate_after":10}',
                     headers=ACME)
    assert "X-Sluicegate-Degraded" not in r.headers
    assert searches(upstream)[-1].body == b'{"size":5,"timeout":"1s","terminate_after":10}'
    assert proxy.metric("sluicegate_guardrail_hits_total", tenant="acme", guardrail="max_size", action="cap") == 3


@pytest.mark.parametrize("name, search", [
    ("max_size", {"size": 10000}),
    ("max_from", {"from": 1000}),
    ("max_terms_agg_size", {"aggs": {"a": {"terms": {"field": "n", "size": 100}}}}),
    ("timeout", {"timeout": "5m"}),
    ("terminate_after", {"terminate_after": 1000000}),
    ("allow_leading_wildcards", {"query": {"wildcard": {"msg": "*err"}}}),
    ("allow_scripts", {"query": {"script": {"script": "true"}}}),
    ("allow_regexp", {"query": {"regexp": {"msg": "e.*r"}}}),
])
def test_each_guardrail_in_refuse_mode_answers_400_naming_it_and_sends_nothing(procs, upstream, name, search):
    rails = {**RAILS, "mode": "refuse", "timeout": None, "terminate_after": None}
    if name in ("timeout", "terminate_after"):
        rails[name] = RAILS[name]
    proxy = procs.proxy(make_config([upstream.url], plans={"standard": plan(guardrails=rails)}))
    before = len(searches(upstream))
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=orjson.dumps(search), headers=ACME)
    body = orjson.loads(r.data)
    assert r.status == 400 and body["error"]["type"] == "illegal_argument_exception"
    assert f"guardrail [{name}]" in body["error"]["reason"] and "tenant 'acme'" in body["error"]["reason"]
    assert len(searches(upstream)) == before


def test_shadow_guardrails_count_what_they_would_do_and_change_nothing(procs, upstream):
    proxy = procs.proxy(make_config([upstream.url], plans={"standard": plan(guardrails={**RAILS, "shadow": True})}))
    body = b'{"size":10000,"query":{"regexp":{"msg":"e.*r"}}}'
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=body, headers=ACME)
    assert r.status == 200 and "X-Sluicegate-Degraded" not in r.headers
    assert searches(upstream)[-1].body == body
    assert proxy.metric("sluicegate_guardrail_hits_total", tenant="acme", action="shadow_refuse") == 1
    body = b'{"size":10000}'
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=body, headers=ACME)
    assert searches(upstream)[-1].body == body
    assert proxy.metric("sluicegate_guardrail_hits_total", tenant="acme", guardrail="max_size", action="shadow_cap") == 1


def test_max_duration_answers_an_es_shaped_error_and_counts_it(procs, upstream):
    proxy = procs.proxy(make_config([upstream.url], plans={"standard": plan(
        search={"rate": 1e6, "burst": 1e7, "max_duration_s": 0.3})}))
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search?delay_ms=5000", body=b"{}", headers={**ACME, "X-Opaque-Id": "slow-1"})
    body = orjson.loads(r.data)
    assert r.status == 504 and body["error"]["type"] == "task_cancelled_exception", body
    assert "search.max_duration_s of 0.3s" in body["error"]["reason"] and "tenant 'acme'" in body["error"]["reason"]
    assert r.headers["X-Opaque-Id"] == "slow-1"
    # the connection still serves the next request (a cancel is an answer, not a dropped connection)
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=b"{}", headers=ACME)
    assert r.status == 200
    assert proxy.metric("sluicegate_cancelled_total", tenant="acme", reason="max_duration") == 1


def test_max_cost_factor_cancels_a_request_far_slower_than_its_charge(procs, upstream):
    # A bare search is charged a few cost units (thread-ms): at 20x, a few hundred ms at most.
    proxy = procs.proxy(make_config([upstream.url], plans={"standard": plan(max_cost_factor=20)}))
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search?delay_ms=10000", body=b"{}", headers=ACME)
    body = orjson.loads(r.data)
    assert r.status == 504 and "max_cost_factor" in body["error"]["reason"], body
    assert proxy.metric("sluicegate_cancelled_total", tenant="acme", reason="max_cost_factor") == 1
    r = HTTP.request("POST", proxy.url + "/acme-logs/_search", body=b"{}", headers=ACME)  # a quick one passes
    assert r.status == 200


def test_inflight_lists_and_cancel_cancels_one_tenant_only(procs, upstream):
    import threading
    proxy = procs.proxy(make_config([upstream.url]))
    statuses: dict[str, int] = {}

    def client(key: str, index: str, rid: str) -> None:
        r = HTTP.request("POST", f"{proxy.url}/{index}/_search?delay_ms=20000", body=b"{}",
                         headers={"Authorization": f"ApiKey {key}", "Content-Type": "application/json", "X-Opaque-Id": rid})
        statuses[rid] = r.status

    threads = [threading.Thread(target=client, args=args) for args in (
        ("acme-key", "acme-a", "a1"), ("acme-key", "acme-a", "a2"), ("globex-key", "globex-a", "g1"))]
    for thread in threads:
        thread.start()
    from tests.processes import http_get, http_post, wait_until
    wait_until(lambda: orjson.loads(http_get(proxy.admin + "/inflight")[1])["total"] == 3, 10, "three in flight")
    listing = orjson.loads(http_get(proxy.admin + "/inflight?sort=charged&limit=2")[1])
    assert listing["total"] == 3 and len(listing["inflight"]) == 2 and listing["sort"] == "charged"
    row = listing["inflight"][0]
    assert set(row) >= {"tenant", "fingerprint", "age_s", "charged", "node", "request_id"}
    assert row["node"] == upstream.url
    assert http_get(proxy.admin + "/inflight?sort=bogus")[0] == 400
    status, answer = http_post(proxy.admin + "/tenants/acme/cancel", b"")
    report = orjson.loads(answer)
    assert status == 200 and report["cancelled"] == 2
    assert sorted(r["request_id"] for r in report["requests"]) == ["a1", "a2"]
    for thread in threads[:2]:
        thread.join(10)
    assert statuses == {"a1": 503, "a2": 503}
    remaining = orjson.loads(http_get(proxy.admin + "/inflight")[1])
    assert [r["tenant"] for r in remaining["inflight"]] == ["globex"]
    assert http_post(proxy.admin + "/tenants/nobody/cancel", b"")[0] == 404
    http_post(proxy.admin + "/tenants/globex/cancel", b"")
    threads[2].join(10)
    assert statuses["g1"] == 503


def test_inflight_and_cancel_are_merged_across_workers(procs, upstream):
    import threading

    from tests.processes import http_get, http_post, wait_until
    proxy = procs.proxy(make_config([upstream.url]), workers=2)
    statuses: list[int] = []

    def client(i: int) -> None:
        # a connection of its own each: the kernel spreads them over the workers (SO_REUSEPORT)
        pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))
        r = pool.request("POST", f"{proxy.url}/acme-a/_search?delay_ms=20000", body=b"{}",
                         headers={**ACME, "X-Opaque-Id": f"w{i}"})
        statuses.append(r.status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: orjson.loads(http_get(proxy.admin + "/inflight")[1])["total"] == 6, 15, "six in flight")
    listing = orjson.loads(http_get(proxy.admin + "/inflight?limit=4")[1])
    assert listing["total"] == 6 and len(listing["inflight"]) == 4
    ages = [row["age_s"] for row in listing["inflight"]]
    assert ages == sorted(ages, reverse=True)
    status, answer = http_post(proxy.admin + "/tenants/acme/cancel", b"")
    assert status == 200 and orjson.loads(answer)["cancelled"] == 6
    for thread in threads:
        thread.join(10)
    assert statuses == [503] * 6
    assert http_post(proxy.admin + "/tenants/nobody/cancel", b"")[0] == 404


def test_a_timeout_injected_into_a_search_without_a_body_is_sent_as_json(procs, upstream):
    proxy = procs.proxy(make_config([upstream.url], plans={"standard": plan(guardrails={"timeout": "10s"})}))
    r = HTTP.request("GET", proxy.url + "/acme-logs/_search", headers={"Authorization": "ApiKey acme-key"})
    assert r.status == 200 and r.headers["X-Sluicegate-Degraded"] == "timeout ->10s"
    seen = searches(upstream)[-1]
    assert seen.body == b'{"timeout":"10s"}' and seen.headers["Content-Type"] == "application/json"
