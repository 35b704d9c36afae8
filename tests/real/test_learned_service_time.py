"""Learned costs are service time, not queue time, on a real cluster whose search pool another tenant saturates.

`took` counts the time a search's shard tasks waited in the node's search queue. A node with one
search thread and a long queue is hammered directly (another tenant, another path in) with slow
searches; a good tenant's cheap search then takes as long as the queue is, and a proxy that learned
`took × shards` would learn it as expensive and throttle that tenant long after. Sluicegate takes
the queue wait its poller measures (Little's law on `_nodes/stats/thread_pool`) out of what it
learns; a second proxy with `cost.learn_service_time: false` beside it shows what happens without.
"""
from __future__ import annotations

import collections
import statistics
import threading

import orjson
import pytest
import urllib3

from tests.processes import make_config, tenant, wait_until
from tests.realclusters import bulk_load, http_json, unique_index

pytestmark = pytest.mark.real_cluster

HTTP = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=5, read=120))
AUTH = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json"}
CHEAP = {"size": 5, "query": {"term": {"msg": "alpha3"}}}
#: keeps the one search thread busy for a while per shard, with no script (Elasticsearch has no painless here)
SLOW = {"size": 0, "query": {"wildcard": {"msg": "*ord1*"}}, "aggs": {"n": {"terms": {"field": "n", "size": 2000}}}}


def cheap_search(proxy, index: str) -> int:
    """One cheap search through `proxy`; its took (ms)."""
    response = HTTP.request("POST", f"{proxy.url}/{index}/_search?request_cache=false", body=orjson.dumps(CHEAP),
                            headers=AUTH)
    assert response.status == 200, response.data[:300]
    return orjson.loads(response.data)["took"]


def learned(proxy) -> float:
    """The tenant's learned cost of its one query shape (cost units)."""
    costs = proxy.tenants()["tenants"]["acme"]["learned_costs"]
    assert len(costs) == 1, (costs, proxy.metric("sluicegate_search_queue_wait_ms"), proxy.tenants()["tenants"]["acme"])
    return costs[0]["cost"]


def test_a_cheap_shapes_learned_cost_stays_near_its_unsaturated_cost_while_the_pool_is_saturated(
    procs, real_queued_pool
):
    url = real_queued_pool.url
    index, storm_index = unique_index("acme"), unique_index("storm")
    bulk_load(url, index, 5_000, shards=2)
    bulk_load(url, storm_index, 40_000, shards=2)

    def config(service_time: bool) -> dict:
        return make_config([url], tenants={"acme": tenant("acme")}, admission={"health_poll_s": 0.25},
                           cost={"learn_service_time": service_time})

    proxy, control = procs.proxy(config(True)), procs.proxy(config(False))
    quiet: list[int] = []
    for i in range(60):  # unsaturated (and warm): the shape's cost is what the cluster spends on it
        quiet += [cheap_search(proxy, index), cheap_search(control, index)]
        # at least 10 rounds; more while the pool, shared with other tests, still drains someone's queue (seen in
        # CI: a saturated reading at the start, so no quiet search taught a cost)
        if i >= 9 and all(p.tenants()["tenants"]["acme"]["learned_costs"] for p in (proxy, control)):
            break
    quiet = quiet[-6:]
    base, base_control = learned(proxy), learned(control)

    stop = threading.Event()
    storm_statuses: list[int] = []

    def storm() -> None:  # another tenant, straight at the node
        while not stop.is_set():
            response = HTTP.request("POST", f"{url}/{storm_index}/_search?request_cache=false",
                                    body=orjson.dumps(SLOW), headers={"Content-Type": "application/json"})
            storm_statuses.append(response.status)

    hammers = [threading.Thread(target=storm, daemon=True) for _ in range(12)]
    for hammer in hammers:
        hammer.start()
    try:
        # both pollers have seen the queue (its wait, by Little's law, well above a cheap search's took)
        typical = max(statistics.median(quiet), 1)
        seen: list[float] = []

        def saturated_queue(p) -> bool:  # the poller measures a wait well above a cheap search's took
            seen.append(p.metric("sluicegate_search_queue_wait_ms"))
            return seen[-1] > max(50.0, 10 * typical)

        for p in (proxy, control):
            try:
                wait_until(lambda p=p: saturated_queue(p), timeout=45, interval=0.25,
                           what="the poller to see the saturated search queue")
            except TimeoutError as exc:  # say what was seen: the quiet took, the waits, the storm's answers
                raise AssertionError(f"{exc}: quiet took {quiet} ms, waits measured {seen[-8:]} ms, "
                                     f"storm answers {collections.Counter(storm_statuses)}") from None
        saturated: list[int] = []
        waits: list[float] = []  # what the poller measured, for the failure message
        for _ in range(6):
            waits.append(proxy.metric("sluicegate_search_queue_wait_ms"))
            saturated += [cheap_search(proxy, index), cheap_search(control, index)]
    finally:
        stop.set()
        for hammer in hammers:
            hammer.join()

    # The pool really was saturated: the cheap search took many times longer, all of it queue.
    assert statistics.median(saturated) > 5 * typical, (quiet, saturated, waits)
    # Learned from service time, its cost stays within 2x of the unsaturated one ...
    assert learned(proxy) <= 2 * base, (base, learned(proxy), saturated, waits)
    # ... where learning took × shards would have taken the queue for its cost.
    assert learned(control) > 2 * base_control, (base_control, learned(control))
