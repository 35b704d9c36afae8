"""The admin listener: liveness, readiness, per-tenant state, Prometheus metrics, reload.

It listens on its own address (`admin_listen`), never on the proxy port, so tenants cannot
reach it through the proxy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .server import Worker

_JSON = "application/json"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_INDENT_2), status=status, content_type=_JSON)


def tenants_report(worker: Worker) -> dict:
    """Per tenant: plan, enforcement, bucket levels, slots, counts and learned costs; and the global gate."""
    proxy = worker.proxy
    snap = proxy.snapshot
    tenants = {}
    for name, view in snap.directory.tenants.items():
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
            "throttled": slots.throttled if slots else 0,
            "would_throttle": slots.would_throttle if slots else 0,
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

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/tenants", tenants)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/reload", reload)
    return app
