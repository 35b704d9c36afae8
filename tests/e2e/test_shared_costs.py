"""Learned costs shared between proxy processes through a real redis-server, in front of the
simulated cluster: what one instance learned about a query shape, the other charges up front,
before it has seen that shape itself."""
from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from tests.processes import make_config, wait_until

ACME = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}
# A terms aggregation over a big index: the static estimate is a few units, the cluster spends tens of ms.
UNDERPRICED = b'{"size":0,"query":{"match_all":{}},"aggs":{"levels":{"terms":{"field":"level","size":100}}}}'


def cost_header(response: aiohttp.ClientResponse, field: str) -> float:
    return float(re.search(field + r"=([0-9.]+)", response.headers["X-Sluicegate-Cost"]).group(1))


def learned(proxy, fingerprint: str | None = None) -> list[dict]:
    costs = proxy.tenants()["tenants"]["acme"]["learned_costs"]
    return [c for c in costs if fingerprint is None or c["fingerprint"] == fingerprint]


async def until(predicate, what: str, timeout: float = 15.0) -> None:
    """Wait for another process to reach a state; the deadline is a hang guard, not a timing assertion."""
    await asyncio.to_thread(wait_until, predicate, timeout, what, 0.05)


async def create_and_search(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """Create acme-logs through the proxy at `url`, then send it the underpriced search once."""
    async with session.put(url + "/acme-logs", headers=ACME) as r:
        assert r.status == 200
    async with session.post(url + "/acme-logs/_search", data=UNDERPRICED, headers=ACME) as response:
        assert response.status == 200
        await response.read()
    return response


def shared_config(cluster, store) -> dict:
    # No index-size polling: the test needs an estimate that is far from what the cluster spends, so
    # that "charged the learned cost" and "charged the estimate" cannot be confused.
    return make_config(cluster.nodes, redis={"url": store.url, "heartbeat_s": 0.2, "timeout_ms": 250},
                       cost={"index_sizes_poll_s": 0})


@pytest.mark.slow
async def test_a_shape_learned_by_one_instance_is_charged_by_the_other(procs):
    cluster = procs.simcluster(nodes=1, threads=8, queue=100, virtual_docs=1_000_000)
    store = procs.redis()
    a, b = procs.proxy(shared_config(cluster, store)), procs.proxy(shared_config(cluster, store))
    await until(lambda: all(p.metric("sluicegate_redis_live_instances") == 2 for p in (a, b)), "2 live instances")
    async with aiohttp.ClientSession() as session:
        first = await create_and_search(session, a.url)
        assert cost_header(first, "charged") == pytest.approx(cost_header(first, "estimated"), abs=0.1)
        [taught] = learned(a)  # what a observed the cluster spend on this shape
        assert taught["cost"] > 4 * cost_header(first, "estimated")

        # b has not served this shape; it learns it from a through Redis, off any request's path.
        await until(lambda: learned(b, taught["fingerprint"]), "b to merge what a learned")
        assert learned(b, taught["fingerprint"])[0]["cost"] == pytest.approx(taught["cost"], rel=0.01)
        assert a.metric("sluicegate_shared_cost_observations_total", outcome="published") >= 1
        assert b.metric("sluicegate_shared_cost_observations_total", outcome="merged") >= 1

        async with session.post(b.url + "/acme-logs/_search", data=UNDERPRICED, headers=ACME) as second:
            assert second.status == 200
            await second.read()
    # b's first request of this shape is charged what a learned, not the static estimate.
    assert cost_header(second, "charged") == pytest.approx(taught["cost"], abs=0.1)
    assert cost_header(second, "estimated") == pytest.approx(cost_header(first, "estimated"), abs=0.1)


@pytest.mark.slow
async def test_workers_of_one_instance_share_through_redis_too(procs):
    cluster = procs.simcluster(nodes=1, threads=8, queue=100, virtual_docs=200_000)
    store = procs.redis()
    proxy = procs.proxy(shared_config(cluster, store), workers=2)
    await until(lambda: proxy.metric("sluicegate_redis_live_instances") == 2 * 2, "2 workers, each counting 2")
    async with aiohttp.ClientSession() as session:
        await create_and_search(session, proxy.url)
    # Whichever worker served it published it; the other merged it.
    await until(lambda: proxy.metric("sluicegate_shared_cost_observations_total", outcome="merged") >= 1,
                "the other worker to merge the observation")
    assert proxy.metric("sluicegate_shared_cost_observations_total", outcome="published") >= 1
