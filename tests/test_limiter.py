"""LocalLimiter: budgets per (tenant, resource) on the token-bucket table, run against the compiled
table ("c") and its Python twin ("py"). Time is a clock the test holds; the only real sleeps are a
few tens of milliseconds where a waiting request must actually wake up."""
from __future__ import annotations

import asyncio

import pytest

from proxy import _ratelimit, _ratelimit_py
from proxy.config import Config, hash_secret, parse_config
from proxy.limiter import Decision, Limiter, LocalLimiter


@pytest.fixture(params=[_ratelimit.TokenBucketTable, _ratelimit_py.TokenBucketTable], ids=["c", "py"])
def table_factory(request):
    """The table class under test."""
    return request.param


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(tenants: dict[str, str] | None = None, plans: dict[str, dict] | None = None, **cost) -> Config:
    """A config whose tenants (name -> plan name) use `plans`; default one plan "standard"."""
    plans = plans or {"standard": plan()}
    tenants = tenants or {"acme": "standard"}
    doc = {
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": plans,
        "tenants": {name: {"plan": p, "api_keys": [hash_secret(name)], "indices": [f"{name}-*"]}
                    for name, p in tenants.items()},
    }
    if cost:
        doc["cost"] = cost
    return parse_config(doc)


def plan(rate: float = 10.0, burst: float = 100.0, max_wait_ms: float = 0.0, **extra) -> dict:
    return {"search": {"rate": rate, "burst": burst}, "max_wait_ms": max_wait_ms, **extra}


def limiter_for(table_factory, cfg: Config, share: float = 1.0, clock: Clock | None = None) -> LocalLimiter:
    limiter = LocalLimiter(share=share, clock=clock or Clock(), table_factory=table_factory)
    limiter.configure(cfg)
    return limiter


def finished_without_suspending(coro):
    """Run a coroutine one step: it must finish there (no sleep, no await that yields)."""
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    return done.value.value


async def until(predicate) -> None:
    """Let other tasks run until `predicate()` holds (bounded, no wall-clock waiting)."""
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


# ---------------------------------------------------------------- admit, refuse, retry-after


async def test_admits_while_budget_lasts_then_refuses_with_retry_after(table_factory):
    clock = Clock()
    limiter = limiter_for(table_factory, config(), clock=clock)
    assert isinstance(limiter, Limiter)

    ok = await limiter.acquire("acme", "search", 60.0)
    assert ok == Decision(admitted=True, wait=0.0, remaining=40.0, limit=100.0, window=10.0, reason=None, charged=60.0)

    refused = await limiter.acquire("acme", "search", 60.0)
    assert not refused.admitted and refused.reason == "budget" and refused.charged == 0.0
    assert refused.wait == pytest.approx(2.0)  # 20 units short at 10/s
    assert refused.remaining == 40.0 and refused.limit == 100.0 and refused.window == 10.0
    assert limiter.level("acme", "search") == 40.0  # a refusal takes nothing

    clock.advance(2.0)
    assert (await limiter.acquire("acme", "search", 60.0)).admitted


async def test_cost_above_the_burst_is_admitted_from_a_full_bucket_and_charged_the_burst(table_factory):
    limiter = limiter_for(table_factory, config())
    decision = await limiter.acquire("acme", "search", 250.0)
    assert decision.admitted and decision.charged == 100.0 and decision.remaining == 0.0
    # ... and the rest is settled afterwards as debt
    limiter.settle("acme", "search", decision.charged, 250.0)
    assert limiter.level("acme", "search") == -100.0


async def test_unknown_tenant_or_resource_is_a_key_error(table_factory):
    limiter = limiter_for(table_factory, config(plans={"standard": plan(resources=["search"])}))
    with pytest.raises(KeyError):
        await limiter.acquire("nobody", "search", 1.0)
    with pytest.raises(KeyError):
        await limiter.acquire("acme", "write", 1.0)  # not in the plan's resources
    with pytest.raises(KeyError):
        limiter.level("nobody", "search")


@pytest.mark.parametrize("cost", [-1.0, float("nan")])
async def test_a_cost_that_is_not_a_cost_is_a_value_error(table_factory, cost):
    limiter = limiter_for(table_factory, config())
    with pytest.raises(ValueError):
        await limiter.acquire("acme", "search", cost)
    assert limiter.level("acme", "search") == 100.0


def test_decision_is_slotted_and_compared_by_value():
    decision = Decision(True, 0.0, 1.0, 1.0, 1.0, None, 0.0)
    assert Decision.__slots__ == ("admitted", "wait", "remaining", "limit", "window", "reason", "charged")
    assert not hasattr(decision, "__dict__")
    assert decision == Decision(admitted=True, wait=0.0, remaining=1.0, limit=1.0, window=1.0, reason=None, charged=0.0)
    assert decision != Decision(True, 0.0, 1.0, 1.0, 1.0, None, 5.0)
    assert repr(decision) == ("Decision(admitted=True, wait=0.0, remaining=1.0, limit=1.0, window=1.0, reason=None, "
                              "charged=0.0)")


# ---------------------------------------------------------------- waiting within max_wait


async def test_waits_within_max_wait_in_arrival_order(table_factory):
    # 1000 units/s: 20 units short is a 20 ms wait, 40 short is 40 ms (real sleeps, kept small)
    clock = Clock()
    limiter = limiter_for(table_factory, config(plans={"standard": plan(rate=1000.0, burst=100.0, max_wait_ms=50)}),
                          clock=clock)
    await limiter.acquire("acme", "search", 100.0)
    woke: list[str] = []

    async def request(name: str) -> Decision:
        decision = await limiter.acquire("acme", "search", 20.0)
        woke.append(name)
        return decision

    first = asyncio.create_task(request("first"))
    await until(lambda: limiter.level("acme", "search") < 0)
    assert limiter.level("acme", "search") == -20.0  # reserved before sleeping
    second = asyncio.create_task(request("second"))
    one, two = await asyncio.gather(first, second)

    assert woke == ["first", "second"]  # later arrivals queue behind earlier reservations
    assert one.admitted and one.wait == pytest.approx(0.020) and one.charged == 20.0 and one.remaining == -20.0
    assert two.admitted and two.wait == pytest.approx(0.040) and two.remaining == -40.0
    # a third would wait 60 ms > 50 ms: refused with the time until its turn
    third = await limiter.acquire("acme", "search", 20.0)
    assert not third.admitted and third.wait == pytest.approx(0.060) and third.reason == "budget"


async def test_cancelled_while_waiting_takes_nothing(table_factory):
    clock = Clock()
    limiter = limiter_for(table_factory, config(plans={"standard": plan(max_wait_ms=10_000)}), clock=clock)
    await limiter.acquire("acme", "search", 90.0)
    assert limiter.level("acme", "search") == 10.0

    waiting = asyncio.create_task(limiter.acquire("acme", "search", 30.0))  # 2 s wait
    await until(lambda: limiter.level("acme", "search") < 0)
    assert limiter.level("acme", "search") == -20.0
    clock.advance(0.5)  # the bucket keeps refilling while the request waits
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # exactly where it would be had the request never come: 10 + 0.5 s x 10/s
    assert limiter.level("acme", "search") == 15.0


async def test_cancelled_waiter_after_a_reload_that_dropped_its_tenant(table_factory):
    limiter = limiter_for(table_factory, config({"acme": "standard", "globex": "standard"},
                                                plans={"standard": plan(max_wait_ms=10_000)}))
    await limiter.acquire("globex", "search", 100.0)
    waiting = asyncio.create_task(limiter.acquire("globex", "search", 10.0))
    await until(lambda: limiter.level("globex", "search") < 0)
    limiter.configure(config({"acme": "standard"}, plans={"standard": plan(max_wait_ms=10_000)}))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# ---------------------------------------------------------------- shadow mode


async def test_shadow_never_sleeps_or_refuses_but_books_like_enforcement(table_factory):
    cfg = config(plans={"standard": plan(max_wait_ms=5_000)})
    shadow = limiter_for(table_factory, cfg)
    enforced = limiter_for(table_factory, cfg)

    # immediate admission: same charge either way
    s = finished_without_suspending(shadow.acquire("acme", "search", 60.0, shadow=True))
    e = await enforced.acquire("acme", "search", 60.0)
    assert s == e and s.charged == 60.0

    # within max_wait: enforcement would reserve and sleep 2 s; shadow reserves and returns at once
    s = finished_without_suspending(shadow.acquire("acme", "search", 60.0, shadow=True))
    assert s.admitted and s.wait == pytest.approx(2.0) and s.charged == 60.0 and s.remaining == -20.0
    waiting = asyncio.create_task(enforced.acquire("acme", "search", 60.0))
    await until(lambda: enforced.level("acme", "search") < 0)
    assert shadow.level("acme", "search") == enforced.level("acme", "search") == -20.0
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    # beyond max_wait: reported as a refusal, nothing charged; the caller forwards anyway
    s = finished_without_suspending(shadow.acquire("acme", "search", 100.0, shadow=True))
    assert not s.admitted and s.reason == "budget" and s.charged == 0.0
    assert s.wait == pytest.approx(12.0)  # 120 units short at 10/s
    assert shadow.level("acme", "search") == -20.0


@pytest.mark.parametrize("costs", [[30, 30, 50, 10, 80, 5, 0, 100, 250, 1]])
async def test_shadow_charges_what_enforcement_would(table_factory, costs):
    clock = Clock()
    cfg = config(plans={"standard": plan(max_wait_ms=0)})
    shadow, enforced = limiter_for(table_factory, cfg, clock=clock), limiter_for(table_factory, cfg, clock=clock)
    for cost in costs:
        s = finished_without_suspending(shadow.acquire("acme", "search", float(cost), shadow=True))
        e = await enforced.acquire("acme", "search", float(cost))
        assert s == e
        assert shadow.level("acme", "search") == enforced.level("acme", "search")
        clock.advance(1.5)


# ---------------------------------------------------------------- settle


async def test_settle_debits_and_credits(table_factory):
    limiter = limiter_for(table_factory, config())
    d = await limiter.acquire("acme", "search", 40.0)
    limiter.settle("acme", "search", d.charged, 55.0)  # cost more than charged: 15 more
    assert limiter.level("acme", "search") == 45.0
    limiter.settle("acme", "search", 20.0, 5.0)  # cost less: 15 back
    assert limiter.level("acme", "search") == 60.0
    limiter.settle("acme", "search", 40.0, 40.0)  # exact: nothing
    assert limiter.level("acme", "search") == 60.0
    limiter.settle("acme", "search", 500.0, 0.0)  # refund of a request never sent: capped at burst
    assert limiter.level("acme", "search") == 100.0


@pytest.mark.parametrize("ratio, max_wait_ms, floor", [
    (1.0, 0, -100.0),  # default: one burst of debt
    (0.5, 2_000, -50.0),  # burst x ratio
    (0.0, 3_000, -30.0),  # rate x max_wait wins: a reservation is never clamped
])
async def test_debt_is_floored(table_factory, ratio, max_wait_ms, floor):
    cfg = config(plans={"standard": plan(max_wait_ms=max_wait_ms)}, max_debt_ratio=ratio)
    limiter = limiter_for(table_factory, cfg)
    limiter.settle("acme", "search", 0.0, 10_000.0)
    assert limiter.level("acme", "search") == floor


def test_settle_for_a_tenant_gone_after_reload_is_ignored(table_factory):
    limiter = limiter_for(table_factory, config({"acme": "standard", "globex": "standard"}))
    limiter.configure(config({"acme": "standard"}))
    limiter.settle("globex", "search", 10.0, 50.0)
    limiter.settle("globex", "search", 50.0, 10.0)


# ---------------------------------------------------------------- configure and reload


async def test_reload_keeps_levels_and_drops_removed_tenants(table_factory):
    tables = []

    def factory():
        tables.append(table_factory())
        return tables[-1]

    clock = Clock()
    limiter = LocalLimiter(clock=clock, table_factory=factory)
    limiter.configure(config({"acme": "standard", "globex": "standard"}))
    assert sorted(tables[0].keys()) == [f"{t}:{r}" for t in ("acme", "globex") for r in ("admin", "read", "search", "write")]
    await limiter.acquire("acme", "search", 80.0)
    clock.advance(1.0)

    limiter.configure(config({"acme": "standard", "initech": "standard"}))
    assert limiter.level("acme", "search") == 30.0  # 20 left + 1 s at 10/s: kept, not refilled
    assert limiter.level("initech", "search") == 100.0
    assert not any(key.startswith("globex:") for key in tables[0].keys())
    with pytest.raises(KeyError):
        await limiter.acquire("globex", "search", 1.0)


async def test_reload_to_a_smaller_plan_clamps_and_a_bigger_one_does_not_refill(table_factory):
    limiter = limiter_for(table_factory, config())
    await limiter.acquire("acme", "search", 30.0)
    limiter.configure(config(plans={"standard": plan(burst=50.0)}))
    assert limiter.level("acme", "search") == 50.0
    limiter.configure(config(plans={"standard": plan(burst=1000.0, rate=500.0)}))
    assert limiter.level("acme", "search") == 50.0
    d = await limiter.acquire("acme", "search", 1.0)
    assert d.limit == 1000.0 and d.window == 2.0


async def test_reload_drops_resources_removed_from_the_plan(table_factory):
    table = table_factory()
    limiter = LocalLimiter(clock=Clock(), table_factory=lambda: table)
    limiter.configure(config())
    limiter.configure(config(plans={"standard": plan(resources=["search", "read"])}))
    assert sorted(table.keys()) == ["acme:read", "acme:search"]
    assert limiter.level("acme", "read") == 10_000.0
    with pytest.raises(KeyError):
        limiter.level("acme", "write")


async def test_share_scales_rate_and_burst(table_factory):
    clock = Clock()
    limiter = limiter_for(table_factory, config(), share=0.5, clock=clock)
    d = await limiter.acquire("acme", "search", 50.0)
    assert d.limit == 50.0 and d.window == 10.0 and d.remaining == 0.0
    clock.advance(1.0)
    assert limiter.level("acme", "search") == 5.0  # 10/s halved
    refused = await limiter.acquire("acme", "search", 15.0)
    assert refused.wait == pytest.approx(2.0)
    with pytest.raises(ValueError):
        LocalLimiter(share=0.0)


async def test_evicted_buckets_come_back_transparently(table_factory):
    # room for two buckets; a third tenant evicts whichever is full (idle)
    cfg = config({"acme": "standard", "globex": "standard"}, plans={"standard": plan(resources=["search"])})
    clock = Clock()
    limiter = LocalLimiter(clock=clock, table_factory=lambda: table_factory(max_keys=2))
    limiter.configure(cfg)
    await limiter.acquire("acme", "search", 40.0)
    limiter.configure(config({"acme": "standard", "globex": "standard", "initech": "standard"},
                             plans={"standard": plan(resources=["search"])}))
    # globex was full, so it was evicted for initech; it returns full, and acme kept its debt
    assert limiter.level("globex", "search") == 100.0
    limiter.settle("initech", "search", 0.0, 10.0)
    d = await limiter.acquire("initech", "search", 10.0)
    assert d.admitted and d.remaining == 80.0
    assert limiter.level("acme", "search") == 60.0


async def test_start_and_close_are_harmless(table_factory):
    limiter = limiter_for(table_factory, config())
    await limiter.start()
    await limiter.close()
