"""The global gate in front of the cluster: requests (limit) and cost units (capacity) in flight.

Split out of admission.py (which keeps the tenant slots, the fair queue and when the gate contends):
this module is the gate's capacity model, what it learns from completions and from the cluster's
thread pools, and its two admission checks (`Gate.fits`: the over-share room and the kept room).

* **limit** — requests in flight. It adapts to upstream latency, to upstream 429/503s and timeouts
  (`GradientLimit`, or `AimdLimit`), is capped by what the cluster's search thread pools can run
  at once (threads ÷ threads a request holds), and shrinks in proportion when data nodes drop out.
* **capacity** — cost units in flight. A cost unit is one millisecond of one search thread, so
  the cluster's threads can hold `threads × horizon` units in flight without queueing, where the
  horizon is how long admitted cost stays in flight (cost-weighted upstream latency; Little's law).

**Fan-out.** A search holds a search thread per shard it runs on, all at once, however little its cost
says it holds on average (threads per request is measured on the mix, mostly cheap requests whose
round trip is more than their shard time). So the over-share room in requests is also at most the live
threads ÷ the widest fan-out seen lately (shards per search, from responses; it fades over
`FAN_OUT_MEMORY_S`), × headroom: a storm's first wave, its cost not yet learned, cannot take every
thread and make a quiet tenant's shards queue in the nodes.

**Cores.** A search thread on CPU-bound work (scripts, leading wildcards, big aggregations) runs no
faster than the core it gets, search pools have more threads than cores (1.5 × cores + 1 by default),
and nodes on one host share its cores. So the over-share room counts the smaller of the live search
threads and the live hosts' cores (`cores`, from the nodes info: each address once). Where that room is
less than one request at the widest fan-out — a cluster whose CPU cannot run one more such search
beside the quiet tenants' without slowing theirs two- or threefold, and nothing preempts a search once
it runs — over-share work waits while the gate is contended (a tenant under its share was seen lately),
unless it is one request *known* to cost no more than `CORE_BOUND_CHEAP` average ones (a quiet tenant's
search priced on the starved core can be over the share floor, and must not starve; a shape never seen is
only estimated, and the storm's first searches were estimated 20-60 units and cost 100-1,200), or one
that arrived in its tenant's burst after a pause (`burst`: a dashboard's parallel searches, learned at
8x the average on the starved core, timed out waiting for that test; a storm's closed loop never pauses);
a lone busy tenant still gets one request. Where the threads alone make the room less than one request,
one still goes, as before: a thread it holds slows nobody else's.

**One room for several instances.** Each process counts its `share` of the cluster (1 / instances).
On a small cluster that static split leaves each instance a room of one or two searches, so a burst
that lands on one instance waits while the other's room is idle. When every other instance's holdings
at the gate are known (proxy/shared_gate.py exchanges them through Redis, a few ms old), `set_peers`
pools them: the two checks of `fits` then count everyone's requests and cost in flight against the
whole cluster's limits (this process's × `pool`, the number of instances). Otherwise (Redis down, a
peer silent) each instance keeps its static share, as before.

Pure: every method that needs the time takes `now` (seconds, monotonic).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cython

if cython.compiled:  # the C library's, without a Python call (the request path calls these on every request)
    from cython.cimports.libc.math import exp, floor
else:
    from math import exp, floor

from .config import AdmissionConfig
from .cost_observed import Observed

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

#: on a cluster with less than one over-share request's worth of cores, while contended, an over-share request
#: still goes (alone) if it costs no more than this many average requests: a quiet tenant's search priced on
#: the starved core (2-3x the average there), not a storm's (10x and more)
CORE_BOUND_CHEAP = 3.0

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
    `rejected` and `completed` count search tasks since the previous reading. `cores`: the processors
    of the live data nodes' hosts, each host counted once (None: not known).
    """

    data_nodes: int
    search_threads: int | None
    search_queue: int = 0
    search_active: int = 0
    rejected: int = 0
    completed: int = 0
    cores: int | None = None


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
        "pool", "peer_inflight", "peer_cost", "peer_reserve_inflight", "peer_reserve_cost", "cores",
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
        self.cores = 0  # processors of the live data nodes' hosts; 0 = not known
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
        # the other instances' holdings at the gate, pooled with this one's while `pool` > 1 (set_peers)
        self.pool = 1.0
        self.peer_inflight = 0
        self.peer_cost = 0.0  # their cost in flight, what is overdue included
        self.peer_reserve_inflight = 0
        self.peer_reserve_cost = 0.0

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
        return self._horizon_ms()

    def _horizon_ms(self) -> float:
        if self._cost > 0:
            return max(HORIZON_FLOOR_MS, self._lat_cost / self._cost)
        return max(HORIZON_FLOOR_MS, self.target_ms or DEFAULT_HORIZON_MS)

    @property
    def mean_cost(self) -> float:
        """Cost units of an average request completed lately (0 before any)."""
        return self._mean_cost()

    def _mean_cost(self) -> float:
        return self._cost / self._count if self._count > 0 else 0.0

    @property
    def threads_per_request(self) -> float:
        """Search threads a request in flight holds on average: Σ observed cost / Σ latency (1 until measured)."""
        return self._threads_per_request()

    def _threads_per_request(self) -> float:
        if self._lat_obs > 0 and self._observed > 0:
            return min(64.0, max(0.05, self._observed / self._lat_obs))
        return 1.0

    @property
    def node_ratio(self) -> float:
        """Live capacity as a fraction of the most seen: search threads, or data nodes without thread stats."""
        return self._node_ratio()

    def _node_ratio(self) -> float:
        if self.threads_max:
            return self.threads / self.threads_max
        if self.data_nodes_max:
            return self.data_nodes / self.data_nodes_max
        return 1.0

    @property
    def ceiling(self) -> float:
        """Requests the healthy cluster's search pools can run at once (this process's share)."""
        return self._ceiling()

    def _ceiling(self) -> float:
        if not self.threads_max:
            return self.max_limit
        return self.threads_max * self.share / self._threads_per_request()

    @property
    def live_ceiling(self) -> float:
        """Requests the live search pools can run at once (this process's share)."""
        return self._live_ceiling()

    def _live_ceiling(self) -> float:
        return self._ceiling() * self._node_ratio() if self.threads_max else self._limit()

    @property
    def limit(self) -> float:
        """Requests in flight the gate allows now: the adaptive limit, × the live node ratio."""
        return self._limit()

    def _limit(self) -> float:
        return max(self.min_limit, self.adaptive * self._node_ratio())

    @property
    def over_share_limit(self) -> float:
        """Requests in flight, over-share ones included, below which an over-share request may go: the
        limit, and no more than the live search threads hold requests of the widest fan-out seen lately
        (a search holds a thread per shard at once, however little its cost says it holds on average)."""
        limit = self._limit()
        if self.threads:
            limit = min(limit, self.threads * self.share / self.fan_out)
        return limit * self.headroom

    @property
    def capacity_cost(self) -> float | None:
        """Cost units the live search threads hold in flight without queueing (None: threads unknown)."""
        return self._capacity_cost()

    def _capacity_cost(self) -> float | None:
        if not self.threads:
            return None
        return self.threads * self.share * self._horizon_ms()

    @property
    def capacity_per_s(self) -> float | None:
        """Cost units per second the live search threads can do (1 unit = 1 thread-ms)."""
        return self.threads * self.share * 1000.0 if self.threads else None

    def reason(self, now: float) -> str:
        if not self.enabled:
            return "disabled"
        if self._node_ratio() < 1.0:
            return "data_nodes"
        if self._pressure and now - self._pressure_at < REASON_HOLD_S:
            return self._pressure
        if not self.threads_max:
            return "no_cluster_stats"
        if self.adaptive >= 0.95 * self._ceiling():
            return "max_limit" if self._ceiling() >= self.max_limit else "capacity"
        if self.adaptive <= self.min_limit + 1e-9:
            return "min_limit"
        return "latency"

    def detail(self, now: float) -> str:
        """The reason in words, for /tenants."""
        why = self.reason(now)
        if why == "data_nodes":
            return (f"{self.data_nodes} of {self.data_nodes_max} data nodes, {self.threads} of {self.threads_max} "
                    f"search threads: limit × {self._node_ratio():.2f}")
        if why == "capacity":
            return (f"{self.threads} search threads ÷ {self._threads_per_request():.2f} threads per request"
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
            capacity = self._capacity_cost()
        if capacity is None:
            return cost
        return min(cost, capacity * self.pool * self.headroom)  # type: ignore[operator]

    def fits(self, cost: float, reserve: bool, capacity: float | None | object = UNKNOWN,
             limit: float | object = UNKNOWN, known: bool = True, burst: bool = False) -> bool:
        """Room for one more request of `cost` units. `reserve`: the tenant is under its fair share and
        may use the headroom; otherwise only `capacity_headroom` of the limit and capacity. `capacity`
        and `limit`: `capacity_cost` and `limit` if the caller has them already (once per request).
        With peers pooled, everyone's holdings count against the whole cluster's limits. `known`: the cost
        was learned from responses (False: only an estimate, which the core-bound exception does not trust).
        `burst`: it arrived in its tenant's burst after a pause (a dashboard's, never a storm's closed loop),
        which may go alone whatever its learned cost."""
        if not self.enabled:
            return True
        headroom = self.headroom
        if limit is UNKNOWN:
            limit = self._limit()
        if capacity is UNKNOWN:
            capacity = self._capacity_cost()
        counted = self.counted(cost, capacity)
        share = self.share
        inflight = self.inflight
        inflight_cost = self.inflight_cost
        pool = self.pool
        if pool != 1.0:
            limit = limit * pool  # type: ignore[operator]
            share *= pool
            if capacity is not None:
                capacity = capacity * pool  # type: ignore[operator]
            inflight += self.peer_inflight
            inflight_cost += self.peer_cost
        if not reserve:
            # over-share requests hold no more than headroom of the threads (fan-out), or of the cores
            threads = self.threads
            cores = self.cores
            if 0 < cores < threads:
                threads = cores
            over_limit = min(limit, threads * share / self.fan_out) if threads else limit
            room = floor(over_limit * headroom + 1e-9)
            if room < 1:
                if self.core_bound_holds(cost, known, burst):
                    return False  # not one such request's worth of CPU to spare beside the quiet tenants
                room = 1
            if inflight + 1 > room:
                return False
            if capacity is None or inflight_cost <= 0.0:
                return True
            return inflight_cost + self.overdue_cost + counted <= capacity * headroom + 1e-9
        # The room kept back is measured against what the pools can run, and is theirs even while
        # over-share requests admitted before the limit shrank are still in flight — within what the
        # pools can run, which nobody exceeds.
        reserve_inflight = self.reserve_inflight + self.peer_reserve_inflight
        reserve_cost = self.reserve_cost + self.peer_reserve_cost
        pools = max(limit, self._live_ceiling() * pool)
        kept = (1.0 - headroom) * pools
        if inflight + 1 > max(1.0, floor(limit * headroom + kept + 1e-9)) and (
                reserve_inflight + 1 > floor(kept + 1e-9) or inflight + 1 > floor(pools + 1e-9)):
            return False
        if capacity is None or inflight_cost <= 0.0:
            return True
        # Over-share cost counts here as at most its room: what went in when the room was wider (or under
        # share, since moved out of the kept room; or before the capacity shrank) does not take the rest.
        over = inflight_cost - reserve_cost
        return min(over, capacity * headroom) + reserve_cost + counted <= capacity + 1e-9

    def core_bound_holds(self, cost: float, known: bool, burst: bool) -> bool:
        """Does an over-share request wait however empty the gate is? Only while contended, on a cluster with
        less than one over-share request's worth of cores (see Cores above), and unless it is trusted: known
        to cost at most CORE_BOUND_CHEAP average requests, or known and in its tenant's burst."""
        if self.contended_until is None:
            return False
        cores = self.cores
        if not 0 < cores < self.threads:
            return False
        if known and (burst or cost <= CORE_BOUND_CHEAP * self._mean_cost()):
            return False
        over_limit = min(self._limit(), cores * self.share / self.fan_out) * self.pool
        return floor(over_limit * self.headroom + 1e-9) < 1

    def set_peers(self, pool: float, inflight: int, cost: float, reserve_inflight: int, reserve_cost: float) -> None:
        """The other instances' holdings at the gate (requests and cost in flight, and of those in the kept
        room), pooled with this process's: `fits` counts them all against this process's limits × `pool`.
        `pool` 1 (and zeros) is the static share: each instance its own room."""
        self.pool = pool
        self.peer_inflight = inflight
        self.peer_cost = cost
        self.peer_reserve_inflight = reserve_inflight
        self.peer_reserve_cost = reserve_cost

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
            fade = exp((self._faded_at - now) / MEMORY_S)
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
            if type(observed) is Observed:  # a search's observed cost knows its fan-out
                self._note_fan_out(observed.shards, now)
        self._observed, self._lat_obs = spent, lat_obs
        if self._w_start is None:
            self._w_start = now
        n = self._w_n = self._w_n + 1
        self._w_lat += latency_ms
        self._w_cost += cost
        if (n >= max(WINDOW_MIN_SAMPLES, self._w_peak)
                and now - self._w_start >= max(WINDOW_MIN_S, self._horizon_ms() / 1000.0)):
            self._close_window(now)

    def _note_fan_out(self, shards: int, now: float) -> None:
        """A search ran on `shards` shards: the widest fan-out jumps up to it, or fades toward it."""
        fade = exp(min(0.0, self._fan_out_at - now) / FAN_OUT_MEMORY_S)
        self.fan_out = max(float(shards), 1.0 + (self.fan_out - 1.0) * fade)
        self._fan_out_at = now

    def _close_window(self, now: float) -> None:
        if self.target_ms is not None:
            latency, reference = self._w_lat / self._w_n, self.target_ms
        else:
            # ms per cost unit: a shift from cheap to expensive queries is not mistaken for congestion
            latency = self._w_lat / self._w_cost
        app_limited = self._w_peak + 1 < self._limit() * self.headroom  # the limit never bound: it says nothing
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
        self.cores = reading.cores or 0
        if reading.search_threads is not None:
            self.threads = reading.search_threads
            self.threads_max = max(self.threads_max, reading.search_threads)
        if first and self.threads_max:
            self.adaptive = self._clamp(self._ceiling())  # start at what the pools can run
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
            self.adaptive = self._clamp(self._ceiling())  # idle and healthy: back to full capacity
        else:
            self.adaptive = self._clamp(self.adaptive)  # the ceiling may have moved

    def _clamp(self, limit: float) -> float:
        return max(self.min_limit, min(limit, self.max_limit, max(self.min_limit, self._ceiling())))
