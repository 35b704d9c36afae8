"""The costliest query shapes per tenant: sliding window, bounded memory, merging. Time is passed in."""
from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import esapi
from proxy.config import HardLimits
from proxy.shapes import SLOTS, ShapeBook, merge_reports

WILDCARD = b'{"query":{"wildcard":{"message":"*rror"}}}'
TERM = b'{"query":{"term":{"user":"bob"}}}'


def request(body: bytes, target: str = "/acme-logs/_search"):
    call = esapi.parse_call("POST", target)
    return "POST", target, call, esapi.decode_body(call, body, "application/json", None, HardLimits())


def record(book: ShapeBook, fingerprint: int, now: float, observed: float | None, body: bytes = TERM,
           tenant: str = "acme", throttled: bool = False, estimated: float = 10.0, charged: float = 10.0) -> None:
    book.record(tenant, fingerprint, now, estimated, charged, observed, throttled, *request(body))


def test_the_costliest_shape_comes_first_with_its_redacted_example_and_means():
    book = ShapeBook(window_s=300, top=5)
    for i in range(10):
        record(book, 1, 100.0 + i, 2.0)  # cheap and frequent
    for i in range(3):
        record(book, 2, 100.0 + i, 400.0, WILDCARD, estimated=50.0, charged=50.0)
    record(book, 2, 105.0, None, WILDCARD, throttled=True, estimated=50.0, charged=0.0)
    report = book.report("acme", 110.0, learned=lambda fp: {2: 380.0}.get(fp))
    first, second = report["shapes"]
    assert first["fingerprint"] == f"{2:016x}" and first["endpoint"] == "search"
    assert first["example"] == 'POST /acme-logs/_search {"query":{"wildcard":{"message":"*?"}}}'
    assert (first["requests"], first["answered"], first["throttled"]) == (4, 3, 1)
    assert first["cost_observed_total"] == 1200.0 and first["cost_observed_mean"] == 400.0
    assert first["cost_estimated_mean"] == 50.0 and first["cost_charged_mean"] == 37.5
    assert first["cost_learned"] == 380.0
    assert second["requests"] == 10 and second["cost_observed_total"] == 20.0 and second["cost_learned"] is None
    assert "bob" not in second["example"]
    assert book.report("globex", 110.0)["shapes"] == []


def test_requests_leave_the_window_slot_by_slot():
    book = ShapeBook(window_s=100, top=5)  # 10 slots of 10 s
    record(book, 1, 5.0, 100.0)
    record(book, 2, 55.0, 10.0)
    assert [s["requests"] for s in book.report("acme", 99.0)["shapes"]] == [1, 1]
    # At 105 the slot [0, 10) is out of the window; the one at 55 stays until 150.
    assert [s["fingerprint"] for s in book.report("acme", 105.0)["shapes"]] == [f"{2:016x}"]
    assert book.report("acme", 150.0)["shapes"] == []
    # A tenant idle for a window holds nothing once it records again: old slots and examples are gone.
    record(book, 3, 400.0, 1.0)
    assert book.example("acme", 1) is None and book.example("acme", 2) is None
    assert len(book.slots("acme", 400.0)) == 1


def test_memory_is_bounded_and_the_heavy_shape_survives_a_flood_of_new_ones():
    book = ShapeBook(window_s=300, top=4)
    total_requests = 0
    for i in range(2000):
        now = 1000.0 + i * 0.1  # 200 s: 7 slots
        if i % 10 == 0:
            record(book, 7, now, 500.0, WILDCARD)
        else:
            record(book, 10_000 + i, now, 1.0)  # a new shape every time
        total_requests += 1
        for _, shapes, _ in book.slots("acme", now):
            assert len(shapes) <= 2 * book.top
    report = book.report("acme", 1200.0)
    assert report["shapes"][0]["fingerprint"] == f"{7:016x}"
    assert report["shapes"][0]["requests"] == 200  # never pruned: it is the costliest in every slot
    assert len(report["shapes"]) == 4
    counted = sum(s["requests"] for s in report["shapes"]) + report["other"]["requests"]
    assert counted == total_requests  # pruned requests are still counted, under "other"
    assert len(book._tenants["acme"].examples) <= SLOTS * 2 * book.top


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1000), st.floats(0, 600)), max_size=300))
def test_every_request_in_the_window_is_counted_once(events):
    book = ShapeBook(window_s=600, top=3)
    for fingerprint, observed, offset in sorted(events, key=lambda e: e[2]):
        record(book, fingerprint + 1, offset, observed)
    now = 600.0  # the window (0, 600]: slots from index 1 on; the slot [0, 60) has left it
    report = book.report("acme", now)
    inside = [e for e in events if e[2] >= 60.0]
    counted = sum(s["requests"] for s in report["shapes"]) + report["other"]["requests"]
    assert counted == len(inside)
    observed = sum(s["cost_observed_total"] for s in report["shapes"]) + report["other"]["cost_observed_total"]
    assert abs(observed - sum(e[1] for e in inside)) < 1e-6 * (1 + observed) + 0.01 * (len(report["shapes"]) + 1)


def test_slots_from_elsewhere_are_added_shape_by_shape():
    here, there = ShapeBook(300, 5), ShapeBook(300, 5)
    record(here, 1, 10.0, 100.0)
    record(there, 1, 12.0, 300.0)
    record(there, 2, 12.0, 1000.0, WILDCARD)
    extra = [(start, shapes, other, {fp: there.example("acme", fp) for fp in shapes})
             for start, shapes, other in there.slots("acme", 20.0)]
    report = here.report("acme", 20.0, extra=extra)
    assert [(s["fingerprint"], s["requests"], s["cost_observed_total"]) for s in report["shapes"]] == [
        (f"{2:016x}", 1, 1000.0), (f"{1:016x}", 2, 400.0)]
    assert report["shapes"][0]["example"].endswith('{"query":{"wildcard":{"message":"*?"}}}')


def test_worker_reports_merge_into_one():
    a, b = ShapeBook(300, 5), ShapeBook(300, 5)
    for _ in range(3):
        record(a, 1, 10.0, 100.0, estimated=20.0, charged=20.0)
    record(b, 1, 10.0, 200.0, estimated=40.0, charged=40.0)
    record(b, 2, 10.0, None, throttled=True)
    merged = merge_reports([orjson.loads(orjson.dumps(a.report("acme", 20.0, learned=lambda fp: 90.0))),
                            orjson.loads(orjson.dumps(b.report("acme", 20.0, learned=lambda fp: 110.0)))])
    first, second = merged["shapes"]
    assert (first["requests"], first["answered"], first["cost_observed_total"]) == (4, 4, 500.0)
    assert first["cost_observed_mean"] == 125.0 and first["cost_estimated_mean"] == 25.0
    assert first["cost_learned"] == 100.0
    assert (second["requests"], second["throttled"], second["cost_observed_mean"]) == (1, 1, None)
    assert merged["tenant"] == "acme"


def test_reload_drops_removed_tenants_and_a_new_window_starts_afresh():
    book = ShapeBook(300, 5)
    record(book, 1, 10.0, 1.0, tenant="acme")
    record(book, 1, 10.0, 1.0, tenant="gone")
    book.forget_tenants({"acme"})
    assert book.tenants() == ["acme"]
    book.configure(300, 8)
    assert book.report("acme", 11.0)["shapes"] and book.top == 8
    book.configure(60, 8)
    assert book.report("acme", 11.0)["shapes"] == [] and book.slot_s == 6.0
