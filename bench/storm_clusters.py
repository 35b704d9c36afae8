"""The clusters bench/storm.py runs its scenario against: the simulator, or real OpenSearch / Elasticsearch.

A `World` gives the storm bench what differs between them: the nodes, the tenants' indices and the
requests each tenant sends, the cluster's counters (search-thread time per index, rejections, queue),
the processes whose CPU is the cluster's, and the node it kills mid-storm. Everything else — modes,
phases, load, figures — is the same code for all three.

- `SimWorld`: a fresh simulated cluster per mode (bench/simcluster.py: 3 nodes × 4 search threads,
  queue 16, 1M virtual documents per index), the searches of bench/loadgen.py's CHEAP/EXPENSIVE.
- `RealWorld`: one real 3-node cluster kept for the whole run (bench/realcluster.py, its data under
  /var/tmp/sluicegate/storm-<flavor> so the corpus loads once), one corpus index per tenant
  (bench/corpus.py, replicated so a lost node loses no data), the query shapes of proxy/battery.py.

Both pin the cluster to CPU 0 (`CLUSTER_CPUS`); bench/storm.py pins itself — and so the proxies, nginx,
Redis and the load generators it starts — to CPU 1.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import report

#: the cluster's processes run here, everything else of the bench on LOAD_CPUS
CLUSTER_CPUS, LOAD_CPUS = "0", "1"


def pin(pid: int, cpus: str) -> None:
    """Pin every thread of a running process to `cpus` (a taskset-style list such as "0" or "0,1")."""
    wanted = {int(c) for c in cpus.split(",")}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), wanted)


def request(url: str, method: str = "GET", body: bytes = b"", content_type: str = "application/json",
            timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body or None, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass(frozen=True)
class Load:
    """How hard the good tenants and the storm push, per world (requests/s, seconds, workers)."""

    steady_rate: float  # requests per second of each steady tenant (Poisson)
    burst: int  # the dashboard's parallel searches ...
    burst_every_s: float  # ... every this many seconds (±20 %)
    storm_workers: int  # closed-loop workers per storming tenant
    timeout_s: float = 10.0  # elasticsearch-py's default request timeout


class CpuMeter:
    """Cumulative CPU seconds of a changing set of processes: a process that died keeps what it had used."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}

    def seconds(self, pids: list[int]) -> float:
        for pid in pids:
            used = report.cpu_seconds(pid)
            if used > 0 or pid not in self.last:
                self.last[pid] = max(used, self.last.get(pid, 0.0))
        return sum(self.last.values())


class Counters:
    """Per-node counters summed into cluster totals that never go back: a node that leaves keeps what it had
    counted, a node that restarts (its counters start over) adds what it counts from then on. The first
    `add` of each key after `prime()` is history, not counted."""

    def __init__(self) -> None:
        self.previous: dict[tuple[str, str], float] = {}
        self.total: dict[str, float] = {}
        self.primed = False

    def prime(self) -> None:
        self.primed = True

    def add(self, node: str, key: str, value: float) -> None:
        before = self.previous.get((node, key))
        if before is None:
            delta = value if self.primed else 0.0  # new since the start (a shard copy's first search), or history
        else:
            delta = value if value < before else value - before  # went down: the node restarted
        self.previous[(node, key)] = value
        self.total[key] = self.total.get(key, 0.0) + delta


# ---------------------------------------------------------------------------------------------
# the simulator
# ---------------------------------------------------------------------------------------------


class SimWorld:
    """A fresh simulated cluster per mode, so every mode starts from the same state."""

    name = "sim"
    title = "the simulated cluster"
    NODES, THREADS, QUEUE = 3, 4, 16  # search threads and queue places per node (ES's default queue is 1000)
    VIRTUAL_DOCS = 1_000_000  # per index: expensive searches cost 0.2-1.2 s of thread time, cheap ones 1-7 ms
    SHARDS = 2
    victim = 2  # the node killed mid-storm
    load = Load(steady_rate=15.0, burst=10, burst_every_s=2.0, storm_workers=4)

    def __init__(self, tenants: list[str], storming: list[str]) -> None:
        self.tenants, self.storming = tenants, storming
        self.cluster = None
        self.threads = self.NODES * self.THREADS
        self.capacity = self.threads * 1000.0  # cluster-ms per second of search threads
        self.measured_capacity = self.capacity  # the simulator's pools are exactly that
        self.cpu = CpuMeter()

    def describe(self) -> str:
        return (f"Cluster: {self.NODES} simulated nodes × {self.THREADS} search threads, queue {self.QUEUE} per node, "
                f"{self.VIRTUAL_DOCS:,} virtual docs per index in {self.SHARDS} shards: capacity "
                f"{self.capacity:,.0f} cluster-ms/s. A fresh cluster per mode, pinned to CPU {CLUSTER_CPUS}.")

    def setup(self, log) -> None:
        pass

    def close(self) -> None:
        pass

    def open(self, stack: contextlib.ExitStack) -> None:
        from tests.processes import SimClusterProcess

        self.cluster = SimClusterProcess(self.NODES, threads=self.THREADS, queue=self.QUEUE,
                                         virtual_docs=self.VIRTUAL_DOCS, time_scale=1.0)
        stack.callback(self.cluster.stop)
        pin(self.cluster.proc.pid, CLUSTER_CPUS)
        self._create_indices()
        self.cpu = CpuMeter()

    @property
    def nodes(self) -> list[str]:
        return list(self.cluster.nodes)

    def index_of(self, name: str) -> str:
        return f"{name}-logs"

    def _create_indices(self) -> None:
        """One index per tenant, named after it, with a few real documents (the virtual ones only cost)."""
        services = ["checkout", "api", "search", "auth"]
        url = self.cluster.url
        for name in self.tenants:
            status, body = request(f"{url}/{name}-logs", "PUT", orjson.dumps({"settings": {"number_of_shards": self.SHARDS}}))
            assert status == 200, body
            lines = []
            for i in range(40):
                lines.append(orjson.dumps({"index": {"_index": f"{name}-logs", "_id": str(i)}}))
                lines.append(orjson.dumps({"@timestamp": "2025-01-01T00:00:00Z", "service": services[i % 4],
                                           "message": f"connection reset by peer error {i}",
                                           "user": {"id": f"u-{1000 + i}"}, "bytes": 100 * i}))
            status, body = request(f"{url}/_bulk?refresh=true", "POST", b"\n".join(lines) + b"\n", "application/x-ndjson")
            assert status == 200, body

    def requests(self, name: str) -> list[list[str]]:
        from bench.loadgen import CHEAP, EXPENSIVE

        bodies = EXPENSIVE if name in self.storming else CHEAP
        return [[f"/{name}-logs/_search", orjson.dumps(body).decode()] for body in bodies]

    def before_mode(self) -> None:
        status, body = request(self.cluster.url + "/_sim/_reset_stats", "POST")
        assert status == 200, body

    def sample(self) -> dict | None:
        try:
            stats = self.cluster.stats()
        except (ValueError, OSError):
            return None
        live = [n for n in stats["nodes"] if n["live"]]
        return {
            "thread_ms": {name.rsplit("-", 1)[0]: entry["thread_ms"] for name, entry in stats["indices"].items()},
            "rejected": stats["cluster"]["rejected"],
            "queue": sum(n["search"]["queue"] for n in live),
            "live_threads": len(live) * self.THREADS,
            "cpu": self.cpu.seconds([self.cluster.proc.pid]),
        }

    def kill_node(self) -> None:
        self.cluster.stop_node(self.victim)

    def start_node(self) -> None:
        self.cluster.start_node(self.victim)

    def after_mode(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# real OpenSearch / Elasticsearch
# ---------------------------------------------------------------------------------------------

#: cheap searches of the good tenants (proxy/battery.py shapes): ~5-15 ms of took on the corpus
GOOD_SHAPES = (
    "term on a keyword",
    "match one word",
    "bool: match, term filter, date range filter",
    "term on a high-cardinality keyword",
    "date range, one day",
)
#: the storm: the battery's costliest shapes that both flavors run (leading wildcards, big terms aggs,
#: high-cardinality cardinality and percentiles, nested aggs, deep pagination) ...
STORM_SHAPES = (
    "terms agg, size 10,000 on a high-cardinality keyword",
    "terms > date_histogram > percentiles (nested aggs)",
    "percentiles of a number",
    "cardinality of a high-cardinality keyword",
    "query_string with two leading wildcards",
    "leading wildcard on a structured keyword",
    "deep from: 9,000 + 100",
)
#: ... and on OpenSearch the scripts (the Elasticsearch integ-test zip has no painless)
STORM_SCRIPT_SHAPES = ("script_score over every document", "terms agg with a script")
#: each shape's requests differ in their literal values from run to run (no cache makes the next free)
RUNS = 6


class RealWorld:
    """One real 3-node cluster for the whole run: started (or attached), its corpus loaded once."""

    #: Well-behaved on this cluster: measured at ~2,500 search-thread ms/s (one core for three JVMs), a
    #: tenant's fair share is ~180 ms/s; a cheap search here costs 20-50 ms (took × shards), so 2 searches/s
    #: and a burst of 5 every 2 s are each about a third of it. (At 5/s and bursts of 10, the first run,
    #: every good tenant asked for its whole fair share: see bench/RESULTS.md.) `--good-rate`, `--burst`.
    load = Load(steady_rate=2.0, burst=5, burst_every_s=2.0, storm_workers=4)

    def __init__(self, flavor: str, tenants: list[str], storming: list[str], *, heap: str, threads_per_node: int,
                 queue: int | None, good_docs: int, storm_docs: int, attach: str | None = None,
                 data_dir: str | None = None, keep: bool = False) -> None:
        self.name = flavor
        self.title = {"opensearch": "OpenSearch", "elasticsearch": "Elasticsearch"}[flavor]
        self.tenants, self.storming = tenants, storming
        self.heap, self.threads_per_node, self.queue = heap, threads_per_node, queue
        self.good_docs, self.storm_docs = good_docs, storm_docs
        self.attach, self.keep = attach, keep
        self.data_dir = Path(data_dir or f"/var/tmp/sluicegate/storm-{flavor}")
        self.cluster = None
        self.version = ""
        self.threads = 0
        self.pool_sizes: dict[str, int] = {}  # node id -> configured search threads
        self.capacity = 0.0
        self.measured_capacity = 0.0
        self.probe: dict = {}
        self.victim = 0
        self.watcher = 0  # the node the stats are read from: never the victim
        self.counters = Counters()
        self.cpu = CpuMeter()
        self.docs: dict[str, int] = {}

    # ---- set-up, once per run ----
    def setup(self, log) -> None:
        from bench.realcluster import RealCluster

        if self.attach:
            self.cluster = RealCluster.attach(self.attach)
            log(f"attached to {self.cluster.flavor} at {self.cluster.urls}")
        else:
            log(f"starting {self.name} (3 nodes, heap {self.heap}, {self.threads_per_node} search threads per node, "
                f"pinned to CPU {CLUSTER_CPUS}; data in {self.data_dir})")
            self.cluster = RealCluster(self.name, nodes=3, heap=self.heap, search_threads=self.threads_per_node,
                                       search_queue=self.queue, cpus=CLUSTER_CPUS, data_dir=self.data_dir)
            self.cluster.start(timeout=600)
        self.version = self.cluster.version
        self._load_corpus(log)
        self._read_pools()
        self._choose_victim()
        self.capacity = self.threads * 1000.0
        self._probe_capacity(log)

    def close(self) -> None:
        if self.cluster is not None and not self.attach and not self.keep:
            self.cluster.stop()

    def describe(self) -> str:
        queue = self.queue if self.queue is not None else 1000
        probe = self.probe
        return (f"Cluster: {self.title} {self.version}, 3 nodes (separate JVMs, heap {self.heap}) pinned to CPU "
                f"{CLUSTER_CPUS} with `taskset`; search pool {self.threads_per_node} threads per node (what a 1-CPU "
                f"node sizes itself to), queue {queue}: {self.threads} search threads, capacity "
                f"{self.capacity:,.0f} cluster-ms/s. Measured: {self.threads} closed-loop storm clients straight at "
                f"the nodes kept {probe.get('busy_ms_per_s', 0):,.0f} thread-ms/s busy "
                f"({probe.get('busy_ms_per_s', 0) / max(self.capacity, 1) * 100:.0f} % of the pools) at "
                f"{probe.get('cpu_pct', 0):.0f} % of a core, {probe.get('searches_per_s', 0):.1f} storm searches/s. "
                f"Corpus (bench/corpus.py): one index per tenant, 2 shards + 1 replica, "
                f"{self.good_docs:,} log documents for each good tenant, {self.storm_docs:,} log or catalogue "
                f"documents for each storming one; killed mid-storm: node-{self.victim} (not the elected master).")

    def index_of(self, name: str) -> str:
        return self._indices()[name].name

    def _indices(self) -> dict:
        from bench.corpus import CorpusIndex

        out = {}
        for i, name in enumerate(self.tenants):
            if name in self.storming:
                kind = "logs" if self.storming.index(name) % 2 == 0 else "catalogue"
                out[name] = CorpusIndex(f"{name}-{kind}", kind, self.storm_docs)
            else:
                out[name] = CorpusIndex(f"{name}-logs", "logs", self.good_docs)
        return out

    def _load_corpus(self, log) -> None:
        from bench import corpus

        indices = list(self._indices().values())
        self.docs = corpus.ensure(self.cluster.urls, indices=indices, progress=log)
        names = ",".join(i.name for i in indices)
        # a replica of every shard, so a lost node loses no data; and no re-replication while it is gone
        # for a few minutes (its copies are reused when it returns), as operators set it for node restarts
        status, body = request(f"{self.cluster.url}/{names}/_settings", "PUT", orjson.dumps(
            {"index": {"number_of_replicas": 1, "unassigned.node_left.delayed_timeout": "10m"}}))
        assert status == 200, body
        log("waiting for green (replicas)")
        self.cluster.wait_green(3, 1800)

    def _read_pools(self) -> None:
        status, body = request(f"{self.cluster.url}/_nodes/thread_pool")
        assert status == 200, body
        nodes = orjson.loads(body)["nodes"]
        self.pool_sizes = {node_id: node["thread_pool"]["search"]["size"] for node_id, node in nodes.items()}
        self.threads = sum(self.pool_sizes.values())

    def _choose_victim(self) -> None:
        status, body = request(f"{self.cluster.url}/_cluster/state/master_node,nodes")
        state = orjson.loads(body)
        master = state["nodes"][state["master_node"]]["name"]
        names = [n.name for n in self.cluster.nodes]
        self.watcher = names.index(master)
        self.victim = max(i for i, n in enumerate(names) if n != master)

    def requests(self, name: str) -> list[list[str]]:
        from proxy import battery

        index = self._indices()[name]
        fields = battery.sample_fields(index.name, index.kind, scripts=self.name == "opensearch")
        wanted = STORM_SHAPES + (STORM_SCRIPT_SHAPES if self.name == "opensearch" else ()) \
            if name in self.storming else GOOD_SHAPES
        shapes = battery.shapes(fields, only=wanted)
        missing = set(wanted) - {s.name for s in shapes}
        assert not missing or name in self.storming, f"good shapes missing on {index.kind}: {missing}"
        out = []
        for run in range(RUNS):  # interleaved: a worker cycling through them alternates shapes
            for shape in shapes:
                req = shape.build(fields, run)
                out.append([req.path, req.body.decode()])
        return out

    def _probe_capacity(self, log, seconds: float = 10.0) -> None:
        """`threads` closed-loop clients send storm searches straight at the nodes for `seconds`: how much
        of the pools' thread time they keep busy (it also warms the JIT and the caches for every mode)."""
        log(f"capacity probe: {self.threads} closed-loop storm clients for {seconds:.0f} s")
        bodies = [(path, body.encode()) for name in self.storming for path, body in self.requests(name)]
        stop = time.monotonic() + seconds
        done = [0]
        urls = self.cluster.urls

        def client(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                path, body = bodies[i % len(bodies)]
                status, _ = request(urls[i % len(urls)] + path, "POST", body, timeout=60)
                done[0] += status == 200
                i += self.threads

        self.before_mode()
        first = self.sample()
        started = time.monotonic()
        workers = [threading.Thread(target=client, args=(k,)) for k in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        last = self.sample()
        elapsed = time.monotonic() - started
        busy = sum(last["thread_ms"].values()) - sum(first["thread_ms"].get(k, 0.0) for k in last["thread_ms"])
        self.probe = {"seconds": elapsed, "busy_ms_per_s": busy / elapsed, "searches_per_s": done[0] / elapsed,
                      "cpu_pct": (last["cpu"] - first["cpu"]) / elapsed * 100}
        self.measured_capacity = self.probe["busy_ms_per_s"]
        log(f"capacity probe: {self.probe['busy_ms_per_s']:,.0f} thread-ms/s busy, "
            f"{self.probe['searches_per_s']:.1f} searches/s, cluster CPU {self.probe['cpu_pct']:.0f} %")

    # ---- per mode ----
    def open(self, stack: contextlib.ExitStack) -> None:
        pass

    @property
    def nodes(self) -> list[str]:
        return self.cluster.urls

    def before_mode(self) -> None:
        """Every node up, the cluster green, and no search running or queued: each mode starts alike."""
        for i, node in enumerate(self.cluster.nodes):
            if node.pid is None:
                self.cluster.start_node(i, timeout=300, status="yellow")
        self.cluster.wait_green(3, 900)
        idle = 0
        deadline = time.monotonic() + 120
        while idle < 2 and time.monotonic() < deadline:
            status, body = request(f"{self.nodes[self.watcher]}/_nodes/stats/thread_pool?filter_path=nodes.*.thread_pool.search")
            pools = [n["thread_pool"]["search"] for n in orjson.loads(body)["nodes"].values()] if status == 200 else []
            busy = sum(p["queue"] + p["active"] for p in pools)
            idle = idle + 1 if pools and busy <= 1 else 0  # our own stats call may be the one active
            time.sleep(1.0)
        self.counters = Counters()
        self.cpu = CpuMeter()
        self.sample()
        self.counters.prime()

    def after_mode(self) -> None:
        pass

    def sample(self) -> dict | None:
        path = ("/_nodes/stats/indices,thread_pool?level=indices&filter_path=nodes.*.indices.indices.*.search."
                "query_time_in_millis,nodes.*.indices.indices.*.search.fetch_time_in_millis,"
                "nodes.*.thread_pool.search.queue,nodes.*.thread_pool.search.rejected")
        status, body = request(self.nodes[self.watcher] + path, timeout=10)
        if status != 200:
            return None
        nodes = orjson.loads(body).get("nodes", {})
        counters = self.counters
        queue = 0
        for node_id, node in nodes.items():
            for index, entry in (node.get("indices", {}).get("indices") or {}).items():
                search = entry.get("search", {})
                counters.add(node_id, "ms:" + index.split("-", 1)[0],
                             search.get("query_time_in_millis", 0) + search.get("fetch_time_in_millis", 0))
            pool = node.get("thread_pool", {}).get("search", {})
            counters.add(node_id, "rejected", pool.get("rejected", 0))
            queue += pool.get("queue", 0)
        total = counters.total
        return {
            "thread_ms": {key[3:]: value for key, value in total.items() if key.startswith("ms:")},
            "rejected": total.get("rejected", 0.0),
            "queue": queue,
            "live_threads": sum(self.pool_sizes.get(node_id, 0) for node_id in nodes),
            "cpu": self.cpu.seconds([n.pid for n in self.cluster.nodes if n.pid]),
        }

    def kill_node(self) -> None:
        self.cluster.stop_node(self.victim)

    def start_node(self) -> None:
        """Start the killed node again; returns once it has rejoined (the cluster lists three nodes again)."""
        self.cluster.start_node(self.victim, timeout=600, status="yellow")

