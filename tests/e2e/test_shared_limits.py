"""Shared limits across instances: real proxy processes, a real redis-server (or a real 3-master
Redis Cluster), the simulated cluster upstream, and a load generator in this process.

Requests are document GETs (resource class `read`) with `doc_get` weighted 1.0: a GET's response
carries no `took`, so the proxy charges exactly its estimate (1 unit) and never settles. Each
admitted request's charge is read back from its `X-Sluicegate-Cost` header.
"""
from __future__ import annotations

import asyncio
import time
import urllib.request

import aiohttp
import pytest
import redis
from redis.crc import key_slot

from tests.processes import make_config, tenant, wait_until

ACME = {"Authorization": "ApiKey acme-key"}
DOC = "/acme-x/_doc/1"


def shared_config(upstream: str, redis_url: str, rate: float, burst: float, **redis_settings) -> dict:
    bucket = {"rate": rate, "burst": burst}
    generous = {"rate": 1e6, "burst": 1e6}
    return make_config(
        [upstream],
        tenants={"acme": tenant("acme")},
        plans={"standard": {"read": bucket, "search": generous, "write": generous, "admin": generous,
                            "max_concurrent": 64, "max_queue": 256, "max_wait_ms": 0}},
        redis={"url": redis_url, "heartbeat_s": 0.2, "reconnect_max_s": 0.5, **redis_settings},
        cost={"weights": {"doc_get": 1.0}},
    )


@pytest.fixture
def upstream(procs):
    sim = procs.simcluster(nodes=1, instant=True)
    put = urllib.request.Request(f"{sim.url}/acme-x/_doc/1?refresh=true", data=b'{"title":"one"}', method="PUT",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(put, timeout=5) as r:
        assert r.status in (200, 201)
    return sim


class Load:
    """Clients that GET a document through the proxies as fast as they answer, until stopped.

    `statuses` has one entry per request (0: the connection failed or it took over 5 s);
    `charged` sums the cost units charged to admitted ones."""

    def __init__(self, urls: list[str], clients_per_proxy: int = 6):
        self.urls = urls
        self.clients_per_proxy = clients_per_proxy
        self.statuses: list[int] = []
        self.charged = 0.0
        self.stop = asyncio.Event()

    async def _client(self, session: aiohttp.ClientSession, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        while not self.stop.is_set():
            try:
                async with session.get(url + DOC, headers=ACME, timeout=timeout) as r:
                    await r.read()
                    self.statuses.append(r.status)
                    if r.status == 200:
                        self.charged += float(r.headers["X-Sluicegate-Cost"].split("charged=")[1])
            except (aiohttp.ClientError, asyncio.TimeoutError):
                self.statuses.append(0)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(self._client(session, url) for url in self.urls
                                   for _ in range(self.clients_per_proxy)))


async def until(predicate, what: str, timeout: float = 15.0) -> None:
    """Wait for another process to reach a state (its /metrics), without blocking the load's loop."""
    await asyncio.to_thread(wait_until, predicate, timeout, what, 0.05)


@pytest.mark.slow
async def test_three_instances_admit_one_rate_between_them(procs, upstream):
    rate, burst, seconds = 100.0, 100.0, 10.0
    store = procs.redis()
    # timeout_ms 250: this test is about accuracy, so a scheduling hiccup on a loaded test machine
    # must not count as an outage (the outage tests use the default)
    proxies = [procs.proxy(shared_config(upstream.url, store.url, rate, burst, timeout_ms=250)) for _ in range(3)]
    await until(lambda: all(p.metric("sluicegate_redis_live_instances") == 3 for p in proxies), "3 live instances")
    for proxy in proxies:  # each instance holds a third of the concurrency limits
        assert proxy.tenants()["tenants"]["acme"]["max_concurrent"] == round(64 / 3)

    load = Load([p.url for p in proxies])
    started = time.monotonic()
    task = asyncio.ensure_future(load.run())
    await asyncio.sleep(seconds)  # the rate-limited window is the behaviour under test
    load.stop.set()
    await task
    elapsed = time.monotonic() - started

    assert set(load.statuses) <= {200, 429}, sorted(set(load.statuses))
    offered = len(load.statuses) / elapsed
    assert offered > 3 * rate, f"the load must be above 3R: {offered:.0f} requests/s"
    admitted = load.charged - burst  # the bucket started full
    assert abs(admitted - rate * elapsed) <= 0.05 * rate * elapsed, (
        f"admitted {admitted:.0f} units beyond the burst in {elapsed:.1f}s; expected {rate * elapsed:.0f} ± 5%"
    )
    calls = sum(p.metric("sluicegate_redis_calls_total", script="lease") for p in proxies)
    assert calls < len(load.statuses) / 4, f"{calls:.0f} script calls for {len(load.statuses)} requests"


@pytest.mark.slow
async def test_kill_9_redis_under_load_fails_nothing_and_sharing_resumes(procs, upstream):
    store = procs.redis()
    proxies = [procs.proxy(shared_config(upstream.url, store.url, rate=500, burst=500)) for _ in range(2)]
    await until(lambda: all(p.metric("sluicegate_redis_up") == 1 for p in proxies), "redis_up 1")

    load = Load([p.url for p in proxies], clients_per_proxy=4)
    task = asyncio.ensure_future(load.run())
    try:
        await until(lambda: len(load.statuses) > 200, "load under way")
        store.kill()
        await until(lambda: all(p.metric("sluicegate_redis_up") == 0 for p in proxies), "local fallback in /metrics")
        assert all(p.metric("sluicegate_redis_fallbacks_total") == 1 for p in proxies)
        served = len(load.statuses)
        await until(lambda: len(load.statuses) > served + 200, "load served on local limits")

        store.start()  # the same port, empty: no scripts, no buckets, no members
        await until(lambda: all(p.metric("sluicegate_redis_up") == 1 for p in proxies), "back on Redis")
        await until(lambda: all(p.metric("sluicegate_redis_live_instances") == 2 for p in proxies), "2 live instances")
        served = len(load.statuses)
        await until(lambda: len(load.statuses) > served + 200, "load served on shared limits again")
    finally:
        load.stop.set()
        await task

    assert set(load.statuses) <= {200, 429}, sorted(set(load.statuses))  # no failure, no 5 s hang
    client = redis.Redis(port=store.port)
    assert client.exists("sg:{acme}:read")  # the shared bucket lives in the restarted Redis
    assert client.zcard("sg:instances") == 2
    client.close()
    for proxy in proxies:
        assert proxy.stderr().count("limits are local now") == 1  # logged once per outage
        assert "limits shared through Redis" in proxy.stderr()


async def test_a_proxy_on_a_three_master_redis_cluster(procs, upstream):
    cluster = procs.redis_cluster(masters=3)
    proxies = [procs.proxy(shared_config(upstream.url, cluster.url, rate=1000, burst=1000)) for _ in range(2)]
    await until(lambda: all(p.metric("sluicegate_redis_live_instances") == 2 for p in proxies), "2 live instances")
    async with aiohttp.ClientSession() as session:
        for proxy in proxies:
            for _ in range(5):
                async with session.get(proxy.url + DOC, headers=ACME) as r:
                    assert r.status == 200
    assert all(p.metric("sluicegate_redis_up") == 1 for p in proxies)
    slot = key_slot(b"sg:{acme}:read")
    nodes = [redis.Redis(port=server.port) for server in cluster.servers]
    counts = [node.execute_command("CLUSTER COUNTKEYSINSLOT", slot) for node in nodes]
    assert sorted(counts) == [0, 0, 1]  # the tenant's bucket lives in its slot on one master
    for node in nodes:
        node.close()


async def test_two_workers_on_redis_report_the_shared_bucket_once(procs, upstream):
    """`--workers 2` with Redis: /tenants merges the workers' views, and the one shared bucket is
    counted once, not once per worker (each worker's level is the shared level plus its leases)."""
    server = procs.redis()
    burst = 500.0
    proxy = procs.proxy(shared_config(upstream.url, server.url, rate=50, burst=burst), workers=2)
    await until(lambda: proxy.metric("sluicegate_redis_up") == 2, "both workers on Redis")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(40):  # short connections, so both workers serve some and lease tokens
            async with session.get(proxy.url + DOC, headers=ACME) as r:
                assert r.status == 200
    bucket = proxy.tenants()["tenants"]["acme"]["buckets"]["read"]
    assert "shared_level" in bucket
    # 40 units were spent from one bucket of 500 that refills at 50/s: the merged level is one bucket's.
    assert burst - 40 - 1 <= bucket["level"] <= burst + 1e-6, bucket


async def test_two_proxies_pool_their_gates_through_redis_and_fall_back_to_a_static_share_without_it(procs, upstream):
    store = procs.redis()
    proxies = [procs.proxy(shared_config(upstream.url, store.url, 1e6, 1e6)) for _ in range(2)]
    await until(lambda: all(p.metric("sluicegate_gate_pooled_instances") == 2 for p in proxies), "the gates to pool")
    gate = proxies[0].tenants()["gate"]
    assert gate["pool"] == 2 and gate["peer_inflight"] == 0
    store.kill()  # each instance falls back to its own half of the cluster, and says so
    await until(lambda: all(p.metric("sluicegate_gate_pooled_instances") == 1 for p in proxies), "the pool to dissolve")
    async with aiohttp.ClientSession() as session:  # and still serves
        for proxy in proxies:
            async with session.get(proxy.url + DOC, headers=ACME) as r:
                assert r.status == 200, await r.text()
