"""The headline scenario: well-behaved tenants on a shared cluster while ten tenants storm it, and a node dies.

Run: .venv/bin/python bench/storm.py [--cluster sim|opensearch|elasticsearch] [--modes a,b] [--report-only]
                                     [--baseline 12 --storm 20 --node-down 15 --node-back 15 --recovery 12]

Every mode runs the same five phases, one mode after the other in this one invocation, so every
figure of a cluster is side by side:

  baseline   the good tenants alone: three steady tenants sending cheap searches as open-loop Poisson
             arrivals, and a dashboard tenant firing parallel cheap searches every ~2 s (simulator:
             15/s each and bursts of 10; a real cluster: 2/s and 5, a third of a fair share each there);
  storm      plus ten storming tenants, four closed-loop workers each, sending expensive searches
             (leading wildcards, 10,000-bucket terms aggregations, percentiles, nested aggregations,
             deep pagination, scripts where the cluster has painless) and retrying at once on 429 as
             elasticsearch-py does;
  node down  one node of three is killed (kill -9 of its process group; on the simulator its listener
             closes) and started again `--node-down` seconds later; the phase lasts until it has rejoined;
  node back  the storm goes on with three nodes;
  recovery   the good tenants alone again.

Clusters (bench/storm_clusters.py): `sim`, a fresh simulated cluster per mode (3 nodes × 4 search
threads, queue 16, 1M virtual docs per index); `opensearch` / `elasticsearch`, one real 3-node cluster
kept for the whole run (bench/realcluster.py, data under /var/tmp/sluicegate/storm-<flavor>, so the
corpus of one index per tenant loads once), the good and storm shapes of proxy/battery.py. Fair to
every mode: the cluster runs on CPU 0 (taskset), this script and everything it starts — proxies,
nginx, Redis, load generators — on CPU 1; /proc/loadavg is recorded before each mode.

Modes: direct to the cluster (each tenant's client given every node, failing over as the official
clients do); nginx `limit_req` (20 r/s, burst 20, per API key) alone and with `limit_conn` 1, 2 and 4
per key; Sluicegate with local limits; two Sluicegate instances sharing Redis, each tenant's requests
alternating between them. Every tenant is on the same plan, oversubscribed as a hosting provider
sells it: search budgets sum to 3.5× the cluster's measured capacity, concurrency caps to many times
its search threads.

Measured client-side (bench/loadgen.py): good-tenant latency from the scheduled arrival time, errors
(any non-2xx, failed connection, timeout or partial result; a 429 to a good tenant is an error) and
who refused. From the cluster every second: each tenant's search-thread time (the simulator's
per-index thread_ms; on real clusters the query + fetch time of `_nodes/stats/indices?level=indices`,
per node, so a node that dies keeps what it counted), search rejections and queue, and the CPU of the
cluster's processes. From each Sluicegate, every 0.25 s, its gate (limit, live search threads), to time
how fast the limit follows the node's loss and return. Writes bench/out/storm-<cluster>.json, a
latency-over-time PNG and its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report, storm_report  # noqa: E402
from bench.nginx import Nginx, proxy_server  # noqa: E402
from bench.storm_clusters import LOAD_CPUS, RealWorld, SimWorld  # noqa: E402
from tests.processes import PY, ProxyProcess, RedisServer, free_port, http_get, make_config, tenant  # noqa: E402

OUT = REPO / "bench" / "out"
LOADGEN = REPO / "bench" / "loadgen.py"

# --- the tenants ---------------------------------------------------------------------------------
STEADY = ["shop", "billing", "support"]  # open-loop Poisson, cheap searches
BURSTY = "dashboard"  # fires a burst of parallel cheap searches every ~2 s
STORMING = [f"storm{i:02d}" for i in range(1, 11)]
PHASES = ("baseline", "storm", "node down", "node back", "recovery")

# --- what an operator would configure --------------------------------------------------------------
#: search budgets of all tenants together, as a multiple of the cluster's measured capacity
OVERSUBSCRIBED = 3.5
# nginx: a per-key rate that fits the busiest good tenant and a burst that fits the dashboard.
NGINX_RATE, NGINX_BURST = 20, 20
#: the proxy's health checks and cluster polls as shipped (upstream.health_interval_s, admission.health_poll_s)
HEALTH_S = 2.0


def all_tenants() -> list[str]:
    return STEADY + [BURSTY] + STORMING


def key_of(name: str) -> str:
    return f"{name}-key"  # tests.processes.tenant() hashes the same plaintext


def plan_for(world) -> dict:
    """One plan for everyone (nobody knows in advance who will storm), oversubscribed."""
    rate = round(OVERSUBSCRIBED * world.measured_capacity / len(all_tenants()))
    return {
        "search": {"rate": rate, "burst": 2 * rate},
        "read": {"rate": rate, "burst": 2 * rate},
        "write": {"rate": 100000, "burst": 1000000},
        "admin": {"rate": 1000, "burst": 10000},
        "max_concurrent": 8,
        "max_queue": 64,
        "max_wait_ms": 2000,
    }


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
    start: Callable[[contextlib.ExitStack, object, Path], Target]


def start_direct(stack, world, workdir):
    return Target(list(world.nodes))  # like a client configured with every node


def start_nginx(conn: int | None):
    def start(stack, world, workdir):
        port = free_port()
        upstreams = [n.removeprefix("http://") for n in world.nodes]
        server = Nginx(workdir / "nginx", proxy_server(port, upstreams, rate=NGINX_RATE, burst=NGINX_BURST, conn=conn),
                       [port], workers=1)
        stack.callback(server.stop)
        return Target([f"http://127.0.0.1:{port}"], [server.pid])
    return start


#: admission settings of the Sluicegate modes beyond the defaults (`--headroom`)
ADMISSION: dict = {}
#: `--access-log`: each Sluicegate writes its access log (queue_ms per request) into its work directory
ACCESS_LOG = False


def with_access_log(config: dict, workdir: Path) -> dict:
    if ACCESS_LOG:
        config["access_log"] = {"path": str(workdir / "access.log")}
    return config


def sluicegate_config(world) -> dict:
    return make_config(world.nodes, tenants={name: tenant(name) for name in all_tenants()},
                       plans={"standard": plan_for(world)}, access_log={"path": None},
                       upstream={"health_interval_s": HEALTH_S, "node_cooldown_s": 5.0},
                       admission={"health_poll_s": HEALTH_S, **ADMISSION})


def start_sluicegate(stack, world, workdir):
    proxy = ProxyProcess(with_access_log(sluicegate_config(world), workdir), workdir / "sluicegate")
    stack.callback(proxy.stop)
    return Target([proxy.url], [proxy.proc.pid], [proxy.admin])


def start_sluicegate_redis(stack, world, workdir):
    redis = RedisServer(workdir / "redis")
    stack.callback(redis.stop)
    base = sluicegate_config(world)
    base["redis"] = {"url": redis.url}
    target = Target([], [redis.proc.pid])
    for i in range(2):
        config = copy.deepcopy(base)
        config["listen"], config["admin_listen"] = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        proxy = ProxyProcess(with_access_log(config, workdir / f"sluicegate-{i}"), workdir / f"sluicegate-{i}")
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
#: on real clusters a mode takes minutes: the default set keeps one nginx setting of each kind
REAL_MODES = ("direct", "nginx-req", "nginx-conn2", "sluicegate", "sluicegate-redis")


# ---------------------------------------------------------------------------------------------
# one mode, five phases
# ---------------------------------------------------------------------------------------------


def warm_up(targets: list[str], world) -> None:
    """A cheap search per good tenant through every target: proves the path works end to end."""
    for target in targets:
        for name in STEADY + [BURSTY]:
            path, body = world.requests(name)[0]
            for attempt in range(30):
                req = urllib.request.Request(f"{target}{path}", data=body.encode(), method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"ApiKey {key_of(name)}"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(1.0)  # a proxy's first health poll, a node still warming
            else:
                raise RuntimeError(f"warm-up through {target} failed for {name}")


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


GATE_KEYS = ("limit", "reason", "search_threads", "search_threads_max", "data_nodes", "inflight", "queued",
             "capacity", "capacity_headroom", "contended", "inflight_cost", "threads_per_request", "fan_out")


async def sample_cluster(world, t0: float, stop: asyncio.Event, groups: dict[str, list[int]],
                         samples: list[dict]) -> None:
    """Every second from t0: the world's counters (thread ms per tenant, rejections, queue, live threads,
    cluster CPU) and the CPU seconds of the bench's own process groups."""
    k = 0
    while not stop.is_set():
        delay = t0 + k - time.monotonic()
        k += 1
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        taken = time.monotonic()
        sample = await asyncio.to_thread(world.sample)
        if sample is None:  # an unanswered poll leaves a gap, not a failed run
            continue
        cpu = {group: sum(report.cpu_seconds(pid) for pid in pids) for group, pids in groups.items()}
        cpu["cluster"] = sample.pop("cpu")
        samples.append({"t": taken - t0, **sample, "cpu": cpu})


async def sample_gates(admins: list[str], t0: float, stop: asyncio.Event, gates: list[dict]) -> None:
    """Every 0.25 s: each Sluicegate's gate (limit, live search threads, in flight, contended)."""
    while admins and not stop.is_set():
        taken = time.monotonic()
        reports = await asyncio.gather(*(asyncio.to_thread(tenants_report, admin) for admin in admins))
        gates.append({"t": taken - t0, "gates": [{k: r.get("gate", {}).get(k) for k in GATE_KEYS} for r in reports]})
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, taken + 0.25 - time.monotonic()))


async def run_mode(mode: Mode, world, args: argparse.Namespace, progress, task) -> dict:
    workdir = OUT / f"storm-work-{world.name}" / mode.name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    expected = args.baseline + args.storm + args.node_down + args.node_back + args.recovery
    with contextlib.ExitStack() as stack:
        progress.update(task, description=f"{mode.name}: cluster", total=expected, completed=0)
        world.open(stack)
        await asyncio.to_thread(world.before_mode)
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        progress.update(task, description=f"{mode.name}: starting")
        target = mode.start(stack, world, workdir)
        targets = target.urls
        await asyncio.to_thread(warm_up, targets, world)

        t0 = time.monotonic() + 2.0  # room for the load generators to start
        longest = expected + 900  # a safety end: phases end on the orchestrator's signals
        plan = {
            "targets": targets, "seed": args.seed, "start": t0, "end": t0 + longest,
            "good": {"steady": [{"name": n, "key": key_of(n), "rate": world.load.steady_rate} for n in STEADY],
                     "bursty": {"name": BURSTY, "key": key_of(BURSTY), "burst": world.load.burst,
                                "every_s": world.load.burst_every_s},
                     "timeout_s": world.load.timeout_s},
            "storm": {"tenants": [{"name": n, "key": key_of(n)} for n in STORMING], "workers": world.load.storm_workers,
                      "start": t0 + args.baseline, "end": t0 + longest, "timeout_s": world.load.timeout_s},
            "requests": {name: world.requests(name) for name in all_tenants()},
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
        groups = {"proxy": target.pids, "good load": [roles["good"].pid], "storm load": [roles["storm"].pid]}
        samples: list[dict] = []
        gates: list[dict] = []
        marks: list[dict] = []  # each Sluicegate's /tenants at the end of each phase
        stop = asyncio.Event()
        samplers = [asyncio.ensure_future(sample_cluster(world, t0, stop, groups, samples)),
                    asyncio.ensure_future(sample_gates(target.admins, t0, stop, gates))]
        events: dict[str, float] = {}
        phase = ["starting"]

        async def until(t: float) -> None:
            await asyncio.sleep(max(0.0, t - time.monotonic()))

        async def mark(name: str) -> None:
            events[name] = time.monotonic() - t0
            if target.admins:
                marks.append({"after": name, "t": events[name], "tenants": [
                    await asyncio.to_thread(tenants_report, admin) for admin in target.admins]})

        async def timeline() -> None:
            await until(t0)
            phase[0] = "baseline"
            await mark("start")
            await until(t0 + args.baseline)
            phase[0] = "storm"
            await mark("storm")
            await until(t0 + args.baseline + args.storm)
            await mark("kill")
            await asyncio.to_thread(world.kill_node)  # returns once the node's processes are gone
            events["killed"] = time.monotonic() - t0
            phase[0] = "node down"
            await until(t0 + events["killed"] + args.node_down)
            events["restart"] = time.monotonic() - t0
            phase[0] = "node down (restarting)"
            await asyncio.to_thread(world.start_node)  # returns once it has rejoined
            await mark("back")
            phase[0] = "node back"
            await until(t0 + events["back"] + args.node_back)
            roles["storm"].send_signal(signal.SIGUSR1)
            await mark("storm_end")
            phase[0] = "recovery"
            await until(t0 + events["storm_end"] + args.recovery)
            roles["good"].send_signal(signal.SIGUSR1)
            await mark("end")
            phase[0] = "draining"
            await roles["good"].wait()
            roles["storm"].send_signal(signal.SIGUSR2)
            await roles["storm"].wait()

        running = asyncio.ensure_future(timeline())
        try:
            while not running.done():
                elapsed = time.monotonic() - t0
                good, storm = live.good, live.storm
                progress.update(task, completed=min(max(elapsed, 0), expected), description=f"{mode.name}: {phase[0]}",
                                status=f"good {good['ok']} ok / {good['failed']} err · storm {storm['sent']} sent, "
                                       f"{storm['ok']} ok")
                await asyncio.wait([running], timeout=0.25)
            running.result()
        finally:
            stop.set()
            await asyncio.gather(*samplers, return_exceptions=True)
            for follower in followers:
                follower.cancel()
            for proc in roles.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        codes = [roles["good"].returncode, roles["storm"].returncode]
        if any(codes):
            raise RuntimeError(f"{mode.name}: load generator exited {codes}; see {workdir}/*.stderr")
        await asyncio.to_thread(world.after_mode)
        progress.update(task, completed=expected, description=f"{mode.name}: done")
        bounds = [0.0, events["storm"], events["killed"], events["back"], events["storm_end"], events["end"]]
        return {
            "mode": mode.name, "label": mode.label, "targets": targets, "t0": t0, "loadavg": loadavg,
            "phases": [(name, bounds[i], bounds[i + 1]) for i, name in enumerate(PHASES)],
            "events": events,
            "good": orjson.loads((workdir / "good.json").read_bytes()),
            "storm": orjson.loads((workdir / "storm.json").read_bytes()),
            "samples": samples, "gates": gates, "marks": marks,
        }


async def run_all(world, args: argparse.Namespace) -> list[dict]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    modes = selected_modes(args, world)
    results = []
    columns = [TextColumn("{task.description:<32}"), BarColumn(), TextColumn("{task.completed:>4.0f}/{task.total:.0f}"),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, refresh_per_second=4) as progress:
        overall = progress.add_task(f"{world.name}: all modes", total=len(modes), status="")
        for mode in modes:
            task = progress.add_task(mode.name, total=1, status="")
            results.append(await run_mode(mode, world, args, progress, task))
            progress.advance(overall)
    return results


def selected_modes(args: argparse.Namespace, world) -> list[Mode]:
    if args.modes:
        wanted = args.modes.split(",")
    elif world.name == "sim":
        wanted = [m.name for m in MODES]
    else:
        wanted = list(REAL_MODES)
    unknown = set(wanted) - {m.name for m in MODES}
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    return [m for m in MODES if m.name in wanted]


def make_world(args: argparse.Namespace):
    world = make_cluster_world(args)
    changes = {k: v for k, v in (("steady_rate", args.good_rate), ("burst", args.burst)) if v is not None}
    if changes:
        world.load = dataclasses.replace(world.load, **changes)
    return world


def make_cluster_world(args: argparse.Namespace):
    if args.cluster == "sim":
        return SimWorld(all_tenants(), STORMING)
    return RealWorld(args.cluster, all_tenants(), STORMING, heap=args.heap, threads_per_node=args.search_threads,
                     queue=args.search_queue, good_docs=args.good_docs, storm_docs=args.storm_docs,
                     attach=args.attach, keep=args.keep_cluster)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", choices=("sim", "opensearch", "elasticsearch"), default="sim")
    parser.add_argument("--baseline", type=float, default=12, help="seconds of the baseline phase")
    parser.add_argument("--storm", type=float, default=20, help="seconds of storm before a node is killed")
    parser.add_argument("--node-down", type=float, default=15, help="seconds from the kill until the node is started "
                        "again (the phase lasts until it has rejoined)")
    parser.add_argument("--node-back", type=float, default=15, help="seconds of storm after the node rejoined")
    parser.add_argument("--recovery", type=float, default=12, help="seconds of the recovery phase")
    parser.add_argument("--modes", default="", help="comma-separated subset of: " + ", ".join(m.name for m in MODES))
    parser.add_argument("--seed", type=int, default=1, help="seed of the good tenants' arrival schedules")
    parser.add_argument("--storm-nice", type=int, default=10,
                        help="nice level of the storming load generator (its clients would be other machines)")
    parser.add_argument("--report-only", action="store_true", help="redo tables and figure from bench/out/storm-*.json")
    parser.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md or bench/results/")
    parser.add_argument("--headroom", type=float, default=None,
                        help="Sluicegate's admission.capacity_headroom (default: the proxy's default)")
    parser.add_argument("--access-log", action="store_true",
                        help="each Sluicegate writes an access log (queue_ms per request) into its work directory")
    real = parser.add_argument_group("real clusters")
    real.add_argument("--attach", help="use a running cluster (the state file of `bench/realcluster.py start`)")
    real.add_argument("--keep-cluster", action="store_true", help="leave the cluster running at the end")
    real.add_argument("--setup-only", action="store_true", help="start or attach the cluster, load its corpus, probe "
                      "its capacity, and stop there")
    real.add_argument("--good-rate", type=float, default=None, help="searches/s of each steady good tenant "
                      "(default: the world's, 2 on a real cluster)")
    real.add_argument("--burst", type=int, default=None, help="the dashboard's parallel searches every ~2 s "
                      "(default: the world's, 5 on a real cluster)")
    real.add_argument("--heap", default="512m", help="JVM heap per node")
    real.add_argument("--search-threads", type=int, default=2, help="search pool size per node")
    real.add_argument("--search-queue", type=int, default=None, help="search queue per node (default: the cluster's, 1000)")
    real.add_argument("--good-docs", type=int, default=50_000, help="documents in each good tenant's index")
    real.add_argument("--storm-docs", type=int, default=150_000, help="documents in each storming tenant's index")
    args = parser.parse_args()
    global ACCESS_LOG
    ACCESS_LOG = args.access_log
    if args.headroom is not None:
        ADMISSION["capacity_headroom"] = args.headroom
    raw_path = OUT / f"storm-{args.cluster}.json"
    if args.report_only:
        saved = json.loads(raw_path.read_text())
    else:
        os.sched_setaffinity(0, {int(c) for c in LOAD_CPUS.split(",")})  # the cluster gets the other core
        world = make_world(args)
        facts, command = report.machine(), report.command_line()
        started = time.monotonic()
        try:
            world.setup(lambda line: print(f"[{args.cluster}] {line}", flush=True))
            if args.setup_only:
                return
            results = asyncio.run(run_all(world, args))
        finally:
            world.close()
        saved = {"results": results, "machine": facts, "elapsed_s": time.monotonic() - started, "command": command,
                 "cluster": args.cluster, "world": storm_report.world_facts(world, plan_for(world)),
                 "phases": {k: getattr(args, k) for k in ("baseline", "storm", "node_down", "node_back", "recovery")},
                 "storm_nice": args.storm_nice}
        OUT.mkdir(parents=True, exist_ok=True)
        raw_path.write_bytes(orjson.dumps(saved))
    storm_report.publish(saved, write_results=not args.no_results)


if __name__ == "__main__":
    main()
