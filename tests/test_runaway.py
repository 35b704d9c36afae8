"""The runaway sweep and overload shedding (proxy/runaway.py), on real Trace objects and real tasks."""
from __future__ import annotations

import asyncio

from proxy.config import SheddingConfig
from proxy.flow import Trace
from proxy.runaway import MAX_COST_FACTOR, MAX_DURATION, OPERATOR, SHED, Runaway, cancelled, pick_victim


def trace(tenant: str, charged: float, sent_at: float, deadline: float = 0.0) -> Trace:
    t = Trace(sent_at)
    t.tenant, t.charged, t.sent_at, t.deadline, t.limit_reason = tenant, charged, sent_at, deadline, MAX_DURATION
    t.request_id = b"r"
    return t


def test_the_victim_is_the_costliest_request_of_a_tenant_over_its_fair_share():
    running = {trace("acme", 100, 0): None, trace("acme", 300, 0): None, trace("globex", 500, 0): None,
               trace("initech", 50, 0): None}
    # 950 in flight over three tenants of weight 1: a fair share is ~317; only globex (500) is over it
    assert pick_victim(running, {}, 10, 0.5).tenant == "globex"
    # globex weighs 3 of 5: its share is 570, over its 500; acme's is 190, under its 400
    victim = pick_victim(running, {"globex": 3.0}, 10, 0.5)
    assert (victim.tenant, victim.charged) == ("acme", 300)
    # a request younger than min_age_s is left alone; nobody over their share: nobody shed
    assert pick_victim({trace("acme", 100, 9.9): None, trace("globex", 10, 0): None}, {}, 10, 0.5) is None
    assert pick_victim({trace("acme", 100, 0): None, trace("globex", 100, 0): None}, {}, 10, 0.5) is None


def test_a_tenant_alone_in_flight_is_over_its_share_when_others_are_present_between_requests():
    storm = trace("storm", 5000, 0)
    # nobody else has anything in flight this instant: alone, the storm's share is everything
    assert pick_victim({storm: None}, {}, 10, 0.5) is None
    # but a quiet tenant the gate counts in its shares (seen lately) leaves it half
    assert pick_victim({storm: None}, {}, 10, 0.5, present=["storm", "good"]) is storm
    assert pick_victim({storm: None}, {"storm": 3.0}, 10, 0.5, present=["good"]) is storm  # 3/4 of it
    assert pick_victim({storm: None}, {}, 10, 0.5, present=["storm"]) is None


def test_no_share_is_less_than_one_average_request():
    # The storm held back after a shed, a quiet tenant's one cheap search alone in flight: its share of the cost
    # in flight would make it "over", and shed it; no share is less than one average request (as at the gate).
    good = trace("good", 40, 0)
    assert pick_victim({good: None}, {}, 10, 0.5, present=["storm", "good"]) is good  # (without the floor)
    assert pick_victim({good: None}, {}, 10, 0.5, present=["storm", "good"], floor=300) is None
    storm = trace("storm", 5000, 0)
    assert pick_victim({storm: None, good: None}, {}, 10, 0.5, present=["storm", "good"], floor=300) is storm


async def _parked() -> None:
    await asyncio.sleep(3600)


async def test_the_sweep_cancels_past_deadline_and_sheds_at_a_bounded_rate_only_in_distress():
    runaway = Runaway()
    late, early = trace("acme", 10, 0, deadline=5), trace("acme", 10, 0, deadline=50)
    hogs = [trace("globex", 1000 + i, 0) for i in range(3)]
    for t in (late, early, *hogs):
        t.task = asyncio.get_running_loop().create_task(_parked())
        runaway.running[t] = None
    distress: list[str | None] = [None]
    runaway.shedding = SheddingConfig(enabled=True, max_per_s=1.0, min_age_s=0.0)
    runaway.distress = lambda now: distress[0]
    assert runaway.sweep(6.0) == [late] and late.killed == MAX_DURATION
    assert not any(h.killed for h in hogs)  # healthy cluster: nothing shed
    distress[0] = "data_nodes"
    runaway.sweep(6.1)
    assert [h.killed for h in hogs] == ["", "", SHED]  # the costliest first
    runaway.sweep(6.5)  # within a second of the last shed: the rate bound holds
    assert [h.killed for h in hogs] == ["", "", SHED]
    runaway.sweep(7.2)
    assert [h.killed for h in hogs] == ["", SHED, SHED]
    await asyncio.sleep(0)
    assert late.task.cancelled() and hogs[2].task.cancelled() and not early.task.done()
    # an operator cancel takes the rest of a tenant, and a request is cancelled once only
    assert [row["tenant"] for row in runaway.cancel_tenant("globex")] == ["globex"]
    assert hogs[0].killed == OPERATOR and not runaway.kill(hogs[0], SHED)
    early.task.cancel()


async def test_a_shed_tenant_is_held_back_for_its_cool_down_and_released_when_the_distress_ends():
    runaway = Runaway()
    hogs = [trace("globex", 1000 + i, 0) for i in range(2)]
    quiet = trace("acme", 10, 0)
    for t in (*hogs, quiet):
        t.task = asyncio.get_running_loop().create_task(_parked())
        runaway.running[t] = None
    distress: list[str | None] = ["data_nodes"]
    calls: list[tuple] = []
    runaway.shedding = SheddingConfig(enabled=True, max_per_s=1.0, min_age_s=0.0, cooldown_s=4.0)
    runaway.distress = lambda now: distress[0]
    runaway.hold_back = lambda tenant, seconds: calls.append(("hold", tenant, seconds))
    runaway.release = lambda tenant: calls.append(("release", tenant))
    runaway.sweep(1.0)
    assert hogs[1].killed == SHED and calls == [("hold", "globex", 4.0)] and runaway.held == {"globex": 5.0}
    runaway.sweep(2.5)  # shed again while the distress lasts: the hold is renewed from now
    assert hogs[0].killed == SHED and calls[-1] == ("hold", "globex", 4.0) and runaway.held == {"globex": 6.5}
    distress[0] = None
    runaway.sweep(3.0)  # the distress is over: the held tenant's door reopens at once, not at 6.5
    assert calls[-1] == ("release", "globex") and runaway.held == {}
    runaway.sweep(3.1)
    assert calls[-1] == ("release", "globex") and len(calls) == 3  # released once
    assert not quiet.killed
    for t in (*hogs, quiet):
        t.task.cancel()


def test_a_shed_request_is_answered_429_with_the_cool_down_as_retry_after():
    t = trace("globex", 1000, 0)
    refusal = cancelled(SHED, "globex", t, retry_after=4.2)
    assert refusal.status == 429 and refusal.headers["Retry-After"] == "5"
    assert refusal.headers["X-Sluicegate-Reason"] == SHED and b"task_cancelled_exception" in refusal.body()
    # a limit the request ran into is not the tenant's to retry: no Retry-After
    assert "Retry-After" not in cancelled(MAX_COST_FACTOR, "globex", t).headers
