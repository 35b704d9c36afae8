"""Shared test set-up. Process fixtures (redis-server, the simulated cluster, the proxy) live in
tests/processes.py and are exposed here as factories that close everything they started."""
from __future__ import annotations

import os
import uuid

from hypothesis import HealthCheck, settings

# The machine is shared and noisy: never fail a property on wall-clock time.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


from tests import builds  # noqa: E402

builds.install()  # before any proxy module is imported: SLUICEGATE_PURE=1 runs the .py twins

import pytest  # noqa: E402

from tests.processes import Processes, RedisCluster, RedisServer, SimClusterProcess  # noqa: E402


def pytest_sessionstart(session) -> None:
    stale = builds.stale_modules()
    if stale and not builds.PURE:
        pytest.exit(f"compiled modules older than their sources: {', '.join(stale)}; run `make build`", returncode=2)


def pytest_report_header(config) -> str:
    compiled = sorted(builds.compiled_modules())
    return f"proxy build: {'pure Python (SLUICEGATE_PURE=1)' if builds.PURE else 'compiled: ' + ', '.join(compiled)}"


@pytest.fixture
def procs(tmp_path):
    """Factory for real processes (redis-server, simulated cluster, proxy); all stopped at teardown."""
    owner = Processes(tmp_path)
    yield owner
    owner.close()


@pytest.fixture(scope="session")
def shared_cluster():
    """One simulated cluster for tests that only read and write their own indices."""
    cluster = SimClusterProcess(nodes=3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One real redis-server per test module, for tests that keep to their own keys (`prefix`)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests sharing a redis-server never see each other's keys."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def pki():
    """The session's test CA (tests/pki.py): issue server and client certificates with it."""
    from tests.pki import session_pki

    return session_pki()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """One real 3-master Redis Cluster per test module (redis-server --cluster-enabled + redis-cli --cluster create)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    yield cluster
    cluster.stop()


# ---- real OpenSearch / Elasticsearch clusters (tests/realclusters.py) ----

from tests.realclusters import ClusterPool, RealCluster  # noqa: E402

#: fixture name → the (flavor, kind) of cluster it hands out
CLUSTER_FIXTURES = {
    "opensearch_cluster": ("opensearch", "three"),
    "elasticsearch_cluster": ("elasticsearch", "three"),
    "opensearch_tiny_pool": ("opensearch", "tiny-pool"),
    "elasticsearch_tiny_pool": ("elasticsearch", "tiny-pool"),
    "elasticsearch_secured": ("elasticsearch", "secured"),
}
#: fixture parametrised over both flavors → the kind of cluster it hands out
_PARAMETRISED = {"real_cluster": "three", "real_tiny_pool": "tiny-pool", "real_queued_pool": "queued-pool"}
_clusters = ClusterPool()
_flavor_of: dict[str, set[str]] = {}  # test id → flavors it ran against
_real_outcomes: dict[str, dict[str, int]] = {}  # flavor → outcome → count


def _clusters_of(item) -> set[tuple[str, str]]:
    keys = {CLUSTER_FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in CLUSTER_FIXTURES}
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name, kind in _PARAMETRISED.items():
        if name in params:
            keys.add((params[name], kind))
    return keys


def pytest_collection_modifyitems(config, items):
    for item in items:
        keys = _clusters_of(item)
        if keys:
            if item.get_closest_marker("real_cluster") is None:
                item.add_marker(pytest.mark.real_cluster)
            _flavor_of[item.nodeid] = {flavor for flavor, _ in keys}


def pytest_collection_finish(session):
    """Start every cluster the selected tests need now, in the background, while the fast tests run."""
    needed = set()
    for item in session.items:
        needed |= _clusters_of(item)
    for key in sorted(needed):
        _clusters.prefetch(key)


def pytest_runtest_logreport(report):
    flavors = _flavor_of.get(report.nodeid)
    if not flavors or not (report.when == "call" or report.outcome != "passed"):
        return
    for flavor in flavors:
        counts = _real_outcomes.setdefault(flavor, {})
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not _real_outcomes:
        return
    terminalreporter.section("real clusters")
    for flavor, counts in sorted(_real_outcomes.items()):
        text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        terminalreporter.write_line(f"{flavor}: {text}")


def pytest_sessionfinish(session):
    _clusters.close()


def _cluster(key) -> RealCluster:
    return _clusters.get(key)


@pytest.fixture(scope="session")
def opensearch_cluster() -> RealCluster:
    """A real 3-node OpenSearch cluster for the session (shared: use indices of your own)."""
    return _cluster(CLUSTER_FIXTURES["opensearch_cluster"])


@pytest.fixture(scope="session")
def elasticsearch_cluster() -> RealCluster:
    """A real 3-node Elasticsearch cluster for the session (shared: use indices of your own)."""
    return _cluster(CLUSTER_FIXTURES["elasticsearch_cluster"])


@pytest.fixture(scope="session")
def opensearch_tiny_pool() -> RealCluster:
    """A real 1-node OpenSearch with a search pool of 1 thread and a queue of 1: it rejects readily."""
    return _cluster(CLUSTER_FIXTURES["opensearch_tiny_pool"])


@pytest.fixture(scope="session")
def elasticsearch_tiny_pool() -> RealCluster:
    """A real 1-node Elasticsearch with a search pool of 1 thread and a queue of 1."""
    return _cluster(CLUSTER_FIXTURES["elasticsearch_tiny_pool"])


@pytest.fixture(scope="session")
def elasticsearch_secured() -> RealCluster:
    """A real 1-node Elasticsearch with security on and HTTPS, requiring client certificates, its
    certificates from the session's CA; `.access` (tests/realclusters.py SecuredAccess) says how to reach it."""
    return _cluster(CLUSTER_FIXTURES["elasticsearch_secured"])


@pytest.fixture(scope="session", params=["opensearch", "elasticsearch"])
def real_cluster(request) -> RealCluster:
    """Each real 3-node cluster in turn (a test using it runs once per flavor)."""
    return _cluster((request.param, "three"))


@pytest.fixture(scope="session", params=["opensearch", "elasticsearch"])
def real_tiny_pool(request) -> RealCluster:
    """Each tiny-pool cluster in turn."""
    return _cluster((request.param, "tiny-pool"))


@pytest.fixture(scope="session", params=["opensearch", "elasticsearch"])
def real_queued_pool(request) -> RealCluster:
    """Each one-node cluster with one search thread and a queue of 1,000 in turn: saturated, it queues."""
    return _cluster((request.param, "queued-pool"))
