"""Prometheus metrics.

Counters and histograms touched per request are bound to their label values once and cached, so
the hot path does a dict lookup and an increment. Levels that change constantly (bucket levels,
in-flight, queued, the global limit) are not updated per request at all: a collector reads them
from the live objects when /metrics is scraped.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class Metrics:
    """Every metric the proxy exports, in one registry per process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sluicegate_requests", "Requests by tenant, resource class, decision and reason",
            ["tenant", "resource", "decision", "reason"], registry=r,
        )
        self.responses = Counter(
            "sluicegate_responses", "Responses sent, by tenant and HTTP status code", ["tenant", "code"], registry=r
        )
        self.cost_estimated = Counter(
            "sluicegate_cost_estimated_units", "Cost units estimated before forwarding", ["tenant", "resource"], registry=r
        )
        self.cost_charged = Counter(
            "sluicegate_cost_charged_units", "Cost units charged up front", ["tenant", "resource"], registry=r
        )
        self.cost_observed = Counter(
            "sluicegate_cost_observed_units", "Cost units observed from responses (took x shards)",
            ["tenant", "resource"], registry=r,
        )
        self.queue_wait = Histogram(
            "sluicegate_queue_wait_seconds", "Time a request waited for budget and slots before forwarding",
            ["tenant"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.upstream_latency = Histogram(
            "sluicegate_upstream_latency_seconds", "Time from forwarding to the upstream's response headers",
            ["resource"], buckets=_LATENCY_BUCKETS, registry=r,
        )
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
        self.live = _LiveCollector()
        r.register(self.live)
        self._request_children: dict[tuple[str, str, str, str], object] = {}
        self._response_children: dict[tuple[str, int], object] = {}
        self._cost_children: dict[tuple[str, str], tuple[object, object, object]] = {}
        self._wait_children: dict[str, object] = {}
        self._latency_children: dict[str, object] = {}

    def add_live_gauge(self, name: str, doc: str, labels: tuple[str, ...], read) -> None:
        """Register a gauge whose samples `read()` yields at scrape time as (label values, value)."""
        self.live.gauges.append((name, doc, labels, read))

    def set_config(self, generation: int, digest: str) -> None:
        self.config_generation.set(generation)
        self.config_info.clear()
        self.config_info.labels(digest).set(1)

    # ---- per request: cached children ----
    def count_request(self, tenant: str, resource: str, decision: str, reason: str) -> None:
        key = (tenant, resource, decision, reason)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()

    def count_response(self, tenant: str, status: int) -> None:
        key = (tenant, status)
        child = self._response_children.get(key)
        if child is None:
            child = self._response_children[key] = self.responses.labels(tenant, str(status))
        child.inc()

    def count_cost(self, tenant: str, resource: str, estimated: float, charged: float, observed: float | None) -> None:
        key = (tenant, resource)
        children = self._cost_children.get(key)
        if children is None:
            children = self._cost_children[key] = (
                self.cost_estimated.labels(*key), self.cost_charged.labels(*key), self.cost_observed.labels(*key)
            )
        children[0].inc(estimated)
        children[1].inc(charged)
        if observed is not None:
            children[2].inc(observed)

    def observe_queue_wait(self, tenant: str, seconds: float) -> None:
        child = self._wait_children.get(tenant)
        if child is None:
            child = self._wait_children[tenant] = self.queue_wait.labels(tenant)
        child.observe(seconds)

    def observe_upstream(self, resource: str, seconds: float) -> None:
        child = self._latency_children.get(resource)
        if child is None:
            child = self._latency_children[resource] = self.upstream_latency.labels(resource)
        child.observe(seconds)

    def forget_tenants(self, keep: set[str]) -> None:
        """Drop cached label children of tenants removed by a reload, so memory stays bounded."""
        for cache in (self._request_children, self._response_children, self._cost_children):
            for key in [k for k in cache if k[0] not in keep and k[0] != "-"]:
                del cache[key]
        for key in [k for k in self._wait_children if k not in keep]:
            del self._wait_children[key]

    def render(self) -> bytes:
        return generate_latest(self.registry)
