"""What the proxy costs: throughput and added latency against the same instant backend, side by side.

Run: .venv/bin/python bench/overhead.py [--seconds 10] [--repeats 2] [--latency-rate 1000] [--modes a,b]

The backend is nginx answering every request with a static ES-shaped search response (faster than
any Python server, so what is measured is the proxy). Each mode is started in turn and measured
with identical settings; nothing is pinned, every measurement is repeated (`--repeats`) and the
better run is kept, and figures are reported as ratios to nginx measured in the same run.

  throughput  wrk -t1 -c32 -dNs with a Lua script that POSTs a small search with
              `Authorization: ApiKey ...` to /acme-logs/_search. Per core: 1-worker proxies
              against nginx `worker_processes 1`, 2-worker ones against `worker_processes 2`.
  latency     an open-loop client of our own at a fixed 1,000 requests/s (bench/loadgen.py's
              client, one process): p50/p99 from send to the end of the response, and what each
              proxy adds to direct. (hey -q reports latency only to 0.1 ms: too coarse here.)
  profile     py-spy --native samples Sluicegate (1 worker) and the floor under the same wrk load:
              flame graphs (bench/results/flame*.svg), the top frames by own and total time, and own
              time per source file (or C library) in CPU-µs per request, side by side.

Modes: direct (wrk → the backend); nginx proxy_pass over upstream keep-alive with limit_req keyed on
the API key (limits far above the load); no-logic proxies forwarding every request as it is through
Sluicegate's own upstream client (proxy/upstream_http.py): on aiohttp's server, on a raw
asyncio.Protocol parsing with httptools (the floor under Sluicegate's logic), and behind Sluicegate's
own listener (proxy/listener.py); Sluicegate with 1 worker and with 2 workers.

TLS modes (1 worker each, every one beside nginx doing the same): a TLS listener (Sluicegate's
`listen_tls`, nginx `listen ... ssl`), an HTTPS upstream verified against the bench's CA (Sluicegate's
`upstream.tls`, nginx `proxy_ssl_verify on` with sessions reused), and both; plus direct over TLS.
Certificates: ECDSA P-256 from a CA made for the run (tests/pki.py); both ends negotiate TLS 1.3.
Clients keep their connections alive, so what is measured is the cost of encrypting, not of handshakes.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.nginx import Nginx, proxy_server, static_server  # noqa: E402
from tests.processes import PY, ProxyProcess, free_port, make_config, tenant, wait_until  # noqa: E402

OUT = REPO / "bench" / "out"
API_KEY = "acme-key"
PATH = "/acme-logs/_search"
QUERY = b'{"size":10,"query":{"match":{"message":"connection reset"}}}'
#: what the backend answers to a search: one hit, honest ES shape, 0.3 KB
SEARCH_RESPONSE = orjson.dumps({
    "took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
    "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 1.0, "hits": [
        {"_index": "acme-logs", "_id": "1", "_score": 1.0,
         "_source": {"@timestamp": "2025-01-01T00:00:00Z", "service": "checkout",
                     "message": "connection reset by peer"}}]},
})
#: what the backend answers to Sluicegate's cluster-health polls: a healthy 3-node cluster of 16-core
#: data nodes (25 search threads each, ES's default for 16 cores), so the gate sizes itself as it
#: would in front of such a cluster and wrk's 32 connections never wait for it
CLUSTER_HEALTH = orjson.dumps({"cluster_name": "static", "status": "green", "timed_out": False, "number_of_nodes": 3,
                               "number_of_data_nodes": 3, "active_primary_shards": 1, "active_shards": 3})
NODES_STATS = orjson.dumps({
    "_nodes": {"total": 3, "successful": 3, "failed": 0}, "cluster_name": "static",
    "nodes": {f"node{i}": {"name": f"node-{i}", "roles": ["data", "master"],
                           "thread_pool": {"search": {"threads": 25, "queue": 0, "active": 0, "rejected": 0,
                                                      "largest": 25, "completed": 0}}} for i in range(3)},
})
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{QUERY.decode()}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "ApiKey {API_KEY}"
"""


# ---------------------------------------------------------------------------------------------
# the no-logic aiohttp proxies (run as `overhead.py --noop-proxy PORT UPSTREAM CLIENT`)
# ---------------------------------------------------------------------------------------------


async def noop_proxy(port: int, upstream: str, client: str) -> None:
    """aiohttp's low-level server forwarding every request as it is through Sluicegate's upstream client:
    no tenant, no cost, no limits (`client` "lean")."""
    from urllib.parse import urlsplit

    from aiohttp import web

    from proxy.upstream_http import ConnectionPool, request_head

    parts = urlsplit(upstream)
    pool = ConnectionPool(parts.hostname, parts.port, max_idle=256)

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        conn = pool.take_idle() or await pool.connect(2.0)
        head = request_head(request.method, request.raw_path, parts.netloc,
                            [("Content-Type", request.content_type)], len(body))
        response = await conn.send(head, body, False, 30.0)
        data = await response.read()
        response.release()
        return web.Response(status=response.status, body=data, content_type="application/json")

    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, backlog=2048)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def protocol_proxy(port: int, upstream: str, kind: str) -> None:
    """The floor: forwarding every request as it is, on a raw asyncio.Protocol parsing with httptools (the
    llhttp binding) and Sluicegate's lean upstream client, each answer in one write (`kind` "raw"); or the
    same forwarding as an application behind Sluicegate's own listener (`kind` "listener")."""
    from urllib.parse import urlsplit

    import httptools

    from proxy.upstream_http import ConnectionPool, request_head

    parts = urlsplit(upstream)
    pool = ConnectionPool(parts.hostname, parts.port, max_idle=256)
    host = parts.netloc.encode()
    loop = asyncio.get_running_loop()

    async def exchange(method: str, target: str, content_type: bytes, body: bytes):
        conn = pool.take_idle() or await pool.connect(2.0)
        head = request_head(method, target, host, b"Content-Type: %s\r\n" % content_type, len(body))
        response = await conn.send(head, body or None, False, 30.0)
        data = response.read_now() if response.complete else await response.read()
        response.release()
        return response.status, data

    if kind == "listener":
        from proxy.config import HardLimits
        from proxy.listener import Listener

        limits = HardLimits()

        async def app(request) -> None:
            status, data = await exchange(request.method, request.target, (request.content_type or "").encode(),
                                          request.body)
            request.respond(status, b"Content-Type: application/json\r\n", data)

        factory = Listener(app, limits=limits)
    else:
        class Connection(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.transport = transport
                self.parser = httptools.HttpRequestParser(self)

            def data_received(self, data: bytes) -> None:
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserError:
                    self.transport.close()

            def on_message_begin(self) -> None:
                self.url, self.content_type, self.body = b"", b"", []

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                if name.lower() == b"content-type":
                    self.content_type = value

            def on_body(self, body: bytes) -> None:
                self.body.append(body)

            def on_message_complete(self) -> None:
                loop.create_task(self.forward(self.parser.get_method().decode(), self.url.decode(), self.content_type,
                                              b"".join(self.body)))

            async def forward(self, method: str, target: str, content_type: bytes, body: bytes) -> None:
                status, data = await exchange(method, target, content_type, body)
                self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                     % (status, len(data), data))

        factory = Connection
    await loop.create_server(factory, "127.0.0.1", port, backlog=2048)
    print("ready", flush=True)
    await asyncio.Event().wait()


class NoopProxy:
    def __init__(self, port: int, upstream: str, client: str):
        self.proc = subprocess.Popen([PY, __file__, "--noop-proxy", str(port), upstream, client],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# ---------------------------------------------------------------------------------------------
# the open-loop latency client (run as `overhead.py --latency-client URL RATE SECONDS OUT`)
# ---------------------------------------------------------------------------------------------


async def latency_client(url: str, rate: float, seconds: float, out: str, ca: str | None = None) -> None:
    """Send at a fixed rate whatever the responses do; record each request's latency in seconds.
    `ca`: the CA file an https:// `url` is verified against."""
    import ssl

    from bench.loadgen import Client

    client = Client([url], API_KEY, 10.0, ssl_context=ssl.create_default_context(cafile=ca) if ca else None)
    request = client.prepare(PATH, orjson.loads(QUERY))
    for _ in range(200):  # warm the connections and both ends' code paths
        await client.send(request)
    latencies: list[float] = []
    failures = 0
    clock = time.perf_counter

    async def one() -> None:
        nonlocal failures
        started = clock()
        try:
            status, _ = await client.send(request)
        except Exception:  # noqa: BLE001
            status = 0
        if 200 <= status < 300:
            latencies.append(clock() - started)
        else:
            failures += 1

    tasks = set()
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(list(tasks))
    achieved = n / (time.monotonic() - start)
    Path(out).write_bytes(orjson.dumps({"latencies": latencies, "failures": failures, "rate": achieved}))


def run_latency(url: str, rate: float, seconds: float, workdir: Path) -> dict:
    import numpy

    out = workdir / "latency.json"
    ca = ["--latency-ca", str(TLS.ca)] if url.startswith("https:") and TLS is not None else []
    subprocess.run([PY, __file__, "--latency-client", url, str(rate), str(seconds), str(out), *ca], check=True)
    data = orjson.loads(out.read_bytes())
    values = numpy.array(data["latencies"])
    return {"p50": float(numpy.percentile(values, 50)), "p90": float(numpy.percentile(values, 90)),
            "p99": float(numpy.percentile(values, 99)), "n": len(values), "failures": data["failures"],
            "rate": data["rate"]}


# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def run_wrk(url: str, seconds: int, script: Path, connections: int = 32, pid: int = 0) -> dict:
    """One wrk run: requests/s, latency percentiles (seconds), non-2xx count and errors, and the CPU
    seconds `pid` (with its children) spent per request."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url + PATH]
    cpu_before, started = (report.cpu_seconds(pid) if pid else 0.0), time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = (report.cpu_seconds(pid) - cpu_before) if pid else 0.0
    wall = time.monotonic() - started
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    percentiles = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        percentiles[pct] = float(value) * _UNITS[unit]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50": percentiles.get("50"), "p99": percentiles.get("99"), "requests": requests,
            "cpu_s": cpu, "cpu_share": cpu / wall, "cpu_us_per_request": cpu / max(requests, 1) * 1e6,
            "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0, "command": " ".join(command)}


# ---------------------------------------------------------------------------------------------
# modes
# ---------------------------------------------------------------------------------------------


@dataclass
class Mode:
    name: str
    label: str
    workers: int
    start: Callable[[contextlib.ExitStack, str, Path], tuple[str, int]]  # → (url, pid to profile or 0)
    latency: bool = True  # measured at the fixed rate too
    peer: str | None = None  # the nginx mode it is compared with; None: nginx with as many workers


def backend_block(port: int, tls: TlsSetup | None = None) -> str:
    return static_server(port, SEARCH_RESPONSE, {"/_cluster/health": CLUSTER_HEALTH,
                                                 "/_nodes/stats/thread_pool": NODES_STATS},
                         tls=(str(tls.cert), str(tls.key)) if tls is not None else None)


def start_direct(stack, backend, workdir):
    return backend, 0


def start_nginx(workers: int):
    def start(stack, backend, workdir):
        port = free_port()
        # limit_req on the API key, as in the storm bench, with limits far above anything wrk can send
        server = Nginx(workdir / f"nginx-{workers}", proxy_server(port, [backend.removeprefix("http://")],
                                                                  rate=1_000_000, burst=1_000_000), [port], workers)
        stack.callback(server.stop)
        return f"http://127.0.0.1:{port}", server.pid
    return start


def start_noop(client: str):
    def start(stack, backend, workdir):
        port = free_port()
        proxy = NoopProxy(port, backend, client)
        stack.callback(proxy.stop)
        return f"http://127.0.0.1:{port}", proxy.pid
    return start


def sluicegate_config(backend: str) -> dict:
    plan = {"search": {"rate": 1e9, "burst": 1e10}, "read": {"rate": 1e9, "burst": 1e10},
            "write": {"rate": 1e9, "burst": 1e10}, "admin": {"rate": 1e6, "burst": 1e7},
            "max_concurrent": 4096, "max_queue": 4096, "max_wait_ms": 2000}
    return make_config([backend], tenants={"acme": tenant("acme", API_KEY)}, plans={"standard": plan},
                       access_log={"path": None})


def start_sluicegate(workers: int):
    def start(stack, backend, workdir):
        proxy = ProxyProcess(sluicegate_config(backend), workdir / f"sluicegate-{workers}", workers=workers)
        stack.callback(proxy.stop)
        wait_until(lambda: ready(proxy.admin), what="sluicegate /ready")
        return proxy.url, proxy.proc.pid
    return start


def ready(admin: str) -> bool:
    from tests.processes import http_get

    return http_get(admin + "/ready")[0] == 200


# ---- TLS ----


@dataclass
class TlsSetup:
    """The run's certificates (a CA, one server certificate for localhost) and the backend's HTTPS URL."""

    ca: Path
    cert: Path
    key: Path
    backend: str


#: set by main() before any mode starts
TLS: TlsSetup | None = None


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    from tests.pki import Pki

    pki = Pki(workdir / "pki", "Sluicegate Bench CA")
    issued = pki.server("bench", "localhost")
    return pki.ca_file, issued.cert_file, issued.key_file


def start_direct_tls(stack, backend, workdir):
    assert TLS is not None
    return TLS.backend, 0


def start_nginx_tls(listener: bool, upstream: bool):
    def start(stack, backend, workdir):
        assert TLS is not None
        port = free_port()
        target = (TLS.backend if upstream else backend).split("://", 1)[1]
        block = proxy_server(port, [target], rate=1_000_000, burst=1_000_000,
                             tls=(str(TLS.cert), str(TLS.key)) if listener else None,
                             upstream_ca=str(TLS.ca) if upstream else None)
        server = Nginx(workdir / f"nginx-tls-{port}", block, [port], 1)
        stack.callback(server.stop)
        return f"{'https' if listener else 'http'}://127.0.0.1:{port}", server.pid
    return start


def start_sluicegate_tls(listener: bool, upstream: bool):
    def start(stack, backend, workdir):
        assert TLS is not None
        config = sluicegate_config(TLS.backend if upstream else backend)
        if upstream:
            config["upstream"]["tls"] = {"ca_file": str(TLS.ca)}
        if listener:
            config["listen_tls"] = {"cert_file": str(TLS.cert), "key_file": str(TLS.key)}
        proxy = ProxyProcess(config, workdir / f"sluicegate-tls-{int(listener)}{int(upstream)}")
        stack.callback(proxy.stop)
        wait_until(lambda: ready(proxy.admin), what="sluicegate /ready")
        return proxy.url, proxy.proc.pid
    return start


#: TLS variant → (TLS listener, HTTPS upstream)
TLS_VARIANTS = {"tls-listener": (True, False), "https-upstream": (False, True), "tls-both": (True, True)}
TLS_LABELS = {"tls-listener": "TLS listener", "https-upstream": "HTTPS upstream", "tls-both": "both"}
TLS_MODES = [Mode("direct-tls", "direct over TLS (nginx static backend, ssl)", 1, start_direct_tls)]
for _variant, (_listener, _upstream) in TLS_VARIANTS.items():
    TLS_MODES += [
        Mode(f"nginx-1-{_variant}", f"nginx, {TLS_LABELS[_variant]}, 1 worker", 1, start_nginx_tls(_listener, _upstream),
             peer=f"nginx-1-{_variant}"),
        Mode(f"sluicegate-1-{_variant}", f"Sluicegate, {TLS_LABELS[_variant]}, 1 worker", 1,
             start_sluicegate_tls(_listener, _upstream), peer=f"nginx-1-{_variant}"),
    ]


MODES = [
    Mode("direct", "direct (nginx static backend)", 1, start_direct),
    Mode("nginx-1", "nginx proxy_pass + limit_req, 1 worker", 1, start_nginx(1)),
    Mode("aiohttp-lean", "no-logic aiohttp proxy, Sluicegate's upstream client", 1, start_noop("lean")),
    Mode("protocol-raw", "no-logic protocol proxy: raw Protocol + httptools + upstream client (the floor)", 1,
         start_noop("protocol-raw")),
    Mode("protocol-listener", "no-logic protocol proxy on Sluicegate's listener + upstream client", 1,
         start_noop("protocol-listener")),
    Mode("sluicegate-1", "Sluicegate, 1 worker", 1, start_sluicegate(1)),
    Mode("nginx-2", "nginx proxy_pass + limit_req, 2 workers", 2, start_nginx(2), latency=False),
    Mode("sluicegate-2", "Sluicegate, 2 workers", 2, start_sluicegate(2)),
    *TLS_MODES,
]


# ---------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------


#: modes profiled under wrk, and the flame graph file each gets
PROFILED = {"sluicegate-1": "flame.svg", "protocol-raw": "flame-floor.svg"}


def profile(url: str, pid: int, seconds: int, script: Path, svg: Path) -> dict:
    """py-spy on `pid` while wrk drives it: an SVG flame graph, then raw stacks summarised, with the
    CPU µs per request of the second run. --native: the request path's modules are compiled (Cython),
    and py-spy names their C functions by source line, as it does the system calls."""
    py_spy = Path(PY).parent / "py-spy"
    raw = svg.with_suffix(".txt")
    for fmt, path in (("flamegraph", svg), ("raw", raw)):
        spy = subprocess.Popen([str(py_spy), "record", "--native", "-r", "200", "-d", str(seconds), "-p", str(pid),
                                "-f", fmt, "-o", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        load = run_wrk(url, seconds + 1, script, pid=pid)
        spy.wait(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode(errors='replace')}")
    return {**summarise_stacks(raw.read_text()), "cpu_us_per_request": load["cpu_us_per_request"], "rps": load["rps"]}


def frame_name(frame: str) -> str:
    """'handle (proxy/flow.py:123)' → 'handle (proxy/flow.py)': one row per function, not per line."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def summarise_stacks(raw: str) -> dict:
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    by_file: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        where = re.search(r"\(([^()]*)\)$", frames[-1])
        source = where.group(1) if where else frames[-1]
        by_file[source] = by_file.get(source, 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    return {"samples": samples, "own": own, "total": total, "by_file": by_file}


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per figure; the better is kept")
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="requests/s of the latency client")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--modes", default="", help="comma-separated subset of: " + ", ".join(m.name for m in MODES))
    parser.add_argument("--no-results", action="store_true", help="do not touch bench/RESULTS.md or bench/results/")
    parser.add_argument("--interleave", action="store_true",
                        help="start every mode at once and measure them in turn, one round per repeat (fairer ratios "
                             "on a noisy machine; the proxies stay idle, polling only, while the others are measured)")
    parser.add_argument("--report-only", action="store_true", help="redo the tables from bench/out/overhead.json")
    parser.add_argument("--noop-proxy", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--latency-client", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--latency-ca", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_proxy:
        import uvloop

        port, upstream, client = int(args.noop_proxy[0]), args.noop_proxy[1], args.noop_proxy[2]
        if client.startswith("protocol-"):
            uvloop.run(protocol_proxy(port, upstream, client.removeprefix("protocol-")))
        else:
            uvloop.run(noop_proxy(port, upstream, client))
        return
    if args.latency_client:
        import uvloop

        url, rate, seconds, out = args.latency_client
        uvloop.run(latency_client(url, float(rate), float(seconds), out, args.latency_ca))
        return
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (make bench installs nginx, wrk and hey from Debian's packages)")

    if args.report_only:
        saved = orjson.loads((OUT / "overhead.json").read_bytes())
        args.repeats, args.latency_rate, args.latency_seconds = saved["settings"]
        modes = [m for m in MODES if m.name in saved["throughput"]]
        publish(args, modes, saved["throughput"], saved["latency"], saved["flames"], saved["machine"],
                saved["command"], saved["elapsed_s"], OUT / "overhead-work")
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    facts, command = report.machine(), report.command_line()
    workdir = OUT / "overhead-work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    script = workdir / "search.lua"
    script.write_text(WRK_SCRIPT)
    modes = [m for m in MODES if not args.modes or m.name in args.modes.split(",")]
    throughput: dict[str, list[dict]] = {}
    latency: dict[str, list[dict]] = {}
    flames: dict[str, dict] = {}
    started = time.monotonic()
    backend_port, backend_tls_port = free_port(), free_port()
    global TLS
    ca, cert, key = make_certificates(workdir)
    TLS = TlsSetup(ca, cert, key, f"https://127.0.0.1:{backend_tls_port}")
    columns = [TextColumn("{task.description:<44}"), BarColumn(), TextColumn("{task.completed:>3.0f}/{task.total:.0f}"),
               TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
    steps = sum(args.repeats * (1 + m.latency) + (m.name in PROFILED) for m in modes)
    with contextlib.ExitStack() as outer, Progress(*columns) as progress:
        backend_server = Nginx(workdir / "backend", backend_block(backend_port) + backend_block(backend_tls_port, TLS),
                               [backend_port, backend_tls_port], workers=1)
        outer.callback(backend_server.stop)
        backend = f"http://127.0.0.1:{backend_port}"
        overall = progress.add_task("overhead", total=steps, status="")
        def measure(mode: Mode, url: str, pid: int, i: int, latency_too: bool) -> None:
            progress.update(overall, description=f"{mode.name}: wrk run {i + 1}/{args.repeats}")
            result = run_wrk(url, args.seconds, script, pid=pid or backend_server.pid)
            throughput.setdefault(mode.name, []).append(result)
            progress.update(overall, advance=1, status=f"{result['rps']:,.0f} req/s")
            if latency_too and mode.latency:
                progress.update(overall, description=f"{mode.name}: {args.latency_rate:,.0f} req/s, run {i + 1}")
                result = run_latency(url, args.latency_rate, args.latency_seconds, workdir)
                latency.setdefault(mode.name, []).append(result)
                progress.update(overall, advance=1, status=f"p50 {result['p50'] * 1e3:.3f} ms")

        if args.interleave:
            # Every mode started at once and measured in turn, round after round: a noisy neighbour's
            # burst then lands on every mode's runs alike instead of on one mode's.
            with contextlib.ExitStack() as stack:
                started_modes = []
                for mode in modes:
                    progress.update(overall, description=f"{mode.name}: starting", status="")
                    url, pid = mode.start(stack, backend, workdir)
                    run_wrk(url, 2, script)  # warm-up, not kept
                    started_modes.append((mode, url, pid))
                for i in range(args.repeats):
                    for mode, url, pid in started_modes:
                        measure(mode, url, pid, i, latency_too=True)
                for mode, url, pid in started_modes:
                    if mode.name in PROFILED:
                        progress.update(overall, description=f"{mode.name}: py-spy under wrk")
                        flames[mode.name] = profile(url, pid, args.profile_seconds, script, workdir / PROFILED[mode.name])
                        progress.update(overall, advance=1)
        for mode in modes if not args.interleave else ():
            with contextlib.ExitStack() as stack:
                progress.update(overall, description=f"{mode.name}: starting", status="")
                url, pid = mode.start(stack, backend, workdir)
                run_wrk(url, 2, script)  # warm-up, not kept
                for i in range(args.repeats):
                    measure(mode, url, pid, i, latency_too=False)
                if mode.latency:
                    for i in range(args.repeats):
                        progress.update(overall, description=f"{mode.name}: {args.latency_rate:,.0f} req/s, run {i + 1}")
                        result = run_latency(url, args.latency_rate, args.latency_seconds, workdir)
                        latency.setdefault(mode.name, []).append(result)
                        progress.update(overall, advance=1, status=f"p50 {result['p50'] * 1e3:.3f} ms")
                if mode.name in PROFILED:
                    progress.update(overall, description=f"{mode.name}: py-spy under wrk")
                    flames[mode.name] = profile(url, pid, args.profile_seconds, script, workdir / PROFILED[mode.name])
                    progress.update(overall, advance=1)
    elapsed = time.monotonic() - started
    raw = {"throughput": throughput, "latency": latency, "flames": flames, "machine": facts, "command": command,
           "elapsed_s": elapsed, "settings": [args.repeats, args.latency_rate, args.latency_seconds]}
    (OUT / "overhead.json").write_bytes(orjson.dumps(raw))
    publish(args, modes, throughput, latency, flames, facts, command, elapsed, workdir)


def publish(args, modes, throughput, latency, flames, facts, command, elapsed, workdir: Path) -> None:
    """Print the tables; unless --no-results, copy the flame graphs and rewrite RESULTS.md's section."""
    by_name = {m.name: m for m in MODES}
    rendered = tables(modes, throughput, latency, flames, args)
    for table in rendered:
        table.print()
    if args.no_results:
        return
    report.FIGURES.mkdir(parents=True, exist_ok=True)
    for name in flames:
        shutil.copy(workdir / PROFILED[name], report.FIGURES / PROFILED[name])
    wrk_command = throughput[modes[0].name][0]["command"].replace(str(workdir) + "/", "")
    report.update_section("overhead", "\n\n".join([
        "### Overhead: throughput and added latency against an instant backend",
        f"Command: `{command}` — {elapsed / 60:.1f} min. wrk: `{wrk_command}` with `search.lua` setting "
        f"`Authorization: ApiKey …` and `Content-Type`, POSTing `{QUERY.decode()}`; best of {args.repeats} runs "
        f"per mode, after a 2 s warm-up{'; every mode started at once and measured in turn, one round per run' if getattr(args, 'interleave', False) else ''}. "
        f"Latency: our open-loop client at {args.latency_rate:,.0f} requests/s for "
        f"{args.latency_seconds:g} s (better p50 of {args.repeats} runs). Backend: nginx (1 worker) answering a "
        f"{len(SEARCH_RESPONSE)}-byte static search response. Nothing pinned: wrk, the backend and the proxy share "
        "the machine's cores."
        + (" TLS rows: ECDSA P-256 certificates from a CA made for the run, TLS 1.3 negotiated on every leg, "
           "connections kept alive (the cost of encrypting, not of handshakes)." if any(n.endswith(tuple(TLS_VARIANTS))
                                                                                         for n in throughput) else ""),
        report.machine_markdown(facts),
        *(f"**{t.title}**\n\n{t.markdown()}" for t in rendered),
        "Flame graphs under wrk: " + ", ".join(f"[{by_name[n].label}](results/{PROFILED[n]})" for n in flames)
        if flames else "",
    ]))


def cost_by_file(flames: dict[str, dict], by: dict) -> report.Table:
    """Own time per source file as CPU-µs per request: a file's share of the samples × the CPU per request
    measured during the same profiled run. A C call's time (a socket write, the event loop itself)
    counts in the Python file that called it."""
    names = list(flames)
    table = report.Table("CPU µs per request by source file, profiled side by side (own time × CPU per request)",
                         ["source file", *(by[n].label for n in names)], right=set(range(1, len(names) + 1)))
    per_file: dict[str, list[float]] = {}
    for i, name in enumerate(names):
        flame = flames[name]
        samples = flame["samples"] or 1
        for source, n in flame["by_file"].items():
            per_file.setdefault(source, [0.0] * len(names))[i] = n / samples * flame["cpu_us_per_request"]
    for source, values in sorted(per_file.items(), key=lambda kv: -max(kv[1]))[:18]:
        if max(values) >= 0.5:
            table.add(f"`{source}`", *(f"{v:.1f}" for v in values))
    table.rule()
    table.add("all (CPU µs per request in the profiled run)", *(f"{flames[n]['cpu_us_per_request']:.0f}" for n in names))
    return table


def best(runs: list[dict], key: str, high: bool = True) -> dict:
    return (max if high else min)(runs, key=lambda r: r[key])


def tls_ratios(tops: dict, latency: dict) -> report.Table | None:
    """Each TLS variant: Sluicegate beside nginx doing the same, and what TLS costs each against its own
    plain mode (throughput, and CPU per request); added latency over direct (plain), or over direct
    over TLS where the client speaks TLS (then the client's own TLS is not counted as the proxy's)."""
    rows = [v for v in TLS_VARIANTS if f"sluicegate-1-{v}" in tops and f"nginx-1-{v}" in tops]
    if not rows:
        return None
    table = report.Table(
        "TLS: Sluicegate beside nginx doing the same, 1 worker each (throughput: best wrk run; latency: better p50 "
        "run at the fixed rate)",
        ["TLS on", "Sluicegate req/s", "nginx req/s", "Sluicegate / nginx", "TLS / plain: Sluicegate", "TLS / plain: nginx",
         "CPU µs/req TLS adds: Sluicegate / nginx", "added p50 ms: Sluicegate / nginx", "added p50: Sluicegate ÷ nginx",
         "added p99 ms: Sluicegate / nginx"], right=set(range(1, 10)))

    def added(name: str, baseline: str, key: str) -> float | None:
        if not latency.get(name) or not latency.get(baseline):
            return None
        return (best(latency[name], "p50", False)[key] - best(latency[baseline], "p50", False)[key]) * 1e3

    plain_sg, plain_ng = tops.get("sluicegate-1"), tops.get("nginx-1")
    for variant in rows:
        sg, ng = tops[f"sluicegate-1-{variant}"], tops[f"nginx-1-{variant}"]
        baseline = "direct-tls" if TLS_VARIANTS[variant][0] else "direct"
        p50 = [added(f"{who}-1-{variant}", baseline, "p50") for who in ("sluicegate", "nginx")]
        p99 = [added(f"{who}-1-{variant}", baseline, "p99") for who in ("sluicegate", "nginx")]
        cpu = ("—" if not (plain_sg and plain_ng) else
               f"{sg['cpu_us_per_request'] - plain_sg['cpu_us_per_request']:+.0f} / "
               f"{ng['cpu_us_per_request'] - plain_ng['cpu_us_per_request']:+.0f}")
        table.add(TLS_LABELS[variant], f"{sg['rps']:,.0f}", f"{ng['rps']:,.0f}", f"{sg['rps'] / ng['rps']:.2f}×",
                  f"{sg['rps'] / plain_sg['rps']:.2f}×" if plain_sg else "—",
                  f"{ng['rps'] / plain_ng['rps']:.2f}×" if plain_ng else "—", cpu,
                  "—" if None in p50 else f"{p50[0]:.3f} / {p50[1]:.3f}",
                  "—" if None in p50 or p50[1] <= 0 else f"{p50[0] / p50[1]:.1f}×",
                  "—" if None in p99 else f"{p99[0]:.3f} / {p99[1]:.3f}")
    return table


def tables(modes, throughput, latency, flames, args) -> list[report.Table]:
    by = {m.name: m for m in modes}
    t = report.Table("Throughput (wrk -t1 -c32, best run) and the proxy's CPU per request",
                     ["mode", "workers", "req/s", "runs", "vs nginx (same workers)", "proxy CPU (cores)",
                      "CPU µs / request", "above the floor", "req per CPU-second vs nginx", "non-2xx / socket errors"],
                     right=set(range(1, 10)))
    tops = {name: best(runs, "rps") for name, runs in throughput.items()}
    floor = tops.get("protocol-raw")
    for name, runs in throughput.items():
        mode = by[name]
        top = tops[name]
        nginx = tops.get(mode.peer or f"nginx-{mode.workers}")
        proxied = not name.startswith("direct")
        above = "—"
        if floor and proxied and not name.startswith("nginx") and name != "protocol-raw" and mode.workers == 1:
            above = f"{top['cpu_us_per_request'] - floor['cpu_us_per_request']:+.0f}"
        t.add(mode.label, mode.workers, f"{top['rps']:,.0f}", " / ".join(f"{r['rps']:,.0f}" for r in runs),
              f"{top['rps'] / nginx['rps']:.2f}×" if nginx and proxied else "—",
              f"{top['cpu_share']:.2f}" + ("" if proxied else " (backend)"), f"{top['cpu_us_per_request']:.0f}", above,
              f"{nginx['cpu_us_per_request'] / top['cpu_us_per_request']:.2f}×" if nginx and proxied else "—",
              f"{sum(r['non2xx'] for r in runs)} / {sum(r['socket_errors'] for r in runs)}")
    best_rps = {name: top["rps"] for name, top in tops.items()}
    out = [t]
    if latency:
        lat = report.Table(f"Latency at a fixed {args.latency_rate:,.0f} requests/s (open loop, better p50 of "
                           f"{args.repeats})", ["mode", "p50 ms", "p90 ms", "p99 ms", "added p50 ms", "added p99 ms",
                                                "achieved req/s", "failures"], right={1, 2, 3, 4, 5, 6, 7})
        direct = best(latency["direct"], "p50", high=False) if "direct" in latency else None
        for name, runs in latency.items():
            top = best(runs, "p50", high=False)
            lat.add(by[name].label, f"{top['p50'] * 1e3:.3f}", f"{top['p90'] * 1e3:.3f}", f"{top['p99'] * 1e3:.3f}",
                    "—" if direct is None or name == "direct" else f"{(top['p50'] - direct['p50']) * 1e3:+.3f}",
                    "—" if direct is None or name == "direct" else f"{(top['p99'] - direct['p99']) * 1e3:+.3f}",
                    f"{top['rate']:,.0f}", sum(r["failures"] for r in runs))
        out.append(lat)
    goals = report.Table("Goals (bench targets)", ["goal", "measured", "target", ""], right={1, 2})
    for workers in (1, 2):
        sg, ng = tops.get(f"sluicegate-{workers}"), tops.get(f"nginx-{workers}")
        if sg and ng:
            per_cpu = ng["cpu_us_per_request"] / sg["cpu_us_per_request"]
            target = 0.4 if workers == 1 else None
            goals.add(f"Sluicegate {workers} worker(s) / nginx {workers} worker(s), requests per CPU-second",
                      f"{per_cpu:.2f}×", f"≥ {target}×" if target else "—",
                      ("met" if per_cpu >= target else "MISSED") if target else "")
            goals.add("  the same, throughput", f"{sg['rps'] / ng['rps']:.2f}×", "—", "")
    sg, floor = tops.get("sluicegate-1"), tops.get("protocol-raw")
    if sg and floor:
        goals.add("Sluicegate 1 worker: CPU µs per request above the no-logic floor",
                  f"{sg['cpu_us_per_request'] - floor['cpu_us_per_request']:.0f}", "—", "")
    if latency.get("sluicegate-1") and latency.get("direct"):
        added = (best(latency["sluicegate-1"], "p50", False)["p50"] - best(latency["direct"], "p50", False)["p50"]) * 1e3
        goals.add(f"Sluicegate added p50 at {args.latency_rate:,.0f} req/s", f"{added:.3f} ms", "≤ 0.2 ms",
                  "met" if added <= 0.2 else "MISSED")
    out.append(goals)
    tls_table = tls_ratios(tops, latency)
    if tls_table is not None:
        out.append(tls_table)
    flame = flames.get("sluicegate-1")
    if flame:
        samples = flame["samples"] or 1
        prof = report.Table(f"Sluicegate (1 worker) under wrk: where the time goes (py-spy, {flame['samples']:,} samples)",
                            ["function (own time)", "own %", "function (total time)", "total %"], right={1, 3})
        own = sorted(flame["own"].items(), key=lambda kv: -kv[1])[:20]
        total = sorted(((k, v) for k, v in flame["total"].items() if v < samples * 0.999),
                       key=lambda kv: -kv[1])[:20]
        for (o_name, o_n), (t_name, t_n) in zip(own, total):
            prof.add(f"`{o_name}`", f"{o_n / samples * 100:.1f}", f"`{t_name}`", f"{t_n / samples * 100:.1f}")
        out.append(prof)
    if flames:
        out.append(cost_by_file(flames, by))
    return out


if __name__ == "__main__":
    main()
