"""Learned costs against the simulated cluster: a shape the static estimate underprices is charged
what it really costs from its second response on, and the tenant's real cluster time per second
converges to its plan rate."""
from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.processes import make_config

ACME = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}
# A terms aggregation over a big index: the proxy cannot know the index holds 200k documents,
# so its static estimate is a few units while the cluster spends tens of milliseconds.
UNDERPRICED = b'{"size":0,"query":{"match_all":{}},"aggs":{"levels":{"terms":{"field":"level","size":100}}}}'
RATE = 150.0  # cost units (cluster-ms) per second


def charged(response: aiohttp.ClientResponse) -> float:
    return float(re.search(r"charged=([0-9.]+)", response.headers["X-Sluicegate-Cost"]).group(1))


def estimated(response: aiohttp.ClientResponse) -> float:
    return float(re.search(r"estimated=([0-9.]+)", response.headers["X-Sluicegate-Cost"]).group(1))


@pytest.mark.slow
async def test_learned_cost_is_charged_and_admitted_cluster_time_converges_to_the_plan_rate(procs):
    cluster = procs.simcluster(nodes=1, threads=8, queue=100, virtual_docs=200_000)
    plans = {"standard": {
        "search": {"rate": RATE, "burst": RATE * 0.3},
        "admin": {"rate": 100, "burst": 100},
        "max_concurrent": 4, "max_queue": 64, "max_wait_ms": 5000,
    }}
    proxy = procs.proxy(make_config(cluster.nodes, plans=plans))
    url = proxy.url + "/acme-logs/_search"
    async with aiohttp.ClientSession() as session:
        async with session.put(proxy.url + "/acme-logs", headers=ACME) as r:
            assert r.status == 200
        async with session.post(url, data=UNDERPRICED, headers=ACME) as first:
            assert first.status == 200
            await first.read()
        async with session.post(url, data=UNDERPRICED, headers=ACME) as second:
            assert second.status == 200
            await second.read()
        # The first is charged the static estimate; the second what the first really cost.
        assert charged(first) == pytest.approx(estimated(first), abs=0.1)
        assert charged(second) > 4 * estimated(second)
        learned = proxy.tenants()["tenants"]["acme"]["learned_costs"]
        assert learned and learned[0]["cost"] == pytest.approx(charged(second), rel=0.01)

        # Now four clients repeat it as fast as the proxy lets them, for 10 s.
        before = cluster.stats()["indices"]["acme-logs"]["thread_ms"]
        started = time.monotonic()
        deadline = started + 10.0
        statuses: list[int] = []

        async def client() -> None:
            while time.monotonic() < deadline:
                async with session.post(url, data=UNDERPRICED, headers=ACME) as r:
                    await r.read()
                    statuses.append(r.status)

        await asyncio.gather(*(client() for _ in range(4)))
        elapsed = time.monotonic() - started
    spent = cluster.stats()["indices"]["acme-logs"]["thread_ms"] - before
    admitted_rate = spent / elapsed
    assert statuses.count(200) > 20
    # Without learning it would be ~8x the plan rate; with it, within 10% of the rate.
    assert abs(admitted_rate - RATE) <= 0.10 * RATE, f"admitted {admitted_rate:.1f} cluster-ms/s against a plan of {RATE}"
