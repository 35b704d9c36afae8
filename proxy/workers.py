"""`--workers N`: a supervisor and N worker processes sharing the proxy port (SO_REUSEPORT).

Each worker is a fresh interpreter (`python -m proxy _worker ...`) running the whole proxy with
its share of every limit (1/N without Redis; shared through Redis when configured). The
supervisor owns the public admin listener. Each worker serves its own admin API on a private
unix socket, and the supervisor answers from them: /metrics is every worker's metrics with a
`worker` label, /tenants sums the workers' per-tenant state, /ready is 200 while at least one
worker is ready (and says how many are not: `degraded`),
/status and /tenants/{name}/shapes (the status page's data) add the workers up, the page itself
is served here too, and /reload (or SIGHUP) reloads every worker and reports each result. SIGTERM drains every
worker and exits 0. A worker that dies is restarted after a back-off (1, 2, 4 ... 30 s), which starts
again from 1 s once a worker has run HEALTHY_RUN_S: a crash a day is not a crash loop.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, urlencode

import aiohttp
import orjson
import uvloop
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from .admin import admin_error, inflight_params, limit_param, merge_inflight, page_routes, since_param
from .cockpit import merge_shapes, merge_status
from .config import ConfigError, load_config

log = logging.getLogger("sluicegate.supervisor")

#: a worker that ran this many seconds before it died was healthy: its restart back-off starts afresh
HEALTHY_RUN_S = 60.0


def restart_backoff(restarts: int, ran_s: float) -> tuple[int, float]:
    """(restarts so far, counting this one; seconds to wait before it) for a worker that died after running
    `ran_s` seconds, having been restarted `restarts` times in its current crash streak."""
    restarts = 1 if ran_s >= HEALTHY_RUN_S else restarts + 1
    return restarts, min(30.0, 0.5 * 2 ** min(restarts, 6))


class WorkerProcess:
    """One worker child: its process, its private admin socket, and its restarts."""

    def __init__(self, index: int, socket_path: Path):
        self.index = index
        self.socket_path = socket_path
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0  # in the current crash streak (see restart_backoff)
        self.started_at = 0.0  # loop time of the last spawn


class Supervisor:
    def __init__(self, config_path: str, workers: int, runtime_dir: Path):
        self.config_path = config_path
        self.runtime_dir = runtime_dir
        self.children = [WorkerProcess(i, runtime_dir / f"worker-{i}.sock") for i in range(workers)]
        self.stopping = False
        self.stopped = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    # ---- children ----
    async def spawn(self, child: WorkerProcess) -> None:
        child.socket_path.unlink(missing_ok=True)
        child.started_at = asyncio.get_running_loop().time()
        child.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "_worker", "--config", self.config_path,
            "--index", str(child.index), "--workers", str(len(self.children)),
            "--admin-socket", str(child.socket_path),
        )
        await self._wait_ready(child)

    async def _wait_ready(self, child: WorkerProcess, timeout: float = 30.0) -> None:
        # The worker binds its admin socket last, after the proxy listener is up.
        async with asyncio.timeout(timeout):
            while True:
                if child.process is not None and child.process.returncode is not None:
                    raise RuntimeError(f"worker {child.index} exited with {child.process.returncode} while starting")
                if await self._ask(child, "GET", "/health") is not None:
                    return
                await asyncio.sleep(0.05)

    async def watch(self, child: WorkerProcess) -> None:
        """Restart a worker that dies, with a back-off, until the supervisor stops."""
        while not self.stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self.stopping:
                return
            ran_s = asyncio.get_running_loop().time() - child.started_at
            child.restarts, delay = restart_backoff(child.restarts, ran_s)
            log.error("worker %d exited with %s; restarting in %.1fs", child.index, code, delay)
            await asyncio.sleep(delay)
            if not self.stopping:
                try:
                    await self.spawn(child)
                except (RuntimeError, TimeoutError) as exc:
                    log.error("worker %d failed to restart: %s", child.index, exc)

    async def stop(self) -> None:
        """Forward SIGTERM: every worker drains its in-flight requests, then the supervisor exits."""
        if self.stopping:
            return
        self.stopping = True
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(c.process.wait() for c in self.children if c.process is not None))
        self.stopped.set()

    # ---- talking to workers over their admin sockets ----
    async def _ask(self, child: WorkerProcess, method: str, path: str) -> tuple[int, bytes] | None:
        try:
            connector = aiohttp.UnixConnector(path=str(child.socket_path))
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.request(method, "http://worker" + path, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    return r.status, await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def ask_all(self, method: str, path: str) -> list[tuple[int, bytes] | None]:
        return list(await asyncio.gather(*(self._ask(c, method, path) for c in self.children)))

    def reload_signal(self) -> None:
        asyncio.ensure_future(self.reload())

    async def reload(self) -> tuple[bool, dict]:
        answers = await self.ask_all("POST", "/reload")
        results = {}
        ok = True
        for child, answer in zip(self.children, answers):
            if answer is None:
                ok = False
                results[str(child.index)] = {"reloaded": False, "message": "worker did not answer"}
            else:
                body = orjson.loads(answer[1])
                ok = ok and bool(body.get("reloaded"))
                results[str(child.index)] = body
        return ok, results

    # ---- the public admin listener ----
    def admin_app(self) -> web.Application:
        async def health(request: web.Request) -> web.Response:
            alive = [c.process is not None and c.process.returncode is None for c in self.children]
            return _json({"status": "ok" if all(alive) else "degraded", "workers": len(alive), "alive": sum(alive)},
                         200 if all(alive) else 503)

        async def ready(request: web.Request) -> web.Response:
            # Ready while any worker serves: the port is shared (SO_REUSEPORT), so the kernel hands connections
            # to the live ones while a dead one restarts. `degraded` counts the workers that are not ready.
            answers = await self.ask_all("GET", "/ready")
            each = [a is not None and a[0] == 200 for a in answers]
            ok = any(each)
            return _json({"ready": ok, "workers": each, "degraded": each.count(False)}, 200 if ok else 503)

        async def tenants(request: web.Request) -> web.Response:
            reports = [orjson.loads(a[1]) for a in await self.ask_all("GET", "/tenants") if a is not None and a[0] == 200]
            return _json(merge_tenant_reports(reports))

        async def metrics(request: web.Request) -> web.Response:
            answers = await self.ask_all("GET", "/metrics")
            texts = {str(c.index): a[1].decode() for c, a in zip(self.children, answers) if a is not None}
            return web.Response(body=merge_metrics(texts), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def reload(request: web.Request) -> web.Response:
            ok, results = await self.reload()
            return _json({"reloaded": ok, "workers": results}, 200 if ok else 400)

        async def status(request: web.Request) -> web.Response:
            since = since_param(request)
            if isinstance(since, web.Response):
                return since
            query = "?" + urlencode({"since": repr(since)}) if "since" in request.query else ""
            answers = await self.ask_all("GET", "/status" + query)
            return _json(merge_status([orjson.loads(a[1]) for a in answers if a is not None and a[0] == 200]))

        async def shapes(request: web.Request) -> web.Response:
            limit = limit_param(request)
            if isinstance(limit, web.Response):
                return limit
            path = f"/tenants/{quote(request.match_info['name'], safe='')}/shapes"
            answers = [a for a in await self.ask_all("GET", path + (f"?limit={limit}" if limit else "")) if a is not None]
            for code, body in answers:
                if code != 200:  # an unknown tenant: every worker says the same
                    return web.Response(body=body, status=code, content_type="application/json")
            if not answers:
                return admin_error(503, "proxy_upstream_exception", "no worker answered")
            return _json(merge_shapes([orjson.loads(body) for _, body in answers], limit))

        async def inflight(request: web.Request) -> web.Response:
            params = inflight_params(request)
            if isinstance(params, web.Response):
                return params
            answers = await self.ask_all("GET", "/inflight?" + urlencode(request.query))
            reports = [orjson.loads(a[1]) for a in answers if a is not None and a[0] == 200]
            return _json(merge_inflight(reports, *params))

        async def cancel(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            answers = [a for a in await self.ask_all("POST", f"/tenants/{quote(name, safe='')}/cancel") if a is not None]
            for code, body in answers:
                if code != 200:  # an unknown tenant: every worker says the same
                    return web.Response(body=body, status=code, content_type="application/json")
            reports = [orjson.loads(body) for _, body in answers]
            return _json({"tenant": name, "cancelled": sum(r["cancelled"] for r in reports),
                          "requests": [row for r in reports for row in r["requests"]]})

        app = web.Application()
        page_routes(app)
        app.router.add_get("/inflight", inflight)
        app.router.add_post("/tenants/{name}/cancel", cancel)
        app.router.add_get("/status", status)
        app.router.add_get("/tenants/{name}/shapes", shapes)
        app.router.add_get("/health", health)
        app.router.add_get("/ready", ready)
        app.router.add_get("/tenants", tenants)
        app.router.add_get("/metrics", metrics)
        app.router.add_post("/reload", reload)
        return app


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_INDENT_2), status=status, content_type="application/json")


_SUMMED = ("in_flight", "queued", "max_concurrent", "admitted", "throttled", "would_throttle")
_SUMMED_BY_REASON = ("throttled_by_reason", "would_throttle_by_reason")


def merge_tenant_reports(reports: list[dict]) -> dict:
    """One /tenants view of all workers: counts and bucket levels summed (each worker holds a share).

    A bucket shared through Redis is one bucket: each worker's level is the shared level plus
    its own leases, so the shared part is counted once (the workers' readings of it, averaged)."""
    if not reports:
        return {"workers": 0, "tenants": {}}
    merged = orjson.loads(orjson.dumps(reports[0]))
    merged.pop("worker", None)
    merged["workers"] = len(reports)
    for report in reports[1:]:
        for name, theirs in report.get("tenants", {}).items():
            mine = merged["tenants"].setdefault(name, theirs)
            if mine is theirs:
                continue
            for key in _SUMMED:
                mine[key] = mine.get(key, 0) + theirs.get(key, 0)
            for key in _SUMMED_BY_REASON:
                counts = mine.setdefault(key, {})
                for reason, count in theirs.get(key, {}).items():
                    counts[reason] = counts.get(reason, 0) + count
            for resource, bucket in theirs.get("buckets", {}).items():
                if resource in mine.get("buckets", {}):
                    mine["buckets"][resource]["level"] += bucket["level"]
    for name, tenant in merged["tenants"].items():
        for resource, bucket in tenant.get("buckets", {}).items():
            readings = [
                r["tenants"][name]["buckets"][resource].get("shared_level")
                for r in reports if resource in r.get("tenants", {}).get(name, {}).get("buckets", {})
            ]
            if readings and None not in readings:  # every worker shares it: count the shared part once
                shared = sum(readings) / len(readings)
                bucket["level"] -= shared * (len(readings) - 1)
                bucket["shared_level"] = round(shared, 2)
            bucket["level"] = round(bucket["level"], 2)
    return merged


class _Families(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families


def merge_metrics(texts: dict[str, str]) -> bytes:
    """Every worker's exposition as one, each sample labelled with its worker (sum in PromQL)."""
    families: dict[str, Metric] = {}
    for worker, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value, sample.timestamp)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


async def _supervise(config_path: str, workers: int) -> int:
    config, _ = load_config(config_path)
    with tempfile.TemporaryDirectory(prefix="sluicegate-") as runtime:
        supervisor = Supervisor(config_path, workers, Path(runtime))
        try:
            await asyncio.gather(*(supervisor.spawn(child) for child in supervisor.children))
        except (RuntimeError, TimeoutError) as exc:
            log.error("could not start the workers: %s", exc)
            await supervisor.stop()
            return 1
        watchers = [asyncio.create_task(supervisor.watch(child)) for child in supervisor.children]
        runner = web.AppRunner(supervisor.admin_app(), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, config.admin_listen.host, config.admin_listen.port).start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else exc
            print(f"sluicegate: cannot listen on {config.admin_listen} (admin_listen): {reason}",
                  file=sys.stderr)
            await supervisor.stop()
            return 1
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, supervisor.reload_signal)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(supervisor.stop()))
        log.info("supervisor: %d workers on %s, admin on %s", workers, config.listen, config.admin_listen)
        await supervisor.stopped.wait()
        for task in watchers:
            task.cancel()
        await runner.cleanup()
    return 0


def supervise(config_path: str, workers: int) -> int:
    """Run `workers` worker processes and the admin listener until SIGTERM. Returns the exit code."""
    from .server import load_checked

    try:
        load_checked(config_path)  # the TLS files and secrets too: refuse before starting any worker
    except ConfigError as exc:
        for path, message in exc.errors:
            print(f"{path or '<file>'}: {message}", file=sys.stderr)
        return 1
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_supervise(config_path, workers))
