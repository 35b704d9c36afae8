"""The status page's ring buffers: fixed memory, missing values, merging workers. Time is passed in."""
from __future__ import annotations

from proxy.history import History, merge_histories


def test_the_ring_keeps_the_last_points_oldest_first():
    history = History(points=4, step_s=2.0)
    for k in range(6):
        history.add(2.0 * k, {("gate", "inflight"): float(k)})
    got = history.since()
    assert got["t"] == [4.0, 6.0, 8.0, 10.0]
    assert got["series"] == [["gate", "inflight", [2.0, 3.0, 4.0, 5.0]]]
    assert history.since(6.0)["t"] == [8.0, 10.0]  # only what the page has not seen
    assert history.last(("gate", "inflight")) == 5.0 and history.last(("nope",)) is None


def test_a_series_new_or_missing_reads_as_null_and_forgotten_ones_go():
    history = History(points=5)
    history.add(0.0, {("tenant", "acme", "observed"): 1.0})
    history.add(2.0, {("tenant", "acme", "observed"): 2.0, ("tenant", "globex", "observed"): 7.5})
    history.add(4.0, {("tenant", "globex", "observed"): 8.0})
    series = {tuple(s[:-1]): s[-1] for s in history.since()["series"]}
    assert series[("tenant", "acme", "observed")] == [1.0, 2.0, None]
    assert series[("tenant", "globex", "observed")] == [None, 7.5, 8.0]
    history.forget(keep=[("tenant", "globex", "observed")], drop_prefix=("tenant",))
    assert [s[:-1] for s in history.since()["series"]] == [["tenant", "globex", "observed"]]


def test_workers_histories_add_up_at_equal_times():
    a, b = History(points=10), History(points=10)
    a.add(10.0, {("gate", "inflight"): 1.0})
    a.add(12.0, {("gate", "inflight"): 2.0})
    b.add(12.0, {("gate", "inflight"): 5.0, ("tenant", "acme", "queued"): 3.0})
    b.add(14.0, {("gate", "inflight"): 1.0})
    merged = merge_histories([a.since(), b.since()])
    assert merged["t"] == [10.0, 12.0, 14.0]
    series = {tuple(s[:-1]): s[-1] for s in merged["series"]}
    assert series[("gate", "inflight")] == [1.0, 7.0, 1.0]
    assert series[("tenant", "acme", "queued")] == [None, 3.0, None]
