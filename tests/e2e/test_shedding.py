"""Overload shedding end to end (issue 21, item 5): a storm tenant and a good one on the simulated cluster,
a node lost, and what each client sees. The figures (the good tenant's latency with and without
shedding) are bench/shedding.py's, on a real cluster; this checks the wiring and the answers."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.processes import make_config, tenant, wait_until

pytestmark = pytest.mark.slow

CHEAP = {"query": {"range": {"n": {"gte": 1}}}}  # a few ms of one search thread on the simulated cluster
EXPENSIVE = {"query": {"wildcard": {"msg": "*ell*"}}}  # hundreds of ms


def plan() -> dict:
    bucket = {"rate": 1e6, "burst": 1e7}
    return {"search": bucket, "read": bucket, "write": bucket, "admin": bucket,
            "max_concurrent": 8, "max_queue": 64, "max_wait_ms": 10_000}


async def search(session: aiohttp.ClientSession, proxy, name: str, body: dict) -> tuple[int, dict, dict]:
    async with session.post(f"{proxy.url}/{name}-logs/_search", json=body,
                            headers={"Authorization": f"ApiKey {name}-key"}) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def test_a_shed_tenant_gets_429s_with_retry_after_and_is_held_back_while_others_are_served(procs):
    cluster = procs.simcluster(3, threads=2, virtual_docs=1_000_000, time_scale=1.0, queue=1000)
    async with aiohttp.ClientSession() as session:
        for name in ("storm-logs", "good-logs"):
            async with session.put(f"{cluster.url}/{name}", json={}) as r:
                assert r.status == 200
            async with session.post(f"{cluster.url}/{name}/_doc?refresh=true", json={"msg": "hello", "n": 1}) as r:
                assert r.status == 201
    config = make_config(
        cluster.nodes, tenants={"storm": tenant("storm"), "good": tenant("good")}, plans={"standard": plan()},
        admission={"health_poll_s": 0.25},
        # a long cool-down: the node stays down to the end, so the hold is still on when it is checked
        shedding={"enabled": True, "max_per_s": 10, "min_age_s": 0, "cooldown_s": 30},
    )
    proxy = procs.proxy(config)
    shed_answers: list[tuple[dict, dict]] = []
    door_answers: list[tuple[dict, dict]] = []
    stop = asyncio.Event()

    async def storm(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status, headers, body = await search(session, proxy, "storm", EXPENSIVE)
            if status == 429:
                kind = body["error"]["type"]
                (shed_answers if kind == "task_cancelled_exception" else door_answers).append((headers, body))
                await asyncio.sleep(0.05)  # a client that does not spin on its 429s

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        assert (await search(session, proxy, "good", CHEAP))[0] == 200  # the good tenant is present
        storms = [asyncio.create_task(storm(session)) for _ in range(8)]
        try:
            await asyncio.to_thread(wait_until, lambda: proxy.tenants()["tenants"]["storm"]["in_flight"] >= 4, 10,
                                    "the storm in flight")
            await asyncio.to_thread(cluster.stop_node, 2)  # distress: a data node lost
            await asyncio.to_thread(wait_until, lambda: shed_answers and door_answers, 15,
                                    "a storm search shed and the storm's next ones refused at the door")
            good = [await search(session, proxy, "good", CHEAP) for _ in range(5)]  # served all along
        finally:
            stop.set()
            await asyncio.gather(*storms, return_exceptions=True)
    headers, body = shed_answers[0]
    assert headers["X-Sluicegate-Reason"] == "shed" and headers["Retry-After"] == "30"
    assert "tenant 'storm'" in body["error"]["reason"] and body["status"] == 429
    headers, body = door_answers[0]
    assert body["error"]["type"] == "es_rejected_execution_exception" and headers["X-Sluicegate-Reason"] == "shed"
    assert 1 <= int(headers["Retry-After"]) <= 30
    assert [status for status, _, _ in good] == [200] * 5, [(s, h.get("X-Sluicegate-Reason"), b) for s, h, b in good if s != 200]
    assert proxy.metric("sluicegate_cancelled_total", tenant="storm", reason="shed") >= 1
    assert proxy.metric("sluicegate_cancelled_total", tenant="good", reason="shed") == 0
    assert proxy.metric("sluicegate_requests_total", tenant="storm", decision="throttled", reason="shed") >= 1
