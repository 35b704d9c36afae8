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


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """One real 3-master Redis Cluster per test module (redis-server --cluster-enabled + redis-cli --cluster create)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    yield cluster
    cluster.stop()
