"""TLS on both sides, end to end: real proxy processes, the simulated cluster serving HTTPS (and asking
for client certificates or credentials when told to), the official clients, certificates made in the
session (tests/pki.py). The same against real Elasticsearch with security on: tests/real/test_tls_elasticsearch.py."""
from __future__ import annotations

import asyncio
import base64
import http.client
import os
import signal
import socket
import ssl
import subprocess

import aiohttp
import orjson
import pytest
from elasticsearch import Elasticsearch
from opensearchpy import OpenSearch

from proxy.cli import main as sluicegate
from tests.pki import Pki
from tests.processes import PY, REPO, http_get, make_config, tenant, wait_until

ACME = {"Authorization": "ApiKey acme-key"}
SEARCH = b'{"query":{"match_all":{}}}'


def listen_tls(issued, **extra) -> dict:
    return {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file), **extra}


def client_context(pki: Pki, client=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


def post(url: str, path: str, body: bytes = SEARCH, headers: dict | None = None, context=None) -> tuple[int, dict]:
    """One request over a fresh connection (http or https); (status, decoded body)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:
            return r.status, orjson.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def node_cert(pki, tmp_path_factory):
    return pki.server("sim-node", "sim-node", into=tmp_path_factory.mktemp("sim-node"))


@pytest.fixture(scope="module")
def https_cluster(node_cert):
    """The simulated cluster on HTTPS, its certificate signed by the session's CA."""
    from tests.processes import SimClusterProcess

    cluster = SimClusterProcess(nodes=2, tls_cert=node_cert.cert_file, tls_key=node_cert.key_file)
    yield cluster
    cluster.stop()


# ---- HTTPS upstream --------------------------------------------------------------------------


def test_https_nodes_verified_for_requests_health_checks_and_cluster_polls(procs, pki, https_cluster):
    assert all(node.startswith("https://") for node in https_cluster.nodes)
    proxy = procs.proxy(make_config(https_cluster.nodes, upstream={"tls": {"ca_file": str(pki.ca_file)}},
                                    cost={"index_sizes_poll_s": 0.5}))
    es = Elasticsearch(proxy.url, api_key="acme-key", request_timeout=30)
    es.index(index="acme-tls", id="1", document={"message": "over https"}, refresh=True)
    assert es.search(index="acme-tls", query={"match": {"message": "https"}})["hits"]["total"]["value"] == 1
    assert orjson.loads(http_get(proxy.admin + "/ready")[1])["ready"] is True  # the health checks pass
    # the gate's cluster poll and the index-size poll answered through the same context
    wait_until(lambda: proxy.metric("sluicegate_gate_search_threads") == 8, what="the gate sized from the cluster")
    wait_until(lambda: proxy.metric("sluicegate_index_sizes_known") >= 1, what="index sizes polled")
    assert "Traceback" not in proxy.stderr()


def test_a_node_signed_by_another_ca_is_refused_with_a_clear_log_line(procs, tmp_path, https_cluster):
    other = Pki(tmp_path / "other", "Other CA")
    proxy = procs.proxy(make_config(https_cluster.nodes, upstream={"tls": {"ca_file": str(other.ca_file)}}))
    status, body = post(proxy.url, "/acme-logs/_search", headers=ACME)
    assert status in (502, 503) and body["error"]["type"] == "proxy_upstream_exception"
    lines = [line for line in proxy.stderr().splitlines() if "certificate verify failed" in line]
    assert lines, proxy.stderr()
    assert f"not signed by a CA in upstream.tls.ca_file ({other.ca_file})" in lines[0]
    assert "Traceback" not in proxy.stderr()


def test_verify_false_works_and_is_warned_about_at_every_load(procs, tmp_path):
    stranger = Pki(tmp_path / "stranger", "Stranger CA").server("node", into=tmp_path)
    cluster = procs.simcluster(nodes=1, tls_cert=stranger.cert_file, tls_key=stranger.key_file)
    proxy = procs.proxy(make_config(cluster.nodes, upstream={"tls": {"verify": False}}))
    assert post(proxy.url, "/acme-logs/_search", headers=ACME)[0] == 404  # reached the cluster: no such index
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "config generation 2" in proxy.stderr(), what="reload")
    assert proxy.stderr().count("upstream.tls.verify: false") == 2


def test_a_cluster_that_requires_client_certificates_gets_the_proxys(procs, pki, tmp_path, node_cert):
    cluster = procs.simcluster(nodes=1, tls_cert=node_cert.cert_file, tls_key=node_cert.key_file, tls_client_ca=pki.ca_file)
    without = procs.proxy(make_config(cluster.nodes, upstream={"tls": {"ca_file": str(pki.ca_file)}}))
    assert post(without.url, "/acme-logs/_search", headers=ACME)[0] in (502, 503)
    assert "set upstream.tls.client_cert and client_key" in without.stderr()
    client = pki.client("proxy-client", "sluicegate", into=tmp_path)
    proxy = procs.proxy(make_config(cluster.nodes, upstream={"tls": {
        "ca_file": str(pki.ca_file), "client_cert": str(client.cert_file), "client_key": str(client.key_file)}}))
    assert post(proxy.url, "/acme-logs/_search", headers=ACME)[0] == 404  # through TLS to the cluster's own answer


# ---- the proxy's own credentials ------------------------------------------------------------

API_KEY = base64.b64encode(b"proxy-key-id:proxy-key-secret").decode()


@pytest.mark.parametrize("kind", ["basic-from-env", "api-key-from-file", "api-key-as-id-and-key", "bearer-from-file"])
def test_the_proxy_authenticates_to_the_cluster_with_secrets_outside_the_yaml(procs, pki, node_cert, tmp_path, kind):
    secret = tmp_path / "secret"
    env = {}
    if kind == "basic-from-env":
        expected = "Basic " + base64.b64encode(b"sluicegate:pa55 word").decode()
        auth = {"username": "sluicegate", "password_env": "SG_TEST_ES_PASSWORD"}
        env["SG_TEST_ES_PASSWORD"] = "pa55 word"
    elif kind == "api-key-from-file":
        expected, auth = f"ApiKey {API_KEY}", {"api_key_file": str(secret)}
        secret.write_text(API_KEY + "\n")
    elif kind == "api-key-as-id-and-key":
        expected, auth = f"ApiKey {API_KEY}", {"api_key": "proxy-key-id:proxy-key-secret"}
    else:
        expected, auth = "Bearer AAEAAWVsYXN0aWMvZmxlZXQ", {"bearer_file": str(secret)}
        secret.write_text("AAEAAWVsYXN0aWMvZmxlZXQ\n")
    if secret.exists():
        os.chmod(secret, 0o600)
    cluster = procs.simcluster(nodes=1, tls_cert=node_cert.cert_file, tls_key=node_cert.key_file,
                               require_authorization=expected)
    proxy = procs.proxy(make_config(cluster.nodes, upstream={"tls": {"ca_file": str(pki.ca_file)}, "auth": auth}),
                        env=env)
    es = Elasticsearch(proxy.url, api_key="acme-key", request_timeout=30)
    es.index(index="acme-auth", id="1", document={"n": 1}, refresh=True)
    assert es.count(index="acme-auth")["count"] == 1
    wait_until(lambda: proxy.metric("sluicegate_gate_search_threads") == 4, what="the gate's poll, authenticated")
    assert "refused" not in proxy.stderr()


def test_a_401_from_the_cluster_is_logged_once_with_a_hint_and_a_reload_fixes_it(procs, pki, node_cert, tmp_path):
    cluster = procs.simcluster(nodes=1, tls_cert=node_cert.cert_file, tls_key=node_cert.key_file,
                               require_authorization=f"ApiKey {API_KEY}")
    secret = tmp_path / "api-key"
    secret.write_text("revoked-key\n")
    os.chmod(secret, 0o600)
    proxy = procs.proxy(make_config(cluster.nodes, upstream={"tls": {"ca_file": str(pki.ca_file)},
                                                             "auth": {"api_key_file": str(secret)}}))
    for _ in range(20):
        status, body = post(proxy.url, "/acme-logs/_search", headers=ACME)
        assert status == 502, body  # not a 401: the client's own key was fine
        assert "refused the proxy's own credentials (upstream.auth)" in body["error"]["reason"]
    log = proxy.stderr()
    assert log.count("refused Sluicegate's own credentials") == 1, log
    assert "check upstream.auth (api_key credentials)" in log
    assert "Traceback" not in log
    secret.write_text(API_KEY + "\n")  # the rotated key
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "config generation 2" in proxy.stderr(), what="reload")
    assert post(proxy.url, "/acme-logs/_search", headers=ACME)[0] == 404  # the cluster's own answer again


# ---- the TLS listener -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def listener_cert(pki, tmp_path_factory):
    return pki.server("listener", "sluicegate.test", into=tmp_path_factory.mktemp("listener"))


@pytest.fixture
def tls_proxy(procs, shared_cluster, listener_cert):
    return procs.proxy(make_config(shared_cluster.nodes, listen_tls=listen_tls(listener_cert)))


def test_elasticsearch_py_9_over_the_tls_listener_with_ca_certs(tls_proxy, pki):
    assert tls_proxy.url.startswith("https://")
    es = Elasticsearch(tls_proxy.url, api_key="acme-key", ca_certs=str(pki.ca_file), request_timeout=30)
    es.index(index="acme-tls-listener", id="1", document={"message": "hello over tls"}, refresh=True)
    found = es.search(index="acme-tls-listener", query={"match": {"message": "hello"}})
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]
    from elastic_transport import TlsError

    with pytest.raises(TlsError):  # the client really checks: the system store does not know our CA
        Elasticsearch(tls_proxy.url, api_key="acme-key", max_retries=0).search(index="acme-tls-listener")


def test_opensearch_py_over_the_tls_listener_with_ca_certs(tls_proxy, pki):
    client = OpenSearch(tls_proxy.url, use_ssl=True, verify_certs=True, ca_certs=str(pki.ca_file),
                        headers={"Authorization": "ApiKey globex-key"}, timeout=30)
    client.index(index="globex-tls-listener", id="7", body={"message": "hi over tls"}, refresh=True)
    found = client.search(index="globex-tls-listener", body={"query": {"match": {"message": "tls"}}})
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["7"]


def test_keep_alive_over_tls(tls_proxy, pki):
    host, port = tls_proxy.config["listen"].rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=client_context(pki), timeout=10)
    sockets = set()
    for _ in range(20):
        conn.request("POST", "/acme-logs/_search", body=SEARCH, headers={**ACME, "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status in (200, 404)
        assert response.getheader("Connection", "").lower() != "close"
        sockets.add(conn.sock.getsockname())
    assert len(sockets) == 1  # twenty requests, one TLS connection
    conn.close()


def test_plain_http_to_the_tls_listener_gets_no_answer(tls_proxy):
    host, port = tls_proxy.config["listen"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not s.recv(1024).startswith(b"HTTP/1.1 200")


def test_a_reload_applies_min_version_live_and_names_what_waits_for_a_restart(procs, pki, shared_cluster, listener_cert):
    import copy

    from tests.processes import http_post

    config = make_config(shared_cluster.nodes, listen_tls=listen_tls(listener_cert))
    proxy = procs.proxy(config)
    tls12 = client_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert post(proxy.url, "/acme-logs/_search", headers=ACME, context=tls12)[0] in (200, 404)
    changed = copy.deepcopy(config)
    changed["listen_tls"].update(min_version="TLSv1.3", client_ca_file=str(pki.ca_file))
    proxy.write_config(changed)
    status, body = http_post(proxy.admin + "/reload")
    answer = orjson.loads(body)
    assert status == 200 and answer["reloaded"], answer
    assert "a restart is needed for listen_tls.client_ca_file to change" in answer["message"]
    with pytest.raises((ssl.SSLError, OSError)):  # min_version took effect on the live context
        post(proxy.url, "/acme-logs/_search", headers=ACME, context=tls12)
    assert post(proxy.url, "/acme-logs/_search", headers=ACME, context=client_context(pki))[0] in (200, 404)


# ---- mutual TLS ------------------------------------------------------------------------------


@pytest.fixture
def mtls(procs, pki, shared_cluster, listener_cert, tmp_path):
    """A proxy requiring client certificates; tenant `svc` is known by its certificate, `acme` by its API key."""
    def start(authentication: str = "required"):
        tenants = {"acme": tenant("acme"),
                   "svc": {"plan": "standard", "indices": ["svc-*"], "client_cert_subjects": ["O=Acme,CN=search-svc"]}}
        return procs.proxy(make_config(shared_cluster.nodes, tenants=tenants, listen_tls=listen_tls(
            listener_cert, client_ca_file=str(pki.ca_file), client_authentication=authentication)))
    return start


def test_mutual_tls_identifies_the_tenant_by_its_certificate(mtls, pki, tmp_path):
    proxy = mtls()
    svc = pki.client("svc", "search-svc", organization="Acme", into=tmp_path)
    es = Elasticsearch(proxy.url, ca_certs=str(pki.ca_file), client_cert=str(svc.cert_file),
                       client_key=str(svc.key_file), request_timeout=30)
    es.index(index="svc-orders", id="1", document={"n": 1}, refresh=True)  # no API key: the certificate is enough
    assert es.count(index="svc-orders")["count"] == 1
    from elasticsearch import AuthorizationException

    with pytest.raises(AuthorizationException, match="tenant 'svc'"):
        es.search(index="acme-logs")
    assert proxy.tenants()["tenants"]["svc"]["admitted"] >= 2
    # a certificate the CA issued for someone no tenant lists identifies nobody
    stranger = pki.client("stranger", "stranger", organization="Acme", into=tmp_path)
    status, body = post(proxy.url, "/svc-orders/_search", context=client_context(pki, stranger))
    assert status == 401 and "not mapped to a tenant" in body["error"]["reason"]
    # ... but may still identify with an API key
    assert post(proxy.url, "/acme-logs/_search", headers=ACME, context=client_context(pki, stranger))[0] in (200, 404)


def test_required_client_authentication_refuses_a_client_without_a_certificate(mtls, pki):
    proxy = mtls()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        post(proxy.url, "/acme-logs/_search", headers=ACME, context=client_context(pki))


def test_optional_client_authentication_lets_api_key_clients_in(mtls, pki, tmp_path):
    proxy = mtls("optional")
    assert post(proxy.url, "/acme-logs/_search", headers=ACME, context=client_context(pki))[0] in (200, 404)
    svc = pki.client("svc", "search-svc", organization="Acme", into=tmp_path)
    assert post(proxy.url, "/svc-x/_search", context=client_context(pki, svc))[0] in (200, 404)


# ---- certificate rotation by SIGHUP under load -----------------------------------------------


def install(issued, cert_file, key_file) -> None:
    """Put a pair in place as rotation tools do: write aside, rename over (cert first, then key)."""
    for source, target in ((issued.cert_file, cert_file), (issued.key_file, key_file)):
        aside = target.with_suffix(".new")
        aside.write_bytes(source.read_bytes())
        os.replace(aside, target)


async def test_certificate_rotation_by_sighup_under_load_drops_no_request(procs, pki, shared_cluster, tmp_path):
    first = pki.server("first", "localhost", organization="first", into=tmp_path / "first")
    second = pki.server("second", "localhost", organization="second", into=tmp_path / "second")
    half = pki.server("half", "localhost", organization="half", into=tmp_path / "half")
    cert_file, key_file = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    install(first, cert_file, key_file)
    proxy = procs.proxy(make_config(shared_cluster.nodes, listen_tls={"cert_file": str(cert_file), "key_file": str(key_file)}))
    host, port = proxy.config["listen"].rsplit(":", 1)
    context = client_context(pki)
    stop = asyncio.Event()
    statuses: list[int] = []
    failures: list[str] = []
    served_by: list[str] = []

    def organization(cert) -> str:
        return dict(pair[0] for pair in cert["subject"])["organizationName"]

    async def keep_alive_client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(proxy.url + "/acme-logs/_search", data=SEARCH, headers=ACME) as r:
                    await r.read()
                    statuses.append(r.status)
            except (aiohttp.ClientError, OSError) as exc:
                failures.append(repr(exc))

    async def new_connection_client() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname="localhost")
                served_by.append(organization(writer.get_extra_info("peercert")))
                writer.write(b"POST /acme-logs/_search HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey acme-key\r\n"
                             b"Content-Type: application/json\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(SEARCH), SEARCH))
                statuses.append(int((await reader.readuntil(b"\r\n")).split()[1]))
                await reader.read()
                writer.close()
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                failures.append(repr(exc))

    async def wait_for(predicate, what: str) -> None:
        for _ in range(1000):
            if predicate():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(what)

    connector = aiohttp.TCPConnector(ssl=context, limit=8)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:
        load = asyncio.gather(*(keep_alive_client(session) for _ in range(6)), *(new_connection_client() for _ in range(2)))
        await wait_for(lambda: len(statuses) >= 200 and "first" in served_by, "load on the first certificate")
        install(second, cert_file, key_file)
        proxy.signal(signal.SIGHUP)
        await wait_for(lambda: "second" in served_by, "a new connection served with the second certificate")
        seen = len(statuses)
        await wait_for(lambda: len(statuses) >= seen + 200, "more load on the second certificate")
        # half a rotation (the new certificate, the old key): refused like an invalid config, nothing changes
        cert_file.write_bytes(half.cert_pem)
        proxy.signal(signal.SIGHUP)
        await asyncio.to_thread(wait_until, lambda: proxy.metric("sluicegate_config_reload_failures_total") == 1,
                                10, "the refused reload")
        mark = len(served_by)
        await wait_for(lambda: len(served_by) >= mark + 20, "new connections after the refused reload")
        stop.set()
        await load
    assert failures == [], failures[:5]
    assert set(statuses) <= {200, 404} and len(statuses) > 400
    assert set(served_by[mark:]) == {"second"}  # the old pair kept serving
    log = proxy.stderr()
    assert "config reload refused, keeping the running config: listen_tls" in log
    assert "Traceback" not in log


# ---- fail early: check-config and run --------------------------------------------------------


@pytest.fixture(scope="module")
def broken(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    good = pki.server("good", into=d)
    other = pki.server("other", into=d)
    soon = pki.server("soon", days=5, into=d)
    expired = pki.server("expired", days=-1, not_before_days=-10, into=d)
    (d / "garbage.pem").write_text("not pem\n")
    return {"dir": d, "good": good, "other": other, "soon": soon, "expired": expired, "ca": pki.ca_file}


def write_config(tmp_path, **overrides) -> str:
    import yaml

    path = tmp_path / "sluicegate.yaml"
    path.write_text(yaml.safe_dump(make_config(["https://127.0.0.1:9"], **overrides)))
    return str(path)


@pytest.mark.parametrize("case, key_path", [
    ("missing cert", "listen_tls.cert_file"),
    ("not pem", "listen_tls.cert_file"),
    ("key of another cert", "listen_tls.key_file"),
    ("expired", "listen_tls.cert_file"),
    ("missing ca", "upstream.tls.ca_file"),
    ("missing client ca", "listen_tls.client_ca_file"),
    ("unset api_key_env", "upstream.auth.api_key_env"),
    ("listen == admin_listen", "admin_listen"),
    ("mixed schemes", "upstream.nodes"),
])
def test_check_config_catches_every_broken_file_case(broken, tmp_path, capsys, case, key_path):
    d, good = broken["dir"], broken["good"]
    tls = {"cert_file": str(good.cert_file), "key_file": str(good.key_file)}
    overrides: dict = {"listen_tls": tls, "upstream": {"tls": {"ca_file": str(broken["ca"])}}}
    if case == "missing cert":
        overrides["listen_tls"] = {**tls, "cert_file": str(d / "missing.pem")}
    elif case == "not pem":
        overrides["listen_tls"] = {**tls, "cert_file": str(d / "garbage.pem")}
    elif case == "key of another cert":
        overrides["listen_tls"] = {**tls, "key_file": str(broken["other"].key_file)}
    elif case == "expired":
        overrides["listen_tls"] = {"cert_file": str(broken["expired"].cert_file), "key_file": str(broken["expired"].key_file)}
    elif case == "missing ca":
        overrides["upstream"] = {"tls": {"ca_file": str(d / "missing-ca.pem")}}
    elif case == "missing client ca":
        overrides["listen_tls"] = {**tls, "client_ca_file": str(d / "missing-ca.pem")}
    elif case == "unset api_key_env":
        overrides["upstream"] = {"auth": {"api_key_env": "SG_TEST_CERTAINLY_UNSET"}}
    elif case == "listen == admin_listen":
        overrides["admin_listen"] = "127.0.0.1:9443"
        overrides["listen"] = "127.0.0.1:9443"
    else:
        overrides["upstream"] = {"nodes": ["https://127.0.0.1:9", "http://127.0.0.1:10"]}
    path = write_config(tmp_path, **overrides)
    assert sluicegate(["check-config", path]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(f"{key_path}: "), err


def test_check_config_warns_of_a_certificate_expiring_within_14_days(broken, tmp_path, capsys):
    soon = broken["soon"]
    path = write_config(tmp_path, listen_tls={"cert_file": str(soon.cert_file), "key_file": str(soon.key_file)})
    assert sluicegate(["check-config", path]) == 0
    err = capsys.readouterr().err
    assert "warning: listen_tls.cert_file:" in err and "expires on" in err


def run_proxy(config_path: str, workers: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "proxy", "run", "--config", config_path, "--workers", str(workers)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("which", ["listen", "admin_listen"])
def test_run_turns_a_port_in_use_into_one_line_and_exit_1(tmp_path, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        path = write_config(tmp_path, upstream={"nodes": ["http://127.0.0.1:9"]}, **{which: address})
        done = run_proxy(path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " INFO " not in line and " WARNING " not in line]
    assert errors == [f"sluicegate: cannot listen on {address} ({which}): Address already in use"], done.stderr


def test_run_turns_a_bad_certificate_into_one_line_and_exit_1(broken, tmp_path):
    path = write_config(tmp_path, upstream={"nodes": ["http://127.0.0.1:9"]},
                        listen_tls={"cert_file": str(broken["good"].cert_file), "key_file": str(broken["other"].key_file)})
    for workers in (1, 2):
        done = run_proxy(path, workers)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert done.stderr.splitlines() == [
            f"listen_tls.key_file: {broken['other'].key_file} is not the key of the certificate in "
            f"{broken['good'].cert_file} (listen_tls.cert_file)"], done.stderr
