"""Cluster health for the gate: poll _cluster/health and _nodes/stats/thread_pool, tell admission;
poll the indices' document counts, tell the cost model.

Every `admission.health_poll_s` seconds one node is asked (through the upstream pool, with the
proxy's own credentials) how many data nodes the cluster has and, per data node, the size, queue
and rejection count of its `search` thread pool. The size is the pool's configured size, read from
the nodes info (`_nodes/thread_pool`) whenever a node id appears that the proxy has not sized yet:
the stats' `threads` is only how many threads the pool has started so far — 0 on a node that has
not searched yet, real Elasticsearch and OpenSearch start them on demand.

A node the proxy itself cannot reach (its upstream health check fails, or a connection to it was
refused) does not count as capacity, even while the cluster still lists it: a killed or hung node
stays in the cluster's view until its master's fault detection gives up on it (seconds for a dead
process, up to half a minute for a hung one), and searches routed to its shards meanwhile stall.
The nodes info gives each node's HTTP address, which is how a node id meets an upstream URL. `read_cluster` turns the two answers into a
`ClusterReading` (pure: the previous counters in, the new ones out); `ClusterHealth` runs the loop.
A failed poll changes nothing: the gate keeps its last reading and its latency signals.

The same thread-pool answer also says how long a search task waits in a node's queue: by Little's
law, the task-seconds spent queued over the last polls (queue lengths sampled at each poll) divided
by the tasks completed. `read_queue_sample` and `QueueWait` compute it (pure: the previous samples
and the seconds between polls in) and `on_queue_wait` hands it to the learned costs, which take it out of observed costs
(proxy/cost_learned.py): a saturated cluster's queue is not learned as the cost of a cheap shape.

Every `cost.index_sizes_poll_s` seconds (30 by default: sizes change slowly, and the answer grows with
the number of indices) it asks for each index's primary document count, filtered down to that one
number per index; `read_index_sizes` makes an `IndexSizes` of it, handed to `on_index_sizes`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from .admission import Admission, ClusterReading
from .cost import IndexSizes

log = logging.getLogger("sluicegate.clusterhealth")

HEALTH_PATH = "/_cluster/health"
THREAD_POOL_PATH = "/_nodes/stats/thread_pool"
#: each node's configured search pool size and HTTP address (nodes info: static per node process)
NODES_INFO_PATH = ("/_nodes/thread_pool,http,os?filter_path=nodes.*.thread_pool.search.size,nodes.*.http.publish_address,"
                   "nodes.*.ip,nodes.*.os.allocated_processors")
#: primaries' document count per open index, and nothing else (a few dozen bytes per index)
INDEX_DOCS_PATH = "/_stats/docs?filter_path=indices.*.primaries.docs.count"

#: per node id: (search tasks rejected, completed) at the previous poll
Counters = dict[str, tuple[int, int]]
#: per node id: (search tasks completed, tasks in the search queue) at the previous poll
QueueSamples = dict[str, tuple[int, int]]
#: seconds of polls the search queue wait is averaged over
QUEUE_WAIT_WINDOW_S = 2.0


def is_data_node(roles: Any) -> bool:
    """A node holds shards (and so runs searches) if it has any data role; no roles listed means it does."""
    if not isinstance(roles, list):
        return True
    return any(isinstance(r, str) and (r == "data" or r.startswith("data_")) for r in roles)


def read_cluster(
    health: Mapping | None,
    stats: Mapping | None,
    previous: Counters,
    pool_sizes: Mapping[str, int] | None = None,
    unreachable: Collection[str] = (),
    hosts: Mapping[str, tuple[int, str]] | None = None,
) -> tuple[ClusterReading | None, Counters]:
    """The gate's view of one poll, and the counters to diff the next poll against.

    `health` is the _cluster/health body, `stats` the _nodes/stats/thread_pool body; either may be
    None (not answered, or forbidden). `pool_sizes` is each node's configured search pool size (see
    `read_nodes_info`); a node missing from it counts the threads its stats say it has started.
    Nodes whose ids are in `unreachable` count neither as data nodes nor as threads. Rejections and completions are counted since the previous
    poll, per node id; a node seen for the first time, or restarted (counters went down), contributes
    what it has counted since it started only from the next poll on.

    `hosts` is each node's processors and address (`read_node_hosts`). The live data nodes' cores are
    counted once per address: nodes on one host share its processors (three nodes each allowed the one
    core they are pinned to have one core between them, not three). None if a live data node is not in it.
    """
    threads: int | None = None
    queue = active = rejected = completed = gone = 0
    counters: Counters = {}
    stats_data_nodes = 0
    per_host: dict[str, int] | None = {} if hosts else None
    nodes = stats.get("nodes") if isinstance(stats, Mapping) else None
    if isinstance(nodes, Mapping):
        threads = 0
        for node_id, node in nodes.items():
            if not isinstance(node, Mapping) or not is_data_node(node.get("roles")):
                continue
            pool = (node.get("thread_pool") or {}).get("search")
            if not isinstance(pool, Mapping):
                continue
            if node_id in unreachable:
                gone += 1
                continue
            stats_data_nodes += 1
            if per_host is not None:
                host = hosts.get(node_id)  # type: ignore[union-attr]
                if host is None:
                    per_host = None
                else:
                    per_host[host[1]] = max(per_host.get(host[1], 0), host[0])
            size = pool_sizes.get(node_id) if pool_sizes else None
            threads += size if size is not None else _int(pool.get("threads"))
            queue += _int(pool.get("queue"))
            active += _int(pool.get("active"))
            now = (_int(pool.get("rejected")), _int(pool.get("completed")))
            counters[node_id] = now
            before = previous.get(node_id)
            if before is not None and now[0] >= before[0] and now[1] >= before[1]:
                rejected += now[0] - before[0]
                completed += now[1] - before[1]
    data_nodes = health.get("number_of_data_nodes") if isinstance(health, Mapping) else None
    if not isinstance(data_nodes, int) or isinstance(data_nodes, bool):
        if threads is None:
            return None, previous
        data_nodes = stats_data_nodes
    else:
        data_nodes = max(0, data_nodes - gone)
    reading = ClusterReading(
        data_nodes=data_nodes,
        search_threads=threads,
        search_queue=queue,
        search_active=active,
        rejected=rejected,
        completed=completed,
        cores=sum(per_host.values()) if per_host else None,
    )
    return reading, counters if threads is not None else previous


def read_queue_sample(
    stats: Mapping | None, previous: QueueSamples, elapsed_s: float
) -> tuple[tuple[float, int] | None, QueueSamples]:
    """What the data nodes' search queues held over the last `elapsed_s` seconds, from two
    `_nodes/stats/thread_pool` answers: (task-seconds spent queued, search tasks completed), summed over
    the nodes seen in both (each node's queue length taken as the mean of its two samples); and the
    samples to diff next time. None when it cannot be told (first poll, no stats, restarted nodes only).
    """
    nodes = stats.get("nodes") if isinstance(stats, Mapping) else None
    if not isinstance(nodes, Mapping):
        return None, previous
    samples: QueueSamples = {}
    queued = 0.0
    completed = 0
    known = False
    for node_id, node in nodes.items():
        if not isinstance(node, Mapping) or not is_data_node(node.get("roles")):
            continue
        pool = (node.get("thread_pool") or {}).get("search")
        if not isinstance(pool, Mapping):
            continue
        now = (_int(pool.get("completed")), _int(pool.get("queue")))
        samples[node_id] = now
        before = previous.get(node_id)
        if before is None or now[0] < before[0] or elapsed_s <= 0:
            continue  # first sight of this node, or it restarted
        known = True
        queued += (now[1] + before[1]) / 2.0 * elapsed_s
        completed += now[0] - before[0]
    return ((queued, completed) if known else None), samples


class QueueWait:
    """Milliseconds a search task has waited in a data node's search queue, on average over the polls of
    the last `window_s` seconds: Little's law, task-seconds queued ÷ tasks completed. Queue lengths are
    sampled only at polls, so one interval is noisy; a window of a few smooths it. A queue that completed
    nothing waited the whole window."""

    def __init__(self, window_s: float = 2.0, max_intervals: int = 16) -> None:
        self.window_s = window_s
        self.intervals: deque[tuple[float, float, int]] = deque(maxlen=max_intervals)  # (elapsed, queued, completed)

    def add(self, elapsed_s: float, queued_s: float, completed: int) -> float:
        """Add one poll interval; the mean wait (ms) over the window that ends with it."""
        self.intervals.append((elapsed_s, queued_s, completed))
        span = queued = 0.0
        done = 0
        for elapsed, q, c in reversed(self.intervals):
            span += elapsed
            queued += q
            done += c
            if span >= self.window_s:
                break
        if queued <= 0.0:
            return 0.0
        return queued / done * 1000.0 if done else span * 1000.0


def read_nodes_info(info: Mapping | None) -> dict[str, tuple[int | None, str | None]]:
    """Per node id, its configured search pool size and its HTTP address ("host:port"), from a
    `_nodes/thread_pool,http` (nodes info) body; either may be None when the body does not say."""
    nodes = info.get("nodes") if isinstance(info, Mapping) else None
    known: dict[str, tuple[int | None, str | None]] = {}
    if isinstance(nodes, Mapping):
        for node_id, node in nodes.items():
            if not isinstance(node, Mapping):
                continue
            size = (node.get("thread_pool") or {}).get("search", {}).get("size") if isinstance(
                node.get("thread_pool"), Mapping) else None
            if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
                size = None
            address = node.get("http", {}).get("publish_address") if isinstance(node.get("http"), Mapping) else None
            # Elasticsearch may write "hostname/ip:port"; the proxy's upstream list names "ip:port"
            address = address.rpartition("/")[2] if isinstance(address, str) else None
            known[node_id] = (size, address)
    return known


def read_node_hosts(info: Mapping | None) -> dict[str, tuple[int, str]]:
    """Per node id, the processors it is allowed (`os.allocated_processors`: its affinity mask or CPU
    quota, or `node.processors`) and its address (`ip`), from the same nodes info body. Nodes that do not
    say both are left out."""
    nodes = info.get("nodes") if isinstance(info, Mapping) else None
    hosts: dict[str, tuple[int, str]] = {}
    if isinstance(nodes, Mapping):
        for node_id, node in nodes.items():
            if not isinstance(node, Mapping) or not isinstance(node.get("os"), Mapping):
                continue
            processors, ip = node["os"].get("allocated_processors"), node.get("ip")
            if isinstance(processors, int) and not isinstance(processors, bool) and processors > 0 and isinstance(ip, str):
                hosts[node_id] = (processors, ip)
    return hosts


def unknown_nodes(stats: Mapping | None, known: Mapping[str, object]) -> bool:
    """True if the stats list a node the nodes info has not described yet (new, or never answered)."""
    nodes = stats.get("nodes") if isinstance(stats, Mapping) else None
    return isinstance(nodes, Mapping) and any(node_id not in known for node_id in nodes)


def read_index_sizes(stats: Mapping | None) -> IndexSizes | None:
    """Documents per index from a `_stats/docs` body (filtered or not); None if it says nothing usable.

    An index whose count is missing or odd is left out (its searches keep the calibrated weights)."""
    indices = stats.get("indices") if isinstance(stats, Mapping) else None
    if not isinstance(indices, Mapping):
        return IndexSizes({}) if isinstance(stats, Mapping) and stats == {} else None  # filter_path: no indices
    docs: dict[str, int] = {}
    for name, entry in indices.items():
        try:
            count = entry["primaries"]["docs"]["count"]
        except (KeyError, TypeError):
            continue
        if isinstance(name, str) and isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            docs[name] = count
    return IndexSizes(docs)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class JsonSource(Protocol):
    async def get_json(self, path: str, timeout: float | None = None) -> dict | None: ...

    def unreachable_addresses(self) -> Collection[str]:
        """The "host:port" of upstream nodes the proxy cannot reach now."""
        ...


class ClusterHealth:
    """Polls the cluster every `admission.poll_s` seconds and hands each reading to admission and the
    search queue wait to `on_queue_wait`; polls the indices' sizes every `index_sizes_poll_s` seconds
    (0: never) and hands them to `on_index_sizes`."""

    def __init__(
        self,
        upstream: JsonSource,
        admission: Admission,
        on_index_sizes: Callable[[IndexSizes | None], None] | None = None,
        index_sizes_poll_s: float = 30.0,
        on_queue_wait: Callable[[float], None] | None = None,
    ):
        self.upstream = upstream
        self.admission = admission
        self.on_index_sizes = on_index_sizes
        self.index_sizes_poll_s = index_sizes_poll_s
        self.on_queue_wait = on_queue_wait
        self.counters: Counters = {}
        self.queue_samples: QueueSamples = {}
        self.queue_wait = QueueWait(QUEUE_WAIT_WINDOW_S)
        self.queue_wait_ms: float | None = None
        self._sampled_at: float | None = None
        self.nodes_info: dict[str, tuple[int | None, str | None]] = {}  # node id → (search pool size, HTTP address)
        self.hosts: dict[str, tuple[int, str]] = {}  # node id → (processors, address)
        self.last: ClusterReading | None = None
        self.sizes: IndexSizes | None = None
        self.polls = 0
        self.failures = 0
        self.size_failures = 0
        self._task: asyncio.Task | None = None
        self._sizes_task: asyncio.Task | None = None

    @property
    def interval(self) -> float:
        return self.admission.gate.poll_s

    async def poll(self) -> ClusterReading | None:
        """One poll; the reading it gave admission, or None if the cluster did not answer."""
        timeout = max(1.0, self.interval)
        health, stats = await asyncio.gather(
            self.upstream.get_json(HEALTH_PATH, timeout), self.upstream.get_json(THREAD_POOL_PATH, timeout)
        )
        if stats is not None:
            now = time.monotonic()
            elapsed = now - self._sampled_at if self._sampled_at is not None else 0.0
            sample, self.queue_samples = read_queue_sample(stats, self.queue_samples, elapsed)
            self._sampled_at = now
            if sample is not None:
                wait = self.queue_wait_ms = self.queue_wait.add(elapsed, *sample)
                if self.on_queue_wait is not None:
                    self.on_queue_wait(wait)
        if unknown_nodes(stats, self.nodes_info):
            info = await self.upstream.get_json(NODES_INFO_PATH, timeout)
            self.nodes_info.update(read_nodes_info(info))
            self.hosts.update(read_node_hosts(info))
        down = self.upstream.unreachable_addresses()
        unreachable = {node_id for node_id, (_, address) in self.nodes_info.items() if address in down} if down else ()
        sizes = {node_id: size for node_id, (size, _) in self.nodes_info.items() if size is not None}
        reading, self.counters = read_cluster(health, stats, self.counters, sizes, unreachable, self.hosts)
        self.polls += 1
        if reading is None:
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("cluster health poll got no answer (%d so far); the gate keeps its last reading",
                            self.failures)
            return None
        self.last = reading
        self.admission.observe_cluster(reading)
        return reading

    async def poll_sizes(self) -> IndexSizes | None:
        """One poll of the indices' document counts; what it gave the cost model, or None (no answer)."""
        sizes = read_index_sizes(await self.upstream.get_json(INDEX_DOCS_PATH, max(5.0, self.index_sizes_poll_s / 3)))
        if sizes is None:
            self.size_failures += 1
            if self.size_failures == 1 or self.size_failures % 100 == 0:
                log.warning("index size poll got no answer (%d so far); estimates keep the last sizes",
                            self.size_failures)
            return None
        self.sizes = sizes
        if self.on_index_sizes is not None:
            self.on_index_sizes(sizes)
        return sizes

    async def start(self) -> None:
        """Poll once (so the gate starts from the cluster's capacity and estimates from its sizes), then
        every interval."""
        try:
            await self.poll()
        except Exception:  # noqa: BLE001 - a health poll must never stop the proxy from starting
            log.exception("first cluster health poll failed")
        self._task = asyncio.create_task(self._loop(), name="cluster-health")
        if self.on_index_sizes is not None:
            self._sizes_task = asyncio.create_task(self._sizes_loop(), name="index-sizes")

    async def close(self) -> None:
        for task in (self._task, self._sizes_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._sizes_task = None

    async def _sizes_loop(self) -> None:
        while True:
            await asyncio.sleep(await self.sizes_tick())

    async def sizes_tick(self) -> float:
        """One turn of the size poll loop; the seconds until the next. Polling off (0, after a reload):
        the sizes are dropped, so no estimate goes on using ones that will not be refreshed."""
        interval = self.index_sizes_poll_s
        if interval > 0:
            try:
                await self.poll_sizes()
            except Exception:  # noqa: BLE001 - keep polling whatever one answer looked like
                log.exception("index size poll failed")
            return interval
        if self.sizes is not None and self.on_index_sizes is not None:
            self.sizes = None
            self.on_index_sizes(None)
        return 5.0  # look again for a reload that turns it on

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - keep polling whatever one answer looked like
                log.exception("cluster health poll failed")
