"""What the status page shows of one worker, and how the supervisor adds workers up.

`Cockpit` samples the worker every `STEP_S` seconds into a `History` (15 minutes of charts) and
answers the admin listener's `GET /status` (everything the page shows, in one JSON document) and
`GET /tenants/{name}/shapes` (the costliest query shapes, merged across instances through Redis
when budgets are shared). The page itself is static (`proxy/static/`): it polls these two.
Nothing here is on the request path: sampling reads counters the request path already keeps.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .history import History, merge_histories
from .redis_limiter import RedisLimiter
from .shapes import merge_reports

if TYPE_CHECKING:
    from .server import Worker

log = logging.getLogger("sluicegate.cockpit")

#: seconds between samples, on the wall clock's grid so that workers' samples line up
STEP_S = 2.0
#: samples kept: 15 minutes
POINTS = 450
#: per tenant: the fields sampled into the history
TENANT_SERIES = ("charged", "observed", "throttled", "inflight", "queued")


def iso(t: float) -> str:
    """Unix time as ISO 8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def redis_location(url: str) -> str:
    """A redis.url without its credentials, for display."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path if parts.scheme == 'unix' else ''}"


class Cockpit:
    def __init__(self, worker: Worker, step_s: float = STEP_S, points: int = POINTS):
        self.worker = worker
        self.history = History(points, step_s)
        self._previous: tuple[float, dict[str, dict]] | None = None  # (time, tenant totals) of the last sample
        self._rates: dict[str, dict[str, float]] = {}  # per tenant, the last sample's rates
        self._runner: asyncio.Task | None = None

    # ---- sampling ----
    async def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="sluicegate-cockpit")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait((self._runner,), timeout=1.0)
            self._runner = None

    async def _run(self) -> None:
        step = self.history.step_s
        last = 0.0
        while True:
            # The next point of the wall clock's grid (workers' samples share timestamps), never one
            # already sampled: a timer that fires a little early must not sample a point twice.
            now = time.time()
            target = max((now // step + 1) * step, last + step)
            await asyncio.sleep(target - now)
            last = target
            try:
                self.sample(target)
            except Exception:  # noqa: BLE001 - a chart gap, never a dead sampler
                log.exception("status page sample failed")

    def sample(self, t: float) -> None:
        """Take one sample at Unix time `t`: per tenant cost/s charged and observed, throttles/s,
        in flight and queued; the gate's in flight, in-flight cost, limit and capacity."""
        worker = self.worker
        totals = worker.metrics.tenant_totals()
        values: dict[tuple[str, ...], float] = {}
        rates: dict[str, dict[str, float]] = {}
        previous = self._previous
        tenants = worker.proxy.snapshot.directory.tenants
        for name in tenants:
            slots = worker.admission.tenants.get(name)
            mine = totals.get(name)
            throttled = _throttled(mine)
            rate = {"charged": 0.0, "observed": 0.0, "throttled": 0.0}
            if previous is not None and t > previous[0]:
                before = previous[1].get(name)
                dt = t - previous[0]
                rate["charged"] = max(0.0, ((mine or {}).get("charged", 0.0) - (before or {}).get("charged", 0.0)) / dt)
                rate["observed"] = max(0.0, ((mine or {}).get("observed", 0.0) - (before or {}).get("observed", 0.0)) / dt)
                rate["throttled"] = max(0.0, (throttled - _throttled(before)) / dt)
            rates[name] = rate
            for field, value in rate.items():
                values[("tenant", name, field)] = value
            values[("tenant", name, "inflight")] = float(slots.inflight) if slots else 0.0
            values[("tenant", name, "queued")] = float(slots.queued) if slots else 0.0
        gate = worker.admission.gate
        values[("gate", "inflight")] = float(gate.inflight)
        values[("gate", "inflight_cost")] = float(gate.inflight_cost)
        values[("gate", "limit")] = float(gate.limit)
        values[("gate", "capacity")] = float(gate.capacity_cost or 0.0)
        self.history.add(t, values)
        self.history.forget(keep=[k for k in values if k[0] == "tenant"], drop_prefix=("tenant",))
        self._previous = (t, totals)
        self._rates = rates

    # ---- reports ----
    def status(self, since: float) -> dict:
        """Everything the status page shows, with the history samples taken after `since` (Unix time)."""
        worker = self.worker
        snap = worker.proxy.snapshot
        totals = worker.metrics.tenant_totals()
        tenants = {}
        for name, view in snap.directory.tenants.items():
            slots = worker.admission.tenants.get(name)
            mine = totals.get(name, {})
            decisions = mine.get("decisions", {})
            buckets = {}
            for resource in view.plan.resources:
                bucket = view.plan.bucket(resource)
                buckets[resource] = {"level": round(worker.limiter.level(name, resource), 2), "burst": bucket.burst,
                                     "rate": bucket.rate}
            rate = self._rates.get(name, {})
            tenants[name] = {
                "plan": view.plan_name,
                "enforce": view.enforce,
                "buckets": buckets,
                "charged_per_s": round(rate.get("charged", 0.0), 2),
                "observed_per_s": round(rate.get("observed", 0.0), 2),
                "charged_total": round(mine.get("charged", 0.0), 2),
                "observed_total": round(mine.get("observed", 0.0), 2),
                "in_flight": slots.inflight if slots else 0,
                "queued": slots.queued if slots else 0,
                "admitted": sum(decisions.get("admitted", {}).values()),
                "throttled": decisions.get("throttled", {}),
                "would_throttle": decisions.get("would_throttle", {}),
            }
        config = snap.config
        limiter = worker.limiter
        if isinstance(limiter, RedisLimiter) and config.redis is not None:
            redis = {"mode": "shared" if limiter.shared else "fallback", "live_instances": limiter.live_instances,
                     "location": redis_location(config.redis.url)}
        else:
            redis = {"mode": "local"}
        now = time.monotonic()
        return {
            "time": iso(time.time()),
            "workers": 1,
            "started": iso(worker.started_at),
            "config": {"generation": snap.generation, "hash": snap.digest, "loaded": iso(worker.config_loaded_at),
                       "path": str(worker.config_path)},
            "listen": str(worker.running_listen),
            "redis": redis,
            "upstream": [{"url": node.url, "healthy": node.usable(now), "failures": node.failures}
                         for node in worker.upstream.nodes],
            "gate": worker.admission.report(),
            "tenants": tenants,
            "history": self.history.since(since),
        }

    async def shapes(self, tenant: str, limit: int | None) -> dict:
        """The tenant's costliest shapes in the window: this instance's, plus the others' through Redis
        (`scope` says which: "shared", or "local" with the reason Redis was not read)."""
        worker = self.worker
        learned = worker.proxy.learned
        extra, scope, note = [], "local", None
        sharer = worker.shape_sharer
        if sharer is not None:
            try:
                extra = await sharer.others(tenant)
                scope = "shared"
            except Exception as exc:  # noqa: BLE001 - the page still shows this instance's shapes
                note = f"other instances not read: {type(exc).__name__}"
        report = worker.proxy.shapes.report(tenant, time.monotonic(), limit,
                                            lambda fp: learned.get(tenant, fp), extra)
        report["scope"] = scope
        if note:
            report["note"] = note
        return report


def _throttled(totals: dict | None) -> float:
    if not totals:
        return 0.0
    decisions = totals.get("decisions", {})
    return float(sum(decisions.get("throttled", {}).values()) + sum(decisions.get("would_throttle", {}).values()))


# ---- the supervisor's view of several workers ----
_SUMMED = ("charged_per_s", "observed_per_s", "charged_total", "observed_total", "in_flight", "queued", "admitted")
_GATE_SUMMED = ("limit", "capacity", "inflight", "inflight_cost", "overdue_cost", "queued", "max_queue")


def merge_status(reports: list[dict]) -> dict:
    """One status from several workers': tenants, gate and history added up (each worker holds a share);
    a node is healthy when every worker finds it so; config, Redis and the rest from the first worker."""
    if not reports:
        return {"workers": 0, "tenants": {}, "upstream": [], "history": {"t": [], "series": []}}
    merged = dict(reports[0])
    merged["workers"] = len(reports)
    tenants: dict[str, dict] = {}
    for report in reports:
        for name, theirs in report.get("tenants", {}).items():
            mine = tenants.get(name)
            if mine is None:
                tenants[name] = {**theirs, "buckets": {r: dict(b) for r, b in theirs.get("buckets", {}).items()},
                                 "throttled": dict(theirs.get("throttled", {})),
                                 "would_throttle": dict(theirs.get("would_throttle", {}))}
                continue
            for key in _SUMMED:
                mine[key] = round(mine.get(key, 0) + theirs.get(key, 0), 2)
            for key in ("throttled", "would_throttle"):
                for reason, count in theirs.get(key, {}).items():
                    mine[key][reason] = mine[key].get(reason, 0) + count
            for resource, bucket in theirs.get("buckets", {}).items():
                if resource in mine["buckets"]:  # each worker holds its share of the bucket
                    mine["buckets"][resource]["level"] = round(mine["buckets"][resource]["level"] + bucket["level"], 2)
    merged["tenants"] = tenants
    gate = dict(reports[0].get("gate", {}))
    for report in reports[1:]:
        for key in _GATE_SUMMED:
            if isinstance(gate.get(key), (int, float)) and isinstance(report.get("gate", {}).get(key), (int, float)):
                gate[key] = round(gate[key] + report["gate"][key], 2)
    merged["gate"] = gate
    nodes: dict[str, dict] = {}
    for report in reports:
        for node in report.get("upstream", ()):
            seen = nodes.setdefault(node["url"], dict(node))
            if seen is not node:
                seen["healthy"] = seen["healthy"] and node["healthy"]
    merged["upstream"] = list(nodes.values())
    merged["history"] = merge_histories([r.get("history", {}) for r in reports])
    return merged


def merge_shapes(reports: list[dict], limit: int | None = None) -> dict:
    """One shapes report from several workers'. Through Redis each worker's already holds every
    instance's shapes, so the first is the answer; without Redis each saw its own requests: add up."""
    if reports and all(r.get("scope") == "shared" for r in reports):
        return reports[0]
    merged = merge_reports(reports, limit)
    merged["scope"] = "local"
    merged["workers"] = len(reports)
    return merged
