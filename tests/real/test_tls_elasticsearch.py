"""TLS against real Elasticsearch 8 with security on: HTTPS with a certificate from the session's CA,
client certificates required, and the proxy's own credentials of each kind the distribution allows.

The integ-test zip lacks the analysis-common module, whose `pattern_capture` filter the .security
index's mapping needs: that index cannot be created, so API keys (and native users) do not exist on
these nodes. API-key credentials are covered against the simulated cluster
(tests/e2e/test_tls.py::test_the_proxy_authenticates_to_the_cluster_with_secrets_outside_the_yaml);
here it is basic auth (the reserved `elastic` user and a file-realm user with a narrow role) and a
bearer token (a file-backed service-account token)."""
from __future__ import annotations

import os

import orjson
import pytest
import urllib3

from tests.pki import Pki
from tests.processes import make_config, tenant, wait_until
from tests.realclusters import http_json, unique_index


def tls_settings(cluster, **extra) -> dict:
    access = cluster.access
    return {"ca_file": str(access.ca_file), "client_cert": str(access.client_cert),
            "client_key": str(access.client_key), **extra}


def secret_file(tmp_path, name: str, value: str):
    path = tmp_path / name
    path.write_text(value + "\n")
    os.chmod(path, 0o600)
    return str(path)


@pytest.mark.parametrize("who", ["file-realm user, password from a file", "elastic, password from the environment"])
def test_the_proxy_verifies_the_node_and_authenticates_with_basic(procs, elasticsearch_secured, tmp_path, who):
    cluster, access = elasticsearch_secured, elasticsearch_secured.access
    assert cluster.url.startswith("https://")
    env = {}
    if who.startswith("file-realm"):
        auth = {"username": access.proxy_user, "password_file": secret_file(tmp_path, "password", access.proxy_password)}
    else:
        auth = {"username": "elastic", "password_env": "SG_TEST_ELASTIC_PASSWORD"}
        env["SG_TEST_ELASTIC_PASSWORD"] = access.elastic_password
    index = unique_index("acme")
    proxy = procs.proxy(make_config(cluster.urls, tenants={"acme": tenant("acme")},
                                    upstream={"tls": tls_settings(cluster), "auth": auth},
                                    cost={"index_sizes_poll_s": 1}), env=env)
    status, _ = call(proxy, "PUT", f"/{index}/_doc/1?refresh=true", {"message": "through TLS to a secured node"})
    assert status == 201
    status, found = call(proxy, "POST", f"/{index}/_search", {"query": {"match": {"message": "secured"}}})
    assert status == 200 and [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
    # the gate's cluster polls and the index-size poll went over the same verified, authenticated TLS
    wait_until(lambda: proxy.metric("sluicegate_gate_search_threads") > 0, 30, "the gate sized from the secured node")
    wait_until(lambda: proxy.metric("sluicegate_index_sizes_known") >= 1, 30, "index sizes from the secured node")
    # and the node really saw the proxy's user, not the client's key
    status, me = http_json(f"{cluster.url}/_security/_authenticate", context=access.context(),
                           authorization=access.basic(*((access.proxy_user, access.proxy_password)
                                                        if who.startswith("file-realm") else ("elastic",))))
    assert status == 200 and me["username"] == auth["username"]
    log = proxy.stderr()
    assert "refused" not in log and "Traceback" not in log


def test_a_bearer_token_authenticates_the_proxy(procs, elasticsearch_secured, tmp_path):
    cluster, access = elasticsearch_secured, elasticsearch_secured.access
    proxy = procs.proxy(make_config(cluster.urls, upstream={
        "tls": tls_settings(cluster), "auth": {"bearer_file": secret_file(tmp_path, "token", access.service_token)}}))
    status, health = call(proxy, "GET", "/_cluster/health")
    assert status == 200 and health["cluster_name"] == cluster.name  # the node answered the proxy's service account
    wait_until(lambda: proxy.metric("sluicegate_gate_search_threads") > 0, 30, "the gate's poll, as the service account")
    assert "refused" not in proxy.stderr()


def test_a_node_signed_by_another_ca_is_refused_with_a_clear_log_line(procs, elasticsearch_secured, tmp_path):
    cluster, access = elasticsearch_secured, elasticsearch_secured.access
    other = Pki(tmp_path / "other", "Other CA")
    proxy = procs.proxy(make_config(cluster.urls, upstream={
        "tls": tls_settings(cluster, ca_file=str(other.ca_file)),
        "auth": {"username": "elastic", "password": access.elastic_password}}))
    status, body = call(proxy, "POST", "/acme-logs/_search", {})
    assert status in (502, 503) and body["error"]["type"] == "proxy_upstream_exception"
    lines = [line for line in proxy.stderr().splitlines() if "certificate verify failed" in line]
    assert lines and f"not signed by a CA in upstream.tls.ca_file ({other.ca_file})" in lines[0], proxy.stderr()


def test_a_node_requiring_client_certificates_without_one_gets_a_hint(procs, elasticsearch_secured):
    cluster, access = elasticsearch_secured, elasticsearch_secured.access
    proxy = procs.proxy(make_config(cluster.urls, upstream={
        "tls": {"ca_file": str(access.ca_file)}, "auth": {"username": "elastic", "password": access.elastic_password}}))
    assert call(proxy, "POST", "/acme-logs/_search", {})[0] in (502, 503)
    assert "asks for a client certificate: set upstream.tls.client_cert and client_key" in proxy.stderr()


def test_a_wrong_password_is_a_401_logged_once_and_clients_get_502(procs, elasticsearch_secured, tmp_path):
    cluster = elasticsearch_secured
    proxy = procs.proxy(make_config(cluster.urls, upstream={
        "tls": tls_settings(cluster),
        "auth": {"username": "elastic", "password_file": secret_file(tmp_path, "password", "not-the-password")}}))
    for _ in range(10):
        status, body = call(proxy, "POST", "/acme-logs/_search", {})
        assert status == 502 and "refused the proxy's own credentials" in body["error"]["reason"], body
    log = proxy.stderr()
    assert log.count("refused Sluicegate's own credentials (401 from") == 1, log
    assert "Traceback" not in log


HTTP = urllib3.PoolManager()


def call(proxy, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One request through the proxy as tenant acme (urllib3: elasticsearch-py 9 asks an 8.x node for
    compatible-with=9, which it refuses)."""
    response = HTTP.request(method, proxy.url + path, body=orjson.dumps(body) if body is not None else None,
                            headers={"Authorization": "ApiKey acme-key", "Content-Type": "application/json"},
                            retries=False, timeout=60)
    return response.status, orjson.loads(response.data or b"{}")
