"""Cluster-health readings: ES's _cluster/health and _nodes/stats/thread_pool bodies → the gate's view."""
from __future__ import annotations

import asyncio

from proxy.admission import Admission, ClusterReading
from proxy.clusterhealth import (
    HEALTH_PATH,
    INDEX_DOCS_PATH,
    NODES_INFO_PATH,
    THREAD_POOL_PATH,
    ClusterHealth,
    is_data_node,
    read_cluster,
    read_index_sizes,
    read_node_hosts,
    read_nodes_info,
)


def node(roles, threads=8, queue=0, active=0, rejected=0, completed=0) -> dict:
    pools = {"search": {"threads": threads, "queue": queue, "active": active, "rejected": rejected,
                        "largest": threads, "completed": completed},
             "write": {"threads": 4, "queue": 99, "active": 4, "rejected": 7, "largest": 4, "completed": 1}}
    return {"name": "n", "roles": roles, "thread_pool": pools}


def stats(**nodes) -> dict:
    return {"_nodes": {"total": len(nodes), "successful": len(nodes), "failed": 0}, "cluster_name": "c", "nodes": nodes}


def health(data_nodes: int) -> dict:
    return {"cluster_name": "c", "status": "green", "number_of_nodes": data_nodes + 1,
            "number_of_data_nodes": data_nodes}


DATA = ["data", "ingest", "master"]


def test_search_threads_of_data_nodes_make_the_capacity_and_other_pools_are_ignored():
    reading, counters = read_cluster(
        health(2),
        stats(a=node(DATA, threads=13, queue=2, active=13), b=node(["data_hot"], threads=13, queue=1, active=5),
              m=node(["master"], threads=7, queue=50)),  # a dedicated master runs no searches
        {},
    )
    assert reading == ClusterReading(data_nodes=2, search_threads=26, search_queue=3, search_active=18)
    assert set(counters) == {"a", "b"}


def test_rejections_and_completions_count_since_the_previous_poll_per_node():
    _, counters = read_cluster(
        health(2), stats(a=node(DATA, rejected=5, completed=100), b=node(DATA, completed=50)), {})
    reading, counters = read_cluster(
        health(2), stats(a=node(DATA, rejected=9, completed=180), b=node(DATA, rejected=1, completed=70)), counters)
    assert (reading.rejected, reading.completed) == (5, 100)
    # b restarted (its counters went down) and c is new: neither counts until the next poll
    reading, counters = read_cluster(
        health(3), stats(a=node(DATA, rejected=9, completed=200), b=node(DATA, completed=3), c=node(DATA, rejected=4)),
        counters)
    assert (reading.rejected, reading.completed, reading.search_threads) == (0, 20, 24)
    reading, _ = read_cluster(
        health(3), stats(a=node(DATA, rejected=9, completed=200), b=node(DATA, completed=13), c=node(DATA, rejected=6)),
        counters)
    assert (reading.rejected, reading.completed) == (2, 10)


def test_without_thread_pool_stats_node_counts_still_inform_the_gate():
    reading, counters = read_cluster(health(3), None, {"x": (1, 1)})
    assert reading == ClusterReading(data_nodes=3, search_threads=None)
    assert counters == {"x": (1, 1)}  # kept for when the stats come back
    reading, _ = read_cluster({"error": "forbidden"}, {"error": {"type": "security_exception"}}, {})
    assert reading is None


def test_without_health_the_data_nodes_come_from_the_stats():
    reading, _ = read_cluster(None, stats(a=node(DATA), b=node(DATA), m=node(["master"])), {})
    assert (reading.data_nodes, reading.search_threads) == (2, 16)


def test_odd_values_count_as_nothing_rather_than_breaking_the_poll():
    odd = {"roles": DATA, "thread_pool": {"search": {"threads": "8", "queue": -1, "rejected": True, "completed": None}}}
    junk = {"nodes": {"a": odd, "b": "junk", "c": {"roles": DATA}}}
    reading, _ = read_cluster({"number_of_data_nodes": True}, junk, {})
    assert reading == ClusterReading(data_nodes=1, search_threads=0)


class Answers:
    """A JsonSource that answers from a dict of path -> body (None: no answer)."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.asked: list[str] = []

    async def get_json(self, path: str, timeout: float | None = None):
        self.asked.append(path)
        return self.answers.get(path)


def info(**nodes) -> dict:
    """A nodes info body: node id → (search pool size, HTTP publish address)."""
    return {"nodes": {node_id: {"thread_pool": {"search": {"size": size}}, "http": {"publish_address": address}}
                      for node_id, (size, address) in nodes.items()}}


def test_configured_pool_sizes_win_over_the_threads_a_pool_has_started_so_far():
    # Real nodes start search threads on demand: an idle node's stats say 0 threads, not its size.
    known = read_nodes_info({"nodes": {"a": {"thread_pool": {"search": {"size": 4}}, "http": {"publish_address": "h/10.0.0.1:9200"}},
                                       "b": {"thread_pool": {"search": {"size": 4}}},
                                       "odd": {"thread_pool": {"search": {"size": "4"}}}, "junk": 1}})
    assert known == {"a": (4, "10.0.0.1:9200"), "b": (4, None), "odd": (None, None)}
    reading, _ = read_cluster(health(3), stats(a=node(DATA, threads=0), b=node(DATA, threads=1),
                                               c=node(DATA, threads=2)), {}, {"a": 4, "b": 4})
    assert reading.search_threads == 4 + 4 + 2  # c not sized yet: what it has started
    assert read_nodes_info(None) == {} and read_nodes_info({"error": "forbidden"}) == {}


def test_nodes_on_one_host_share_its_cores_and_unknown_processors_leave_the_cores_unknown():
    hosts = read_node_hosts({"nodes": {
        "a": {"ip": "10.0.0.1", "os": {"allocated_processors": 1}},
        "b": {"ip": "10.0.0.1", "os": {"allocated_processors": 1}},  # pinned to the same core as a
        "c": {"ip": "10.0.0.2", "os": {"allocated_processors": 8}},
        "old": {"ip": "10.0.0.3", "os": {}}, "odd": {"ip": "10.0.0.4", "os": {"allocated_processors": True}},
        "junk": 1}})
    assert hosts == {"a": (1, "10.0.0.1"), "b": (1, "10.0.0.1"), "c": (8, "10.0.0.2")}
    three = stats(a=node(DATA, threads=2), b=node(DATA, threads=2), c=node(DATA, threads=2))
    assert read_cluster(health(3), three, {}, hosts=hosts)[0].cores == 1 + 8
    assert read_cluster(health(3), three, {}, unreachable={"c"}, hosts=hosts)[0].cores == 1  # c is gone
    assert read_cluster(health(3), three, {}, hosts={"a": (1, "10.0.0.1")})[0].cores is None  # b, c unknown
    assert read_cluster(health(3), three, {})[0].cores is None
    assert read_node_hosts(None) == {} and read_node_hosts({"error": "forbidden"}) == {}


def test_nodes_the_proxy_cannot_reach_are_not_capacity_while_the_cluster_still_lists_them():
    reading, _ = read_cluster(health(3), stats(a=node(DATA, threads=4), b=node(DATA, threads=4), c=node(DATA, threads=4)),
                              {}, unreachable={"b"})
    assert (reading.data_nodes, reading.search_threads) == (2, 8)


class Cluster(Answers):
    """Answers, plus the upstream addresses the proxy cannot reach."""

    def __init__(self, answers: dict, down=()):
        super().__init__(answers)
        self.down = set(down)

    def unreachable_addresses(self):
        return self.down


def test_a_poll_describes_nodes_it_has_not_seen_before_and_only_those():
    source = Cluster({
        HEALTH_PATH: health(2),
        THREAD_POOL_PATH: stats(a=node(DATA, threads=0), b=node(DATA, threads=0)),
        NODES_INFO_PATH: info(a=(7, "127.0.0.1:9200"), b=(7, "127.0.0.1:9201")),
    })
    health_poller = ClusterHealth(source, Admission(clock=lambda: 0.0))
    reading = asyncio.run(health_poller.poll())
    assert reading.search_threads == 14 and source.asked.count(NODES_INFO_PATH) == 1
    source.down = {"127.0.0.1:9201"}  # b stops answering the proxy; the cluster has not noticed yet
    reading = asyncio.run(health_poller.poll())
    assert (reading.data_nodes, reading.search_threads) == (1, 7) and source.asked.count(NODES_INFO_PATH) == 1
    source.down = set()
    source.answers[THREAD_POOL_PATH] = stats(a=node(DATA, threads=3), c=node(DATA, threads=0))  # b left, c joined
    source.answers[NODES_INFO_PATH] = info(c=(5, "127.0.0.1:9202"))
    reading = asyncio.run(health_poller.poll())
    assert reading.search_threads == 12 and source.asked.count(NODES_INFO_PATH) == 2


def test_roles():
    assert is_data_node(["data_content", "ingest"]) and is_data_node(None) and is_data_node(["data"])
    assert not is_data_node(["master", "ml"]) and not is_data_node([])


def test_index_sizes_come_from_the_primaries_doc_counts_and_odd_entries_are_left_out():
    sizes = read_index_sizes({"indices": {
        "logs-2024.01.01": {"primaries": {"docs": {"count": 1_000_000}}},
        "small": {"primaries": {"docs": {"count": 0}}, "total": {"docs": {"count": 99}}},
        "odd": {"primaries": {"docs": {"count": "12"}}}, "neg": {"primaries": {"docs": {"count": -1}}},
        "flag": {"primaries": {"docs": {"count": True}}}, "junk": "x", "bare": {},
    }})
    assert sizes.docs == {"logs-2024.01.01": 1_000_000, "small": 0}
    assert read_index_sizes({}).docs == {}  # filter_path drops everything when there is no index at all
    assert read_index_sizes(None) is None and read_index_sizes({"error": "forbidden"}) is None


def test_a_size_poll_hands_the_sizes_over_and_a_failed_one_keeps_the_last():
    given = []
    source = Answers({INDEX_DOCS_PATH: {"indices": {"a": {"primaries": {"docs": {"count": 5}}}}}})
    health = ClusterHealth(source, Admission(clock=lambda: 0.0), on_index_sizes=given.append)
    first = asyncio.run(health.poll_sizes())
    assert given == [first] and first.docs == {"a": 5} and source.asked == [INDEX_DOCS_PATH]
    source.answers = {}
    assert asyncio.run(health.poll_sizes()) is None
    assert given == [first] and health.sizes is first and health.size_failures == 1


def test_turning_size_polling_off_drops_the_sizes():
    given = []
    source = Answers({INDEX_DOCS_PATH: {"indices": {"a": {"primaries": {"docs": {"count": 5}}}}}})
    health = ClusterHealth(source, Admission(clock=lambda: 0.0), on_index_sizes=given.append, index_sizes_poll_s=30)
    assert asyncio.run(health.sizes_tick()) == 30 and given[-1].docs == {"a": 5}
    health.index_sizes_poll_s = 0  # a reload turned it off
    asyncio.run(health.sizes_tick())
    assert given[-1] is None and health.sizes is None and len(source.asked) == 1


# ---- the search queue wait (Little's law), taken out of learned costs ----

from proxy.clusterhealth import QueueWait, read_queue_sample  # noqa: E402


def test_queue_samples_count_task_seconds_queued_and_tasks_completed():
    first = stats(a=node(DATA, queue=0, completed=1000), b=node(DATA, queue=10, completed=500),
                  m=node(["master"], queue=99, completed=0))
    sample, samples = read_queue_sample(first, {}, 0.0)
    assert sample is None and set(samples) == {"a", "b"}  # nothing to diff yet; masters run no searches
    # over 2 s: a completed 200 tasks with queues 0 → 4, b 100 with 10 → 6
    second = stats(a=node(DATA, queue=4, completed=1200), b=node(DATA, queue=6, completed=600))
    sample, samples = read_queue_sample(second, samples, 2.0)
    assert sample == ((2.0 + 8.0) * 2.0, 300)
    restarted = stats(a=node(DATA, queue=5, completed=2))
    assert read_queue_sample(restarted, {"a": (10, 5)}, 3.0)[0] is None
    assert read_queue_sample(None, {"a": (1, 1)}, 1.0) == (None, {"a": (1, 1)})


def test_queue_wait_is_littles_law_over_a_window_of_polls():
    wait = QueueWait(window_s=2.0)
    assert wait.add(1.0, 0.0, 100) == 0.0  # no queue
    assert wait.add(1.0, 5.0, 50) == 5.0 / 150 * 1000  # the window: both intervals
    assert wait.add(1.0, 1.0, 50) == 6.0 / 100 * 1000  # the oldest interval left the window
    assert wait.add(2.5, 3.0, 30) == 3.0 / 30 * 1000  # one interval as long as the window is enough
    stuck = QueueWait(window_s=2.0)
    assert stuck.add(3.0, 15.0, 0) == 3000.0  # a queue that completed nothing waited the whole window


class _Upstream:
    def __init__(self, answers):
        self.answers = answers

    async def get_json(self, path, timeout=None):
        return self.answers[path].pop(0) if self.answers.get(path) else None

    def unreachable_addresses(self):
        return ()


async def test_the_poller_hands_the_queue_wait_to_its_listener():
    from proxy.clusterhealth import HEALTH_PATH, THREAD_POOL_PATH

    seen: list[float] = []
    upstream = _Upstream({
        HEALTH_PATH: [health(1), health(1)],
        THREAD_POOL_PATH: [stats(a=node(DATA, queue=8, completed=0)), stats(a=node(DATA, queue=8, completed=40))],
    })
    poller = ClusterHealth(upstream, Admission(), on_queue_wait=seen.append)
    await poller.poll()
    assert seen == [] and poller.queue_wait_ms is None
    await poller.poll()
    assert len(seen) == 1 and seen[0] > 0 and poller.queue_wait_ms == seen[0]
