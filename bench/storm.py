"""The headline scenario: well-behaved tenants on a shared cluster while ten tenants storm it.

Run: .venv/bin/python bench/storm.py [--baseline 12 --storm 30 --recovery 12] [--modes a,b] [--report-only]

Every mode runs the same three phases against a fresh simulated cluster (3 nodes × 4 search
threads, a bounded search queue, 1M virtual docs per index, time_scale 1), one after the other in
this one invocation, so every figure is side by side:

  baseline  the good tenants alone: three steady tenants sending cheap searches as open-loop
            Poisson arrivals, and a dashboard tenant firing 10 parallel cheap searches every ~2 s;
  storm     plus ten storming tenants, four closed-loop workers each, sending expensive searches
            (leading-wildcard query_string, 10,000-bucket terms aggregations, deep pagination,
            script scoring) and retrying at once on 429 as elasticsearch-py does;
  recovery  the good tenants alone again.

Modes: direct to the cluster; nginx `limit_req` (20 r/s, burst 20, per API key) alone and with
`limit_conn` 1, 2 and 4 per key; Sluicegate with local limits; two Sluicegate instances sharing
Redis, each tenant's requests alternating between them. Every tenant is on the same plan, and the
plans are oversubscribed as on a shared cluster: budgets sum to 3.5× the cluster's capacity,
concurrency caps to 9× its search threads.

Measured client-side (bench/loadgen.py): good-tenant latency from the scheduled arrival time,
errors (any non-2xx or failed connection; a 429 to a good tenant is an error). From the cluster
(`/_sim/stats`, sampled every second): storming tenants' admitted cluster-ms per second (the
search-thread time their indices consumed) and rejected shard tasks. Writes bench/out/storm.json,
bench/out/storm_latency.png, bench/results/storm_latency.png and its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.nginx import Nginx, proxy_server  # noqa: E402
from tests.processes import (  # noqa: E402
    PY, ProxyProcess, RedisServer, SimClusterProcess, free_port, http_get, http_post, make_config, tenant,
)

OUT = REPO / "bench" / "out"
LOADGEN = REPO / "bench" / "loadgen.py"

# --- the cluster -------------------------------------------------------------------------------
NODES, THREADS, QUEUE = 3, 4, 16  # search threads and queue places per node (ES's default queue is 1000)
VIRTUAL_DOCS = 1_000_000  # per index: expensive searches cost 0.2-1.2 s of thread time, cheap ones 1-7 ms
SHARDS = 2
CAPACITY = NODES * THREADS * 1000.0  # cluster-ms per second of search threads

# --- the tenants ---------------------------------------------------------------------------------
STEADY = ["shop", "billing", "support"]  # open-loop Poisson, cheap searches
STEADY_RATE = 15.0  # requests per second each
BURSTY = "dashboard"  # fires BURST parallel cheap searches every ~BURST_EVERY_S
BURST, BURST_EVERY_S = 10, 2.0
STORMING = [f"storm{i:02d}" for i in range(1, 11)]
STORM_WORKERS = 4  # closed-loop workers per storming tenant
CLIENT_TIMEOUT_S = 10.0  # elasticsearch-py's default request timeout
SETTLE_S = 10.0  # also reported: the storm phase without its onset, to tell a transient from a steady state

# --- what an operator would configure --------------------------------------------------------------
# Sluicegate: one plan for everyone (nobody knows in advance who will storm), oversubscribed.
PLAN = {
    "search": {"rate": 3000, "burst": 6000},  # 14 tenants × 3000 = 3.5 × CAPACITY
    "read": {"rate": 3000, "burst": 6000},
    "write": {"rate": 100000, "burst": 1000000},
    "admin": {"rate": 1000, "burst": 10000},
    "max_concurrent": 8,  # 14 × 8 = 112 in flight for the cluster's 12 search threads: 9×
    "max_queue": 64,
    "max_wait_ms": 2000,
}
# nginx: a per-key rate that fits the busiest good tenant (15/s) and a burst that fits the dashboard.
NGINX_RATE, NGINX_BURST = 20, 20


def all_tenants() -> list[str]:
    return STEADY + [BURSTY] + STORMING


def key_of(name: str) -> str:
    return f"{name}-key"  # tests.processes.tenant() hashes the same plaintext


# ---------------------------------------------------------------------------------------------
# modes: each starts what stands between the tenants and the cluster, and returns its URLs
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where the tenants send their requests, and what to watch while they do."""

    urls: list[str]  # a tenant's requests alternate between these
    pids: list[int] = field(default_factory=list)  # processes whose CPU time counts as the proxy's
    admins: list[str] = field(default_factory=list)  # Sluicegate admin listeners (for /tenants)


@dataclass
class Mode:
    name: str
    label: str
    start: Callable[[contextlib.ExitStack, SimClusterProcess, Path], Target]


def start_direct(stack, cluster, workdir):
    return Target(list(cluster.nodes))  # like a client configured with every node


def start_nginx(conn: int | None):
    def start(stack, cluster, workdir):
        port = free_port()
        upstreams = [n.removeprefix("http://") for n in cluster.nodes]
        server = Nginx(workdir / "nginx", proxy_server(port, upstreams, rate=NGINX_RATE, burst=NGINX_BURST, conn=conn),
                       [port], workers=1)
        stack.callback(server.stop)
        return Target([f"http://127.0.0.1:{port}"], [server.pid])
    return start


#: admission settings of the Sluicegate modes beyond the defaults (`--headroom`)
ADMISSION: dict = {}


def sluicegate_config(cluster: SimClusterProcess) -> dict:
    return make_config(cluster.nodes, tenants={name: tenant(name) for name in all_tenants()},
                       plans={"standard": PLAN}, access_log={"path": None}, admission=dict(ADMISSION))


def start_sluicegate(stack, cluster, workdir):
    proxy = ProxyProcess(sluicegate_config(cluster), workdir / "sluicegate")
    stack.callback(proxy.stop)
    return Target([proxy.url], [proxy.proc.pid], [proxy.admin])


def start_sluicegate_redis(stack, cluster, workdir):
    redis = RedisServer(workdir / "redis")
    stack.callback(redis.stop)
    base = sluicegate_config(cluster)
    base["redis"] = {"url": redis.url}
    target = Target([], [redis.proc.pid])
    for i in range(2):
        config = copy.deepcopy(base)
        config["listen"], config["admin_listen"] = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        proxy = ProxyProcess(config, workdir / f"sluicegate-{i}")
        stack.callback(proxy.stop)
        target.urls.append(proxy.url)
        target.pids.append(proxy.proc.pid)
        target.admins.append(proxy.admin)
    return target


MODES = [
    Mode("direct", "direct to the cluster", start_direct),
    Mode("nginx-req", f"nginx limit_req {NGINX_RATE}r/s burst {NGINX_BURST}", start_nginx(None)),
    Mode("nginx-conn1", "nginx limit_req + limit_conn 1", start_nginx(1)),
    Mode("nginx-conn2", "nginx limit_req + limit_conn 2", start_nginx(2)),
    Mode("nginx-conn4", "nginx limit_req + limit_conn 4", start_nginx(4)),
    Mode("sluicegate", "Sluicegate (local limits)", start_sluicegate),
    Mode("sluicegate-redis", "Sluicegate ×2 sharing Redis", start_sluicegate_redis),
]


# ---------------------------------------------------------------------------------------------
# one mode, three phases
# ---------------------------------------------------------------------------------------------


def request(url: str, method: str, body: bytes = b"", content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body or None, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def create_indices(cluster: SimClusterProcess) -> None:
    """One index per tenant, named after it, with a few real documents (the virtual ones only cost)."""
    services = ["checkout", "api", "search", "auth"]
    for name in all_tenants():
        status, body = request(f"{cluster.url}/{name}-logs", "PUT",
                               orjson.dumps({"settings": {"number_of_shards": SHARDS}}))
        assert status == 200, body
        lines = []
        for i in range(40):
            lines.append(orjson.dumps({"index": {"_index": f"{name}-logs", "_id": str(i)}}))
            lines.append(orjson.dumps({"@timestamp": "2025-01-01T00:00:00Z", "service": services[i % 4],
                                       "message": f"connection reset by peer error {i}", "user": {"id": f"u-{1000 + i}"},
                                       "bytes": 100 * i}))
        status, body = request(f"{cluster.url}/_bulk?refresh=true", "POST", b"\n".join(lines) + b"\n",
                               "application/x-ndjson")
        assert status == 200, body


def warm_up(targets: list[str]) -> None:
    """A cheap search per good tenant through every target: proves the path works end to end."""
    for target in targets:
        for name in STEADY + [BURSTY]:
            req = urllib.request.Request(f"{target}/{name}-logs/_search", data=b'{"query":{"match_all":{}}}',
                                         method="POST", headers={"Content-Type": "application/json",
                                                                 "Authorization": f"ApiKey {key_of(name)}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200


class Live:
    """Counters the load generators print each second, for the progress bar."""

    def __init__(self) -> None:
        self.good = {"sent": 0, "ok": 0, "failed": 0}
        self.storm = {"sent": 0, "ok": 0, "failed": 0}


async def follow(stream: asyncio.StreamReader, into: dict) -> None:
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            into.update(orjson.loads(line))


def tenants_report(admin: str) -> dict:
    status, body = http_get(admin + "/tenants", timeout=5)
    return orjson.loads(body) if status == 200 else {"error": status}


async def sample_cluster(cluster: SimClusterProcess, t0: float, seconds: int, groups: dict[str, list[int]],
                         samples: list[dict], boundaries: set[int], admins: list[str]) -> None:
    """Every second from t0: cumulative thread_ms per index, rejections, CPU seconds per process group;
    at phase boundaries also each Sluicegate's /tenants (bucket levels, slots, learned costs)."""
    for k in range(seconds + 1):
        delay = t0 + k - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cpu = {group: sum(report.cpu_seconds(pid) for pid in pids) for group, pids in groups.items()}
        try:
            stats = await asyncio.to_thread(cluster.stats)
        except (ValueError, OSError):  # an unanswered poll leaves a gap, not a failed run
            continue
        samples.append({
            "t": time.monotonic() - t0,
            "thread_ms": {name: entry["thread_ms"] for name, entry in stats["indices"].items()},
            "rejected": stats["cluster"]["rejected"],
            "total_thread_ms": stats["cluster"]["total_thread_ms"],
            "cpu": cpu,
        })
        if k in boundaries and admins:
            samples[-1]["tenants"] = [await asyncio.to_thread(tenants_report, admin) for admin in admins]


async def run_mode(mode: Mode, args: argparse.Namespace, progress, task) -> dict:
    workdir = OUT / "storm-work" / mode.name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    phases = [("baseline", args.baseline), ("storm", args.storm), ("recovery", args.recovery)]
    total = sum(seconds for _, seconds in phases)
    with contextlib.ExitStack() as stack:
        progress.update(task, description=f"{mode.name}: starting")
        cluster = SimClusterProcess(NODES, threads=THREADS, queue=QUEUE, virtual_docs=VIRTUAL_DOCS, time_scale=1.0)
        stack.callback(cluster.stop)
        create_indices(cluster)
        target = mode.start(stack, cluster, workdir)
        targets = target.urls
        warm_up(targets)
        assert http_post(cluster.url + "/_sim/_reset_stats")[0] == 200

        t0 = time.monotonic() + 2.0  # room for the load generators to start
        bounds, at = [], t0
        for name, seconds in phases:
            bounds.append((name, at, at + seconds))
            at += seconds
        storm_start, storm_end = bounds[1][1], bounds[1][2]
        plan = {
            "targets": targets, "seed": args.seed, "start": t0, "end": t0 + total,
            "good": {"steady": [{"name": n, "key": key_of(n), "rate": STEADY_RATE} for n in STEADY],
                     "bursty": {"name": BURSTY, "key": key_of(BURSTY), "burst": BURST, "every_s": BURST_EVERY_S},
                     "timeout_s": CLIENT_TIMEOUT_S},
            "storm": {"tenants": [{"name": n, "key": key_of(n)} for n in STORMING], "workers": STORM_WORKERS,
                      "start": storm_start, "end": storm_end, "timeout_s": CLIENT_TIMEOUT_S},
        }
        plan_path = workdir / "plan.json"
        plan_path.write_bytes(orjson.dumps(plan))
        live = Live()
        roles = {}
        for role, nice in (("good", []), ("storm", ["nice", "-n", str(args.storm_nice)])):
            roles[role] = await asyncio.create_subprocess_exec(
                *nice, PY, str(LOADGEN), role, str(plan_path), str(workdir / f"{role}.json"),
                stdout=asyncio.subprocess.PIPE, stderr=open(workdir / f"{role}.stderr", "wb"),
            )
        followers = [asyncio.ensure_future(follow(roles["good"].stdout, live.good)),
                     asyncio.ensure_future(follow(roles["storm"].stdout, live.storm))]
        groups = {"cluster": [cluster.proc.pid], "proxy": target.pids, "good load": [roles["good"].pid],
                  "storm load": [roles["storm"].pid]}
        samples: list[dict] = []
        edges = {0, args.baseline, args.baseline + args.storm, total}
        sampler = asyncio.ensure_future(sample_cluster(cluster, t0, total, groups, samples, edges, target.admins))

        waiting = asyncio.gather(roles["good"].wait(), roles["storm"].wait())
        while not waiting.done():
            elapsed = time.monotonic() - t0
            phase = next((name for name, start, end in bounds if start <= time.monotonic() < end),
                         "starting" if elapsed < 0 else "draining")
            good, storm = live.good, live.storm
            progress.update(task, completed=min(max(elapsed, 0), total), description=f"{mode.name}: {phase}",
                            status=f"good {good['ok']} ok / {good['failed']} err · storm {storm['sent']} sent, "
                                   f"{storm['ok']} ok")
            await asyncio.wait([waiting], timeout=0.25)
        codes = waiting.result()
        await sampler
        for follower in followers:
            follower.cancel()
        if any(codes):
            raise RuntimeError(f"{mode.name}: load generator exited {codes}; see {workdir}/*.stderr")
        progress.update(task, completed=total, description=f"{mode.name}: done")
        return {
            "mode": mode.name, "label": mode.label, "targets": targets, "t0": t0,
            "phases": [(name, start - t0, end - t0) for name, start, end in bounds],
            "good": orjson.loads((workdir / "good.json").read_bytes()),
            "storm": orjson.loads((workdir / "storm.json").read_bytes()),
            "samples": samples,
        }


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy

    return float(numpy.percentile(values, q))


def at_time(samples: list[dict], t: float) -> dict:
    """The sample taken closest to t seconds after t0."""
    return min(samples, key=lambda s: abs(s["t"] - t))


def summarize(result: dict) -> list[dict]:
    """One row per phase: the good tenants' latency and errors, the storm's share of the cluster."""
    good, samples = result["good"], result["samples"]
    t0 = result["t0"]
    bursty = good["bursty"]
    cause_of = dict(good["cause"])
    rows = []
    for name, start, end in result["phases"]:
        ok, steady_errors, bursty_errors, steady_total, bursty_total, lags = [], 0, 0, 0, 0, []
        late: list[float] = []  # 2xx latencies after the phase's first SETTLE_S seconds
        causes: dict[str, int] = {}
        for i, (tenant_i, scheduled, latency, status, lag) in enumerate(
                zip(good["tenant"], good["scheduled"], good["latency"], good["status"], good["lag"])):
            if not start <= scheduled - t0 < end:
                continue
            lags.append(lag)
            success = 200 <= status < 300
            if not success:
                cause = cause_of.get(i, f"HTTP {status}")
                causes[cause] = causes.get(cause, 0) + 1
            if tenant_i == bursty:
                bursty_total += 1
                bursty_errors += not success
            else:
                steady_total += 1
                steady_errors += not success
            if success:
                ok.append(latency)
                if scheduled - t0 >= start + SETTLE_S:
                    late.append(latency)
        first, last = at_time(samples, start), at_time(samples, end)
        seconds = max(last["t"] - first["t"], 1e-9)
        storm_ms = sum(last["thread_ms"].get(f"{n}-logs", 0.0) - first["thread_ms"].get(f"{n}-logs", 0.0)
                       for n in STORMING)
        good_ms = sum(last["thread_ms"].get(f"{n}-logs", 0.0) - first["thread_ms"].get(f"{n}-logs", 0.0)
                      for n in STEADY + [BURSTY])
        cpu = {group: (last["cpu"][group] - first["cpu"][group]) / seconds * 100 for group in last["cpu"]}
        rows.append({
            "phase": name, "p50": percentile(ok, 50), "p99": percentile(ok, 99), "n": len(ok) + steady_errors + bursty_errors,
            "steady_errors": steady_errors, "steady_total": steady_total,
            "bursty_errors": bursty_errors, "bursty_total": bursty_total,
            "storm_ms_per_s": storm_ms / seconds, "good_ms_per_s": good_ms / seconds,
            "rejected": last["rejected"] - first["rejected"], "lag_p99": percentile(lags, 99), "cpu": cpu,
            "causes": causes, "p99_late": percentile(late, 99),
        })
    return rows


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f}" if value < 1 else f"{value * 1000:,.0f}"


def tables(results: list[dict], args: argparse.Namespace) -> list[report.Table]:
    main = report.Table(
        "Good tenants per mode and phase (latency of 2xx responses, from the scheduled arrival)",
        ["mode", "phase", "good p50 ms", "good p99 ms", "p99 / baseline", "steady errors", "bursty errors",
         "storm cluster-ms/s", "cluster rejected shard tasks", "who refused the good tenants"],
        right={2, 3, 4, 5, 6, 7, 8},
    )
    storm_t = report.Table(
        f"Storming tenants during the storm ({len(STORMING)} tenants × {STORM_WORKERS} closed-loop workers), "
        "and CPU (% of one core)",
        ["mode", "attempts/s", "2xx/s", "429/s", "429 reasons", "calls failed", "cluster-ms/s (% of capacity)",
         "CPU cluster", "CPU proxy", "CPU good load", "CPU storm load", "good lag p99 ms"],
    )
    summaries = {}
    for result in results:
        rows = summarize(result)
        summaries[result["mode"]] = rows
        base_p99 = rows[0]["p99"]
        for i, row in enumerate(rows):
            ratio = "—" if not (row["p99"] and base_p99) else f"{row['p99'] / base_p99:.2f}×"
            main.add(result["label"] if i == 0 else "", row["phase"], ms(row["p50"]), ms(row["p99"]), ratio,
                     f"{row['steady_errors']} / {row['steady_total']}", f"{row['bursty_errors']} / {row['bursty_total']}",
                     f"{row['storm_ms_per_s']:,.0f}", f"{row['rejected']:,}", causes_text(row["causes"]))
        main.rule()
        storm_row = rows[1]
        seconds = args.storm
        counts = result["storm"]["tenants"].values()
        attempts = sum(c["attempts"] for c in counts)
        oks = sum(c["ok"] for c in counts)
        rejected = sum(c["rejected"] for c in counts)
        reasons: dict[str, int] = {}
        for c in counts:
            for reason, n in c["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        failed = sum(c["failed_calls"] for c in counts)
        reason_text = ", ".join(f"{k} {v / seconds:,.0f}/s" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        cpu = storm_row["cpu"]
        storm_t.add(result["label"], f"{attempts / seconds:,.0f}", f"{oks / seconds:,.1f}", f"{rejected / seconds:,.0f}",
                    reason_text or "—", f"{failed:,}",
                    f"{storm_row['storm_ms_per_s']:,.0f} ({storm_row['storm_ms_per_s'] / CAPACITY * 100:.0f}%)",
                    *(f"{cpu.get(g, 0):.0f}%" for g in ("cluster", "proxy", "good load", "storm load")),
                    ms(storm_row["lag_p99"]))
    tables_ = [main, verdicts(summaries, results), storm_t]
    view = sluicegate_view(results)
    if view.rows:
        tables_.append(view)
    costs = cost_view(results)
    if costs is not None:
        tables_.append(costs)
    return tables_ + [goals(summaries, results)]


def verdicts(summaries: dict[str, list[dict]], results: list[dict]) -> report.Table:
    """The question an operator asks of each setting: are the good tenants protected from the storm,
    and is the dashboard's legitimate burst still served?"""
    table = report.Table(
        "Does a setting protect the good tenants from the storm without refusing the dashboard's bursts?",
        ["mode", "good p99 storm / baseline", f"… after the storm's first {SETTLE_S:g} s", "steady errors (storm)",
         "dashboard errors (all phases)", "storm held to (% of capacity)", "protects steady tenants",
         "serves the dashboard"],
        right={1, 2, 3, 4, 5},
    )
    for result in results:
        base, storm, recovery = summaries[result["mode"]]
        ratio = storm["p99"] / base["p99"] if storm["p99"] and base["p99"] else None
        bursty = base["bursty_errors"] + storm["bursty_errors"] + recovery["bursty_errors"]
        protects = ratio is not None and ratio <= 1.2 and storm["steady_errors"] == 0
        late = storm["p99_late"] / base["p99"] if storm["p99_late"] and base["p99"] else None
        table.add(result["label"], "—" if ratio is None else f"{ratio:.1f}×", "—" if late is None else f"{late:.1f}×",
                  storm["steady_errors"], bursty,
                  f"{storm['storm_ms_per_s'] / CAPACITY * 100:.0f}%", "yes" if protects else "no",
                  "yes" if bursty == 0 else "no")
    return table


def cost_view(results: list[dict]) -> report.Table | None:
    """Each query shape's cost three ways: Sluicegate's estimate before it has seen one, what it
    learned from the responses (median over tenants, at the end of the run), and what the simulated
    cluster's service-time model actually spends on it (cluster-ms, all shards, fetch aside)."""
    try:
        from bench.loadgen import CHEAP, EXPENSIVE
        from bench.simcluster import SearchRequest
        from proxy.config import HardLimits
        from proxy.cost import CostModel, IndexSizes, Weights
        from proxy.esapi import decode_body, parse_call
    except ImportError:
        return None
    import numpy

    learned: dict[str, dict[str, float]] = {}  # fingerprint -> tenant -> cost, from the last /tenants of each mode
    for result in results:
        marks = [s for s in result["samples"] if "tenants" in s]
        for instance in marks[-1]["tenants"] if marks else []:
            for name, info in instance.get("tenants", {}).items():
                for entry in info.get("learned_costs", []):
                    learned.setdefault(entry["fingerprint"], {})[f"{result['mode']}/{name}"] = entry["cost"]
    if not learned:
        return None
    model, limits = CostModel(Weights()), HardLimits()
    per_shard = VIRTUAL_DOCS / SHARDS
    # what the proxy's _stats/docs poll sees: the virtual docs and the 40 real ones per index
    sizes = IndexSizes({f"{name}-logs": VIRTUAL_DOCS + 40 for name in all_tenants()})
    table = report.Table("What each query costs: Sluicegate's first estimate (index size unknown, and polled), "
                         "what it learned, and the cluster's own model (cost units ≈ cluster-ms)",
                         ["query", "tenants", "estimate, size unknown", "estimate, size polled", "learned (median)",
                          "simulated cluster-ms"])
    for kind, bodies, names in (("storm", EXPENSIVE, STORMING), ("good", CHEAP, STEADY + [BURSTY])):
        for body in bodies:
            raw = orjson.dumps(body)
            costs, estimate, sized = [], None, None
            for name in names:
                call = parse_call("POST", f"/{name}-logs/_search")
                body_ = decode_body(call, raw, "application/json", None, limits)
                estimate = model.estimate(call, body_)
                sized = model.estimate(call, body_, sizes)
                costs += learned.get(f"{estimate.fingerprint:016x}", {}).values()
            search = SearchRequest(body, {})
            simulated = SHARDS * search.shard_ms(per_shard, search.matches(0, per_shard, per_shard), 0)
            table.add(f"`{raw.decode()[:70]}{'…' if len(raw) > 70 else ''}`", kind, f"{estimate.cost:,.1f}",
                      f"{sized.cost:,.1f}", f"{numpy.median(costs):,.1f}" if costs else "—", f"{simulated:,.1f}")
    return table


def causes_text(causes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1])) or "—"


def sluicegate_view(results: list[dict]) -> report.Table:
    """What Sluicegate believed at each phase end: learned costs and bucket levels, good vs storming."""
    table = report.Table(
        "Sluicegate's view at the end of each phase (/tenants; cost units ≈ cluster-ms)",
        ["mode", "at the end of", "good: learned cost, max", "good: search bucket, min", "good: in flight + queued",
         "storm: learned cost, median", "storm: search bucket, median"],
    )
    import numpy

    for result in results:
        marks = [s for s in result["samples"] if "tenants" in s]
        for (phase, _, end), sample in zip(result["phases"], marks[1:]):
            good_cost, good_level, good_busy, storm_cost, storm_level = [], [], 0, [], []
            for instance in sample["tenants"]:
                for name, info in instance.get("tenants", {}).items():
                    costs = [c["cost"] for c in info.get("learned_costs", [])]
                    level = info.get("buckets", {}).get("search", {}).get("level")
                    if name in STORMING:
                        storm_cost += costs
                        storm_level += [] if level is None else [level]
                    else:
                        good_cost += costs
                        good_level += [] if level is None else [level]
                        good_busy += info.get("in_flight", 0) + info.get("queued", 0)
            table.add(result["label"], phase, f"{max(good_cost, default=0):,.0f}", f"{min(good_level, default=0):,.0f}",
                      good_busy, f"{numpy.median(storm_cost) if storm_cost else 0:,.0f}",
                      f"{numpy.median(storm_level) if storm_level else 0:,.0f}")
        table.rule()
    return table


def goals(summaries: dict[str, list[dict]], results: list[dict]) -> report.Table:
    table = report.Table("Goals (bench targets)", ["goal", "measured", "target", ""], right={1, 2})
    nginx_storm = {r["label"]: summaries[r["mode"]][1]["p99"] for r in results if r["mode"].startswith("nginx")}
    for mode in ("sluicegate", "sluicegate-redis"):
        rows = summaries.get(mode)
        if not rows:
            continue
        label = next(r["label"] for r in results if r["mode"] == mode)
        base, storm = rows[0]["p99"], rows[1]["p99"]
        errors = sum(r["steady_errors"] + r["bursty_errors"] for r in rows)
        ratio = storm / base if storm and base else None
        table.add(f"{label}: good p99 under storm / baseline", "—" if ratio is None else f"{ratio:.2f}×", "≤ 1.2×",
                  mark(ratio is not None and ratio <= 1.2))
        table.add(f"{label}: good-tenant errors, all phases", f"{errors}", "0", mark(errors == 0))
        if nginx_storm and storm:
            worst = min(nginx_storm.items(), key=lambda kv: kv[1] or float("inf"))
            better = (worst[1] or 0) / storm
            table.add(f"{label}: storm p99 vs the best nginx setting ({worst[0]})", f"{better:.1f}× better", "≥ 5×",
                      mark(better >= 5))
    return table


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 2.3 * len(results)), sharex=True, sharey=True,
                             squeeze=False)
    for ax, result in zip(axes[:, 0], results):
        good, t0 = result["good"], result["t0"]
        t = numpy.array(good["scheduled"]) - t0
        latency = numpy.array(good["latency"]) * 1000
        status = numpy.array(good["status"])
        tenant_i = numpy.array(good["tenant"])
        ok = (status >= 200) & (status < 300)
        bursty = tenant_i == good["bursty"]
        for name, start, end in result["phases"]:
            if name == "storm":
                ax.axvspan(start, end, color="tab:red", alpha=0.07, lw=0)
        ax.scatter(t[ok & ~bursty], latency[ok & ~bursty], s=3, color="tab:blue", alpha=0.5, label="steady tenants")
        ax.scatter(t[ok & bursty], latency[ok & bursty], s=3, color="tab:green", alpha=0.5, label="dashboard")
        if (~ok).any():
            ax.scatter(t[~ok], numpy.full((~ok).sum(), 20000.0), marker="x", s=12, color="tab:red",
                       label=f"errors ({(~ok).sum()})")
        edges = numpy.arange(0, result["phases"][-1][2] + 1, 1.0)
        p99 = [numpy.percentile(latency[ok & (t >= a) & (t < a + 1)], 99) if (ok & (t >= a) & (t < a + 1)).any()
               else numpy.nan for a in edges[:-1]]
        ax.step(edges[:-1], p99, where="post", color="black", lw=1, label="p99 per second")
        samples = result["samples"]
        if len(samples) > 1:
            twin = ax.twinx()
            ts = [s["t"] for s in samples]
            storm_ms = [sum(s["thread_ms"].get(f"{n}-logs", 0.0) for n in STORMING) for s in samples]
            rate = numpy.diff(storm_ms) / numpy.diff(ts) / CAPACITY * 100
            twin.plot(ts[1:], rate, color="tab:orange", lw=1, alpha=0.8)
            twin.set_ylim(0, 110)
            twin.set_ylabel("storm % of\ncluster", color="tab:orange", fontsize=7)
            twin.tick_params(labelsize=7, colors="tab:orange")
        ax.set_yscale("log")
        ax.set_ylim(0.5, 40000)
        ax.set_title(result["label"], fontsize=9, loc="left")
        ax.set_ylabel("latency ms", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=4, markerscale=3)
    axes[-1, 0].set_xlabel("seconds (storm phase shaded; errors drawn at 20 s)")
    fig.suptitle("Good-tenant latency over time per mode (orange: storming tenants' admitted share of the cluster)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


async def run_all(args: argparse.Namespace) -> list[dict]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    modes = [m for m in MODES if not args.modes or m.name in args.modes.split(",")]
    total = args.baseline + args.storm + args.recovery
    results = []
    columns = [TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed:>4.0f}/{task.total:.0f}"),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, refresh_per_second=4) as progress:
        overall = progress.add_task("all modes", total=len(modes), status="")
        for mode in modes:
            task = progress.add_task(mode.name, total=total, status="")
            results.append(await run_mode(mode, args, progress, task))
            progress.advance(overall)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=int, default=12, help="seconds of the baseline phase")
    parser.add_argument("--storm", type=int, default=30, help="seconds of the storm phase")
    parser.add_argument("--recovery", type=int, default=12, help="seconds of the recovery phase")
    parser.add_argument("--modes", default="", help="comma-separated subset of: " + ", ".join(m.name for m in MODES))
    parser.add_argument("--seed", type=int, default=1, help="seed of the good tenants' arrival schedules")
    parser.add_argument("--storm-nice", type=int, default=10,
                        help="nice level of the storming load generator (its clients would be other machines)")
    parser.add_argument("--report-only", action="store_true", help="redo tables and figure from bench/out/storm.json")
    parser.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md or bench/results/")
    parser.add_argument("--headroom", type=float, default=None,
                        help="Sluicegate's admission.capacity_headroom (default: the proxy's default)")
    args = parser.parse_args()
    if args.headroom is not None:
        ADMISSION["capacity_headroom"] = args.headroom
    raw_path = OUT / "storm.json"
    if args.report_only:
        saved = json.loads(raw_path.read_text())
        results, facts, elapsed, command = saved["results"], saved["machine"], saved["elapsed_s"], saved["command"]
        args.baseline, args.storm, args.recovery = saved["phases"]
    else:
        facts, command = report.machine(), report.command_line()
        started = time.monotonic()
        results = asyncio.run(run_all(args))
        elapsed = time.monotonic() - started
        OUT.mkdir(parents=True, exist_ok=True)
        raw_path.write_bytes(orjson.dumps({"results": results, "machine": facts, "elapsed_s": elapsed, "command": command,
                                           "phases": [args.baseline, args.storm, args.recovery]}))
    rendered = tables(results, args)
    for table in rendered:
        table.print()
    figure = OUT / "storm_latency.png"
    plot(results, figure)
    print(f"figure: {figure.relative_to(REPO)}; raw results: {raw_path.relative_to(REPO)}")
    if args.no_results:
        return
    report.FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copy(figure, report.FIGURES / "storm_latency.png")
    report.update_section("storm", "\n\n".join([
        "### Storm: good tenants on a shared cluster while ten tenants storm it",
        f"Command: `{command}` — {len(results)} modes, phases {args.baseline} s baseline / {args.storm} s storm / "
        f"{args.recovery} s recovery each, {elapsed / 60:.1f} min in all.",
        report.machine_markdown(facts),
        f"Cluster: {NODES} simulated nodes × {THREADS} search threads, queue {QUEUE} per node, {VIRTUAL_DOCS:,} "
        f"virtual docs per index in {SHARDS} shards: capacity {CAPACITY:,.0f} cluster-ms/s. "
        f"Good tenants: {len(STEADY)} steady at {STEADY_RATE:g} req/s Poisson + a dashboard firing {BURST} parallel "
        f"searches every ~{BURST_EVERY_S:g} s. Storm: {len(STORMING)} tenants × {STORM_WORKERS} closed-loop workers, "
        f"immediate retries on 429 (3, as elasticsearch-py), load generator at nice {args.storm_nice}. "
        f"Sluicegate plan for every tenant: search {PLAN['search']['rate']}/s burst {PLAN['search']['burst']}, "
        f"max_concurrent {PLAN['max_concurrent']}, max_queue {PLAN['max_queue']}, max_wait_ms {PLAN['max_wait_ms']}.",
        *(f"**{t.title}**\n\n{t.markdown()}" for t in rendered),
        "![good-tenant latency over time per mode](results/storm_latency.png)",
    ]))


if __name__ == "__main__":
    main()
