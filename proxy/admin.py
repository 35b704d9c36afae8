"""The admin listener: liveness, readiness, per-tenant state, Prometheus metrics, reload, and the
status page (`GET /`) with its data (`GET /status`, `GET /tenants/{name}/shapes`).

It listens on its own address (`admin_listen`), never on the proxy port, so tenants cannot
reach it through the proxy.
"""
from __future__ import annotations

import importlib.resources
import math
import time
from functools import cache
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .errors import error_body
from .runaway import SORT_KEYS

if TYPE_CHECKING:
    from .server import Worker

_JSON = "application/json"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_INDENT_2), status=status, content_type=_JSON)


#: the status page's files (package data in proxy/static/), by the path they are served at
PAGE_FILES = {"/": ("index.html", "text/html"), "/cockpit/cockpit.css": ("cockpit.css", "text/css"),
              "/cockpit/cockpit.js": ("cockpit.js", "text/javascript")}
#: the page loads nothing from anywhere else, and nothing may frame it
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def page_file(name: str) -> bytes:
    """A file of the status page, read once from the installed package."""
    return importlib.resources.files("proxy.static").joinpath(name).read_bytes()


def page_routes(app: web.Application) -> None:
    """Serve the status page's files on `app` (a worker's admin listener or the supervisor's)."""
    for path, (name, content_type) in PAGE_FILES.items():
        async def serve(request: web.Request, name: str = name, content_type: str = content_type) -> web.Response:
            return web.Response(body=page_file(name), content_type=content_type, charset="utf-8", headers=PAGE_HEADERS)

        app.router.add_get(path, serve)


def admin_error(status: int, etype: str, reason: str) -> web.Response:
    """An ES-shaped error from the admin API."""
    return web.Response(body=error_body(status, etype, reason), status=status, content_type=_JSON)


def since_param(request: web.Request) -> float | web.Response:
    """`?since=<Unix time>`: history samples after it (all without it); a 400 for anything else."""
    raw = request.query.get("since")
    if raw is None:
        return -math.inf
    try:
        since = float(raw)
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        return admin_error(400, "illegal_argument_exception", f"since must be a Unix time in seconds, got [{raw[:64]}]")
    return since


def limit_param(request: web.Request) -> int | None | web.Response:
    """`?limit=<1..1000>`: how many shapes to list (the config's `shapes.top` without it)."""
    raw = request.query.get("limit")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        return admin_error(400, "illegal_argument_exception", f"limit must be a whole number from 1 to 1000, "
                           f"got [{raw[:64]}]")
    return int(raw)


def inflight_params(request: web.Request) -> tuple[str, int] | web.Response:
    """`GET /inflight?sort=age_s|charged|estimated&limit=1..10000` (age_s and 100 without them)."""
    sort = request.query.get("sort", "age_s")
    if sort not in SORT_KEYS:
        return admin_error(400, "illegal_argument_exception", f"sort must be one of {', '.join(SORT_KEYS)}, "
                           f"got [{sort[:64]}]")
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        return admin_error(400, "illegal_argument_exception", f"limit must be a whole number from 1 to 10000, "
                           f"got [{raw[:64]}]")
    return sort, int(raw)


def merge_inflight(reports: list[dict], sort: str, limit: int) -> dict:
    """One /inflight view of several workers' (or a worker's own): sorted again, limited again."""
    rows = [row for report in reports for row in report.get("inflight", ())]
    rows.sort(key=lambda row: row[sort], reverse=True)
    return {"total": sum(report.get("total", 0) for report in reports), "sort": sort, "inflight": rows[:limit]}


def tenants_report(worker: Worker) -> dict:
    """Per tenant: plan, enforcement, bucket levels, slots, counts and learned costs; and the global gate.

    `throttled` counts every 429 the proxy gave the tenant, whatever the reason (`throttled_by_reason`);
    `would_throttle` the same for a tenant in shadow mode."""
    proxy = worker.proxy
    snap = proxy.snapshot
    totals = worker.metrics.tenant_totals()
    tenants = {}
    for name, view in snap.directory.tenants.items():
        decisions = totals.get(name, {}).get("decisions", {})
        throttled = decisions.get("throttled", {})
        would = decisions.get("would_throttle", {})
        slots = worker.admission.tenants.get(name)
        buckets = {}
        shared_level = getattr(worker.limiter, "shared_level", None)
        for resource in view.plan.resources:
            bucket = view.plan.bucket(resource)
            buckets[resource] = {
                "level": round(worker.limiter.level(name, resource), 2),
                "rate": bucket.rate,
                "burst": bucket.burst,
            }
            shared = shared_level(name, resource) if shared_level is not None else None
            if shared is not None:  # the Redis bucket all instances share, without this one's leases
                buckets[resource]["shared_level"] = round(shared, 2)
        tenants[name] = {
            "plan": view.plan_name,
            "enforce": view.enforce,
            "buckets": buckets,
            "in_flight": slots.inflight if slots else 0,
            "queued": slots.queued if slots else 0,
            "max_concurrent": slots.max_concurrent if slots else 0,
            "admitted": slots.admitted if slots else 0,
            "throttled": sum(throttled.values()),
            "throttled_by_reason": throttled,
            "would_throttle": sum(would.values()),
            "would_throttle_by_reason": would,
            "abandoned": slots.abandoned if slots else 0,
            "learned_costs": [
                {"fingerprint": f"{fp:016x}", "cost": round(cost, 2), "samples": samples}
                for fp, cost, samples in proxy.learned.for_tenant(name)
            ],
        }
    return {
        "config": {"generation": snap.generation, "hash": snap.digest},
        "worker": worker.worker_index,
        "gate": worker.admission.report(),
        "tenants": tenants,
    }


def admin_app(worker: Worker) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        ok = worker.upstream.ready and not worker.proxy.draining
        nodes = [{"url": n.url, "healthy": n.healthy and n.down_until == 0} for n in worker.upstream.nodes]
        return _json({"ready": ok, "nodes": nodes}, status=200 if ok else 503)

    async def tenants(request: web.Request) -> web.Response:
        return _json(tenants_report(worker))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=worker.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def reload(request: web.Request) -> web.Response:
        ok, message = worker.reload()
        return _json({"reloaded": ok, "message": message}, status=200 if ok else 400)

    async def status(request: web.Request) -> web.Response:
        since = since_param(request)
        if isinstance(since, web.Response):
            return since
        return _json(worker.cockpit.status(since))

    async def shapes(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in worker.proxy.snapshot.directory.tenants:
            return admin_error(404, "resource_not_found_exception", f"no tenant [{name[:128]}] in the config")
        limit = limit_param(request)
        if isinstance(limit, web.Response):
            return limit
        return _json(await worker.cockpit.shapes(name, limit))

    async def inflight(request: web.Request) -> web.Response:
        params = inflight_params(request)
        if isinstance(params, web.Response):
            return params
        sort, limit = params
        runaway = worker.proxy.runaway
        rows = runaway.listing(time.monotonic(), sort, limit, request.query.get("tenant"))
        return _json({"total": len(runaway.running), "sort": sort, "inflight": rows})

    async def cancel(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in worker.proxy.snapshot.directory.tenants:
            return admin_error(404, "resource_not_found_exception", f"no tenant [{name[:128]}] in the config")
        done = worker.proxy.runaway.cancel_tenant(name)
        return _json({"tenant": name, "cancelled": len(done), "requests": done})

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
