"""Learned costs against the simulated cluster: a shape the static estimate underprices is charged
what it really costs from its second response on, and the tenant's real cluster time per second
converges to its plan rate."""
from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.processes import make_config, tenant, wait_until

ACME = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}
# A terms aggregation over a big index: with index size polling off, the proxy cannot know the index
# holds 200k documents and collects every one; with these weights its static estimate is well under what
# the simulated cluster spends (the shipped weights are calibrated against real clusters, not the simulator).
UNDERPRICED = b'{"size":0,"query":{"match_all":{}},"aggs":{"levels":{"terms":{"field":"level","size":100}}}}'
UNDERPRICING = {"search": 1.0, "terms_agg": 0.5}
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
    proxy = procs.proxy(make_config(cluster.nodes, plans=plans, cost={"index_sizes_poll_s": 0, "weights": UNDERPRICING}))
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
        assert charged(second) > 2 * estimated(second)
        learned = proxy.tenants()["tenants"]["acme"]["learned_costs"]
        # the second response is folded in too (EWMA, alpha 0.3): within a few percent of what was charged
        assert learned and learned[0]["cost"] == pytest.approx(charged(second), rel=0.1)

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
    # Without learning it would be several times the plan rate; with it, within 10% of the rate.
    assert abs(admitted_rate - RATE) <= 0.10 * RATE, f"admitted {admitted_rate:.1f} cluster-ms/s against a plan of {RATE}"


SCRIPT_SCORE = b'{"query":{"script_score":{"query":{"match_all":{}},"script":{"source":"doc[\'n\'].value"}}}}'


async def test_estimates_scale_with_the_polled_size_of_the_index(procs):
    """The proxy polls _stats/docs and prices a never-seen scan by the documents of the index it targets,
    including an index created after the proxy started."""
    cluster = procs.simcluster(nodes=1, time_scale=0.01)
    # only the data-scaled part of the estimate: a search's fixed costs would blur the ratio of the sizes
    fixed = {"search": 0.0, "match_all": 0.0, "hit": 0.0, "hit_depth": 0.0}
    config = make_config(cluster.nodes, cost={"index_sizes_poll_s": 0.2, "learn": False, "weights": fixed})
    proxy = procs.proxy(config)
    async with aiohttp.ClientSession() as session:

        async def create(name: str, docs: int) -> None:
            body = b'{"settings":{"index":{"sim":{"virtual_docs":%d}}}}' % docs
            async with session.put(f"{proxy.url}/{name}", data=body, headers=ACME) as r:
                assert r.status == 200, await r.text()

        async def estimate_of(name: str) -> float:
            async with session.post(f"{proxy.url}/{name}/_search", data=SCRIPT_SCORE, headers=ACME) as r:
                assert r.status == 200, await r.text()
                return estimated(r)

        await create("acme-big", 2_000_000)
        await create("acme-small", 2_000)
        unpolled = await estimate_of("acme-big")  # maybe before the poll saw it: the calibrated weights
        await asyncio.to_thread(
            wait_until, lambda: proxy.metric("sluicegate_index_sizes_known") >= 2, 10, "the indices' sizes")
        big, small = await estimate_of("acme-big"), await estimate_of("acme-small")
        assert big > 500 * small
        assert big > 10 * unpolled or unpolled == big  # 20× the reference size: scans cost ~20× more

        await create("acme-later", 2_000_000)
        await asyncio.to_thread(
            wait_until, lambda: proxy.metric("sluicegate_index_sizes_known") >= 3, 10, "the new index's size")
        assert await estimate_of("acme-later") == big
        assert await estimate_of("acme-*") > 1.5 * big  # a wildcard reaches both big ones


async def test_a_shape_new_to_a_tenant_counts_at_the_gate_as_it_cost_others_but_is_billed_as_estimated(procs):
    """t2 has never run the scan t1 has: the gate counts t2's first one at what the scan cost t1, while t2's
    bill and its X-Sluicegate-Cost header stay on the estimate (another tenant's costs never leak)."""
    cluster = procs.simcluster(nodes=1, virtual_docs=1_000_000, time_scale=3.0, jitter=0)
    tenants = {name: tenant(name) for name in ("t1", "t2")}
    proxy = procs.proxy(make_config(cluster.nodes, tenants=tenants, cost={"index_sizes_poll_s": 0}))
    async with aiohttp.ClientSession() as session:

        def headers(name: str) -> dict:
            return {"Authorization": f"ApiKey {name}-key", "Content-Type": "application/json"}

        async def scan(name: str) -> aiohttp.ClientResponse:
            async with session.post(f"{proxy.url}/{name}-logs/_search", data=SCRIPT_SCORE, headers=headers(name)) as r:
                assert r.status == 200
                await r.read()
                return r

        for name in tenants:
            async with session.put(f"{proxy.url}/{name}-logs", headers=headers(name)) as r:
                assert r.status == 200
        first = await scan("t1")
        observed = proxy.tenants()["tenants"]["t1"]["learned_costs"][0]["cost"]
        assert observed > 10 * estimated(first)  # 1M docs, unknown to the estimate: ~3,000 units vs ~100
        second = asyncio.ensure_future(scan("t2"))
        gate = await asyncio.to_thread(
            wait_until, lambda: (g := proxy.tenants()["gate"])["inflight"] and g, 10, "t2's scan in flight")
        assert gate["inflight_cost"] == pytest.approx(observed, rel=0.01)
        response = await second
        assert charged(response) == pytest.approx(estimated(response), abs=0.1) and estimated(response) < observed / 10
