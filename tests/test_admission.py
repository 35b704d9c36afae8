"""Admission: tenant slots, the global gate, the fair queue, cluster health, cancellation.

Pure logic with time passed in (`now`), except where `Admission.enter` itself is under test. The
adaptive limit is shown converging against a discrete-event model of a cluster's thread pools.
"""
from __future__ import annotations

import asyncio
import heapq
import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.admission import CONTENDED_HOLD_S, REASONS, Admission, ClusterReading, Ticket, Waiter
from proxy.config import hash_secret, parse_config
from proxy.cost_observed import Observed
from proxy.errors import Throttled
from proxy.gate import CORE_BOUND_CHEAP
from proxy.tenants import Directory


def config(tenants: dict[str, dict] | None = None, **admission):
    """A config with one plan per tenant: each tenant's dict holds its plan's fields."""
    tenants = tenants if tenants is not None else {"acme": {}}
    plans = {
        name: {"max_concurrent": 1000, "max_queue": 1000, "max_wait_ms": 10_000, **plan}
        for name, plan in tenants.items()
    }
    return parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9"]},
        # The contended headroom is off unless a test asks for it: the headroom is what the test says.
        "admission": {"min_limit": 1, "max_limit": 1000, "capacity_headroom_contended": None, **admission},
        "plans": plans,
        "tenants": {
            name: {"plan": name, "api_keys": [hash_secret(f"{name}-key")], "indices": [f"{name}-*"]}
            for name in tenants
        },
    })


def admission(tenants=None, threads: int | None = None, now: float = 0.0, **settings) -> Admission:
    adm = Admission(clock=lambda: now)
    adm.configure(config(tenants, **settings))
    if threads is not None:
        adm.observe_cluster(ClusterReading(data_nodes=3, search_threads=threads), now)
    return adm


def learn_horizon(adm: Admission, latency_ms: float, now: float = 0.0) -> None:
    """Teach the gate how long cost stays in flight, with enough completions to settle the EWMAs."""
    for _ in range(400):
        ticket = adm.request(next(iter(adm.tenants)), latency_ms, now)
        assert isinstance(ticket, Ticket)
        adm.leave(ticket, 200, latency_ms / 1000, latency_ms, now=now)


def granted(adm: Admission, tenant: str, cost: float, now: float = 0.0) -> Ticket:
    got = adm.request(tenant, cost, now)
    assert isinstance(got, Ticket), f"{tenant} was queued"
    return got


def queued(adm: Admission, tenant: str, cost: float, now: float = 0.0, log: list | None = None) -> Waiter:
    got = adm.request(tenant, cost, now)
    assert isinstance(got, Waiter), f"{tenant} was admitted"
    if log is not None:
        got.on_grant = lambda ticket: log.append(ticket)
    return got


def assert_idle(adm: Admission) -> None:
    adm.expire_presence(math.inf)  # tenants seen lately count in the fair shares until PRESENCE_S passes
    gate = adm.gate
    assert (gate.inflight, gate.inflight_cost, gate.queued) == (0, 0.0, 0)
    assert (gate.reserve_inflight, gate.reserve_cost) == (0, 0.0)
    assert (gate.overdue_cost, adm._overdue, adm._held) == (0.0, 0.0, {})
    for slots in adm.tenants.values():
        assert (slots.inflight, slots.inflight_cost, slots.active) == (0, 0.0, False)
        assert (slots.queued, slots.queued_cost) == (0, 0.0)
        assert (slots.reserve_inflight, slots.reserve_cost) == (0, 0.0)
    assert adm._backlog == {} and adm._reserve_holders == {} and adm._active_count == 0 and adm._active_weight == 0.0


# ============================================================================================
# Tenant slots and queues
# ============================================================================================


def test_a_tenant_holds_at_most_max_concurrent_and_queues_at_most_max_queue():
    adm = admission({"acme": {"max_concurrent": 2, "max_queue": 2}}, enabled=False)
    first, second = granted(adm, "acme", 1), granted(adm, "acme", 1)
    log: list[Ticket] = []
    w1, w2 = queued(adm, "acme", 1, log=log), queued(adm, "acme", 1, log=log)
    with pytest.raises(Throttled) as refused:
        adm.request("acme", 1, 0.0)
    assert refused.value.label == "concurrency" and refused.value.headers["Retry-After"] == "10"
    assert "2 requests in flight and 2 queued" in refused.value.reason
    adm.leave(first, 200, 0.01, 1, now=0.5)
    assert log == [w1.ticket] and w1.ticket.waited == 0.5 and w2.ticket is None  # FIFO, handed over directly
    adm.leave(second, now=1.0)
    adm.leave(w1.ticket, now=1.0)
    adm.leave(w2.ticket, now=1.0)
    assert adm.tenants["acme"].admitted == 4 and adm.tenants["acme"].throttled == 1
    assert_idle(adm)


def test_a_plan_without_waiting_refuses_at_once_instead_of_queueing():
    adm = admission({"acme": {"max_concurrent": 1, "max_wait_ms": 0}}, enabled=False)
    ticket = granted(adm, "acme", 1)
    with pytest.raises(Throttled) as refused:
        adm.request("acme", 1, 0.0)
    assert refused.value.label == "concurrency" and refused.value.headers["Retry-After"] == "1"
    adm.leave(ticket)
    assert_idle(adm)


def test_the_gate_queue_has_a_bound_beyond_which_requests_get_overload():
    adm = admission({"acme": {"max_concurrent": 1}, "globex": {"max_concurrent": 1}}, max_queue=2, enabled=False)
    held = [granted(adm, "acme", 1), granted(adm, "globex", 1)]
    waiting = [queued(adm, "acme", 1), queued(adm, "globex", 1)]
    with pytest.raises(Throttled) as refused:
        adm.request("acme", 1, 0.0)
    assert refused.value.label == "overload" and "2 requests are queued at the gate" in refused.value.reason
    for ticket in held:
        adm.leave(ticket)
    for waiter in waiting:
        adm.leave(waiter.ticket)
    assert_idle(adm)


# ============================================================================================
# The gate: limit and capacity
# ============================================================================================


def test_capacity_is_threads_times_how_long_cost_stays_in_flight():
    adm = admission(threads=12)
    assert adm.gate.capacity_per_s == 12_000  # 1 cost unit = 1 ms of one search thread
    assert adm.gate.capacity_cost == 12 * 1000.0  # no latency measured yet: one second's worth
    learn_horizon(adm, 250.0)
    assert adm.gate.horizon_ms == pytest.approx(250.0)
    assert adm.gate.capacity_cost == pytest.approx(12 * 250.0)  # the threads hold 3000 units in flight
    assert adm.gate.limit == pytest.approx(12.0)  # as many requests as threads (one thread each)
    assert adm.report()["reason"] == "capacity"


def test_in_flight_cost_stays_within_headroom_for_a_tenant_over_its_share():
    adm = admission({"acme": {}}, threads=10, capacity_headroom=0.5)
    learn_horizon(adm, 100.0)  # capacity: 10 threads x 100 ms = 1000 units in flight
    tickets = [granted(adm, "acme", 100) for _ in range(5)]
    queued(adm, "acme", 100)  # 500 of 1000 in flight: the headroom is kept
    assert adm.gate.inflight_cost == pytest.approx(500)
    for ticket in tickets:
        adm.leave(ticket, 200, 0.1, 100)


def test_cheap_requests_fit_where_an_expensive_one_does_not():
    adm = admission({"storm": {}, "quiet": {}}, threads=10, capacity_headroom=0.5)
    learn_horizon(adm, 100.0)
    storm = [granted(adm, "storm", 240), granted(adm, "storm", 240)]  # 480 of the 500 over-share units
    queued(adm, "storm", 240)
    # a quiet tenant under its share may use the headroom kept beyond 500 units, up to the full limit
    quiet = [granted(adm, "quiet", 5) for _ in range(8)]
    assert adm.gate.inflight_cost == pytest.approx(520) and adm.gate.inflight == adm.gate.limit == 10
    queued(adm, "quiet", 5)
    for ticket in storm + quiet:
        adm.leave(ticket, 200, 0.1, 100)


def test_requests_in_flight_longer_than_their_cost_implies_count_as_what_they_have_spent():
    adm = admission({"storm": {}, "quiet": {}}, threads=10, capacity_headroom=0.5)
    learn_horizon(adm, 100.0)  # capacity 1000 units in flight, 500 for tenants over their share; 1 thread each
    quiet = granted(adm, "quiet", 5)
    first = granted(adm, "storm", 300)  # over its share (250 of 500): counted in the over-share room
    assert not first.in_reserve
    # Soon after, a second fits beside it (5 + 300 + 150 <= 500) ...
    early = granted(adm, "storm", 150, now=0.01)
    adm.leave(early, 200, 0.01, 150, now=0.01)
    adm.leave(quiet, 200, 0.01, 5, now=0.01)
    quiet = granted(adm, "quiet", 5, now=0.99)  # keeps the storming tenant over its share
    # ... but once the first has held a thread for a second, it has spent 1000 units, not 300: no more
    # over-share work goes in until it leaves, while the quiet tenant under its share still gets in.
    log: list[Ticket] = []
    queued(adm, "storm", 150, now=1.0, log=log)
    assert adm.gate.overdue_cost == pytest.approx(500)  # at most the over-share room
    assert adm.report(now=1.0)["overdue_cost"] == pytest.approx(500)
    more_quiet = granted(adm, "quiet", 5, now=1.0)
    adm.leave(first, 200, 1.0, 1000, now=1.0)
    assert len(log) == 1 and adm.gate.overdue_cost == 0.0
    for ticket in (quiet, more_quiet, log[0]):
        adm.leave(ticket, 200, 0.01, 5, now=1.0)
    assert_idle(adm)


def _fill(adm: Admission, tenant: str, cost: float, now: float) -> tuple[list[Ticket], Waiter]:
    """Requests of `tenant` until one has to wait: the admitted ones and the waiter."""
    admitted = []
    while isinstance(got := adm.request(tenant, cost, now), Ticket):
        admitted.append(got)
    return admitted, got


def test_a_quiet_tenant_seen_recently_narrows_the_over_share_room_before_it_ever_waits():
    adm = admission({"storm": {}, "quiet": {}}, threads=10, capacity_headroom=0.8, capacity_headroom_contended=0.5)
    learn_horizon(adm, 100.0)  # limit 10 requests, 1 thread each
    first_quiet = granted(adm, "quiet", 5)
    adm.leave(first_quiet, 200, 0.01, 5, now=0.0)  # answered at once: it never waited
    storm, waiting = _fill(adm, "storm", 100, now=1.0)
    # the storm's first wave already leaves half the limit to the quiet tenant, not a fifth
    assert len(storm) == 5 and adm.report(now=1.0)["contended"] is True
    adm.withdraw(waiting, now=1.0)
    for ticket in storm:
        adm.leave(ticket, 200, 0.1, 100, now=1.1)
    # CONTENDED_HOLD_S after the quiet tenant was last seen, the storming tenant is alone: 0.8 of the limit.
    storm, waiting = _fill(adm, "storm", 100, now=1.0 + CONTENDED_HOLD_S)
    assert len(storm) == 8 and adm.report(now=1.0 + CONTENDED_HOLD_S)["contended"] is False
    adm.withdraw(waiting, now=6.5)
    for ticket in storm:
        adm.leave(ticket, 200, 0.1, 100, now=6.5)
    assert_idle(adm)


def test_a_quiet_tenant_that_has_to_wait_shrinks_the_over_share_room_for_a_while():
    adm = admission({"storm": {}, "quiet": {}}, threads=10, capacity_headroom=0.8, capacity_headroom_contended=0.5)
    learn_horizon(adm, 100.0)  # limit 10 requests, 1 thread each
    storm, waiting = _fill(adm, "storm", 100, now=0.0)
    assert len(storm) == 8  # alone: 8 of 10 for a tenant over its share
    assert adm.report(now=0.0)["contended"] is False
    first_quiet = granted(adm, "quiet", 5, now=0.1)  # the kept room is the quiet tenant's ...
    quiet, quiet_waiting = _fill(adm, "quiet", 5, now=0.1)  # ... it fills; the next one waits ...
    report = adm.report(now=0.1)
    assert report["contended"] is True and report["capacity_headroom"] == 0.5  # ... and the room grows
    adm.withdraw(waiting, now=0.1)
    for ticket in storm:
        adm.leave(ticket, 200, 0.1, 100, now=0.2)
    assert quiet_waiting.ticket is not None
    # While contended, tenants over their share get half the limit, not 0.8 of it (the storm goes on without
    # a pause: a burst after one could borrow the kept room while the quiet tenant does not wait).
    storm, waiting = _fill(adm, "storm", 100, now=0.2)
    assert len(storm) == 2  # its own share (250 of 1,000 units), and no over-share room beside the quiet four
    adm.withdraw(waiting, now=0.2)
    for ticket in [first_quiet, *quiet, quiet_waiting.ticket, *storm]:
        adm.leave(ticket, 200, 0.1, 5, now=0.4)
    assert_idle(adm)
    # Alone, but within CONTENDED_HOLD_S of the quiet tenant's wait: half the limit.
    storm, waiting = _fill(adm, "storm", 100, now=1.0)
    assert len(storm) == 5 and adm.report(now=1.0)["contended"] is True
    adm.withdraw(waiting, now=1.0)
    for ticket in storm:
        adm.leave(ticket, 200, 0.1, 100, now=1.0)
    # CONTENDED_HOLD_S after the quiet tenant last waited: the storming tenant alone gets 0.8 again.
    storm, waiting = _fill(adm, "storm", 100, now=0.1 + CONTENDED_HOLD_S)
    assert len(storm) == 8
    assert adm.report(now=0.1 + CONTENDED_HOLD_S)["contended"] is False
    adm.withdraw(waiting, now=5.2)
    for ticket in storm:
        adm.leave(ticket, 200, 0.1, 100, now=5.2)
    assert_idle(adm)


def test_a_lone_tenant_with_a_backlog_never_narrows_its_own_room():
    adm = admission({"busy": {"max_queue": 500}, "idle": {}}, threads=10, capacity_headroom=0.8,
                    capacity_headroom_contended=0.5)
    learn_horizon(adm, 100.0)
    # Cheap requests: all of them together stay within its share (everything), so each one that waits
    # for the count limit is a request under its share waiting — but behind nobody's over-share room.
    busy, waiting = _fill(adm, "busy", 5, now=0.0)
    backlog = [waiting] + [queued(adm, "busy", 5, now=0.1) for _ in range(30)]
    assert adm.report(now=0.1)["contended"] is False and adm.gate.headroom == 0.8
    for waiter in reversed(backlog):
        adm.withdraw(waiter, now=0.2)
    for ticket in busy:
        adm.leave(ticket, 200, 0.1, 5, now=0.2)
    assert_idle(adm)


def test_a_request_in_flight_as_long_as_its_cost_implies_is_not_overdue():
    adm = admission({"storm": {}, "quiet": {}}, threads=10, capacity_headroom=0.5)
    learn_horizon(adm, 100.0)
    first = granted(adm, "storm", 300)
    adm.refresh_overdue(0.5)  # 500 spent: under twice the 300 it counts as
    assert first.overdue == 0.0 and adm.gate.overdue_cost == 0.0
    adm.refresh_overdue(0.7)
    assert first.overdue == pytest.approx(400) and adm.gate.overdue_cost == pytest.approx(400)
    cheap = granted(adm, "quiet", 0.01, now=0.7)
    adm.refresh_overdue(0.74)  # 40 ms: a round trip, however cheap the request, is never overdue
    assert cheap.overdue == 0.0
    for ticket in (first, cheap):
        adm.leave(ticket, now=0.8)
    assert_idle(adm)


def test_tenants_that_came_first_do_not_keep_the_room_kept_for_quiet_tenants():
    """A storming tenant alone asks for no more than its share (everything), so it may fill the kept
    room; so may the next ones, each to its share at its arrival, up to what the pools can run. Once
    all are active they are over their shares, and every slot they free goes to the quiet tenant."""
    tenants = {f"storm{i}": {"max_concurrent": 16} for i in range(4)} | {"quiet": {}}
    adm = admission(tenants, threads=20, capacity_headroom=0.5)
    learn_horizon(adm, 800.0)
    storm: list[Ticket] = []
    for i in range(4):
        for _ in range(16):
            got = adm.request(f"storm{i}", 800, 0.0)
            if isinstance(got, Ticket):
                storm.append(got)
            else:
                got.on_grant = storm.append
    assert adm.gate.inflight == 20  # the pools are full, never more
    log: list[Ticket] = []
    quiet = [queued(adm, "quiet", 20, log=log) for _ in range(4)]
    for ticket in storm[:4]:
        adm.leave(ticket, 200, 0.8, 800, now=0.8)
    assert [t.tenant for t in log] == ["quiet"] * 4 and len(storm) == 20  # every freed slot went to it
    assert adm.gate.reserve_inflight == 4 and not any(t.in_reserve for t in storm)
    for ticket in storm[4:] + [w.ticket for w in quiet]:
        adm.leave(ticket, now=1.0)


def test_a_tenants_share_is_never_less_than_two_average_requests():
    """Fourteen tenants on six threads: a fair share (64 units in flight) is less than one cheap search
    (150). A tenant asking for no more than two average requests (600 units here) is still within its
    share — a steady tenant's next search may arrive while its last is in flight; asking for more than
    that in all, or one request costlier than that alone, is not."""
    adm = admission({f"t{i}": {} for i in range(13)} | {"good": {}}, threads=6, capacity_headroom=0.5)
    learn_horizon(adm, 300.0)  # requests of 300 units: capacity 1,800 units in flight, 64 per tenant's share
    for i in range(13):
        adm.leave(granted(adm, f"t{i}", 1), now=0.0)  # everyone present
    expensive = granted(adm, "t0", 700)
    good = [granted(adm, "good", cost) for cost in (150, 100, 300)]
    assert all(ticket.in_reserve for ticket in good) and not expensive.in_reserve
    more = queued(adm, "good", 100)  # over its share now: it waits for the over-share room
    adm.withdraw(more, now=0.0)
    for ticket in (*good, expensive):
        adm.leave(ticket, now=0.0)
    # Lately the average request costs 10 units: the same lone search is over a share now.
    for _ in range(100):
        adm.leave(granted(adm, "good", 10, now=20.0), 200, 0.01, 10, now=20.0)
    assert adm.gate.mean_cost == pytest.approx(10, rel=0.01)
    for i in range(13):
        adm.leave(granted(adm, f"t{i}", 1, now=20.0), now=20.0)  # everyone still present
    alone = granted(adm, "t0", 150, now=20.0)
    assert not alone.in_reserve
    adm.leave(alone, now=20.0)
    assert_idle(adm)


STORM_TENANTS = [f"storm{i}" for i in range(10)]
GOOD_TENANTS = ["dashboard", "shop", "billing", "support"]


def small_storming_cluster() -> Admission:
    """The real clusters of bench/storm.py: fourteen tenants on six search threads (three nodes of two),
    searches on two shards, ten of the tenants storming. The gate has learned the storm's mix: one storm
    search of 2,000 units taking 1.5 s per seven cheap ones of 80 units taking 60 ms (an average request
    costs 320 units; capacity 6 × 1,185 ms). Over-share work gets one request in flight (6 threads ÷ 2
    shards × 0.5), and everyone has been seen lately."""
    adm = admission({name: {} for name in STORM_TENANTS + GOOD_TENANTS}, threads=6, capacity_headroom=0.5)
    for _ in range(20):
        adm.leave(granted(adm, "storm0", 2000), 200, 1.5, searched(2000, 2), now=0.0)
        for _ in range(7):
            adm.leave(granted(adm, "shop", 80), 200, 0.06, searched(80, 2), now=0.0)
    for name in STORM_TENANTS + GOOD_TENANTS:
        adm.leave(granted(adm, name, 1), now=0.0)
    adm.observe_cluster(ClusterReading(data_nodes=3, search_threads=6), 0.0)  # the ceiling: 6 ÷ 1.33 threads
    gate = adm.gate
    assert gate.mean_cost == pytest.approx(320) and gate.fan_out == 2 and gate.limit == pytest.approx(4.5)
    assert gate.over_share_limit == 1.5
    return adm


def test_a_small_burst_over_its_share_borrows_the_idle_kept_room_instead_of_waiting_behind_the_storm():
    """A dashboard's burst of five cheap searches asks for more than two average requests in all, so its last
    searches are over its share; they used to wait for the over-share room — that is, for the storm's
    search of 1.5 s to finish. A burst (busy for at most BORROW_BURST_S, after a pause) borrows the idle
    kept room while nobody under their share waits: each search waits at most for a cheap one to leave the
    pools. The storm, busy without a pause, still waits for the over-share room."""
    adm = small_storming_cluster()
    storm = granted(adm, "storm0", 2000)  # the storm is busy from 0.0 on
    assert not storm.in_reserve
    storm_next = queued(adm, "storm1", 2000)
    log: list[Ticket] = []
    burst = [adm.request("dashboard", 150, 1.0) for _ in range(5)]  # a second after the dashboard's last search
    admitted = [got for got in burst if isinstance(got, Ticket)]
    waiting = [got for got in burst if isinstance(got, Waiter)]
    assert len(admitted) == 3 and len(waiting) == 2  # the pools hold 4 requests: the storm's and three cheap ones
    for waiter in waiting:
        waiter.on_grant = log.append
    adm.leave(admitted[0], 200, 0.06, searched(150, 2), now=1.06)
    assert log == [waiting[0].ticket] and waiting[0].ticket.in_reserve  # borrowed, the storm still in flight
    assert storm_next.ticket is None and storm.held
    adm.leave(admitted[1], 200, 0.06, searched(150, 2), now=1.07)
    assert log == [waiting[0].ticket, waiting[1].ticket]
    for ticket in [admitted[2], *log, storm]:
        adm.leave(ticket, now=1.5)
    assert storm_next.ticket is not None  # the over-share room, once the burst is gone
    adm.leave(storm_next.ticket, now=1.6)
    assert_idle(adm)


def test_borrowed_room_goes_back_to_a_tenant_under_its_share_and_a_busy_storm_never_borrows():
    adm = small_storming_cluster()
    storm = granted(adm, "storm0", 2000)
    first = granted(adm, "storm2", 200)  # within two average requests: the kept room
    assert first.in_reserve
    # Storming tenants busy since 0.0 are no burst: with the smallest tags, they still do not borrow.
    storm_backlog = [queued(adm, "storm1", 2000), queued(adm, "storm2", 2000)]
    burst = [adm.request("dashboard", 150, 1.0) for _ in range(5)]
    admitted = [got for got in burst if isinstance(got, Ticket)]
    dashboard_next = [got for got in burst if isinstance(got, Waiter)]
    assert len(admitted) == 2
    adm.leave(first, 200, 1.0, searched(200, 2), now=1.05)
    borrowed = dashboard_next[0].ticket
    assert borrowed is not None and borrowed.in_reserve  # the dashboard's, behind the storm's tags
    assert all(waiter.ticket is None for waiter in storm_backlog)
    # A quiet tenant's search needs the room: the dashboard's borrowed searches count as over-share ones now,
    # and the next search to leave the pools makes room for the quiet tenant, not for the dashboard.
    shop = queued(adm, "shop", 80, now=1.07)
    assert not borrowed.in_reserve
    adm.leave(admitted[0], 200, 0.06, searched(150, 2), now=1.08)
    assert shop.ticket is not None and shop.ticket.in_reserve and dashboard_next[1].ticket is None
    assert all(waiter.ticket is None for waiter in storm_backlog)
    for ticket in (admitted[1], borrowed, shop.ticket):
        adm.leave(ticket, 200, 0.06, searched(150, 2), now=1.1)
    assert all(waiter.ticket is not None for waiter in dashboard_next[1:])
    assert all(waiter.ticket is None for waiter in storm_backlog)
    for waiter in dashboard_next[1:]:
        adm.leave(waiter.ticket, now=1.2)
    for waiter in storm_backlog:
        adm.withdraw(waiter, now=1.2)
    adm.leave(storm, now=1.5)
    assert_idle(adm)


def test_a_tenant_not_seen_before_its_first_requests_borrows_nothing():
    """A storm's onset: tenants new to the cluster (not seen within PRESENCE_S) are not a burst of a known
    tenant; their over-share requests wait for the over-share room even while the kept room is idle."""
    adm = small_storming_cluster()
    for name in ["storm0"] + GOOD_TENANTS:
        adm.leave(granted(adm, name, 1, now=9.0), now=9.0)  # seen lately; storm1 was last seen at 0.0
    storm = granted(adm, "storm0", 2000, now=10.0)
    newcomer = [adm.request("storm1", 400, 10.0) for _ in range(3)]
    assert [type(got) for got in newcomer] == [Ticket, Waiter, Waiter]  # its share of six present: ~590 units
    adm.leave(storm, now=11.0)
    for waiter in newcomer[1:]:
        adm.withdraw(waiter, now=11.0)
    adm.leave(newcomer[0], now=11.0)
    assert_idle(adm)


def test_a_burst_that_outlasts_the_borrowing_window_still_gets_the_kept_room_once_within_its_share():
    """Past BORROW_BURST_S the dashboard's burst borrows no more, but its requests queued over its share go
    into the kept room as soon as its first searches are done and the rest is within its share, instead
    of waiting for the storm's over-share room."""
    adm = small_storming_cluster()
    storm = granted(adm, "storm0", 2000)
    burst = [adm.request("dashboard", 150, 1.0) for _ in range(5)]
    admitted = [got for got in burst if isinstance(got, Ticket)]
    waiting = [got for got in burst if isinstance(got, Waiter)]
    assert len(admitted) == 3 and len(waiting) == 2  # the pools are full
    for ticket in admitted:  # two seconds later, its first searches done: within its share again
        adm.leave(ticket, 200, 0.06, searched(150, 2), now=3.0)
    assert all(waiter.ticket is not None and waiter.ticket.in_reserve for waiter in waiting)
    for ticket in [*(waiter.ticket for waiter in waiting), storm]:
        adm.leave(ticket, now=3.1)
    assert_idle(adm)


def test_a_request_costing_more_than_the_whole_capacity_is_admitted_alone():
    adm = admission({"acme": {}, "globex": {}}, threads=2, capacity_headroom=0.8)
    learn_horizon(adm, 200.0)  # capacity: 2 x 200 = 400 units in flight
    small = granted(adm, "acme", 50)
    log: list[Ticket] = []
    huge = queued(adm, "acme", 500_000, log=log)  # waits until nothing else is in flight ...
    adm.leave(small, 200, 0.2, 50)
    assert log == [huge.ticket] and huge.ticket.counted == pytest.approx(320)  # ... and counts as the whole budget
    behind = queued(adm, "acme", 50)  # over-share work waits behind it: no deadlock, no overtaking
    adm.leave(huge.ticket, 200, 0.2, 200)
    assert behind.ticket is not None
    adm.leave(behind.ticket)


def test_the_count_limit_binds_over_share_tenants_at_headroom_and_others_at_the_full_limit():
    adm = admission({"storm": {}, "quiet": {}}, threads=10, capacity_headroom=0.6)
    learn_horizon(adm, 100.0)  # 10 requests, 1000 cost units in flight; 6 and 600 over share
    assert adm.gate.limit == pytest.approx(10)
    quiet = [granted(adm, "quiet", 10)]
    storm = []
    while isinstance(got := adm.request("storm", 100, 0.0), Ticket):
        storm.append(got)
    assert len(storm) == 5 and adm.gate.inflight == 6  # the storm stops at the headroom
    while isinstance(got := adm.request("quiet", 10, 0.0), Ticket):
        quiet.append(got)
    assert len(quiet) == 5 and adm.gate.inflight == 10  # the quiet tenant goes on to the full limit
    for ticket in storm + quiet:
        adm.leave(ticket)


def searched(cost: float, shards: int) -> float:
    """An observed search cost as the proxy reads it from a response: it knows how many shards it ran on."""
    observed = Observed(cost)
    observed.took_ms, observed.shards, observed.queue_passes = cost / shards, shards, 2
    return observed


def test_over_share_requests_never_hold_more_threads_than_headroom_at_the_widest_fan_out_seen():
    adm = admission({"storm": {"weight": 1}, "quiet": {"weight": 100}, "newcomer": {"weight": 1}}, threads=24,
                    capacity_headroom=0.5)
    learn_horizon(adm, 100.0)  # 1 thread per request on average: the limit is 24, 12 with over-share ones
    for _ in range(4000):  # most requests cost 10: the storm's 50 are over the two-request share floor
        adm.leave(granted(adm, "quiet", 10), 200, 0.1, None, now=0.0)
    assert adm.gate.mean_cost < 20

    def storm_until_queued(now: float, tenant: str = "storm") -> list[Ticket]:
        tickets = []
        while isinstance(got := adm.request(tenant, 50, now), Ticket):
            tickets.append(got)
        adm.withdraw(got, now)
        return tickets

    quiet = granted(adm, "quiet", 10)
    storm = storm_until_queued(0.0)
    assert len(storm) == 11
    for ticket in storm:
        adm.leave(ticket, now=0.0)
    # Searches seen running on 4 shards at once hold 4 threads each: 24 / 4 × 0.5 in flight with over-share ones.
    adm.leave(granted(adm, "quiet", 10), 200, 0.01, searched(10, 4), now=1.0)
    assert adm.gate.fan_out == 4 and adm.report(now=1.0)["fan_out"] == 4
    # (a storm from a tenant not seen before: the first requests of one seen a second ago would be a burst)
    storm = storm_until_queued(1.0, "newcomer")
    assert len(storm) == 2
    more_quiet = [granted(adm, "quiet", 10, 1.0) for _ in range(8)]  # tenants under their share are not bound by it
    for ticket in storm + more_quiet + [quiet]:
        adm.leave(ticket, now=1.0)
    # Narrower searches since: the widest fan-out fades back toward them, and the room with it.
    for k in range(1, 300):
        adm.leave(granted(adm, "quiet", 10, 1.0 + k), 200, 0.01, searched(10, 1), now=1.0 + k)
    assert adm.gate.fan_out < 1.05
    quiet = granted(adm, "quiet", 10, 300.0)
    storm = storm_until_queued(300.0)
    assert len(storm) == 10  # floor(24 / 1.0x × 0.5) in flight, the quiet tenant's one included
    for ticket in storm + [quiet]:
        adm.leave(ticket, now=300.0)
    assert_idle(adm)


# ============================================================================================
# Weighted fair queueing
# ============================================================================================


def test_a_storming_tenants_backlog_does_not_delay_anyone_else():
    adm = admission({"storm": {"max_queue": 500}, "good": {}}, threads=4, capacity_headroom=1.0)
    learn_horizon(adm, 100.0)
    running = [granted(adm, "storm", 100) for _ in range(4)]
    log: list[Ticket] = []
    backlog = [queued(adm, "storm", 100, log=log) for _ in range(200)]
    assert adm.gate.queued == 200
    good = queued(adm, "good", 100, now=0.01, log=log)
    adm.leave(running[0], 200, 0.1, 100, now=0.1)  # the next slot to free goes to the good tenant
    assert log == [good.ticket] and good.ticket.waited == pytest.approx(0.09)
    adm.leave(good.ticket, 200, 0.1, 100, now=0.2)
    assert log[-1] is backlog[0].ticket  # then the storm resumes, in its own FIFO order
    assert [w.ticket is not None for w in backlog[:3]] == [True, False, False]


@pytest.mark.parametrize(("weights", "costs", "expected"), [
    ((2.0, 1.0), (10, 10), 2.0),  # plan weights: twice the requests
    ((1.0, 1.0), (10, 40), 4.0),  # cost: a quarter of the cost each, so four times the requests
    ((3.0, 1.0), (30, 10), 1.0),  # both: equal counts
], ids=["weight", "cost", "weight-and-cost"])
def test_backlogged_tenants_share_the_gate_by_weight_and_cost(weights, costs, expected):
    plan = {"max_queue": 1000}
    adm = admission({"a": {"weight": weights[0], **plan}, "b": {"weight": weights[1], **plan}}, threads=1,
                    capacity_headroom=1.0)
    learn_horizon(adm, 1.0)
    (adm.gate.adaptive, adm.gate.min_limit) = (1.0, 1.0)
    counts = {"a": 0, "b": 0}
    log: list[Ticket] = []
    first = granted(adm, "a", costs[0])
    for _ in range(900):
        queued(adm, "a", costs[0], log=log)
        queued(adm, "b", costs[1], log=log)
    current = first
    for i in range(600):
        adm.leave(current, now=i)
        current = log[-1]
        counts[current.tenant] += 1
    assert counts["a"] / counts["b"] == pytest.approx(expected, rel=0.05)


def test_a_tenant_idle_for_long_gets_no_credit_to_burst_ahead_later():
    adm = admission({"a": {}, "b": {}}, threads=1, capacity_headroom=1.0)
    learn_horizon(adm, 1.0)
    adm.gate.adaptive = 1.0
    current = granted(adm, "a", 10)
    log: list[Ticket] = []
    for _ in range(50):
        queued(adm, "a", 10, log=log)
    for i in range(40):  # a runs alone for a while; b's finish tag stays behind
        adm.leave(current, now=i)
        current = log[-1]
    for _ in range(10):
        queued(adm, "b", 10, log=log)
    order = []
    for i in range(10):
        adm.leave(current, now=100 + i)
        current = log[-1]
        order.append(current.tenant)
    assert order == ["b", "a"] * 5  # alternation from now on, not ten b's in a row


def test_a_tenants_own_requests_stay_in_arrival_order():
    adm = admission({"a": {"max_concurrent": 1}}, threads=4)
    first = granted(adm, "a", 1)
    log: list[Ticket] = []
    waiters = [queued(adm, "a", cost, log=log) for cost in (50, 1, 20)]
    current = first
    for _ in waiters:
        adm.leave(current)
        current = log[-1]
    assert [t.cost for t in log] == [50, 1, 20]
    adm.leave(current)
    assert_idle(adm)


# ============================================================================================
# Shadow tenants
# ============================================================================================


def test_shadow_requests_are_never_queued_or_refused_but_count_at_the_gate():
    adm = admission({"shadow": {"max_concurrent": 2, "max_queue": 0}, "acme": {}}, threads=4, capacity_headroom=1.0)
    learn_horizon(adm, 10.0)
    tickets = [adm.request("shadow", 10, 0.0, shadow=True) for _ in range(6)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert [t.waited for t in tickets] == [0.0, 0.0, -1.0, -1.0, -1.0, -1.0]  # enforcement: 2 slots, no queue
    assert adm.tenants["shadow"].would_throttle == 4 and adm.tenants["shadow"].throttled == 0
    assert adm.gate.inflight == 6
    queued(adm, "acme", 10)  # the cluster is busy with the shadow tenant's load: enforced tenants wait
    for ticket in tickets:
        adm.leave(ticket, 200, 0.01, 10)
    assert adm.gate.inflight == 1


# ============================================================================================
# Cluster health and the adaptive limit
# ============================================================================================


def test_losing_a_data_node_shrinks_limit_and_capacity_in_proportion_and_both_come_back():
    adm = admission({"acme": {}}, threads=24)
    learn_horizon(adm, 50.0)
    limit, capacity = adm.gate.limit, adm.gate.capacity_cost
    adm.observe_cluster(ClusterReading(data_nodes=2, search_threads=16), now=1.0)
    assert adm.gate.limit == pytest.approx(limit * 2 / 3)
    assert adm.gate.capacity_cost == pytest.approx(capacity * 2 / 3)
    report = adm.report(now=1.0)
    assert report["reason"] == "data_nodes"
    assert report["detail"].startswith("2 of 3 data nodes, 16 of 24 search threads")
    adm.observe_cluster(ClusterReading(data_nodes=3, search_threads=24), now=2.0)
    assert adm.gate.limit == pytest.approx(limit) and adm.report(now=2.0)["reason"] == "capacity"


def test_the_room_kept_for_quiet_tenants_stays_theirs_when_capacity_shrinks_under_over_share_work():
    adm = admission({"storm": {"weight": 1}, "quiet": {"weight": 100}}, threads=10, capacity_headroom=0.5)
    learn_horizon(adm, 100.0)  # capacity 1000 cost units in flight, 500 of them for over-share work
    quiet = [granted(adm, "quiet", 10)]
    storm = [granted(adm, "storm", 240), granted(adm, "storm", 240)]
    # A node is lost: capacity 500, and the storm's 480 in flight is over its room of 250.
    adm.observe_cluster(ClusterReading(data_nodes=2, search_threads=5), now=1.0)
    assert adm.gate.capacity_cost == pytest.approx(500)
    waiting = queued(adm, "storm", 240, now=1.0)  # no more over-share work until it drains ...
    quiet.append(granted(adm, "quiet", 20, now=1.0))  # ... and the quiet tenant still has its room
    adm.withdraw(waiting, now=1.0)
    for ticket in storm + quiet:
        adm.leave(ticket, now=1.0)
    assert_idle(adm)


def test_search_queues_and_rejections_shrink_the_limit_in_proportion():
    adm = admission({"acme": {}}, threads=24)
    learn_horizon(adm, 10.0)
    limit = adm.gate.limit
    adm.observe_cluster(ClusterReading(3, 24, search_queue=1), now=1.0)  # noise: ignored
    assert adm.gate.limit == pytest.approx(limit)
    adm.observe_cluster(ClusterReading(3, 24, search_queue=8, search_active=24), now=2.0)
    assert adm.gate.limit == pytest.approx(limit * 24 / 32)  # the share of demand the threads can serve
    assert adm.report(now=2.0)["reason"] == "search_queue"
    limit = adm.gate.limit
    adm.observe_cluster(ClusterReading(3, 24, rejected=10, completed=90), now=3.0)
    assert adm.gate.limit == pytest.approx(limit * 0.9)  # the share of tasks the cluster accepted
    assert adm.report(now=3.0)["reason"] == "search_rejections"
    adm.observe_cluster(ClusterReading(3, 24), now=4.0)  # idle and healthy again: back to capacity
    assert adm.gate.limit == pytest.approx(24.0, rel=0.05) and adm.report(now=10.0)["reason"] == "capacity"


def test_a_burst_of_upstream_429s_shrinks_the_limit_once_per_window():
    adm = admission({"acme": {}}, threads=24)
    learn_horizon(adm, 10.0)
    limit = adm.gate.limit
    tickets = [granted(adm, "acme", 10) for _ in range(10)]
    for ticket in tickets:
        adm.leave(ticket, 429, 0.001, None, now=1.0)
    assert adm.gate.limit == pytest.approx(limit * 0.9)
    assert adm.report(now=1.0)["reason"] == "upstream_errors"
    adm.upstream_error("timeout", now=1.0)  # same window: already backed off
    assert adm.gate.limit == pytest.approx(limit * 0.9)


def test_without_thread_stats_the_gate_starts_open_and_says_why():
    adm = admission({"acme": {}}, max_limit=300)
    assert adm.gate.limit == 300.0 and adm.report()["reason"] == "no_cluster_stats"
    assert adm.gate.capacity_cost is None


def test_a_disabled_gate_leaves_only_tenant_slots():
    adm = admission({"acme": {"max_concurrent": 3}}, enabled=False)
    tickets = [granted(adm, "acme", 1e9) for _ in range(3)]
    queued(adm, "acme", 1)
    assert adm.report()["reason"] == "disabled"
    for ticket in tickets:
        adm.leave(ticket)


class ThreadPoolModel:
    """A cluster as the gate sees it: `threads` search threads, a FIFO queue, service times ±10 %.

    Closed-loop clients send one request after another through the gate; each completion is fed
    back with its latency and an observed cost of that latency (one shard). Time is simulated.
    """

    def __init__(self, adm: Admission, threads: int, service_s: float, cost: float, poll_s: float | None):
        self.adm, self.threads, self.service_s, self.cost, self.poll_s = adm, threads, service_s, cost, poll_s
        self.random = random.Random(7)
        self.busy = 0
        self.waiting: list[tuple[Ticket, float]] = []
        self.events: list = []
        self.seq = 0
        self.now = 0.0
        self.queue_seen: list[int] = []

    def _at(self, when: float, kind: str, payload=None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, payload))

    def _start(self, ticket: Ticket, sent: float) -> None:
        self.busy += 1
        self._at(self.now + self.service_s * self.random.uniform(0.9, 1.1), "done", (ticket, sent))

    def _to_cluster(self, ticket: Ticket) -> None:
        if self.busy < self.threads:
            self._start(ticket, self.now)
        else:
            self.waiting.append((ticket, self.now))

    def _submit(self) -> None:
        got = self.adm.request("acme", self.cost, self.now)
        if isinstance(got, Ticket):
            self._to_cluster(got)
        else:
            got.on_grant = self._to_cluster

    def run(self, clients: int, duration: float, every: float, ramp_s: float = 0.05) -> list[tuple]:
        """(time, limit, in flight, cluster queue) every `every` seconds; a client joins every `ramp_s`."""
        for i in range(clients):
            self._at(i * ramp_s, "client")
        if self.poll_s:
            self._at(0.0, "poll")
        samples, next_sample = [], 0.0
        while self.events:
            self.now, _, kind, payload = heapq.heappop(self.events)
            if self.now > duration:
                break
            if kind == "client":
                self._submit()
                continue
            if kind == "poll":
                self.adm.observe_cluster(ClusterReading(3, self.threads, search_queue=len(self.waiting)), self.now)
                self._at(self.now + self.poll_s, "poll")
                continue
            ticket, sent = payload
            self.busy -= 1
            if self.waiting:
                self._start(*self.waiting.pop(0))
            latency = self.now - sent
            self.adm.leave(ticket, 200, latency, latency * 1000, now=self.now)
            self.queue_seen.append(len(self.waiting))
            self._submit()
            while self.now >= next_sample:
                samples.append((next_sample, self.adm.gate.limit, self.adm.gate.inflight, len(self.waiting)))
                next_sample += every
        return samples


@pytest.mark.parametrize(("algorithm", "band"), [("gradient", 0.05), ("aimd", 0.2)])
@pytest.mark.parametrize(("threads", "clients"), [(6, 30), (12, 60), (24, 200)])
def test_the_latency_limit_alone_converges_without_oscillating(algorithm, band, threads, clients):
    """No thread-pool stats (say, _nodes/stats is forbidden): latency is the only signal. The gate starts
    open and learns the no-load latency while the load ramps up; then it closes to hold latency near
    1.5x that."""
    adm = Admission()
    adm.configure(config({"acme": {}}, algorithm=algorithm, min_limit=2, max_limit=500))
    samples = ThreadPoolModel(adm, threads, 0.02, 20.0, poll_s=None).run(clients, duration=40, every=0.1)
    steady = [limit for t, limit, _, _ in samples if t >= 20]
    middle = statistics.median(steady)
    assert max(steady) <= middle * (1 + band) and min(steady) >= middle * (1 - band)
    # it holds latency near the tolerance over no-load: the cluster queue stays about one pool deep
    assert threads <= middle <= 3 * threads
    assert statistics.median(q for t, _, _, q in samples if t >= 20) <= 1.5 * threads


def test_with_thread_stats_the_limit_holds_the_pools_below_saturation():
    adm = Admission()
    adm.configure(config({"acme": {}}, min_limit=2, max_limit=500, capacity_headroom=0.8))
    model = ThreadPoolModel(adm, 12, 0.2, 200.0, poll_s=0.25)
    samples = model.run(60, duration=20, every=0.1)
    steady = [limit for t, limit, _, _ in samples if t >= 5]
    assert min(steady) == max(steady) == pytest.approx(12.0, rel=0.1)
    assert max(model.queue_seen[len(model.queue_seen) // 4:]) == 0  # never a task queued at the cluster
    assert max(inflight for t, _, inflight, _ in samples if t >= 5) <= 12  # one tenant alone may use them all


# ============================================================================================
# Cancellation and timeouts through `enter`
# ============================================================================================


def tenant_view(cfg, name: str = "acme"):
    return Directory(cfg).tenants[name]


async def test_a_request_waiting_longer_than_max_wait_gets_queue_timeout_and_leaves_no_trace():
    cfg = config({"acme": {"max_concurrent": 1, "max_wait_ms": 20}}, enabled=False)
    adm = Admission()
    adm.configure(cfg)
    view = tenant_view(cfg)
    held = await adm.enter(view, 1.0)
    with pytest.raises(Throttled) as refused:
        await adm.enter(view, 1.0)
    assert refused.value.label == "queue_timeout" and refused.value.headers["Retry-After"] == "1"
    adm.leave(held)
    assert_idle(adm)
    assert adm.tenants["acme"].throttled == 1


async def test_a_client_that_goes_away_while_queued_frees_its_place_at_once():
    cfg = config({"acme": {"max_concurrent": 1}}, enabled=False)
    adm = Admission()
    adm.configure(cfg)
    view = tenant_view(cfg)
    held = await adm.enter(view, 1.0)
    task = asyncio.create_task(adm.enter(view, 1.0))
    await asyncio.sleep(0)  # let it queue
    assert adm.gate.queued == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert adm.gate.queued == 0 and adm.tenants["acme"].queued == 0 and adm.tenants["acme"].abandoned == 1
    adm.leave(held)
    assert_idle(adm)


async def test_a_client_cancelled_in_the_same_instant_its_slot_was_handed_over_passes_it_on():
    cfg = config({"acme": {"max_concurrent": 1}}, enabled=False)
    adm = Admission()
    adm.configure(cfg)
    view = tenant_view(cfg)
    held = await adm.enter(view, 1.0)
    doomed = asyncio.create_task(adm.enter(view, 1.0))
    behind = asyncio.create_task(adm.enter(view, 1.0))
    await asyncio.sleep(0)
    adm.leave(held)  # hands the slot to `doomed` ...
    doomed.cancel()  # ... which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await doomed
    ticket = await behind  # the slot went on to the next in line
    assert adm.tenants["acme"].inflight == 1
    adm.leave(ticket)
    assert_idle(adm)


async def test_a_timeout_in_the_same_instant_as_the_grant_keeps_the_grant():
    cfg = config({"acme": {"max_concurrent": 1, "max_wait_ms": 10}}, enabled=False)
    adm = Admission()
    adm.configure(cfg)
    view = tenant_view(cfg)
    held = await adm.enter(view, 1.0)
    task = asyncio.create_task(adm.enter(view, 1.0))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    waiter = adm.tenants["acme"].waiters[0]
    # grant exactly when the timeout fires: both callbacks land in the same loop iteration
    loop.call_at(loop.time() + 0.01, adm.leave, held)
    try:
        ticket = await task
    except Throttled:
        assert waiter.ticket is None  # the timeout won the race cleanly
    else:
        assert ticket is waiter.ticket
        adm.leave(ticket)
    assert_idle(adm)


async def test_shadow_requests_never_wait_in_enter():
    cfg = config({"acme": {"max_concurrent": 1, "max_queue": 0}}, enabled=False)
    adm = Admission()
    adm.configure(cfg)
    view = tenant_view(cfg)
    tickets = [await adm.enter(view, 1.0, shadow=True) for _ in range(5)]
    assert [t.waited for t in tickets] == [0.0, -1.0, -1.0, -1.0, -1.0]
    for ticket in tickets:
        adm.leave(ticket)
    assert_idle(adm)


# ============================================================================================
# Any sequence of arrivals, departures, withdrawals and polls leaves no trace
# ============================================================================================

operations = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.sampled_from(["a", "b", "c"]), st.sampled_from([0.0, 1.0, 30.0, 500.0, 1e6]),
                  st.booleans()),
        st.tuples(st.just("leave"), st.integers(0, 50), st.sampled_from([0, 200, 429, 503]), st.floats(0, 0.5)),
        st.tuples(st.just("withdraw"), st.integers(0, 50)),
        st.tuples(st.just("poll"), st.integers(0, 3), st.integers(0, 40), st.integers(0, 30), st.integers(0, 5)),
        st.tuples(st.just("reload"), st.integers(1, 4), st.floats(0.1, 1.0)),
    ),
    max_size=120,
)


@given(operations)
def test_any_history_keeps_the_books_and_returns_to_idle(ops):
    now = 0.0
    plans = {"a": {"max_concurrent": 3, "max_queue": 4}, "b": {"max_concurrent": 2, "weight": 3.0},
             "c": {"max_concurrent": 5, "max_queue": 1}}
    adm = Admission(clock=lambda: now)
    adm.configure(config(plans, min_limit=1, max_limit=8, capacity_headroom=0.7, max_queue=6))
    tickets: list[Ticket] = []
    waiters: list[Waiter] = []
    for op in ops:
        now += 0.01
        if op[0] == "request":
            _, tenant, cost, shadow = op
            try:
                got = adm.request(tenant, cost, now, shadow=shadow and tenant == "c")
            except Throttled:
                continue
            if isinstance(got, Ticket):
                tickets.append(got)
            else:
                got.on_grant = tickets.append
                waiters.append(got)
        elif op[0] == "leave" and tickets:
            ticket = tickets.pop(op[1] % len(tickets))
            adm.leave(ticket, op[2], op[3], None if op[2] != 200 else op[3] * 1000, now=now)
        elif op[0] == "withdraw" and waiters:
            waiter = waiters.pop(op[1] % len(waiters))
            if waiter.ticket is not None:
                tickets.remove(waiter.ticket)
            adm.withdraw(waiter, now)
        elif op[0] == "poll":
            _, nodes, threads, queue, rejected = op
            reading = ClusterReading(nodes, threads, search_queue=queue, rejected=rejected, completed=10)
            adm.observe_cluster(reading, now)
        elif op[0] == "reload":
            _, concurrent, headroom = op
            changed = {k: {**v, "max_concurrent": concurrent} for k, v in plans.items()}
            adm.configure(config(changed, min_limit=1, max_limit=8, capacity_headroom=headroom, max_queue=6))
        waiters = [w for w in waiters if w.ticket is None]
        held = [t for t in tickets if t.held]
        gate = adm.gate
        assert gate.inflight == len(held)
        assert gate.queued == len(waiters) == sum(s.queued for s in adm.tenants.values())
        for name, slots in adm.tenants.items():
            assert slots.inflight == sum(1 for t in held if t.tenant == name)
            assert slots.queued_cost == pytest.approx(sum(w.cost for w in slots.waiters), abs=1e-6)
        assert gate.inflight_cost == pytest.approx(sum(t.counted for t in held), abs=1e-6)
        assert gate.reserve_inflight == sum(1 for t in held if t.in_reserve)
        assert gate.reserve_cost == pytest.approx(sum(t.counted for t in held if t.in_reserve), abs=1e-6)
        assert gate.inflight_cost >= -1e-9
        assert set(adm._held) == set(held)
        assert adm._overdue == pytest.approx(sum(t.overdue for t in held), abs=1e-6)
        assert 0.0 <= gate.overdue_cost <= adm._overdue + 1e-6
    for waiter in list(waiters):
        adm.withdraw(waiter, now)
    for ticket in tickets:
        adm.leave(ticket, now=now)
    assert_idle(adm)


# ============================================================================================
# Reporting and reload
# ============================================================================================


def test_the_gate_is_reported_and_exported_with_its_reason():
    adm = admission({"acme": {}}, threads=8)
    report = adm.report()
    assert {"limit", "reason", "capacity", "inflight", "queued"} <= set(report)
    gauges = {}
    adm.register_gauges(lambda name, doc, labels, read: gauges.__setitem__(name, (labels, read)))
    assert set(gauges) >= {"sluicegate_gate_limit", "sluicegate_gate_inflight", "sluicegate_gate_inflight_cost_units",
                           "sluicegate_gate_capacity_cost_units", "sluicegate_gate_queued", "sluicegate_gate_reason"}
    reasons = dict(gauges["sluicegate_gate_reason"][1]())
    assert set(reasons) == {(r,) for r in REASONS} and reasons[("capacity",)] == 1.0 and sum(reasons.values()) == 1.0
    assert list(gauges["sluicegate_gate_limit"][1]()) == [((), 8.0)]
    assert list(gauges["sluicegate_gate_pooled_instances"][1]()) == [((), 1.0)]
    adm.set_peers(2.0, 1, 50.0, 0, 0.0)
    assert list(gauges["sluicegate_gate_pooled_instances"][1]()) == [((), 2.0)]
    assert (report := adm.report())["pool"] == 2.0 and report["peer_inflight"] == 1


def test_a_reload_that_raises_max_concurrent_admits_waiters_and_a_removed_tenant_drains():
    adm = admission({"acme": {"max_concurrent": 1}, "gone": {"max_concurrent": 1}}, enabled=False)
    acme, gone = granted(adm, "acme", 1), granted(adm, "gone", 1)
    log: list[Ticket] = []
    waiting_acme, waiting_gone = queued(adm, "acme", 1, log=log), queued(adm, "gone", 1, log=log)
    adm.configure(config({"acme": {"max_concurrent": 2}}, enabled=False))
    assert log == [waiting_acme.ticket] and "gone" not in adm.tenants
    adm.leave(gone)  # the removed tenant's queue still drains
    assert waiting_gone.ticket is not None
    for ticket in (acme, waiting_acme.ticket, waiting_gone.ticket):
        adm.leave(ticket)
    assert_idle(adm)


# ============================================================================================
# Overload shedding's hold-back (proxy/runaway.py sheds, Admission.hold_back closes the door behind it)
# ============================================================================================


def test_a_shed_tenant_is_refused_beyond_its_share_until_its_cool_down_ends():
    adm = admission({"storm": {}, "good": {}}, threads=4, capacity_headroom=1.0)
    learn_horizon(adm, 100.0)  # capacity: 4 threads x 100 ms = 400 units in flight; a share of two tenants: 200
    adm.leave(granted(adm, "good", 10, now=1.0), 200, 0.01, 10, now=1.0)  # the good tenant is present
    storm = [granted(adm, "storm", 100, now=1.0) for _ in range(3)]  # 300 in flight: over its share
    assert adm.hold_back("storm", until=5.0, now=1.0) == 0  # nothing queued to refuse
    with pytest.raises(Throttled) as refused:
        adm.request("storm", 100, now=1.5)  # its next request would take the place of the one shed
    assert refused.value.label == "shed" and refused.value.headers["Retry-After"] == "4"
    assert adm.tenants["storm"].shed == 1 and adm.tenants["storm"].throttled == 1
    granted(adm, "good", 100, now=1.5)  # the room the shed freed goes to the others
    for ticket in storm[:2]:
        adm.leave(ticket, 200, 0.1, 100, now=2.0)
    granted(adm, "storm", 50, now=2.0)  # within its share again (150 of 200): a held tenant still gets its share
    with pytest.raises(Throttled):
        adm.request("storm", 100, now=2.0)  # ... but not beyond it
    assert isinstance(adm.request("storm", 100, now=5.0), (Ticket, Waiter))  # the cool-down is over


def test_releasing_a_shed_tenant_reopens_its_over_share_admissions_at_once():
    adm = admission({"storm": {}, "good": {}}, threads=4, capacity_headroom=1.0)
    learn_horizon(adm, 100.0)
    adm.leave(granted(adm, "good", 10, now=1.0), 200, 0.01, 10, now=1.0)
    [granted(adm, "storm", 100, now=1.0) for _ in range(3)]
    adm.hold_back("storm", until=60.0, now=1.0)
    with pytest.raises(Throttled):
        adm.request("storm", 100, now=1.1)
    adm.release("storm")  # the distress is over
    assert isinstance(adm.request("storm", 100, now=1.2), (Ticket, Waiter))


async def test_holding_back_a_tenant_over_its_share_refuses_its_queue_and_leaves_no_trace():
    adm = admission({"storm": {"max_concurrent": 1}, "good": {}}, threads=4, capacity_headroom=1.0)
    learn_horizon(adm, 100.0)  # capacity 400 units in flight; the clock stands at 0 throughout
    cfg = config({"storm": {"max_concurrent": 1}, "good": {}})
    storm = tenant_view(cfg, "storm")
    held = await adm.enter(storm, 150.0)
    waiting = [asyncio.create_task(adm.enter(storm, 150.0)) for _ in range(3)]
    await asyncio.sleep(0)  # let them queue: 600 units asked for, over its share
    assert adm.tenants["storm"].queued == 3
    assert adm.hold_back("storm", until=5.0, now=0.0) == 3
    for task in waiting:
        with pytest.raises(Throttled) as refused:
            await task
        assert refused.value.label == "shed" and refused.value.headers["Retry-After"] == "5"
    slots = adm.tenants["storm"]
    assert (adm.gate.queued, slots.queued, slots.abandoned, slots.shed) == (0, 0, 0, 3)
    adm.leave(held)
    adm.release("storm")
    assert_idle(adm)


# ============================================================================================
# Several instances: one gate pooled through Redis (proxy/shared_gate.py), or a static share each
# ============================================================================================


def two_instances() -> tuple[Admission, Admission]:
    """Two instances behind a load balancer in front of the small storming cluster: each counts half."""
    pair = []
    for _ in range(2):
        adm = small_storming_cluster()
        adm.configure(config({name: {} for name in STORM_TENANTS + GOOD_TENANTS}, capacity_headroom=0.5), share=0.5)
        adm.observe_cluster(ClusterReading(data_nodes=3, search_threads=6), 0.0)
        pair.append(adm)
    return pair[0], pair[1]


def pool(*instances: Admission) -> None:
    """What GateSharer does through Redis a few ms later: each instance pools the others' holdings."""
    from proxy.shared_gate import holdings

    for adm in instances:
        others = [holdings(other.gate) for other in instances if other is not adm]
        adm.set_peers(float(len(instances)), *(sum(field) for field in zip(*others)))


def test_pooled_instances_hold_one_over_share_room_between_them_not_one_each():
    """The static split gives each instance an over-share room of its own (one storm search each on six
    threads, where the whole cluster's room is one); pooled, a storm search on one instance keeps the
    other's storm waiting, and the room it gives back admits that waiter at once."""
    a, b = two_instances()
    static = [granted(a, "storm0", 2000), granted(b, "storm1", 2000)]  # one each: two storm searches in all
    for adm, ticket in zip((a, b), static):
        adm.leave(ticket, now=0.1)
    pool(a, b)
    assert a.report(now=0.1)["pool"] == 2.0
    first = granted(a, "storm0", 2000, now=0.2)
    pool(a, b)
    assert b.report(now=0.2)["peer_inflight"] == 1
    log: list[Ticket] = []
    second = queued(b, "storm1", 2000, now=0.2, log=log)
    a.leave(first, now=1.7)
    assert log == []  # b has not heard yet
    pool(a, b)  # ... and now it has
    assert log == [second.ticket] and not second.ticket.in_reserve
    b.leave(second.ticket, now=3.2)
    pool(a, b)
    for adm in (a, b):
        assert_idle(adm)
        assert adm.gate.peer_inflight == 0 and adm.gate.peer_cost == 0.0


def test_a_burst_on_one_pooled_instance_uses_the_room_the_other_leaves_idle():
    """A dashboard's burst lands on one instance while a storm search holds the other's over-share room:
    with a static split the burst sees half the kept room; pooled, it sees what the whole cluster keeps,
    as a single instance would (the pools hold four requests: the storm's and three cheap ones)."""
    def burst_admitted(pooled: bool) -> int:
        a, b = two_instances()
        storm = granted(b, "storm0", 2000)
        if pooled:
            pool(a, b)
        burst = []
        for _ in range(5):
            burst.append(a.request("dashboard", 100, 1.0))
            if pooled:
                pool(a, b)
        admitted = [got for got in burst if isinstance(got, Ticket)]
        for got in burst:
            if isinstance(got, Waiter):
                a.withdraw(got, 1.0)
        for ticket in admitted:
            a.leave(ticket, now=1.1)
        b.leave(storm, now=1.5)
        return len(admitted)

    assert burst_admitted(pooled=False) < 3
    assert burst_admitted(pooled=True) == 3


def test_a_pool_dissolved_is_the_static_share_again():
    a, b = two_instances()
    pool(a, b)
    first = granted(a, "storm0", 2000)
    pool(a, b)
    assert isinstance(b.request("storm1", 2000, 0.0), Waiter)
    b.set_peers(1.0, 0, 0.0, 0, 0.0)  # a went silent (Redis down): b counts its own half, and it is free
    assert b.gate.pool == 1.0
    (waiter,) = [w for w in b.tenants["storm1"].waiters] or [None]
    assert waiter is None and b.tenants["storm1"].inflight == 1  # admitted by the pump on the change
    a.leave(first, now=1.5)
    b.leave(next(iter(b._held)), now=1.5)
    assert_idle(a)
    assert_idle(b)


def test_on_a_cluster_with_fewer_cores_than_one_over_share_request_needs_the_storm_waits_while_others_are_about():
    """Three nodes pinned to one core (six search threads): a storm search on two shards beside a quiet
    tenant's makes it two to three times slower, and cannot be preempted once it runs. The over-share
    room counts the cores: less than one request of it, so while the gate is contended (quiet tenants
    seen lately) the storm waits; a storm alone (uncontended) still gets one request, and so does a single
    over-share request that costs no more than CORE_BOUND_CHEAP average ones."""
    def storm_admitted(cores: int, quiet_seen: bool, cost: float = 5000, known: bool = True) -> bool:
        adm = admission({"storm0": {"weight": 1}, "shop": {"weight": 100}}, threads=6, capacity_headroom=0.8, capacity_headroom_contended=0.5)
        adm.observe_cluster(ClusterReading(data_nodes=3, search_threads=6, cores=cores), 0.0)
        adm.leave(granted(adm, "shop", 10), 200, 0.01, searched(10, 2), now=0.0)  # fan-out 2
        if not quiet_seen:
            adm.expire_presence(100.0)
        now = 1.0 if quiet_seen else 100.0
        assert adm.gate.mean_cost == 10
        got = adm.request("storm0", cost, now, known=known)
        if isinstance(got, Waiter):
            adm.withdraw(got, now)
            return False
        adm.leave(got, now=now)
        return True

    assert not storm_admitted(cores=1, quiet_seen=True)
    # ... but one over-share request priced like a few average ones is a quiet tenant's search, not a storm's
    assert storm_admitted(cores=1, quiet_seen=True, cost=30) and not storm_admitted(cores=1, quiet_seen=True, cost=31)
    # ... known to be: a shape never run is only estimated (a storm's first searches were estimated 20-60 units)
    assert not storm_admitted(cores=1, quiet_seen=True, cost=30, known=False)
    assert storm_admitted(cores=1, quiet_seen=False, cost=30, known=False)  # alone, it may still find out
    assert storm_admitted(cores=1, quiet_seen=False)  # a lone busy tenant
    assert storm_admitted(cores=6, quiet_seen=True)  # cores enough: one over-share request, as before
    assert storm_admitted(cores=0, quiet_seen=True)  # cores not known: as before
    adm = admission({"acme": {}}, threads=6)
    adm.observe_cluster(ClusterReading(data_nodes=3, search_threads=6, cores=1), 0.0)
    assert adm.report(now=0.0)["cores"] == 1


def test_a_burst_over_its_share_on_a_core_bound_cluster_goes_one_at_a_time_and_a_storm_does_not():
    """Elasticsearch, two instances, a node rejoining: a dashboard's burst of searches learned at 8x the
    average (priced on the starved core), more than the whole kept room, was over its share and not
    'cheap', so the core-bound gate held it back while the quiet tenants kept the gate contended, and two
    timed out. A burst's known requests go alone whenever the gate is empty, whatever their cost; a storm's
    (busy without a pause) still wait, and do not hold up the burst's turn although their tags are smaller."""
    adm = admission({"storm0": {"weight": 1}, "shop": {"weight": 100}, "dashboard": {"weight": 1}},
                    threads=6, capacity_headroom=0.8, capacity_headroom_contended=0.5)
    adm.observe_cluster(ClusterReading(data_nodes=3, search_threads=6, cores=1), 0.0)
    for name in ["dashboard"] + ["shop"] * 19:
        adm.leave(granted(adm, name, 10), 200, 0.01, searched(10, 2), now=0.0)  # mean 10, fan-out 2
    storm = queued(adm, "storm0", 500, now=0.9)  # new and busy: no burst; held back, the quiet shop seen at 0.0
    assert adm.gate.contended_until is not None and adm.gate.mean_cost == 10
    burst = [adm.request("dashboard", 200, 1.0) for _ in range(3)]  # after a pause of a second: a burst
    assert isinstance(burst[0], Ticket) and not burst[0].in_reserve  # over its share (two averages: 20)
    assert [type(got) for got in burst[1:]] == [Waiter, Waiter]  # one at a time; too big to borrow the kept room
    adm.leave(burst[0], 200, 0.2, searched(200, 2), now=1.2)
    assert burst[1].ticket is not None and burst[2].ticket is None and storm.ticket is None
    adm.leave(burst[1].ticket, 200, 0.2, searched(200, 2), now=2.5)  # its turn outlasts BORROW_BURST_S
    assert burst[2].ticket is not None and storm.ticket is None
    assert not any(waiter.ticket.in_reserve for waiter in burst[1:])
    adm.leave(burst[2].ticket, 200, 0.2, searched(200, 2), now=2.7)
    assert storm.ticket is None and adm.gate.mean_cost < 500 / CORE_BOUND_CHEAP
    adm.withdraw(storm, now=2.7)
    assert_idle(adm)


def test_the_kept_room_holds_one_request_of_unknown_cost_at_a_time():
    """The simulator's storm, two instances: its first script searches were estimated 88 units, within each
    tenant's share, and cost 1,000; at the onset ten tenants' went into the kept room at once. A request of
    unknown cost goes there only while no other one is (the probe); the others are judged as over-share
    requests until then. Known costs go into the kept room beside the probe as before."""
    adm = small_storming_cluster()
    storm = granted(adm, "storm0", 2000)  # the over-share room (one request) is taken
    probe = adm.request("storm1", 200, 1.0, known=False)  # within two average requests (640)
    assert isinstance(probe, Ticket) and probe.in_reserve and probe.probe
    second = adm.request("storm2", 200, 1.0, known=False)
    assert isinstance(second, Waiter)  # an over-share request now: waits for the storm's room
    shop = adm.request("shop", 200, 1.0)
    assert isinstance(shop, Ticket) and shop.in_reserve and not shop.probe
    adm.leave(probe, 200, 0.5, searched(1000, 2), now=1.5)
    assert second.ticket is not None and second.ticket.in_reserve and second.ticket.probe  # the next probe
    for ticket in (second.ticket, shop, storm):
        adm.leave(ticket, now=2.0)
    assert adm._probes == 0
    assert_idle(adm)
    # a tenant alone keeps the room for nobody: its unknown requests all go in
    alone = admission({"acme": {}}, threads=6)
    tickets = [alone.request("acme", 100, 0.0, known=False) for _ in range(4)]
    assert all(isinstance(ticket, Ticket) and ticket.in_reserve for ticket in tickets)
    for ticket in tickets:
        alone.leave(ticket, now=1.0)
    assert_idle(alone)


def test_a_tenant_the_gate_turned_away_lately_is_not_within_its_share_floor():
    """OpenSearch, two instances: each storming tenant's retries after its queue_timeouts came one or two
    per instance, learned at 60-120 units (what they cost alone), so within two average requests: ten
    tenants' went into the kept room together and cost 650-800 each on the one core, while the quiet
    tenants' searches waited up to 580 ms behind them. A tenant the gate refused (queue_timeout,
    concurrency, shed) within REFUSED_HOLD_S is judged on its weighted share alone."""
    adm = small_storming_cluster()  # a weighted share of ~250 units, the floor 640
    storm = granted(adm, "storm0", 2000)  # the over-share room is taken
    backlog = queued(adm, "storm1", 2000)
    assert adm.hold_back("storm1", until=0.6, now=0.5) == 1 and backlog.ticket is None  # refused at 0.5
    adm.release("storm1")
    again = adm.request("storm1", 400, 0.5)  # retried at once: within two average requests (640), but refused
    assert isinstance(again, Waiter)
    later = adm.request("storm2", 400, 1.0)  # never refused: the kept room
    assert isinstance(later, Ticket) and later.in_reserve
    adm.withdraw(again, now=5.6)
    after = adm.request("storm1", 400, 5.6)  # REFUSED_HOLD_S on: within its floor again
    assert isinstance(after, Ticket) and after.in_reserve
    for ticket in (storm, later, after):
        adm.leave(ticket, now=6.0)
    assert_idle(adm)
