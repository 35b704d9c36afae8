"""Real OpenSearch and Elasticsearch clusters for the `real_cluster` tests (bench/realcluster.py).

Starting a 3-node cluster takes 30-90 s of JVM start-up on this machine, so the session starts
each cluster it will need in a background thread as soon as the tests are collected (see
`tests/conftest.py`), while the fast tests run; a fixture then waits for it. One cluster per
flavor and kind serves the whole session, and every test uses indices of its own.

`SLUICEGATE_OPENSEARCH_CLUSTER` / `SLUICEGATE_ELASTICSEARCH_CLUSTER` may name the state file of a
cluster that `python bench/realcluster.py start` is already running (its JSON line's `state`):
the tests then use that cluster and leave it running — the quick loop while developing.

A cluster that cannot start (no JDK, no Maven, no distribution) fails its tests: `make test`
installs all three, so a skip would only hide a broken set-up.
"""
from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import urllib3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from realcluster import ClusterError, RealCluster, es_tools, fetch, http_json, java_home  # noqa: E402

__all__ = ["ClusterError", "RealCluster", "http_json", "KINDS", "ClusterPool", "unique_index", "bulk_load", "SecuredAccess",
           "RUN_AS_VICTIM"]


@dataclass(frozen=True)
class SecuredAccess:
    """How to reach a secured cluster: its CA, the client certificate it requires, and its credentials."""

    ca_file: Path
    client_cert: Path
    client_key: Path
    elastic_password: str  # the reserved `elastic` superuser (keystore: bootstrap.password)
    proxy_user: str  # a file-realm user with the role `sluicegate_proxy` (cluster monitor, all on every index)
    proxy_password: str
    service_token: str  # a file-backed service-account token (elastic/fleet-server): a bearer token

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the node and presents the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def basic(self, user: str = "elastic", password: str | None = None) -> str:
        password = self.elastic_password if password is None else password
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


#: a file-realm user with no rights at all, whom the proxy's user may `run_as` (what a client must never
#: reach through the proxy: tests/real/test_runas_stays_out.py)
RUN_AS_VICTIM = "no-rights"

#: the role the proxy's own file-realm user has: what Sluicegate needs of a cluster (monitor for the gate's
#: polls), and run_as the victim above, a privilege a careless operator might grant
PROXY_ROLE = b"""sluicegate_proxy:
  cluster: [monitor]
  indices:
    - names: ["*"]
      privileges: [all]
  run_as: ["no-rights"]
no_rights:
  cluster: []
"""


def secured_elasticsearch() -> dict:
    """RealCluster arguments for one Elasticsearch node with security on, HTTPS with a certificate from
    the session's CA, client certificates required, and credentials of three kinds: the `elastic`
    superuser, a file-realm user and a service-account token. The integ-test zip has no analysis-common
    module, which the .security index's mapping needs: native users and API keys cannot be created on
    it, so everything here lives in the node's config directory."""
    from tests.pki import session_pki

    pki = session_pki()
    node = pki.server("es-secured-node", "es-secured-node")
    client = pki.client("es-secured-client", "sluicegate-proxy", organization="Sluicegate")
    home, java = fetch("elasticsearch"), java_home("elasticsearch")
    access = dict(elastic_password="elastic-" + uuid.uuid4().hex[:12], proxy_user="sluicegate",
                  proxy_password="proxy-" + uuid.uuid4().hex[:12])
    files, outputs = es_tools(home, java, [
        ("elasticsearch-keystore", ["create"], ""),
        ("elasticsearch-keystore", ["add", "--stdin", "--force", "bootstrap.password"], access["elastic_password"]),
        ("elasticsearch-users", ["useradd", access["proxy_user"], "-p", access["proxy_password"], "-r", "sluicegate_proxy"], ""),
        ("elasticsearch-users", ["useradd", RUN_AS_VICTIM, "-p", "victim-" + uuid.uuid4().hex[:12], "-r", "no_rights"], ""),
        ("elasticsearch-service-tokens", ["create", "elastic/fleet-server", "sluicegate"], ""),
    ], keep=("elasticsearch.keystore", "users", "users_roles", "service_tokens"), config_files={"roles.yml": PROXY_ROLE})
    token = outputs[-1].strip().rpartition(" = ")[2]
    secured = SecuredAccess(pki.ca_file, client.cert_file, client.key_file, service_token=token, **access)
    return {
        "nodes": 1, "heap": "512m",
        "settings": {
            "xpack.security.enabled": True,
            "xpack.security.http.ssl.enabled": True,
            "xpack.security.http.ssl.certificate": "sg-node.crt",
            "xpack.security.http.ssl.key": "sg-node.key",
            "xpack.security.http.ssl.certificate_authorities": ["sg-ca.pem"],
            "xpack.security.http.ssl.client_authentication": "required",
        },
        "config_files": {"sg-node.crt": node.cert_pem, "sg-node.key": node.key_pem, "sg-ca.pem": pki.ca_pem,
                         "roles.yml": PROXY_ROLE, **files},
        "client_context": secured.context(),
        "authorization": secured.basic(),
        "access": secured,
    }

#: the clusters tests can ask for: (flavor, kind) → RealCluster keyword arguments
KINDS: dict[tuple[str, str], dict | Callable[[], dict]] = {
    # the drop-in matrix, observed costs, node loss: three nodes, as in production
    ("opensearch", "three"): {"nodes": 3},
    ("elasticsearch", "three"): {"nodes": 3},
    # cluster rejections: one node with a search pool of 1 thread and a queue of 1
    ("opensearch", "tiny-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1, "heap": "384m"},
    ("elasticsearch", "tiny-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1, "heap": "384m"},
    # a saturated search pool that queues instead of rejecting: one thread, a long queue
    ("opensearch", "queued-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1000, "heap": "384m"},
    ("elasticsearch", "queued-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1000, "heap": "384m"},
    # TLS on both sides: one node with security on, HTTPS, client certificates required (made in the session)
    ("elasticsearch", "secured"): secured_elasticsearch,
}


def bulk_load(url: str, index: str, docs: int, shards: int, replicas: int = 0) -> None:
    """Create `index` with `shards` and `replicas` and load `docs` small documents ({"msg", "n"}), refreshed."""
    status, body = http_json(f"{url}/{index}", "PUT", {"settings": {"number_of_shards": shards, "number_of_replicas": replicas}})
    assert status == 200, body
    lines = "".join(
        json.dumps({"index": {}}) + "\n" + json.dumps({"msg": f"word{i} alpha{i % 97} beta{i % 13}", "n": i}) + "\n"
        for i in range(docs)
    ).encode()
    response = urllib3.request("POST", f"{url}/{index}/_bulk?refresh=true", body=lines, retries=False,
                               headers={"Content-Type": "application/x-ndjson"}, timeout=urllib3.Timeout(connect=5, read=120))
    assert response.status == 200 and not json.loads(response.data)["errors"]


def unique_index(prefix: str) -> str:
    """An index name no other test (or earlier run on a shared cluster) uses; `prefix` is the tenant's."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class ClusterPool:
    """Starts clusters in background threads on demand, hands them out, stops them at the end."""

    def __init__(self):
        self._futures: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()

    def prefetch(self, key: tuple[str, str]) -> None:
        """Start cluster `key` in the background if nobody has yet."""
        with self._lock:
            if key in self._futures:
                return
            future: Future = Future()
            self._futures[key] = future
        threading.Thread(target=self._start, args=(key, future), name=f"cluster-{key[0]}-{key[1]}", daemon=True).start()

    def get(self, key: tuple[str, str], timeout: float = 600.0) -> RealCluster:
        """Cluster `key`, started (or attached to) and green; raises ClusterError if it could not start."""
        self.prefetch(key)
        return self._futures[key].result(timeout)

    def _start(self, key: tuple[str, str], future: Future) -> None:
        flavor, kind = key
        try:
            external = os.environ.get(f"SLUICEGATE_{flavor.upper()}_CLUSTER") if kind == "three" else None
            if external:
                cluster = RealCluster.attach(external)
                cluster.external = True  # type: ignore[attr-defined]
            else:
                spec = KINDS[key]
                arguments = dict(spec() if callable(spec) else spec)
                access = arguments.pop("access", None)
                cluster = RealCluster(flavor, name=f"sg-test-{flavor}-{kind}-{os.getpid()}", **arguments)
                cluster.access = access  # type: ignore[attr-defined]
                cluster.start(timeout=300)
            future.set_result(cluster)
        except BaseException as exc:  # noqa: BLE001 - handed to the fixture that waits for it
            future.set_exception(exc if isinstance(exc, Exception) else ClusterError(repr(exc)))

    def close(self) -> None:
        for future in self._futures.values():
            try:
                cluster = future.result(timeout=600)
            except Exception:  # noqa: BLE001 - a cluster that never started has nothing to stop
                continue
            if not getattr(cluster, "external", False):
                cluster.stop()
