"""Prometheus metrics.

The counters and histograms touched by every request are plain dicts of floats here, read by a
collector when /metrics is scraped: an increment is a dict update, with no lock and no label
lookup (prometheus_client's own counters cost about a microsecond each, and a request touches
seven). Levels that change constantly (bucket levels, in-flight, queued, the global limit) are not
updated per request at all: a collector reads them from the live objects at scrape time.
Everything else (reloads, Redis state, upstream errors) uses prometheus_client's types directly.

Names: gauges in cost units end in `_cost_units` (`sluicegate_bucket_level_cost_units`), counters
in `_units_total`. No `_created` series are exported (see `disable_created_metrics` below).
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

import cython
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# The per-request counters below are rendered without `_created` series; so are prometheus_client's own
# counters, so that every counter looks alike (and the supervisor's merge has no per-worker start times).
disable_created_metrics()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: one live gauge: (name, help, label names, callable giving (label values, value) pairs)
LiveGauge = tuple[str, str, tuple[str, ...], Callable[[], Iterable[tuple[tuple[str, ...], float]]]]


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.gauges: list[LiveGauge] = []

    def collect(self) -> Iterable[Metric]:
        for name, doc, labels, read in self.gauges:
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in read():
                family.add_metric(list(values), value)
            yield family


class _Histogram:
    """Bucket counts of one label set: a list index per observation, cumulated at scrape time."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, value)] += 1
        self.total += value
        self.count += 1


class _Tally:
    """What the requests of one (tenant, resource, decision, reason, status) added up to since the counters
    were last folded: one dict lookup and a few additions per request, instead of one per counter."""

    __slots__ = ("requests", "costed", "estimated", "charged", "answered", "observed")

    def __init__(self) -> None:
        self.requests = 0
        self.costed = 0  # requests that were charged or observed (the cost counters get their series)
        self.estimated = 0.0
        self.charged = 0.0
        self.answered = 0  # requests with an observed cost
        self.observed = 0.0


class _HotCollector(Collector):
    """The per-request counters and histograms, stored as plain dicts keyed by label values."""

    COUNTERS = {
        "requests": ("sluicegate_requests", "Requests by tenant, resource class, decision and reason",
                     ("tenant", "resource", "decision", "reason")),
        "responses": ("sluicegate_responses", "Responses sent, by tenant and HTTP status code", ("tenant", "code")),
        "estimated": ("sluicegate_cost_estimated_units", "Cost units estimated before forwarding", ("tenant", "resource")),
        "charged": ("sluicegate_cost_charged_units", "Cost units charged up front", ("tenant", "resource")),
        "observed": ("sluicegate_cost_observed_units", "Cost units observed from responses (took x shards)",
                     ("tenant", "resource")),
    }
    HISTOGRAMS = {
        "queue_wait": ("sluicegate_queue_wait_seconds", "Time a request waited for budget and slots before forwarding",
                       ("tenant",)),
        "upstream": ("sluicegate_upstream_latency_seconds", "Time from forwarding to the upstream's response head",
                     ("resource",)),
    }

    def __init__(self) -> None:
        self.counters: dict[str, dict[tuple, float]] = {key: {} for key in self.COUNTERS}
        self.histograms: dict[str, dict[tuple, _Histogram]] = {key: {} for key in self.HISTOGRAMS}
        self.fold: Callable[[], None] = lambda: None  # brings the counters up to date (Metrics.fold)

    def collect(self) -> Iterable[Metric]:
        self.fold()
        for key, (name, doc, labels) in self.COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=list(labels))
            for values, value in list(self.counters[key].items()):
                family.add_metric([str(v) for v in values], value)
            yield family
        for key, (name, doc, labels) in self.HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=list(labels))
            for values, hist in list(self.histograms[key].items()):
                running, buckets = 0, []
                for bound, count in zip((*_LATENCY_BUCKETS, float("inf")), hist.counts):
                    running += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
                family.add_metric(list(values), buckets, hist.total)
            yield family


class Metrics:
    """Every metric the proxy exports, in one registry per process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.hot = _HotCollector()
        r.register(self.hot)
        self._requests = self.hot.counters["requests"]
        self._responses = self.hot.counters["responses"]
        self._estimated = self.hot.counters["estimated"]
        self._charged = self.hot.counters["charged"]
        self._observed = self.hot.counters["observed"]
        self._queue_wait = self.hot.histograms["queue_wait"]
        self._upstream = self.hot.histograms["upstream"]
        #: (tenant, resource, decision, reason, status) → what its requests added since the last fold
        self._tallies: dict[tuple, _Tally] = {}
        self.hot.fold = self.fold
        self.upstream_errors = Counter(
            "sluicegate_upstream_errors", "Upstream failures by node and kind", ["node", "kind"], registry=r
        )
        self.config_reloads = Counter("sluicegate_config_reloads", "Config reloads that took effect", registry=r)
        self.config_reload_failures = Counter(
            "sluicegate_config_reload_failures", "Config reloads refused because the file was invalid", registry=r
        )
        self.config_generation = Gauge("sluicegate_config_generation", "Generation of the config in force", registry=r)
        self.config_info = Gauge("sluicegate_config_info", "Hash of the config file in force", ["hash"], registry=r)
        self.redis_up = Gauge("sluicegate_redis_up", "1 when limits are shared through Redis, 0 in local fallback", registry=r)
        self.redis_fallbacks = Counter(
            "sluicegate_redis_fallbacks", "Switches from Redis to local limits after a Redis failure", registry=r
        )
        #: requests the proxy cancelled at the cluster (proxy/runaway.py): rare, so prometheus_client's own type
        self.cancelled = Counter(
            "sluicegate_cancelled", "Requests cancelled at the cluster, by tenant and reason (max_duration, "
            "max_cost_factor, operator, shed, client_closed)", ["tenant", "reason"], registry=r,
        )
        #: guardrails that changed or refused a request, or would have in shadow (proxy/guardrails.py)
        self.degraded = Counter(
            "sluicegate_guardrail_hits", "Requests a guardrail capped, refused or would have (shadow), by tenant, "
            "guardrail and action", ["tenant", "guardrail", "action"], registry=r,
        )
        self.live = _LiveCollector()
        r.register(self.live)

    def add_live_gauge(self, name: str, doc: str, labels: tuple[str, ...], read) -> None:
        """Register a gauge whose samples `read()` yields at scrape time as (label values, value)."""
        self.live.gauges.append((name, doc, labels, read))

    def set_config(self, generation: int, digest: str) -> None:
        self.config_generation.set(generation)
        self.config_info.clear()
        self.config_info.labels(digest).set(1)

    # ---- per request: plain dict updates ----
    @cython.locals(tally=_Tally)  # a C type, compiled
    def count(self, tenant: str, resource: str, decision: str, reason: str, status: int, estimated: float,
              charged: float, observed: float | None) -> None:
        """One request done: count_request, count_response and (if it was charged or observed) count_cost
        in one, as a tally folded into those counters when they are read."""
        key = (tenant, resource, decision, reason, status)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        tally.requests += 1
        if charged or observed is not None:
            tally.costed += 1
            tally.estimated += estimated
            tally.charged += charged
            if observed is not None:
                tally.answered += 1
                tally.observed += observed

    def fold(self) -> None:
        """Add the tallies kept since the last fold to the counters (every reader of them calls this first)."""
        tallies = self._tallies
        if not tallies:
            return
        self._tallies = {}
        requests, responses = self._requests, self._responses
        estimated, charged, observed = self._estimated, self._charged, self._observed
        for (tenant, resource, decision, reason, status), tally in tallies.items():
            key = (tenant, resource, decision, reason)
            requests[key] = requests.get(key, 0.0) + tally.requests
            key = (tenant, status)
            responses[key] = responses.get(key, 0.0) + tally.requests
            if tally.costed:
                key = (tenant, resource)
                estimated[key] = estimated.get(key, 0.0) + tally.estimated
                charged[key] = charged.get(key, 0.0) + tally.charged
                if tally.answered:
                    observed[key] = observed.get(key, 0.0) + tally.observed

    def count_request(self, tenant: str, resource: str, decision: str, reason: str) -> None:
        key = (tenant, resource, decision, reason)
        counts = self._requests
        counts[key] = counts.get(key, 0.0) + 1.0

    def count_response(self, tenant: str, status: int) -> None:
        key = (tenant, status)
        counts = self._responses
        counts[key] = counts.get(key, 0.0) + 1.0

    def count_cost(self, tenant: str, resource: str, estimated: float, charged: float, observed: float | None) -> None:
        key = (tenant, resource)
        self._estimated[key] = self._estimated.get(key, 0.0) + estimated
        self._charged[key] = self._charged.get(key, 0.0) + charged
        if observed is not None:
            self._observed[key] = self._observed.get(key, 0.0) + observed

    def observe_queue_wait(self, tenant: str, seconds: float) -> None:
        hist = self._queue_wait.get((tenant,))
        if hist is None:
            hist = self._queue_wait[(tenant,)] = _Histogram()
        hist.observe(seconds)

    def observe_upstream(self, resource: str, seconds: float) -> None:
        hist = self._upstream.get((resource,))
        if hist is None:
            hist = self._upstream[(resource,)] = _Histogram()
        hist.observe(seconds)

    def tenant_totals(self) -> dict[str, dict]:
        """Per tenant since start (off the request path, for /tenants and the status page): cost units
        charged and observed, and requests by decision, each {reason: count} ("" when none)."""
        self.fold()
        out: dict[str, dict] = {}

        def of(tenant: str) -> dict:
            totals = out.get(tenant)
            if totals is None:
                totals = out[tenant] = {"charged": 0.0, "observed": 0.0, "decisions": {}}
            return totals

        for (tenant, _, decision, reason), count in list(self._requests.items()):
            reasons = of(tenant)["decisions"].setdefault(decision, {})
            reasons[reason] = reasons.get(reason, 0) + int(count)
        for (tenant, _), units in list(self._charged.items()):
            of(tenant)["charged"] += units
        for (tenant, _), units in list(self._observed.items()):
            of(tenant)["observed"] += units
        return out

    def forget_tenants(self, keep: set[str]) -> None:
        """Drop the series of tenants removed by a reload, so memory stays bounded."""
        self.fold()
        for series in (*self.hot.counters.values(), self._queue_wait):
            for key in [k for k in series if k[0] not in keep and k[0] != "-"]:
                del series[key]

    def render(self) -> bytes:
        return generate_latest(self.registry)
