"""The status page's data of one worker, and the supervisor's sums of several. Real workers, built in
process but not started (no sockets), and the real metrics they keep; times are passed in."""
from __future__ import annotations

import orjson
import pytest

from proxy.cockpit import Cockpit, iso, merge_shapes, merge_status, redis_location
from proxy.config import parse_config
from proxy.server import RESTART_ONLY, Worker, restart_notice
from proxy.shapes import ShapeBook
from proxy.shared_shapes import parse_publication, publication
from proxy.workers import merge_tenant_reports
from tests.processes import make_config, tenant


@pytest.fixture
def worker(tmp_path):
    doc = make_config(["http://127.0.0.1:9"], tenants={"acme": tenant("acme"), "globex": tenant("globex")})
    path = tmp_path / "sluicegate.yaml"
    path.write_bytes(orjson.dumps(doc))
    return Worker(path, parse_config(doc), "abc123")


def test_samples_turn_counters_into_rates_per_tenant(worker):
    cockpit: Cockpit = worker.cockpit
    cockpit.sample(1000.0)
    worker.metrics.count_cost("acme", "search", 10.0, 300.0, 200.0)
    worker.metrics.count_request("acme", "search", "throttled", "budget")
    worker.metrics.count_request("acme", "search", "throttled", "concurrency")
    worker.metrics.count_request("globex", "search", "would_throttle", "budget")
    cockpit.sample(1002.0)
    status = cockpit.status(since=1000.0)
    acme = status["tenants"]["acme"]
    assert (acme["charged_per_s"], acme["observed_per_s"]) == (150.0, 100.0)
    assert acme["throttled"] == {"budget": 1, "concurrency": 1}
    assert status["tenants"]["globex"]["would_throttle"] == {"budget": 1}
    history = status["history"]
    assert history["t"] == [1002.0]  # only what came after `since`
    series = {tuple(s[:-1]): s[-1] for s in history["series"]}
    assert series[("tenant", "acme", "throttled")] == [1.0] and series[("tenant", "globex", "throttled")] == [0.5]
    assert series[("tenant", "acme", "observed")] == [100.0] and series[("gate", "limit")][0] > 0
    assert status["redis"] == {"mode": "local"} and status["config"]["generation"] == 1
    cockpit.sample(1004.0)  # nothing happened since: the rates fall to zero
    assert cockpit.status(since=1002.0)["tenants"]["acme"]["observed_per_s"] == 0.0


def test_the_supervisor_adds_workers_up(worker, tmp_path):
    other = Worker(worker.config_path, worker.proxy.snapshot.config, "abc123", worker_index=1, workers=2)
    for w, charged in ((worker, 100.0), (other, 50.0)):
        w.cockpit.sample(10.0)
        w.metrics.count_cost("acme", "search", 1.0, charged, charged)
        w.metrics.count_request("acme", "search", "throttled", "budget")
        w.cockpit.sample(12.0)
    merged = merge_status([orjson.loads(orjson.dumps(w.cockpit.status(-1.0))) for w in (worker, other)])
    acme = merged["tenants"]["acme"]
    assert merged["workers"] == 2 and acme["charged_per_s"] == 75.0 and acme["throttled"] == {"budget": 2}
    level = worker.limiter.level("acme", "search") + other.limiter.level("acme", "search")
    assert acme["buckets"]["search"]["level"] == pytest.approx(level)
    series = {tuple(s[:-1]): s[-1] for s in merged["history"]["series"]}
    assert merged["history"]["t"] == [10.0, 12.0] and series[("tenant", "acme", "charged")] == [0.0, 75.0]
    reports = [{"tenants": {"acme": {"throttled": 1, "throttled_by_reason": {"budget": 1}, "buckets": {}}}},
               {"tenants": {"acme": {"throttled": 2, "throttled_by_reason": {"budget": 1, "overload": 1},
                                     "buckets": {}}}}]
    tenants = merge_tenant_reports(reports)["tenants"]
    assert tenants["acme"]["throttled"] == 3 and tenants["acme"]["throttled_by_reason"] == {"budget": 2, "overload": 1}


def test_shapes_of_workers_add_up_unless_redis_already_did():
    one = {"tenant": "acme", "window_s": 300.0, "scope": "local", "other": {},
           "shapes": [{"fingerprint": "00000000000000aa", "endpoint": "search", "example": "POST /x", "requests": 2,
                       "answered": 2, "throttled": 0, "cost_observed_total": 10.0, "cost_observed_mean": 5.0,
                       "cost_estimated_mean": 4.0, "cost_charged_mean": 4.0, "cost_learned": 5.0}]}
    merged = merge_shapes([one, one])
    assert merged["shapes"][0]["requests"] == 4 and merged["workers"] == 2
    shared = {**one, "scope": "shared"}
    assert merge_shapes([shared, shared]) is shared


def test_a_publication_travels_on_wall_clock_time_and_ages_out_of_the_window():
    book = ShapeBook(window_s=300, top=2)
    for fingerprint, observed in ((1, 100.0), (2, 50.0), (3, 1.0)):
        book.record("acme", fingerprint, 1000.0, 5.0, 5.0, observed, False, "POST", "/acme-logs/_search", None, None)
    data = publication(book, "acme", 1001.0, wall_offset=5_000.0)  # this clock reads 5,000 s behind Unix time
    # Another process whose clock reads 2,000 s behind: the slot lands at the same Unix time.
    extra = parse_publication(data, now_wall=6_010.0, window_s=300, wall_offset=2_000.0)
    assert len(extra) == 1
    start, shapes, other, examples = extra[0]
    assert start == 990.0 + 5_000.0 - 2_000.0  # the slot [990, 1020) on the other clock
    assert set(shapes) == {1, 2} and other[0] == 1  # the top 2; the third folded into "other"
    assert examples[1] == ("-", "POST /acme-logs/_search")
    assert parse_publication(data, now_wall=6_400.0, window_s=300, wall_offset=0.0) == []  # left the window
    assert parse_publication(b"not json", 0.0, 300, 0.0) == [] and parse_publication(b'{"v":1}', 0.0, 300, 0.0) == []


def test_restart_notice_compares_with_the_running_values_and_reads_as_a_sentence(worker):
    config = worker.proxy.snapshot.config
    running = {name: getattr(config, name) for name in RESTART_ONLY}
    assert restart_notice(running, config) is None
    moved = config.model_copy(update={"listen": config.admin_listen.model_copy(update={"port": 1})})
    assert restart_notice(running, moved) == (
        f"a restart is needed for listen to move from {config.listen} to {moved.listen}; the rest of the file is in force")
    with_redis = parse_config({**orjson.loads(worker.config_path.read_bytes()), "redis": {"url": "redis://h:1/0"}})
    both = with_redis.model_copy(update={"listen": moved.listen})
    assert restart_notice(running, both) == (
        f"a restart is needed for listen to move from {config.listen} to {moved.listen} and for the new redis section "
        "to take effect (limits stay in this process until then); the rest of the file is in force")


def test_display_helpers():
    assert iso(0.5) == "1970-01-01T00:00:00.500Z"
    assert redis_location("redis://user:secret@cache:6379/0") == "redis://cache:6379"
    assert redis_location("unix:///run/redis.sock") == "unix:///run/redis.sock"
