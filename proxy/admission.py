"""Admission: tenant slots, the global gate in front of the cluster, and the fair queue between them.

    request ─► tenant slot (max_concurrent)  ─┐
               and the gate (limit, capacity) ├─► admitted: a Ticket, given back with `leave`
           or a place in the tenant's queue  ─┘   (or 429: concurrency | overload | queue_timeout | shed)

A request is admitted when its tenant has a free slot *and* the gate has room. The gate has two
limits, in the cluster's terms:

* **limit** — requests in flight. It adapts to upstream latency, to upstream 429/503s and timeouts
  (`GradientLimit`, or `AimdLimit`), is capped by what the cluster's search thread pools can run
  at once (threads ÷ threads a request holds), and shrinks in proportion when data nodes drop out.
* **capacity** — cost units in flight. A cost unit is one millisecond of one search thread, so
  the cluster's threads can hold `threads × horizon` units in flight without queueing, where the
  horizon is how long admitted cost stays in flight (cost-weighted upstream latency; Little's law).

**Headroom.** A tenant over its fair share (its plan weight's part of the gate, judged in cost on
all it asks for: in flight and queued) is admitted only while the gate is within
`capacity_headroom` of both limits; the rest is kept for tenants under their share, so a quiet
tenant's cheap request never waits behind a storm, at the gate or in the cluster's thread pools.

**Fan-out.** A search holds a search thread per shard it runs on, all at once, however little its cost
says it holds on average (threads per request is measured on the mix, mostly cheap requests whose
round trip is more than their shard time). So the over-share room in requests is also at most the live
threads ÷ the widest fan-out seen lately (shards per search, from responses; it fades over
`FAN_OUT_MEMORY_S`), × headroom: a storm's first wave, its cost not yet learned, cannot take every
thread and make a quiet tenant's shards queue in the nodes.

**A share is at least one request.** On a small cluster shared by many tenants, a weighted share of
the gate can be less than one cheap search (14 tenants on 6 threads: ~70 units in flight each,
against 40-160 for a term query on a busy node). Then every tenant is over its share, the kept
room serves nobody, and the quiet tenants wait behind the storm for the over-share room. So a tenant
asking for no more than one average request (`Gate.mean_cost`: Σ cost ÷ requests, completed over the
last ~`MEMORY_S`) is within its share whatever the weights say; a storming tenant's backlog, or one
of its searches alone, is not (they cost many times the average).

**Overdue requests.** A request counts at the gate as its estimated (or learned) cost. One that stays
in flight well past what that cost implies (elapsed × threads per request, over `OVERDUE_SLACK` × its
count) was under-priced, and the cluster is still spending on it: it counts as what it has spent so
far, in the over-share check, so no further over-share work goes in until it drains. Re-evaluated at
most every `OVERDUE_TICK_S`, whenever a request arrives or the queue is pumped.

**Contention.** The headroom is `capacity_headroom` (0.8) while a busy tenant is alone, so it may use
most of the cluster. It drops to `capacity_headroom_contended` (0.5) as soon as a tenant over its
share asks while another tenant has been seen under its share within `CONTENDED_HOLD_S` — before
that quiet tenant ever has to wait, so a storm's first wave already leaves it room — and also when
a tenant under its share does have to wait while others hold over-share room. It stays there while
either keeps happening, and for `CONTENDED_HOLD_S` after: over-share work drains down to the smaller
room as it completes, and the quiet tenants' next bursts find the threads free.

**Fair order.** Waiting requests are released in start-time fair queueing order across tenants:
each tenant's next request carries the tag max(virtual time, the tenant's last finish tag), a
released request advances its tenant's finish tag by cost / plan weight, and the smallest tag goes
first. A tenant's own queue stays FIFO. A storming tenant's tags run far ahead, so anyone else's
next request is ahead of its backlog.

**Held back after a shed.** When overload shedding (proxy/runaway.py) cancels a request of a tenant over
its share, `hold_back` refuses that tenant's requests beyond its share (429 `shed`) until a deadline, and
its queue with them if it is over its share then: the threads the cancel freed go to the others, not to
the tenant's own retry. Requests within its share still go; `release` ends the hold when the distress does.

The logic is pure: every method that needs the time takes `now` (seconds, monotonic). `enter` is
the only coroutine; it waits on a future that the pure part resolves.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import AdmissionConfig, Config
from .errors import Throttled
from .tenants import TenantView

#: labels of `sluicegate_gate_reason`: why the gate's limit is what it is
REASONS = (
    "capacity",  # the search thread pools: as many requests as they can run at once
    "data_nodes",  # data nodes (search threads) dropped out; limit shrunk in proportion
    "search_queue",  # the nodes' search queues filled up; shrunk in proportion
    "search_rejections",  # the nodes rejected search tasks; shrunk in proportion
    "upstream_errors",  # upstream 429/503s or timeouts
    "latency",  # upstream latency rose over its baseline (or target)
    "min_limit",
    "max_limit",
    "no_cluster_stats",  # thread pools not known (yet): the adaptive limit alone
    "disabled",  # admission.enabled is false: tenant slots only
)

#: horizon (ms) assumed before any latency was measured: capacity per second, as a budget in flight
DEFAULT_HORIZON_MS = 1000.0
#: the horizon never counts as shorter than this (ms): cost below this much per request is the count
#: limit's business, and traffic of cheap requests alone does not make the first expensive one look huge
HORIZON_FLOOR_MS = 100.0
#: smallest cost a request is charged in the fair queue's tags, so zero-cost requests cannot flood it
MIN_TAG_COST = 1.0
#: the horizon and threads per request are averages over about this many recent seconds
MEMORY_S = 2.0
#: a latency window closes after at least this many completions (or the most in flight in it: one round trip) ...
WINDOW_MIN_SAMPLES = 10
#: ... and at least this long (seconds), and at least one horizon, so it holds a fair mix of the requests
WINDOW_MIN_S = 0.1
#: upstream 429/503/timeouts shrink the limit by this factor, at most once per window
ERROR_BACKOFF = 0.9
#: latency may rise to this multiple of its no-load baseline before the limit shrinks
LATENCY_TOLERANCE = 1.5
#: a pressure signal shrinks the limit at most this much at once
MAX_BACKOFF = 0.5
#: a reason from a pressure signal stays on display this long after it last fired (seconds)
REASON_HOLD_S = 5.0
#: a request in flight counts as what it has spent once that is over this multiple of what it was counted as ...
OVERDUE_SLACK = 2.0
#: ... and it has been in flight this long (seconds): a cheap request's round trip is never overdue
OVERDUE_MIN_S = 0.05
#: what in-flight requests have spent is re-evaluated at most this often (seconds)
OVERDUE_TICK_S = 0.02
#: the contended headroom holds this long (seconds) after a tenant under its share last had to wait:
#: longer than an expensive request's round trip, so the room freed is still free for the next burst
CONTENDED_HOLD_S = 5.0
#: a tenant counts in the fair shares for this long (seconds) after its last request, not only while it
#: has one in flight: a quiet tenant's cheap searches are rarely in flight at the instant a storm asks
PRESENCE_S = 5.0
#: ... renewed at most this often per tenant (seconds), so presence costs nothing per request
PRESENCE_REFRESH_S = 0.5
#: the widest fan-out seen (shards a search runs on at once) fades back toward narrower ones over this long (s)
FAN_OUT_MEMORY_S = 60.0


#: "not computed yet": a derived value the caller did not pass (None is a value: capacity not known)
UNKNOWN: object = type("Unknown", (), {"__repr__": lambda self: "UNKNOWN", "__slots__": ()})()


# ============================================================================================
# Adaptive limit algorithms: pure, one update per latency window
# ============================================================================================


class GradientLimit:
    """The default: a latency gradient (after Netflix's Gradient2), smoothed to a steady fixed point.

    Per window: gradient = clamp(reference / latency, 0.5, 1.0), where the reference is
    `tolerance` × the baseline latency (or the configured target); then
    limit ← limit + smoothing × (limit × gradient + √limit − limit).
    Latency within the reference grows the limit by 0.2·√limit per window (only while the limit is
    actually used: an idle proxy learns nothing about the cluster); latency over it shrinks the
    limit by at most 10 % per window. The √limit term is the queue the limit allows for, so the
    fixed point is smooth instead of a saw-tooth.
    """

    name = "gradient"
    SMOOTHING = 0.2
    MIN_GRADIENT = 0.5

    def update(self, limit: float, latency: float, reference: float, app_limited: bool) -> float:
        gradient = max(self.MIN_GRADIENT, min(1.0, reference / latency)) if latency > 0 else 1.0
        if gradient >= 1.0 and app_limited:
            return limit
        target = limit * gradient + math.sqrt(limit)
        return limit + self.SMOOTHING * (target - limit)


class AimdLimit:
    """Additive increase (+1 per window while latency is within the reference and the limit is used),
    multiplicative decrease (× 0.9 when latency is over it): a saw-tooth between 0.9× and the top."""

    name = "aimd"
    BACKOFF = 0.9

    def update(self, limit: float, latency: float, reference: float, app_limited: bool) -> float:
        if latency > reference:
            return limit * self.BACKOFF
        return limit if app_limited else limit + 1.0


ALGORITHMS: dict[str, type[GradientLimit] | type[AimdLimit]] = {"gradient": GradientLimit, "aimd": AimdLimit}


# ============================================================================================
# What the cluster-health poller tells the gate
# ============================================================================================


@dataclass(frozen=True, slots=True)
class ClusterReading:
    """One poll of _cluster/health and _nodes/stats/thread_pool (see proxy/clusterhealth.py).

    `search_threads` is None when the thread pools could not be read (then only node counts are used).
    `rejected` and `completed` count search tasks since the previous reading.
    """

    data_nodes: int
    search_threads: int | None
    search_queue: int = 0
    search_active: int = 0
    rejected: int = 0
    completed: int = 0


# ============================================================================================
# The gate
# ============================================================================================


class Gate:
    """The global gate: requests (limit) and cost units (capacity) in flight at the cluster.

    Counts are this process's: `share` (1 / workers or instances) scales the cluster's threads and
    the configured limits. Everything is in requests, cost units, milliseconds (latencies) and
    seconds (`now`).
    """

    __slots__ = (
        "enabled", "headroom", "base_headroom", "contended_headroom", "contended_until", "min_limit", "max_limit",
        "max_queue", "poll_s", "target_ms", "share", "algorithm", "adaptive", "inflight", "inflight_cost",
        "reserve_inflight", "reserve_cost", "overdue_cost", "queued", "data_nodes", "data_nodes_max", "threads",
        "threads_max", "fan_out", "_fan_out_at", "_lat_cost", "_cost", "_count", "_observed", "_lat_obs", "_faded_at",
        "baseline", "_baseline_peak",
        "_w_n", "_w_lat", "_w_cost", "_w_peak", "_w_start", "_w_backed_off", "_pressure", "_pressure_at", "backoffs",
    )

    def __init__(self) -> None:
        self.enabled = True
        self.headroom = 0.8  # in force now: one of the two below
        self.base_headroom = 0.8
        self.contended_headroom = 0.8
        self.contended_until: float | None = None  # while set, `headroom` is the contended one
        self.min_limit = 4.0
        self.max_limit = 512.0
        self.max_queue = 10_000
        self.poll_s = 2.0
        self.target_ms: float | None = None
        self.share = 1.0
        self.algorithm: GradientLimit | AimdLimit = GradientLimit()
        # The algorithm's limit before the node-loss ratio (requests). Until the thread pools are known
        # it starts open (max_limit) and closes on latency and errors; the first thread-pool reading
        # sets it to what the pools can run.
        self.adaptive = math.inf
        self.inflight = 0
        self.inflight_cost = 0.0  # cost units counted at the gate (each at most the whole budget)
        self.reserve_inflight = 0  # ... of which admitted into the room kept for tenants under their share
        self.reserve_cost = 0.0
        # cost units in-flight requests have spent beyond what they are counted as (kept by Admission)
        self.overdue_cost = 0.0
        self.queued = 0  # kept by Admission
        # what the cluster told us (whole cluster, not yet × share)
        self.data_nodes = 0
        self.data_nodes_max = 0
        self.threads = 0  # live search threads of data nodes; 0 = not known
        self.threads_max = 0
        # the widest fan-out seen lately: search threads one request can hold at once (its shards)
        self.fan_out = 1.0
        self._fan_out_at = 0.0
        # learned from completions: sums that fade with time (MEMORY_S), not with the number of samples,
        # so a burst of cheap requests does not wash out what the expensive ones say
        self._lat_cost = 0.0  # Σ cost × latency_ms
        self._cost = 0.0  # Σ cost
        self._count = 0.0  # Σ 1 (completions)
        self._observed = 0.0  # Σ observed cost
        self._lat_obs = 0.0  # Σ latency_ms of requests with an observed cost
        self._faded_at = 0.0
        self.baseline: float | None = None  # latency reference of the gradient (ms per cost unit)
        self._baseline_peak = 0  # the in-flight count the baseline was measured at
        # the current latency window
        self._w_n = 0
        self._w_lat = 0.0
        self._w_cost = 0.0
        self._w_peak = 0
        self._w_start: float | None = None
        self._w_backed_off = False
        # why the limit is what it is
        self._pressure = ""
        self._pressure_at = -math.inf
        self.backoffs = 0

    # ---- configuration ----
    def configure(self, admission: AdmissionConfig, share: float) -> None:
        self.enabled = admission.enabled
        self.base_headroom = admission.capacity_headroom
        contended = admission.capacity_headroom_contended
        self.contended_headroom = self.base_headroom if contended is None else min(contended, self.base_headroom)
        self.headroom = self.base_headroom if self.contended_until is None else self.contended_headroom
        self.share = share
        self.min_limit = max(1.0, admission.min_limit * share)
        self.max_limit = max(self.min_limit, admission.max_limit * share)
        self.max_queue = max(0, round(admission.max_queue * share))
        self.poll_s = admission.health_poll_s
        self.target_ms = admission.target_latency_ms
        if self.algorithm.name != admission.algorithm:
            self.algorithm = ALGORITHMS[admission.algorithm]()
        self.adaptive = self._clamp(self.adaptive)

    # ---- what the limits are now ----
    @property
    def horizon_ms(self) -> float:
        """How long admitted cost stays in flight: upstream latency weighted by cost (ms)."""
        if self._cost > 0:
            return max(HORIZON_FLOOR_MS, self._lat_cost / self._cost)
        return max(HORIZON_FLOOR_MS, self.target_ms or DEFAULT_HORIZON_MS)

    @property
    def mean_cost(self) -> float:
        """Cost units of an average request completed lately (0 before any)."""
        return self._cost / self._count if self._count > 0 else 0.0

    @property
    def threads_per_request(self) -> float:
        """Search threads a request in flight holds on average: Σ observed cost / Σ latency (1 until measured)."""
        if self._lat_obs > 0 and self._observed > 0:
            return min(64.0, max(0.05, self._observed / self._lat_obs))
        return 1.0

    @property
    def node_ratio(self) -> float:
        """Live capacity as a fraction of the most seen: search threads, or data nodes without thread stats."""
        if self.threads_max:
            return self.threads / self.threads_max
        if self.data_nodes_max:
            return self.data_nodes / self.data_nodes_max
        return 1.0

    @property
    def ceiling(self) -> float:
        """Requests the healthy cluster's search pools can run at once (this process's share)."""
        if not self.threads_max:
            return self.max_limit
        return self.threads_max * self.share / self.threads_per_request

    @property
    def live_ceiling(self) -> float:
        """Requests the live search pools can run at once (this process's share)."""
        return self.ceiling * self.node_ratio if self.threads_max else self.limit

    @property
    def limit(self) -> float:
        """Requests in flight the gate allows now: the adaptive limit, × the live node ratio."""
        return max(self.min_limit, self.adaptive * self.node_ratio)

    @property
    def over_share_limit(self) -> float:
        """Requests in flight, over-share ones included, below which an over-share request may go: the
        limit, and no more than the live search threads hold requests of the widest fan-out seen lately
        (a search holds a thread per shard at once, however little its cost says it holds on average)."""
        limit = self.limit
        if self.threads:
            limit = min(limit, self.threads * self.share / self.fan_out)
        return limit * self.headroom

    @property
    def capacity_cost(self) -> float | None:
        """Cost units the live search threads hold in flight without queueing (None: threads unknown)."""
        if not self.threads:
            return None
        return self.threads * self.share * self.horizon_ms

    @property
    def capacity_per_s(self) -> float | None:
        """Cost units per second the live search threads can do (1 unit = 1 thread-ms)."""
        return self.threads * self.share * 1000.0 if self.threads else None

    def reason(self, now: float) -> str:
        if not self.enabled:
            return "disabled"
        if self.node_ratio < 1.0:
            return "data_nodes"
        if self._pressure and now - self._pressure_at < REASON_HOLD_S:
            return self._pressure
        if not self.threads_max:
            return "no_cluster_stats"
        if self.adaptive >= 0.95 * self.ceiling:
            return "max_limit" if self.ceiling >= self.max_limit else "capacity"
        if self.adaptive <= self.min_limit + 1e-9:
            return "min_limit"
        return "latency"

    def detail(self, now: float) -> str:
        """The reason in words, for /tenants."""
        why = self.reason(now)
        if why == "data_nodes":
            return (f"{self.data_nodes} of {self.data_nodes_max} data nodes, {self.threads} of {self.threads_max} "
                    f"search threads: limit × {self.node_ratio:.2f}")
        if why == "capacity":
            return (f"{self.threads} search threads ÷ {self.threads_per_request:.2f} threads per request"
                    + (f" × share {self.share:.2f}" if self.share != 1.0 else ""))
        return why.replace("_", " ")

    def contend(self, until: float) -> bool:
        """The contended headroom until `until` (seconds) at least: CONTENDED_HOLD_S after a tenant under
        its share waited, or was last seen. True if that made the room kept for such tenants larger."""
        if self.contended_until is None or until > self.contended_until:
            self.contended_until = until
        narrower = self.headroom > self.contended_headroom
        self.headroom = self.contended_headroom
        return narrower

    def uncontend(self, now: float) -> None:
        """Back to `capacity_headroom` once CONTENDED_HOLD_S passed with nobody under their share waiting."""
        if self.contended_until is not None and now >= self.contended_until:
            self.contended_until = None
            self.headroom = self.base_headroom

    # ---- admission checks ----
    def counted(self, cost: float, capacity: float | None | object = UNKNOWN) -> float:
        """The cost a request is counted as in flight: a request above the whole over-share budget counts
        as that budget, so it is admitted alone among the over-share ones and never deadlocks.
        `capacity`: `capacity_cost` if the caller has it already."""
        if capacity is UNKNOWN:
            capacity = self.capacity_cost
        if capacity is None:
            return cost
        return min(cost, capacity * self.headroom)  # type: ignore[operator]

    def fits(self, cost: float, reserve: bool, capacity: float | None | object = UNKNOWN,
             limit: float | object = UNKNOWN) -> bool:
        """Room for one more request of `cost` units. `reserve`: the tenant is under its fair share and
        may use the headroom; otherwise only `capacity_headroom` of the limit and capacity. `capacity`
        and `limit`: `capacity_cost` and `limit` if the caller has them already (once per request)."""
        if not self.enabled:
            return True
        headroom = self.headroom
        if limit is UNKNOWN:
            limit = self.limit
        if capacity is UNKNOWN:
            capacity = self.capacity_cost
        counted = self.counted(cost, capacity)
        if not reserve:
            threads = self.threads  # over-share requests hold no more than headroom of the threads (fan-out)
            over_limit = min(limit, threads * self.share / self.fan_out) if threads else limit
            if self.inflight + 1 > max(1.0, math.floor(over_limit * headroom + 1e-9)):
                return False
            if capacity is None or self.inflight_cost <= 0.0:
                return True
            return self.inflight_cost + self.overdue_cost + counted <= capacity * headroom + 1e-9
        # The room kept back is measured against what the pools can run, and is theirs even while
        # over-share requests admitted before the limit shrank are still in flight — within what the
        # pools can run, which nobody exceeds.
        pools = max(limit, self.live_ceiling)
        kept = (1.0 - headroom) * pools
        if self.inflight + 1 > max(1.0, math.floor(limit * headroom + kept + 1e-9)) and (
                self.reserve_inflight + 1 > math.floor(kept + 1e-9) or self.inflight + 1 > math.floor(pools + 1e-9)):
            return False
        if capacity is None or self.inflight_cost <= 0.0:
            return True
        # Over-share cost counts here as at most its room: what went in when the room was wider (or under
        # share, since moved out of the kept room; or before the capacity shrank) does not take the rest.
        over = self.inflight_cost - self.reserve_cost
        return min(over, capacity * headroom) + self.reserve_cost + counted <= capacity + 1e-9

    def take(self, counted: float, reserve: bool) -> None:
        self.inflight += 1
        self.inflight_cost += counted
        if reserve:
            self.reserve_inflight += 1
            self.reserve_cost += counted
        if self.inflight > self._w_peak:
            self._w_peak = self.inflight

    def give_back(self, counted: float, reserve: bool) -> None:
        self.inflight -= 1
        self.inflight_cost = self.inflight_cost - counted if self.inflight else 0.0  # no float dust at idle
        if reserve:
            self.leave_reserve(1, counted)

    def leave_reserve(self, requests: int, counted: float) -> None:
        """Requests stop counting in the room kept for tenants under their share (they left, or their
        tenant is over its share now and they count with everyone else's)."""
        self.reserve_inflight -= requests
        self.reserve_cost = self.reserve_cost - counted if self.reserve_inflight else 0.0

    # ---- learning ----
    def observe(self, now: float, cost: float, status: int, upstream_s: float, observed: float | None) -> None:
        """One completed request: its upstream status, time to the response head (s), observed cost."""
        if status in (429, 503):
            self._error_backoff(now)
            return
        if status <= 0 or status >= 500 or upstream_s <= 0.0:
            return  # never answered (cancelled, unreachable) or failed: no latency to learn from
        latency_ms = upstream_s * 1000.0
        cost = max(cost, 0.01)
        lat_cost, total, count, spent, lat_obs = self._lat_cost, self._cost, self._count, self._observed, self._lat_obs
        if now > self._faded_at:
            fade = math.exp((self._faded_at - now) / MEMORY_S)
            lat_cost *= fade
            total *= fade
            count *= fade
            spent *= fade
            lat_obs *= fade
            self._faded_at = now
        self._lat_cost = lat_cost + cost * latency_ms
        self._cost = total + cost
        self._count = count + 1.0
        if observed is not None and observed > 0:
            spent += observed
            lat_obs += latency_ms
            shards = getattr(observed, "shards", 0)  # an Observed search cost knows its fan-out
            if shards:
                self._note_fan_out(shards, now)
        self._observed, self._lat_obs = spent, lat_obs
        if self._w_start is None:
            self._w_start = now
        n = self._w_n = self._w_n + 1
        self._w_lat += latency_ms
        self._w_cost += cost
        if (n >= max(WINDOW_MIN_SAMPLES, self._w_peak)
                and now - self._w_start >= max(WINDOW_MIN_S, self.horizon_ms / 1000.0)):
            self._close_window(now)

    def _note_fan_out(self, shards: int, now: float) -> None:
        """A search ran on `shards` shards: the widest fan-out jumps up to it, or fades toward it."""
        fade = math.exp(min(0.0, self._fan_out_at - now) / FAN_OUT_MEMORY_S)
        self.fan_out = max(float(shards), 1.0 + (self.fan_out - 1.0) * fade)
        self._fan_out_at = now

    def _close_window(self, now: float) -> None:
        if self.target_ms is not None:
            latency, reference = self._w_lat / self._w_n, self.target_ms
        else:
            # ms per cost unit: a shift from cheap to expensive queries is not mistaken for congestion
            latency = self._w_lat / self._w_cost
        app_limited = self._w_peak + 1 < self.limit * self.headroom  # the limit never bound: it says nothing
        if self.target_ms is None:
            # The baseline is the latency at low load. It falls at once; it rises only when latency went
            # up at no more concurrency than it was measured at (the cluster itself got slower), never
            # when it rose with the concurrency this gate let through (that is the queue to prevent).
            peak = self._w_peak
            if self.baseline is None or latency < self.baseline:
                self.baseline, self._baseline_peak = latency, max(peak, self._baseline_peak)
            elif peak <= self._baseline_peak:
                self.baseline += 0.1 * (latency - self.baseline)
            reference = LATENCY_TOLERANCE * self.baseline
        before = self.adaptive
        self.adaptive = self._clamp(self.algorithm.update(self.adaptive, latency, reference, app_limited))
        if self.adaptive < before - 1e-9 and latency > reference:
            self._note("latency", now)
        self._w_n, self._w_lat, self._w_cost, self._w_peak = 0, 0.0, 0.0, self.inflight
        self._w_start, self._w_backed_off = now, False

    def upstream_error(self, kind: str, now: float) -> None:
        """The upstream layer saw a failure (kind "timeout", "unreachable", "protocol")."""
        if kind == "timeout":
            self._error_backoff(now)

    def _error_backoff(self, now: float) -> None:
        if not self._w_backed_off:  # one overload shows as many errors at once: shrink once per window
            self._w_backed_off = True
            self._backoff(ERROR_BACKOFF, "upstream_errors", now)

    def _backoff(self, factor: float, why: str, now: float) -> None:
        self.adaptive = self._clamp(self.adaptive * max(MAX_BACKOFF, factor))
        self.backoffs += 1
        self._note(why, now)

    def _note(self, why: str, now: float) -> None:
        self._pressure, self._pressure_at = why, now

    def observe_cluster(self, reading: ClusterReading, now: float) -> None:
        """A cluster-health poll: capacity from the thread pools, pressure from queues and rejections."""
        first = not self.threads_max and not self.data_nodes_max
        self.data_nodes = reading.data_nodes
        self.data_nodes_max = max(self.data_nodes_max, reading.data_nodes)
        if reading.search_threads is not None:
            self.threads = reading.search_threads
            self.threads_max = max(self.threads_max, reading.search_threads)
        if first and self.threads_max:
            self.adaptive = self._clamp(self.ceiling)  # start at what the pools can run
        pressure = False
        threads = self.threads
        if threads and reading.search_queue >= max(2, 0.1 * threads):
            self._backoff(threads / (threads + reading.search_queue), "search_queue", now)
            pressure = True
        if reading.rejected > 0:
            done = reading.completed + reading.rejected
            self._backoff(reading.completed / done if done else MAX_BACKOFF, "search_rejections", now)
            pressure = True
        if not pressure and self.inflight == 0 and self.queued == 0 and self.threads_max:
            self.adaptive = self._clamp(self.ceiling)  # idle and healthy: back to full capacity
        else:
            self.adaptive = self._clamp(self.adaptive)  # the ceiling may have moved

    def _clamp(self, limit: float) -> float:
        return max(self.min_limit, min(limit, self.max_limit, max(self.min_limit, self.ceiling)))


# ============================================================================================
# Tenants, tickets, waiters
# ============================================================================================


class TenantSlots:
    """One tenant's slots and FIFO queue, and its place in the fair queue."""

    __slots__ = ("name", "max_concurrent", "max_queue", "max_wait_s", "weight", "inflight", "inflight_cost",
                 "queued_cost", "reserve_inflight", "reserve_cost", "reserve_epoch", "waiters", "finish", "active",
                 "present_until", "admitted", "throttled", "would_throttle", "abandoned", "shed_until", "shed")

    def __init__(self, name: str) -> None:
        self.name = name
        self.max_concurrent = 1
        self.max_queue = 0
        self.max_wait_s = 0.0
        self.weight = 1.0
        self.inflight = 0
        self.inflight_cost = 0.0  # charged cost units in flight, for the fair-share test
        self.queued_cost = 0.0  # ... and waiting: a tenant's share is judged on all it asks for
        # requests admitted while the tenant was under its share, still counted in the room kept for such
        # tenants; a new epoch moves them all out at once when the tenant turns out to be over its share
        self.reserve_inflight = 0
        self.reserve_cost = 0.0
        self.reserve_epoch = 0
        self.waiters: deque[Waiter] = deque()
        self.finish = 0.0  # virtual finish tag of the tenant's last admitted request
        self.active = False  # in flight, queued or present: counts in the fair shares
        self.present_until = -math.inf  # seconds (the admission clock): seen within PRESENCE_S before this
        self.admitted = 0
        self.throttled = 0
        self.would_throttle = 0
        self.abandoned = 0  # requests whose client went away while they were queued
        self.shed_until = -math.inf  # seconds (the admission clock): over-share requests refused until then
        self.shed = 0  # requests refused (or dropped from the queue) while shedding held the tenant back

    @property
    def queued(self) -> int:
        return len(self.waiters)


class Ticket:
    """Proof of a held slot and place at the gate; give it back with `Admission.leave`."""

    __slots__ = ("tenant", "cost", "waited", "held", "slots", "counted", "reserve", "epoch", "admitted_at", "overdue")

    def __init__(
        self, slots: TenantSlots, cost: float, waited: float, counted: float, reserve: bool, admitted_at: float = 0.0
    ):
        self.tenant = slots.name
        self.cost = cost
        #: seconds waited in the queue; negative: a shadow tenant's request that enforcement would have queued
        self.waited = waited
        self.held = True
        self.slots = slots
        self.counted = counted  # cost units it counts at the gate
        self.reserve = reserve  # admitted into the room kept for tenants under their share ...
        self.epoch = slots.reserve_epoch  # ... and still counted there while its tenant's epoch is this
        self.admitted_at = admitted_at  # seconds (the admission clock)
        self.overdue = 0.0  # cost units spent beyond `counted`, while overdue (see Admission.refresh_overdue)

    @property
    def in_reserve(self) -> bool:
        return self.reserve and self.epoch == self.slots.reserve_epoch


class Waiter:
    """A request waiting in its tenant's queue. `on_grant(ticket)` is called when it is admitted."""

    __slots__ = ("slots", "cost", "since", "seq", "ticket", "on_grant", "on_refuse")

    def __init__(self, slots: TenantSlots, cost: float, since: float, seq: int):
        self.slots = slots
        self.cost = cost
        self.since = since
        self.seq = seq
        self.ticket: Ticket | None = None
        self.on_grant: Callable[[Ticket], None] | None = None
        #: called with the Throttled that takes it out of the queue (shedding held its tenant back)
        self.on_refuse: Callable[[Throttled], None] | None = None


# ============================================================================================
# Admission
# ============================================================================================


class Admission:
    """Tenant slots + the gate + the fair queue. Pure apart from `enter`; `clock` gives seconds."""

    __slots__ = ("clock", "tenants", "gate", "vtime", "_backlog", "_reserve_holders", "_held", "_overdue", "_overdue_at",
                 "_active_weight", "_active_count", "_seq", "_quiet", "_presence")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.tenants: dict[str, TenantSlots] = {}
        self.gate = Gate()
        self.vtime = 0.0  # the fair queue's virtual time: start tag of the latest admission
        self._backlog: dict[TenantSlots, None] = {}  # tenants with waiters, in insertion order
        self._reserve_holders: dict[TenantSlots, None] = {}  # tenants with requests in the kept room
        self._held: dict[Ticket, None] = {}  # tickets in flight, oldest first
        self._overdue = 0.0  # Σ Ticket.overdue of the held tickets (the gate counts at most the over-share room)
        self._overdue_at = -math.inf
        self._active_weight = 0.0
        self._active_count = 0
        self._seq = 0
        # the two most recent distinct tenants seen asking within their share, and when: the most recent
        # one other than a given tenant is always among them
        self._quiet: list[tuple[TenantSlots, float]] = []
        self._presence: deque[tuple[float, TenantSlots]] = deque()  # (present until, tenant), oldest first

    # ---- configuration ----
    def configure(self, config: Config, share: float = 1.0) -> None:
        """Apply plans and the gate's settings. `share` is this instance's fraction (1 / live instances)."""
        self.gate.configure(config.admission, share)
        fresh: dict[str, TenantSlots] = {}
        for name, spec in config.tenants.items():
            plan = config.plans[spec.plan]
            slots = self.tenants.get(name) or TenantSlots(name)
            slots.max_concurrent = max(1, round(plan.max_concurrent * share))
            slots.max_queue = max(0, round(plan.max_queue * share))
            slots.max_wait_s = plan.max_wait_ms / 1000.0
            if slots.active:
                self._active_weight += plan.weight - slots.weight
            slots.weight = plan.weight
            fresh[name] = slots
        # Tenants removed by this reload keep their queued requests in the backlog until they drain.
        self.tenants = fresh
        self.pump(self.clock())  # a raised limit may free waiting requests at once

    # ---- the request path ----
    async def enter(self, tenant: TenantView, cost: float, shadow: bool = False) -> Ticket:
        """Take a slot and a place at the gate for `cost` units, waiting up to the plan's max_wait_ms.

        Raises Throttled: "concurrency" (the tenant's queue is full), "overload" (the gate's queue is
        full) or "queue_timeout" (waited max_wait_ms). Shadow requests never wait and are never
        refused; `Ticket.waited` < 0 says enforcement would have queued or refused them.
        """
        got = self.try_enter(tenant.name, cost, shadow)
        return got if type(got) is Ticket else await self.wait(got)  # type: ignore[arg-type]

    def try_enter(self, tenant: str, cost: float, shadow: bool = False) -> Ticket | Waiter:
        """`enter` without waiting: a Ticket when admitted at once (the common case), else the Waiter
        queued for it, to `await wait(waiter)`. Raises Throttled as `enter` does."""
        return self.request(tenant, cost, self.clock(), shadow)

    async def wait(self, waiter: Waiter) -> Ticket:
        """Wait, up to the tenant's max_wait_ms, for a queued request to be admitted (see `enter`)."""
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()

        def granted(ticket: Ticket) -> None:
            if not future.done():
                future.set_result(ticket)

        def refused(refusal: Throttled) -> None:
            if not future.done():
                future.set_exception(refusal)

        waiter.on_grant = granted
        waiter.on_refuse = refused
        try:
            async with asyncio.timeout(waiter.slots.max_wait_s):
                return await future
        except BaseException as exc:
            ticket = waiter.ticket
            if ticket is not None:  # admitted in the same instant as the timeout or the cancellation
                if isinstance(exc, TimeoutError):
                    return ticket
                self.leave(ticket)  # the client is gone: pass the slot on at once
                raise
            self.withdraw(waiter, self.clock())
            if not isinstance(exc, (TimeoutError, Throttled)):  # (Throttled: shedding refused its queue)
                waiter.slots.abandoned += 1
            if isinstance(exc, TimeoutError):
                slots = waiter.slots
                slots.throttled += 1
                retry = max(slots.max_wait_s, 1.0)
                raise Throttled(
                    f"tenant '{slots.name}' waited {slots.max_wait_s:.1f}s for a slot ({slots.inflight} of "
                    f"{slots.max_concurrent} in flight, {self.gate.inflight} requests at the gate, limit "
                    f"{self.gate.limit:.0f}); retry after {retry:.1f}s",
                    why="queue_timeout",
                    retry_after=retry,
                ) from None
            raise

    def request(self, tenant: str, cost: float, now: float, shadow: bool = False) -> Ticket | Waiter:
        """Admit now (a Ticket) or queue (a Waiter, whose `on_grant` fires on admission). Raises Throttled."""
        slots = self.tenants[tenant]
        gate = self.gate
        if now - self._overdue_at >= OVERDUE_TICK_S:
            self.refresh_overdue(now)
        if gate.contended_until is not None:
            gate.uncontend(now)
        self.expire_presence(now)
        if slots.present_until - now < PRESENCE_S - PRESENCE_REFRESH_S:
            slots.present_until = now + PRESENCE_S
            self._presence.append((slots.present_until, slots))
            self._activate(slots)
        # The gate's derived limits, once for this request: nothing below changes them.
        capacity, limit = gate.capacity_cost, gate.limit
        under = self._under_share(slots, cost, capacity, limit)
        if not under and slots.shed_until > now and not shadow:
            slots.throttled += 1
            slots.shed += 1
            raise self._shed_refusal(slots, now)
        if under:
            self._seen_quiet(slots, now)
        else:
            seen = self._quiet_other(slots, now)
            if seen is not None:  # a tenant over its share while others ask for little: keep them their room now
                gate.contend(seen + CONTENDED_HOLD_S)
        if shadow:
            would = (bool(slots.waiters) or slots.inflight >= slots.max_concurrent
                     or not self._fits(cost, under, capacity, limit))
            if would:
                slots.would_throttle += 1
            return self._admit(slots, cost, now, -1.0 if would else 0.0, under, capacity)
        if not self._backlog and slots.inflight < slots.max_concurrent and self._fits(cost, under, capacity, limit):
            return self._admit(slots, cost, now, 0.0, under, capacity)  # nobody waits anywhere: the common case
        self._seq += 1
        waiter = Waiter(slots, cost, now, self._seq)
        slots.waiters.append(waiter)
        slots.queued_cost += cost
        self._backlog[slots] = None
        gate.queued += 1
        self._activate(slots)
        self.pump(now)
        # A tenant under its share waits while others hold over-share room: narrow that room for a while.
        # (A lone tenant's own over-share requests do not count: it would only be throttling itself.)
        others_over = (gate.inflight - gate.reserve_inflight) - (slots.inflight - slots.reserve_inflight)
        if waiter.ticket is None and under and others_over > 0 and gate.contend(now + CONTENDED_HOLD_S):
            self.pump(now)  # the room kept for tenants under their share just grew
        if waiter.ticket is not None:
            return waiter.ticket
        if len(slots.waiters) > slots.max_queue or slots.max_wait_s <= 0.0:
            self.withdraw(waiter, now)
            slots.throttled += 1
            retry = max(slots.max_wait_s, 1.0)
            raise Throttled(
                f"tenant '{tenant}' has {slots.inflight} requests in flight and {len(slots.waiters)} queued "
                f"(max_concurrent {slots.max_concurrent}, max_queue {slots.max_queue}); retry after {retry:.1f}s",
                why="concurrency",
                retry_after=retry,
            )
        if gate.queued > gate.max_queue:
            self.withdraw(waiter, now)
            slots.throttled += 1
            raise Throttled(
                f"the cluster is overloaded: {gate.queued} requests are queued at the gate (max {gate.max_queue}), "
                f"{gate.inflight} in flight (limit {gate.limit:.0f}); retry after 1s",
                why="overload",
                retry_after=1.0,
            )
        return waiter

    def hold_back(self, tenant: str, until: float, now: float) -> int:
        """Overload shedding cancelled one of `tenant`'s requests: until `until` (seconds, the admission clock)
        its requests beyond its fair share are refused at once (429 `shed`, Retry-After) instead of taking the
        place of the one cancelled, and if it is over its share now its queue is refused too. Requests within
        its share still go. Returns how many queued requests were refused."""
        slots = self.tenants.get(tenant)
        if slots is None:
            return 0
        if until > slots.shed_until:
            slots.shed_until = until
        if not slots.waiters or self._under_share(slots):
            return 0
        refused = 0
        while slots.waiters:
            waiter = slots.waiters[-1]  # newest first: withdraw is cheapest from the end
            self.withdraw(waiter, now)
            slots.throttled += 1
            slots.shed += 1
            refused += 1
            if waiter.on_refuse is not None:
                waiter.on_refuse(self._shed_refusal(slots, now))
        return refused

    def release(self, tenant: str) -> None:
        """The distress is over: `tenant`'s over-share requests are admitted again as before."""
        slots = self.tenants.get(tenant)
        if slots is not None:
            slots.shed_until = -math.inf

    def _shed_refusal(self, slots: TenantSlots, now: float) -> Throttled:
        retry = max(slots.shed_until - now, 1.0)
        return Throttled(
            f"tenant '{slots.name}' is over its fair share of an overloaded cluster, and one of its requests was "
            f"cancelled to relieve it; requests beyond its share are refused for {retry:.1f}s more",
            why="shed",
            retry_after=retry,
        )

    def expire_presence(self, now: float) -> None:
        """Tenants not seen for PRESENCE_S, with nothing in flight or queued, leave the fair shares."""
        presence = self._presence
        while presence and presence[0][0] <= now:
            self._deactivate(presence.popleft()[1], now)

    def _seen_quiet(self, slots: TenantSlots, now: float) -> None:
        quiet = self._quiet
        if quiet and quiet[0][0] is slots:
            quiet[0] = (slots, now)
        else:
            quiet.insert(0, (slots, now))
            del quiet[2:]

    def _quiet_other(self, slots: TenantSlots, now: float) -> float | None:
        """When another tenant last asked within its share, if that was in the last CONTENDED_HOLD_S."""
        for other, seen in self._quiet:
            if other is not slots:
                return seen if now - seen < CONTENDED_HOLD_S else None
        return None

    def withdraw(self, waiter: Waiter, now: float) -> None:
        """A waiter gives up (timed out, or its client went away). If it was admitted meanwhile, its
        slot is given back; either way it leaves no trace."""
        if waiter.ticket is not None:
            self.leave(waiter.ticket, now=now)
            return
        slots = waiter.slots
        try:
            slots.waiters.remove(waiter)
        except ValueError:
            return
        slots.queued_cost = slots.queued_cost - waiter.cost if slots.waiters else 0.0
        self.gate.queued -= 1
        if not slots.waiters:
            self._backlog.pop(slots, None)
        self._deactivate(slots, now)
        self.pump(now)

    def leave(
        self,
        ticket: Ticket,
        status: int = 0,
        upstream_s: float = 0.0,
        observed: float | None = None,
        now: float | None = None,
    ) -> None:
        """Give the slot and the gate's place back; waiting requests are admitted in fair order.

        `status` is the upstream's HTTP status (0 when it never answered), `upstream_s` the time to its
        response head in seconds, `observed` the cost units it reported (None if unknown).
        """
        if not ticket.held:
            return
        ticket.held = False
        now = self.clock() if now is None else now
        slots = ticket.slots
        slots.inflight -= 1
        slots.inflight_cost = slots.inflight_cost - ticket.cost if slots.inflight else 0.0
        gate = self.gate
        in_reserve = ticket.reserve and ticket.epoch == slots.reserve_epoch  # Ticket.in_reserve
        del self._held[ticket]
        if ticket.overdue:
            self._overdue = max(0.0, self._overdue - ticket.overdue) if self._held else 0.0  # no float dust below 0
            gate.overdue_cost = min(self._overdue, gate.overdue_cost)
        if not self._held:
            self._overdue = gate.overdue_cost = 0.0  # exactly nothing at idle
        gate.give_back(ticket.counted, in_reserve)
        if in_reserve:
            slots.reserve_inflight -= 1
            slots.reserve_cost = slots.reserve_cost - ticket.counted if slots.reserve_inflight else 0.0
            if not slots.reserve_inflight:
                self._reserve_holders.pop(slots, None)
        gate.observe(now, ticket.cost, status, upstream_s, observed)
        if slots.active and not slots.inflight and not slots.waiters and slots.present_until <= now:
            self._deactivate(slots, now)
        if self._backlog:
            self.pump(now)

    def upstream_error(self, kind: str, now: float | None = None) -> None:
        """The upstream layer's failures ("timeout", "unreachable", "protocol") inform the gate."""
        self.gate.upstream_error(kind, self.clock() if now is None else now)

    def observe_cluster(self, reading: ClusterReading, now: float | None = None) -> None:
        """A cluster-health poll; a grown capacity may admit waiting requests at once."""
        now = self.clock() if now is None else now
        self.gate.observe_cluster(reading, now)
        self.pump(now)

    def refresh_overdue(self, now: float) -> None:
        """Count requests in flight for longer than their cost implies as what they have spent so far.

        Spent = seconds in flight × threads per request × 1000 (cost units are thread-milliseconds). A request
        is overdue once that is over OVERDUE_SLACK × what it counts as at the gate and it has been in flight
        OVERDUE_MIN_S; its excess counts in the over-share check (`Gate.overdue_cost`), in all at most the
        over-share room, so the room kept for tenants under their share stays theirs.
        """
        self._overdue_at = now
        gate = self.gate
        capacity = gate.capacity_cost
        if capacity is None or not self._held:
            for ticket in self._held:
                ticket.overdue = 0.0
            self._overdue = gate.overdue_cost = 0.0
            return
        rate = gate.threads_per_request * 1000.0
        total = 0.0
        for ticket in self._held:
            age = now - ticket.admitted_at
            spent = age * rate
            if age >= OVERDUE_MIN_S and spent > OVERDUE_SLACK * ticket.counted:
                ticket.overdue = spent - ticket.counted
                total += ticket.overdue
            else:
                ticket.overdue = 0.0
        cap = capacity * gate.headroom
        self._overdue = total
        gate.overdue_cost = total if total < cap else cap

    # ---- the fair queue ----
    def pump(self, now: float) -> None:
        """Admit waiting requests while there is room, in start-time fair order."""
        if self._backlog and now - self._overdue_at >= OVERDUE_TICK_S:
            self.refresh_overdue(now)
        while self._backlog:
            picked, reserve = self._pick()
            if picked is None:
                return
            waiter = picked.waiters.popleft()
            picked.queued_cost = picked.queued_cost - waiter.cost if picked.waiters else 0.0
            if not picked.waiters:
                del self._backlog[picked]
            self.gate.queued -= 1
            ticket = self._admit(picked, waiter.cost, now, now - waiter.since, reserve)
            waiter.ticket = ticket
            if waiter.on_grant is not None:
                waiter.on_grant(ticket)

    def _pick(self) -> tuple[TenantSlots | None, bool]:
        """The tenant whose head request goes next (None if no one fits), and whether it is under its share.

        Over-share tenants go strictly by tag: if the smallest tag does not fit, none of them goes
        (a cheaper request must not starve an expensive one forever). Under-share tenants may use the
        headroom and go whenever theirs fits.
        """
        gate = self.gate
        vtime = self.vtime
        over: tuple[float, int, TenantSlots] | None = None
        under: tuple[float, int, TenantSlots] | None = None
        for slots in self._backlog:
            if slots.inflight >= slots.max_concurrent:
                continue
            head = slots.waiters[0]
            key = (max(vtime, slots.finish), head.seq, slots)
            if self._under_share(slots):
                if (under is None or key[:2] < under[:2]) and self._fits_reserve(head.cost):
                    under = key
            elif over is None or key[:2] < over[:2]:
                over = key
        if over is not None and not gate.fits(over[2].waiters[0].cost, reserve=False):
            over = None
        if over is None:
            return (under[2], True) if under is not None else (None, False)
        if under is None or over[:2] < under[:2]:
            return over[2], False
        return under[2], True

    def _fits(self, cost: float, under: bool, capacity: float | None | object = UNKNOWN,
              limit: float | object = UNKNOWN) -> bool:
        if under:
            return self._fits_reserve(cost, capacity, limit)
        return self.gate.fits(cost, False, capacity, limit)

    def _fits_reserve(self, cost: float, capacity: float | None | object = UNKNOWN,
                      limit: float | object = UNKNOWN) -> bool:
        """Room for an under-share request; if the kept room looks full, first move out of it the requests
        of tenants that have since gone over their share (a tenant alone at first gets it all)."""
        gate = self.gate
        if gate.fits(cost, True, capacity, limit):
            return True
        reclaimed = False
        for slots in list(self._reserve_holders):
            if not self._under_share(slots):
                gate.leave_reserve(slots.reserve_inflight, slots.reserve_cost)
                slots.reserve_inflight, slots.reserve_cost = 0, 0.0
                slots.reserve_epoch += 1
                del self._reserve_holders[slots]
                reclaimed = True
        return reclaimed and gate.fits(cost, reserve=True)

    def _under_share(self, slots: TenantSlots, extra: float | None = None, capacity: float | None | object = UNKNOWN,
                     limit: float | object = UNKNOWN) -> bool:
        """Is all the tenant asks for — in flight, queued, and a request of `extra` cost units — within its
        weighted share of the gate (in cost), or within one average request? A tenant with a backlog beyond
        its share is over it for every request, its first included: the room kept back is for tenants that
        ask for little."""
        gate = self.gate
        if not gate.enabled:
            return True
        weights = self._active_weight + (0.0 if slots.active else slots.weight)
        fraction = slots.weight / weights if weights > 0 else 1.0
        if capacity is UNKNOWN:
            capacity = gate.capacity_cost
        if capacity is None:
            asked_count = slots.inflight + len(slots.waiters) + (0 if extra is None else 1)
            return asked_count <= (gate.limit if limit is UNKNOWN else limit) * gate.headroom * fraction  # type: ignore[operator]
        asked = slots.inflight_cost + slots.queued_cost + (extra or 0.0)
        # ... and never less than one average request: on a small cluster shared by many tenants, a fair
        # share can be less than one cheap search
        return asked <= max(capacity * gate.headroom * fraction, gate.mean_cost)

    def _admit(self, slots: TenantSlots, cost: float, now: float, waited: float, reserve: bool,
               capacity: float | None | object = UNKNOWN) -> Ticket:
        start = max(self.vtime, slots.finish)
        slots.finish = start + max(cost, MIN_TAG_COST) / slots.weight
        self.vtime = start
        gate = self.gate
        counted = gate.counted(cost, capacity)
        gate.take(counted, reserve)
        if reserve:
            slots.reserve_inflight += 1
            slots.reserve_cost += counted
            self._reserve_holders[slots] = None
        slots.inflight += 1
        slots.inflight_cost += cost
        slots.admitted += 1
        self._activate(slots)
        ticket = Ticket(slots, cost, waited, counted, reserve, now)
        self._held[ticket] = None
        return ticket

    def _activate(self, slots: TenantSlots) -> None:
        if not slots.active:
            slots.active = True
            self._active_weight += slots.weight
            self._active_count += 1

    def _deactivate(self, slots: TenantSlots, now: float) -> None:
        if slots.active and not slots.inflight and not slots.waiters and slots.present_until <= now:
            slots.active = False
            self._active_count -= 1
            self._active_weight = self._active_weight - slots.weight if self._active_count else 0.0

    # ---- reporting ----
    def report(self, now: float | None = None) -> dict:
        """The gate for /tenants: limit and its reason, capacity, what is in flight and queued."""
        now = self.clock() if now is None else now
        gate = self.gate
        capacity = gate.capacity_cost
        return {
            "enabled": gate.enabled,
            "algorithm": gate.algorithm.name,
            "limit": round(gate.limit, 2),
            "reason": gate.reason(now),
            "detail": gate.detail(now),
            "capacity": None if capacity is None else round(capacity, 1),
            "capacity_headroom": gate.headroom,
            "contended": gate.contended_until is not None,
            "capacity_per_s": gate.capacity_per_s,
            "horizon_ms": round(gate.horizon_ms, 2),
            "threads_per_request": round(gate.threads_per_request, 3),
            "fan_out": round(gate.fan_out, 2),
            "data_nodes": gate.data_nodes,
            "data_nodes_max": gate.data_nodes_max,
            "search_threads": gate.threads,
            "search_threads_max": gate.threads_max,
            "inflight": gate.inflight,
            "inflight_cost": round(gate.inflight_cost, 2),
            "overdue_cost": round(gate.overdue_cost, 2),
            "queued": gate.queued,
            "max_queue": gate.max_queue,
        }

    def register_gauges(self, add: Callable[[str, str, tuple[str, ...], Callable[[], Iterable]], None]) -> None:
        """Register the gate's live gauges with `Metrics.add_live_gauge`."""
        gate = self.gate
        one = lambda value: lambda: [((), float(value()))]  # noqa: E731
        add("sluicegate_gate_limit", "Requests the global gate lets in flight now", (), one(lambda: gate.limit))
        add("sluicegate_gate_inflight", "Requests in flight through the global gate", (), one(lambda: gate.inflight))
        add("sluicegate_gate_inflight_cost_units", "Cost units in flight through the global gate", (),
            one(lambda: gate.inflight_cost))
        add("sluicegate_gate_capacity_cost_units",
            "Cost units the live search threads hold in flight without queueing (0: not known)", (),
            one(lambda: gate.capacity_cost or 0.0))
        add("sluicegate_gate_queued", "Requests waiting for a tenant slot or the gate", (), one(lambda: gate.queued))
        add("sluicegate_gate_search_threads", "Live search threads of the cluster's data nodes (last poll)", (),
            one(lambda: gate.threads))

        def reason():
            now = self.clock()
            current = gate.reason(now)
            return [((why,), 1.0 if why == current else 0.0) for why in REASONS]

        add("sluicegate_gate_reason", "Why the gate's limit is what it is (1 for the current reason)", ("reason",),
            reason)
