"""Metrics: the per-request counters render as proper Prometheus series."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_and_histograms_render_with_their_labels():
    m = Metrics()
    for _ in range(3):
        m.count_request("acme", "search", "admitted", "")
    m.count_request("acme", "search", "throttled", "budget")
    m.count_response("acme", 429)
    m.count_cost("acme", "search", 2.0, 3.0, None)
    m.count_cost("acme", "search", 2.0, 3.0, 10.0)
    for seconds in (0.0005, 0.003, 0.003, 7.0, 99.0):
        m.observe_upstream("search", seconds)
    got = samples(m)
    assert got[("sluicegate_requests_total", (("decision", "admitted"), ("reason", ""), ("resource", "search"),
                                              ("tenant", "acme")))] == 3
    assert got[("sluicegate_responses_total", (("code", "429"), ("tenant", "acme")))] == 1
    assert got[("sluicegate_cost_charged_units_total", (("resource", "search"), ("tenant", "acme")))] == 6
    assert got[("sluicegate_cost_observed_units_total", (("resource", "search"), ("tenant", "acme")))] == 10
    bucket = lambda le: got[("sluicegate_upstream_latency_seconds_bucket", (("le", le), ("resource", "search")))]
    assert (bucket("0.001"), bucket("0.005"), bucket("10.0"), bucket("+Inf")) == (1, 3, 4, 5)  # cumulative
    assert got[("sluicegate_upstream_latency_seconds_count", (("resource", "search"),))] == 5
    assert abs(got[("sluicegate_upstream_latency_seconds_sum", (("resource", "search"),))] - 106.0065) < 1e-9


def test_a_request_counted_in_one_call_adds_to_every_counter_it_would_have_touched_one_by_one():
    one_by_one, at_once = Metrics(), Metrics()
    requests = [("acme", "search", "admitted", "", 200, 2.0, 3.0, 10.0), ("acme", "search", "admitted", "", 200, 2.0, 3.0, None),
                ("acme", "search", "throttled", "budget", 429, 2.0, 0.0, None), ("globex", "read", "admitted", "", 404, 1.0, 1.0, 0.5)]
    for i, (tenant, resource, decision, reason, status, estimated, charged, observed) in enumerate(requests):
        one_by_one.count_request(tenant, resource, decision, reason)
        one_by_one.count_response(tenant, status)
        if charged or observed is not None:
            one_by_one.count_cost(tenant, resource, estimated, charged, observed)
        at_once.count(tenant, resource, decision, reason, status, estimated, charged, observed)
        if i == 1:  # a scrape between requests: what came before is folded, what comes after adds to it
            assert samples(at_once) == samples(one_by_one)
    assert samples(at_once) == samples(one_by_one)
    assert at_once.tenant_totals() == one_by_one.tenant_totals()
    assert at_once.tenant_totals()["acme"]["decisions"] == {"admitted": {"": 2}, "throttled": {"budget": 1}}


def test_removed_tenants_are_forgotten_but_unauthenticated_series_stay():
    m = Metrics()
    for name in ("acme", "gone", "-"):
        m.count_request(name, "search", "admitted", "")
        m.observe_queue_wait(name, 0.01)
    m.forget_tenants({"acme"})
    tenants = {dict(labels).get("tenant") for (name, labels) in samples(m) if name == "sluicegate_requests_total"}
    assert tenants == {"acme", "-"}
    assert not any(dict(labels).get("tenant") == "gone" for (name, labels) in samples(m))


def test_live_gauges_are_read_at_scrape_time():
    m = Metrics()
    level = {"v": 5.0}
    m.add_live_gauge("sluicegate_bucket_level_cost_units", "level", ("tenant",), lambda: [(("acme",), level["v"])])
    assert samples(m)[("sluicegate_bucket_level_cost_units", (("tenant", "acme"),))] == 5.0
    level["v"] = -2.5
    assert samples(m)[("sluicegate_bucket_level_cost_units", (("tenant", "acme"),))] == -2.5


def test_no_created_series_and_cost_unit_gauges_say_so_in_their_names(tmp_path):
    """Every metric a worker registers (with Redis configured, so the Redis ones too): no `_created`
    series, and a gauge measured in cost units ends in `_cost_units`."""
    import orjson

    from proxy.config import parse_config
    from proxy.server import Worker
    from tests.processes import make_config

    doc = make_config(["http://127.0.0.1:9"], redis={"url": "redis://127.0.0.1:9/0"})
    path = tmp_path / "sluicegate.yaml"
    path.write_bytes(orjson.dumps(doc))
    worker = Worker(path, parse_config(doc), "abc")
    worker.metrics.config_reloads.inc()
    worker.metrics.upstream_errors.labels("http://127.0.0.1:9", "timeout").inc()
    worker.metrics.count_request("acme", "search", "admitted", "")
    text = worker.metrics.render().decode()
    assert "_created" not in text
    families = list(text_string_to_metric_families(text))
    gauges = {f.name: f.documentation for f in families if f.type == "gauge"}
    assert {"sluicegate_bucket_level_cost_units", "sluicegate_gate_inflight_cost_units",
            "sluicegate_gate_capacity_cost_units", "sluicegate_redis_leased_cost_units"} <= set(gauges)
    for name, doc_text in gauges.items():
        if "cost units" in doc_text.lower():
            assert name.endswith("_cost_units"), name
