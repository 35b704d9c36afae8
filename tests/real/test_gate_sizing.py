"""The gate sizes itself from what a real cluster reports: `_cluster/health` and the search thread pools."""
from __future__ import annotations

import os

import pytest

from tests.processes import make_config, wait_until
from tests.realclusters import http_json

pytestmark = pytest.mark.real_cluster


def host_processors(url: str) -> int:
    """The processors the nodes are allowed: every node of the test cluster runs on this host, so the
    cluster has that many cores in all, however many nodes share them."""
    status, info = http_json(url + "/_nodes/os")
    assert status == 200
    allowed = {node["os"]["allocated_processors"] for node in info["nodes"].values()}
    assert len({node["ip"] for node in info["nodes"].values()}) == 1 and len(allowed) == 1
    return allowed.pop()


def configured_search_threads(url: str) -> int:
    status, info = http_json(url + "/_nodes/thread_pool")
    assert status == 200
    return sum(node["thread_pool"]["search"]["size"] for node in info["nodes"].values())


def test_the_gate_takes_its_capacity_from_the_real_thread_pools(procs, real_cluster):
    threads = configured_search_threads(real_cluster.url)
    assert threads >= 3  # three data nodes, each with a search pool
    proxy = procs.proxy(make_config(real_cluster.urls, admission={"health_poll_s": 0.25}))
    gate = wait_until(lambda: (g := proxy.tenants()["gate"])["search_threads"] and g, what="a thread-pool reading")
    # Idle real nodes have started few or none of their search threads; the gate counts the configured pools.
    assert gate["data_nodes"] == gate["data_nodes_max"] == 3
    assert gate["search_threads"] == gate["search_threads_max"] == threads
    assert gate["capacity_per_s"] == threads * 1000.0
    assert gate["reason"] == "capacity"
    # Three nodes on one host share its cores: counted once, not three times.
    assert gate["cores"] == host_processors(real_cluster.url) == len(os.sched_getaffinity(0))
    assert gate["limit"] == pytest.approx(threads / gate["threads_per_request"], rel=0.01)
