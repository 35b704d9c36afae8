"""Runaway control: the requests in flight at the cluster, and cancelling them.

`Runaway` keeps the traces of the requests that have been sent to a node and not yet answered in
full (flow registers a request just before it forwards it and forgets it when it ends). One
periodic sweep (every `SWEEP_S`) looks for those past their plan's limits — `max_duration_s` of
their resource class, or `max_cost_factor` × their charged cost — rather than a timer per request:
a sweep costs the hot path nothing (one dict insert and delete per request) and a limit is enforced
within SWEEP_S of its deadline, which is nothing next to limits of seconds.

Cancelling a request (`kill`) cancels the coroutine that serves it, exactly as a client that went
away does: the coroutine closes its connection to the node, and closing the HTTP connection cancels
the search task on both Elasticsearch and OpenSearch (RestCancellableNodeClient; checked against
real clusters in tests/real/test_runaway_real.py). Unlike a client that went away, a killed
request's client is still there: flow answers it with `Cancelled`, an ES-shaped error naming the
limit and the tenant. A `_bulk` cannot be cancelled by either engine; it is abandoned all the same
(the client gets its answer, and the shards finish what they had started).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time

from .errors import Refusal

log = logging.getLogger("sluicegate.runaway")

#: seconds between sweeps over the requests in flight
SWEEP_S = 0.1

#: why a request was cancelled: the `reason` label of sluicegate_cancelled_total
MAX_DURATION, MAX_COST_FACTOR, OPERATOR, SHED, CLIENT_GONE = (
    "max_duration", "max_cost_factor", "operator", "shed", "client_closed")


class Cancelled(Refusal):
    """The proxy cancelled the request at the cluster. Shaped as the engines' own cancellation
    (`task_cancelled_exception`); 504 for a limit the request ran into, 503 for an operator cancel, 429 with
    Retry-After for an overload shed (the tenant is over its share, not the cluster down: it may retry once
    its cool-down is over, and meanwhile its requests beyond its share get the same 429 at the door)."""

    etype = "task_cancelled_exception"

    def __init__(self, reason: str, why: str, status: int, retry_after: float = 0.0):
        headers = {"X-Sluicegate-Reason": why}
        if retry_after > 0.0:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        super().__init__(reason, headers)
        self.status = status
        self.label = why


def cancelled(why: str, tenant: str, trace, retry_after: float = 0.0) -> Cancelled:
    """The error for a request of `tenant` cancelled for `why` after `trace.age` seconds; `retry_after`
    (seconds) is the tenant's shedding cool-down."""
    age = time.monotonic() - trace.sent_at
    if why == MAX_DURATION:
        text = (f"tenant '{tenant}': request cancelled after {age:.1f}s, its plan's {trace.call.resource}."
                f"max_duration_s of {trace.limit_s:g}s")
        return Cancelled(text, why, 504)
    if why == MAX_COST_FACTOR:
        text = (f"tenant '{tenant}': request cancelled after {age:.1f}s, over its plan's max_cost_factor "
                f"({trace.limit_s:.1f}s for a charged cost of {trace.charged:.0f})")
        return Cancelled(text, why, 504)
    if why == OPERATOR:
        return Cancelled(f"tenant '{tenant}': request cancelled by the operator after {age:.1f}s", why, 503)
    return Cancelled(f"tenant '{tenant}': request cancelled after {age:.1f}s to relieve an overloaded cluster "
                     f"(the tenant is over its fair share); retry after {max(retry_after, 1.0):.0f}s", why, 429,
                     max(retry_after, 1.0))


class Runaway:
    """The requests in flight at the cluster, and the sweep that cancels those past their limits."""

    def __init__(self, metrics=None, sweep_s: float = SWEEP_S):
        #: trace → None, in the order they were sent (a dict as an ordered set)
        self.running: dict = {}
        self.metrics = metrics
        self.sweep_s = sweep_s
        self._task: asyncio.Task | None = None
        #: overload shedding (off unless configured): the `shedding` config section, `distress(now)` (why the
        #: cluster is in distress, or None), `weights()` (tenant → its weight at the gate), and
        #: `hold_back(tenant, seconds)` / `release(tenant)`, which close and reopen a shed tenant's admissions
        #: beyond its fair share (Admission.hold_back / release)
        self.shedding = None
        self.distress = lambda now: None
        self.weights = lambda: {}
        self.present = lambda: ()  # the tenants the gate counts in its fair shares now (Admission)
        self.share_floor = lambda: 0.0  # no share is less than this many cost units (the gate's mean request cost)
        self.hold_back = lambda tenant, seconds: None
        self.release = lambda tenant: None
        self._shed_at = -1e18
        self.shed_total = 0
        #: tenants shed while this distress lasts, and until when they are held back (the sweep's clock)
        self.held: dict[str, float] = {}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep_loop(), name="runaway-sweep")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                self.sweep(time.monotonic())
            except Exception:  # the sweep must outlive a bug in one request's bookkeeping
                log.exception("runaway sweep failed")

    def sweep(self, now: float) -> list:
        """Cancel every request past its deadline at `now` (monotonic seconds); the ones cancelled."""
        late = [trace for trace in self.running if trace.deadline and now >= trace.deadline]
        for trace in late:
            self.kill(trace, trace.limit_reason)
        shedding = self.shedding
        if shedding is not None and shedding.enabled:
            self.shed(shedding, now)
        elif self.held:
            self._release_all()
        return late

    def shed(self, shedding, now: float) -> None:
        """One shedding step at `now`: while the cluster is in distress, cancel (at most `max_per_s`) the
        costliest request of a tenant over its fair share, and hold that tenant back for `cooldown_s` so
        that what the cancel freed goes to the others, not to its own next request. Once the distress is
        over, every tenant held back is released at once."""
        why = self.distress(now)
        if why is None:
            if self.held:
                self._release_all()
            return
        for tenant, until in list(self.held.items()):
            if now >= until:  # the cool-down ran out (the admission clock closes its door by itself)
                del self.held[tenant]
        if now - self._shed_at < 1.0 / shedding.max_per_s:
            return
        victim = pick_victim(self.running, self.weights(), now, shedding.min_age_s, self.present(), self.share_floor())
        if victim is not None and self.kill(victim, SHED):
            self._shed_at = now
            self.shed_total += 1
            self.held[victim.tenant] = now + shedding.cooldown_s
            self.hold_back(victim.tenant, shedding.cooldown_s)
            log.warning("shed a request of tenant %s (charged %.0f, %.1fs at the cluster), held back for %gs: the "
                        "cluster is in distress (%s)", victim.tenant, victim.charged, now - victim.sent_at,
                        shedding.cooldown_s, why)

    def _release_all(self) -> None:
        for tenant in self.held:
            self.release(tenant)
        self.held.clear()

    def kill(self, trace, why: str) -> bool:
        """Cancel one request in flight (its coroutine, hence its node connection); False if it was
        cancelled already or is no longer in flight."""
        if trace.killed or trace not in self.running or trace.task is None:
            return False
        trace.killed = why
        trace.task.cancel()
        return True

    def of_tenant(self, tenant: str) -> list:
        return [trace for trace in self.running if trace.tenant == tenant]

    def cancel_tenant(self, tenant: str) -> list[dict]:
        """Cancel every request of `tenant` in flight (searches and _bulk alike); what was cancelled."""
        now = time.monotonic()
        done = []
        for trace in self.of_tenant(tenant):
            if self.kill(trace, OPERATOR):
                done.append(describe(trace, now))
        return done

    def listing(self, now: float, sort: str = "age", limit: int = 100, tenant: str | None = None) -> list[dict]:
        """The requests in flight, as `GET /inflight` lists them, largest `sort` first."""
        rows = [describe(trace, now) for trace in self.running if tenant is None or trace.tenant == tenant]
        rows.sort(key=lambda row: row[sort], reverse=True)  # sort is one of SORT_KEYS (checked by the caller)
        return rows[:limit]


def pick_victim(running, weights: dict[str, float], now: float, min_age_s: float, present=(),
                floor: float = 0.0):
    """The request to shed first: the costliest (charged) of those in flight for at least `min_age_s`
    whose tenant is over its fair share of the cost in flight (its weight's share of the total, among the
    tenants with requests in flight and the `present` ones: those the gate counts in its fair shares,
    seen lately though nothing of theirs is in flight this instant, as a quiet tenant's cheap searches
    rarely are); None when no tenant is over its share. No share is less than `floor` cost units (one
    average request, as at the gate): a quiet tenant's one cheap search, alone in flight while the storm
    is held back, is not over its share of almost nothing."""
    cost: dict[str, float] = {}
    for trace in running:
        if not trace.killed:
            cost[trace.tenant] = cost.get(trace.tenant, 0.0) + trace.charged
    if len(cost) == 0:
        return None
    total = sum(cost.values())
    weight_sum = sum(weights.get(tenant, 1.0) for tenant in cost)
    weight_sum += sum(weights.get(tenant, 1.0) for tenant in present if tenant not in cost)
    over = {tenant for tenant, spent in cost.items()
            if spent > max(total * weights.get(tenant, 1.0) / weight_sum, floor) * 1.0001}
    best = None
    for trace in running:
        if trace.tenant in over and not trace.killed and now - trace.sent_at >= min_age_s:
            if best is None or trace.charged > best.charged:
                best = trace
    return best


#: what /inflight may sort by
SORT_KEYS = ("age_s", "charged", "estimated")


def describe(trace, now: float) -> dict:
    """One request in flight, as the admin API shows it."""
    call = trace.call
    return {
        "tenant": trace.tenant,
        "request_id": trace.request_id.decode("latin-1"),
        "kind": call.kind if call is not None else None,
        "resource": call.resource if call is not None else None,
        "index": ",".join(call.indices) if call is not None else None,
        "fingerprint": f"{trace.fingerprint:016x}",
        "age_s": round(now - trace.sent_at, 3),
        "estimated": round(trace.estimated, 2),
        "charged": round(trace.charged, 2),
        "node": trace.node or trace.sent_to or None,
        "deadline_s": round(trace.deadline - now, 3) if trace.deadline else None,
        "cancelled": trace.killed or None,
    }
