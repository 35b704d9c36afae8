"""RedisLimiter: shared buckets in real redis-server processes (nothing stands in for them), leases, membership,
fallback and recovery, and Redis Cluster. The Lua script is tested on its own first.

One redis-server serves most tests (each test has its own key prefix); tests that kill, stop or
restart Redis start their own. "Instances" are several RedisLimiters in this process: to Redis
they are as separate as processes on different hosts.
"""
from __future__ import annotations

import asyncio
import logging
import signal

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from proxy.config import Config, RedisConfig, hash_secret, parse_config
from proxy.limiter import Limiter
from proxy.metrics import Metrics
from proxy.redis_limiter import RedisLimiter, bucket_key, redis_client, script_source
from tests.processes import RedisServer, free_port, metric_value


class Clock:
    """Monotonic seconds that move only when the test says so (Redis keeps its own time)."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config(plans: dict | None = None, tenants: dict[str, str] | None = None) -> Config:
    plans = plans or {"standard": plan()}
    tenants = tenants or {"acme": "standard"}
    return parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": plans,
        "tenants": {name: {"plan": p, "api_keys": [hash_secret(name)], "indices": [f"{name}-*"]}
                    for name, p in tenants.items()},
    })


def plan(rate: float = 100.0, burst: float = 1000.0, max_wait_ms: float = 0.0, **extra) -> dict:
    return {"search": {"rate": rate, "burst": burst}, "max_wait_ms": max_wait_ms, "resources": ["search"], **extra}


@pytest.fixture
def inspect(redis_server):
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
async def limiters(redis_server, prefix):
    """Factory: started RedisLimiters ("instances") on one Redis; all closed at teardown."""
    made: list[RedisLimiter] = []

    async def make(cfg: Config | None = None, url: str | None = None, metrics: Metrics | None = None, **settings):
        settings = {"url": url or redis_server.url, "key_prefix": prefix, **settings}
        extra = {k: settings.pop(k) for k in ("clock", "on_membership_change", "share") if k in settings}
        limiter = RedisLimiter(RedisConfig(**settings), metrics=metrics, **extra)
        limiter.configure(cfg or config())
        made.append(limiter)
        await limiter.start()
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


def level_in_redis(client: redis.Redis, key: str) -> float | None:
    value = client.hget(key, "l")
    return None if value is None else float(value)


def finished_without_suspending(coro):
    """Run a coroutine that must not wait for anything; return its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the coroutine suspended (it waited for Redis or slept)")


# ---- the Lua script on its own ----

class TestLeaseScript:
    @pytest.fixture
    def lease(self, inspect):
        return inspect.register_script(script_source("lease"))

    def call(self, lease, key, rate=1e-6, burst=100.0, max_debt=100.0, settle=0.0, want=0.0, max_wait=0.0, costs=()):
        reply = lease(keys=[key], args=[rate, burst, max_debt, settle, want, max_wait, *costs])
        return [float(x) for x in reply]

    def test_a_missing_key_is_a_full_bucket_and_a_lease_comes_out_of_it(self, lease, prefix, inspect):
        key = f"{prefix}:{{acme}}:search"
        assert self.call(lease, key, want=30) == pytest.approx([30, 70])
        assert level_in_redis(inspect, key) == pytest.approx(70)

    def test_waiting_requests_are_served_in_order_before_the_lease(self, lease, prefix):
        key = f"{prefix}:{{acme}}:search"
        granted, level, *waits = self.call(lease, key, rate=10, want=5, max_wait=1.0, costs=[50, 45, 60, 12])
        assert waits[0] == 0  # charged now: 50 left
        assert waits[1] == 0  # charged now: 5 left
        assert waits[2] == pytest.approx(-5.5, abs=0.01)  # (60 - 5) / 10 s > max_wait: refused, nothing taken
        assert waits[3] == pytest.approx(0.7, abs=0.01)  # (12 - 5) / 10 s: reserved, the level goes below zero
        assert level == pytest.approx(-7, abs=0.1)
        assert granted == 0  # no lease while a request waits for tokens

    def test_a_reservation_within_max_wait_goes_into_debt_and_says_how_long(self, lease, prefix):
        key = f"{prefix}:{{acme}}:search"
        self.call(lease, key, rate=10, costs=[100])  # empty
        granted, level, wait = self.call(lease, key, rate=10, max_wait=2.0, costs=[15])
        assert wait == pytest.approx(1.5, abs=0.05)
        assert level == pytest.approx(-15, abs=0.5)
        assert granted == 0  # nothing to lease while requests wait for tokens
        granted, level, wait = self.call(lease, key, rate=10, max_wait=2.0, want=10, costs=[10])
        assert wait == pytest.approx(-2.5, abs=0.05)  # behind the first: 2.5 s > 2 s, refused
        assert granted == 0 and level == pytest.approx(-15, abs=0.5)

    def test_settlements_book_debt_down_to_the_floor_and_credits_up_to_the_burst(self, lease, prefix):
        key = f"{prefix}:{{acme}}:search"
        assert self.call(lease, key, max_debt=50, settle=500)[1] == pytest.approx(-50)
        assert self.call(lease, key, settle=-30)[1] == pytest.approx(-20)
        assert self.call(lease, key, settle=-1000)[1] == pytest.approx(100)

    def test_it_refills_on_redis_time(self, lease, prefix, inspect):
        key = f"{prefix}:{{acme}}:search"
        seconds, micros = inspect.time()
        inspect.hset(key, mapping={"l": 0, "t": seconds + micros / 1e6 - 2.0})  # empty two seconds ago
        assert self.call(lease, key, rate=10)[1] == pytest.approx(20, abs=0.5)

    def test_the_key_expires_when_the_bucket_would_be_full_again(self, lease, prefix, inspect):
        key = f"{prefix}:{{acme}}:search"
        self.call(lease, key, rate=10, want=60)  # level 40: full again in 6 s
        assert 6000 < inspect.pttl(key) <= 7000


# ---- one instance ----

async def test_keys_carry_the_tenant_as_hash_tag(limiters, prefix, inspect):
    limiter = await limiters(config(tenants={"acme": "standard", "globex": "standard"}))
    for tenant in ("acme", "globex"):
        assert (await limiter.acquire(tenant, "search", 5)).admitted
    assert bucket_key(prefix, "acme", "search") == f"{prefix}:{{acme}}:search"
    assert set(inspect.keys(f"{prefix}:{{*}}:*")) == {f"{prefix}:{{acme}}:search".encode(),
                                                      f"{prefix}:{{globex}}:search".encode()}
    assert key_slot(f"{prefix}:{{acme}}:search".encode()) == key_slot(f"{prefix}:{{acme}}:write".encode())
    assert 0 < inspect.pttl(f"{prefix}:{{acme}}:search")


async def test_a_lease_pays_for_requests_without_a_round_trip(limiters):
    limiter = await limiters(config({"standard": plan(rate=1000, burst=10000)}))  # lease: min(1000, 100) = 100
    first = await limiter.acquire("acme", "search", 1)
    assert first.admitted and limiter.calls["lease"] == 1
    for _ in range(90):  # paid from the lease: the coroutine never suspends
        decision = finished_without_suspending(limiter.acquire("acme", "search", 1))
        assert decision.admitted and decision.charged == 1
    await limiter.sync()
    assert limiter.calls["lease"] <= 3  # the first lease and a background top-up or two


async def test_concurrent_requests_of_one_tick_share_one_script_call(limiters):
    limiter = await limiters(config({"standard": plan(rate=1, burst=100)}))  # lease 0.1: every request asks
    decisions = await asyncio.gather(*(limiter.acquire("acme", "search", 1) for _ in range(20)))
    assert all(d.admitted for d in decisions)
    assert limiter.calls["lease"] == 1


async def test_a_refusal_that_the_last_known_level_implies_does_not_ask_redis(limiters):
    limiter = await limiters(config({"standard": plan(rate=1, burst=10)}))
    assert (await limiter.acquire("acme", "search", 10)).admitted
    calls = limiter.calls["lease"]
    refusals = [await limiter.acquire("acme", "search", 5) for _ in range(100)]
    assert not any(d.admitted for d in refusals)
    assert all(d.reason == "budget" and d.charged == 0 for d in refusals)
    assert 4.0 < refusals[0].wait <= 5.0  # retry-after from the shared bucket: 5 units at 1 unit/s
    assert limiter.calls["lease"] - calls <= 2


async def test_an_expensive_request_is_charged_at_most_the_burst(limiters):
    limiter = await limiters(config({"standard": plan(rate=10, burst=100)}))
    decision = await limiter.acquire("acme", "search", 1e6)
    assert decision.admitted and decision.charged == 100
    with pytest.raises(ValueError):
        await limiter.acquire("acme", "search", float("nan"))
    with pytest.raises(KeyError):
        await limiter.acquire("nobody", "search", 1)


async def test_settlements_ride_along_and_big_ones_go_at_once(limiters, prefix, inspect):
    limiter = await limiters(config({"standard": plan(rate=1e-3, burst=1000)}))  # lease: min(100, 1e-4)
    key = bucket_key(prefix, "acme", "search")
    await limiter.acquire("acme", "search", 10)
    before = level_in_redis(inspect, key)
    limiter.settle("acme", "search", charged=10, observed=10.00001)  # below the lease's low mark: rides along later
    assert level_in_redis(inspect, key) == pytest.approx(before, abs=1e-3)
    limiter.settle("acme", "search", charged=10, observed=50)  # 40 units of debt: booked now
    await limiter.sync()
    assert level_in_redis(inspect, key) == pytest.approx(before - 40.00001, abs=1e-3)
    limiter.settle("acme", "search", charged=10, observed=0)  # a refund
    await limiter.sync()
    assert level_in_redis(inspect, key) == pytest.approx(before - 30.00001, abs=1e-3)
    limiter.settle("acme", "search", 1, float("nan"))  # books nothing
    limiter.settle("gone", "search", 1, 2)  # a tenant a reload dropped: ignored
    assert limiter.level("acme", "search") == pytest.approx(before - 30, abs=0.01)


async def test_smoothing_waits_for_the_shared_tokens_and_queues_across_instances(limiters):
    cfg = config({"standard": plan(rate=100, burst=100, max_wait_ms=1000)})
    a, b = await limiters(cfg), await limiters(cfg)
    assert (await a.acquire("acme", "search", 100)).admitted  # the bucket is empty now
    first = await a.acquire("acme", "search", 20, shadow=True)  # shadow: the same books, no sleep
    second = await b.acquire("acme", "search", 20, shadow=True)
    assert first.admitted and second.admitted
    assert first.wait == pytest.approx(0.2, abs=0.05)
    assert second.wait == pytest.approx(0.4, abs=0.05)  # behind the first, though on another instance
    third = await a.acquire("acme", "search", 70)  # 1.1 s > max_wait: refused
    assert not third.admitted and third.wait > 1.0
    slept = await b.acquire("acme", "search", 5)  # really waits, then is admitted
    assert slept.admitted and slept.wait > 0.3 and slept.charged == 5


async def test_a_client_that_leaves_while_waiting_takes_nothing(limiters, prefix, inspect):
    limiter = await limiters(config({"standard": plan(rate=10, burst=100, max_wait_ms=10000)}))
    key = bucket_key(prefix, "acme", "search")
    assert (await limiter.acquire("acme", "search", 100)).admitted
    waiter = asyncio.ensure_future(limiter.acquire("acme", "search", 50))  # reserves 50, then sleeps ~5 s
    await asyncio.sleep(0)  # let it queue its request
    await limiter.sync()  # ... and the script call that reserves it
    assert level_in_redis(inspect, key) < -40
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await limiter.sync()
    assert level_in_redis(inspect, key) > -5  # the reservation went back (plus a little refill)


async def test_idle_leases_go_back_to_the_shared_bucket(limiters, prefix, inspect):
    clock = Clock()
    limiter = await limiters(config({"standard": plan(rate=1e-3, burst=1000)}), clock=clock, lease_horizon_s=1e6)
    key = bucket_key(prefix, "acme", "search")
    await limiter.acquire("acme", "search", 1)  # leases 100 (lease_fraction 0.1 of the burst), spends 1
    await limiter.sync()
    assert level_in_redis(inspect, key) == pytest.approx(1000 - 1 - 100, abs=0.01)
    clock.advance(limiter.settings.heartbeat_s)  # unused for a heartbeat
    await limiter.sync()
    assert level_in_redis(inspect, key) == pytest.approx(1000 - 1, abs=0.01)


async def test_a_reload_keeps_shared_levels_and_gives_back_leases_of_dropped_tenants(limiters, prefix, inspect):
    limiter = await limiters(config({"standard": plan(rate=1e-3, burst=1000)}, {"acme": "standard", "globex": "standard"}),
                             lease_horizon_s=1e6)
    await limiter.acquire("globex", "search", 1)
    await limiter.acquire("acme", "search", 300)
    await limiter.sync()
    assert level_in_redis(inspect, bucket_key(prefix, "acme", "search")) == pytest.approx(600, abs=0.01)
    limiter.configure(config({"standard": plan(rate=1e-3, burst=500)}, {"acme": "standard"}))
    await limiter.sync()
    assert level_in_redis(inspect, bucket_key(prefix, "globex", "search")) == pytest.approx(999, abs=0.01)
    assert (await limiter.acquire("acme", "search", 1)).admitted  # from the lease it still holds
    limiter.settle("acme", "search", 0, 60)
    await limiter.sync()  # the level is clamped to the new burst, never refilled, then settled
    assert level_in_redis(inspect, bucket_key(prefix, "acme", "search")) == pytest.approx(500 - 60, abs=0.01)
    with pytest.raises(KeyError):
        await limiter.acquire("globex", "search", 1)


async def test_scripts_come_back_after_script_flush(limiters, inspect):
    limiter = await limiters(config({"standard": plan(rate=1, burst=100)}))
    assert (await limiter.acquire("acme", "search", 1)).admitted
    inspect.script_flush()
    assert (await limiter.acquire("acme", "search", 1)).admitted  # EVALSHA -> NOSCRIPT -> SCRIPT LOAD -> EVALSHA
    assert limiter.shared and limiter.calls["lease"] == 2
    assert inspect.script_exists(limiter._lease_script.sha) == [True]


async def test_it_implements_the_limiter_protocol(limiters):
    assert isinstance(await limiters(), Limiter)


# ---- membership ----

async def test_instances_count_each_other_and_leave_on_close(limiters, prefix, inspect):
    changes: asyncio.Queue[int] = asyncio.Queue()
    a = await limiters(heartbeat_s=0.05, on_membership_change=changes.put_nowait)
    assert a.live_instances == 1 and a.share == 1.0
    b = await limiters(heartbeat_s=0.05)
    assert b.live_instances == 2  # saw itself and `a` in its first heartbeat
    assert await asyncio.wait_for(changes.get(), 5) == 2
    assert a.live_instances == 2 and a.share == 0.5
    assert {m.decode() for m in inspect.zrange(f"{prefix}:instances", 0, -1)} == {a.instance_id, b.instance_id}
    await b.close()
    assert await asyncio.wait_for(changes.get(), 5) == 1


async def test_a_silent_instance_stops_counting_after_its_ttl(limiters, prefix, inspect):
    seconds, _ = inspect.time()
    inspect.zadd(f"{prefix}:instances", {"ghost": seconds - 60})  # last heard from a minute ago
    limiter = await limiters(instance_ttl_s=5)
    assert limiter.live_instances == 1
    assert inspect.zscore(f"{prefix}:instances", "ghost") is None


async def test_live_instances_and_calls_show_in_metrics(limiters):
    metrics = Metrics()
    limiter = await limiters(metrics=metrics)
    await limiter.acquire("acme", "search", 1)
    text = metrics.render().decode()
    assert metric_value(text, "sluicegate_redis_up") == 1
    assert metric_value(text, "sluicegate_redis_live_instances") == 1
    assert metric_value(text, "sluicegate_redis_calls_total", script="lease") == 1
    assert metric_value(text, "sluicegate_redis_leased_cost_units", tenant="acme", resource="search") > 0


# ---- outage ----

@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "own-redis")
    yield server
    server.stop()


async def test_kill_9_falls_back_to_this_instances_share_and_comes_back(limiters, own_redis, caplog):
    caplog.set_level(logging.INFO, logger="sluicegate.redis")
    metrics = Metrics()
    cfg = config({"standard": plan(rate=100, burst=1000)})
    settings = {"url": own_redis.url, "heartbeat_s": 0.05, "reconnect_max_s": 0.2}
    await limiters(cfg, **{**settings, "heartbeat_s": 30})  # another instance: `a` holds half of each limit alone
    a = await limiters(cfg, metrics=metrics, **settings)
    assert a.live_instances == 2 and a.share == 0.5

    own_redis.kill()
    async with asyncio.timeout(5):  # a hang guard, not a timing assertion
        decisions = [await a.acquire("acme", "search", 1) for _ in range(300)]
        await a.wait_shared(False)
    assert all(d.admitted for d in decisions)  # nothing failed or hung
    assert metric_value(metrics.render().decode(), "sluicegate_redis_up") == 0
    assert metric_value(metrics.render().decode(), "sluicegate_redis_fallbacks_total") == 1
    assert a.level("acme", "search") < 500 - 250  # the local fallback holds 1/2 of the burst, ~290 spent
    for _ in range(20):  # more failures while local: still one log line, one count
        await a.acquire("acme", "search", 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "limits are local now" in warnings[0].getMessage()

    own_redis.start()
    async with asyncio.timeout(10):
        await a.wait_shared(True)
    assert metric_value(metrics.render().decode(), "sluicegate_redis_up") == 1
    calls = a.calls["lease"]
    assert (await a.acquire("acme", "search", 1)).admitted
    assert a.calls["lease"] == calls + 1  # decided through Redis again


async def test_a_redis_slower_than_timeout_ms_is_an_outage(limiters, own_redis):
    limiter = await limiters(config({"standard": plan(rate=1, burst=100)}), url=own_redis.url,
                             timeout_ms=50, heartbeat_s=0.05, reconnect_max_s=0.2)
    assert (await limiter.acquire("acme", "search", 1)).admitted
    own_redis.proc.send_signal(signal.SIGSTOP)  # alive, connected, silent
    try:
        async with asyncio.timeout(5):  # a hang guard: the request is decided locally after 50 ms
            decision = await limiter.acquire("acme", "search", 1)
            await limiter.wait_shared(False)
        assert decision.admitted
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    async with asyncio.timeout(10):
        await limiter.wait_shared(True)


async def test_redis_down_at_start_means_local_limits_until_it_comes_up(limiters, tmp_path):
    port = free_port()
    metrics = Metrics()
    limiter = await limiters(url=f"redis://127.0.0.1:{port}/0", metrics=metrics, reconnect_max_s=0.2)
    assert not limiter.shared
    assert metric_value(metrics.render().decode(), "sluicegate_redis_up") == 0
    assert (await limiter.acquire("acme", "search", 1)).admitted
    server = RedisServer(tmp_path / "late-redis", port=port)
    try:
        async with asyncio.timeout(10):
            await limiter.wait_shared(True)
        assert (await limiter.acquire("acme", "search", 1)).admitted
    finally:
        server.stop()


# ---- Redis Cluster ----

def test_cluster_urls_build_a_cluster_client():
    client = redis_client("redis+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2:7001/0", 0.05)
    assert isinstance(client, AsyncRedisCluster)
    assert [(n.host, n.port) for n in client.startup_nodes] == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert client.connection_kwargs["password"] == "p@ss" and client.connection_kwargs["username"] == "user"
    plain = redis_client("redis://127.0.0.1:6390/2", 0.05)
    assert plain.connection_pool.connection_kwargs["db"] == 2
    assert plain.connection_pool.connection_kwargs["socket_timeout"] == 0.05
    with pytest.raises(ValueError):
        redis_client("redis+cluster://nohost", 0.05)


async def test_a_three_master_cluster_shares_limits(limiters, redis_cluster, prefix):
    tenants = {f"t{i}": "standard" for i in range(12)}
    cfg = config({"standard": plan(rate=1e-3, burst=100)}, tenants)
    a = await limiters(cfg, url=redis_cluster.url)
    b = await limiters(cfg, url=redis_cluster.url)
    assert a.shared and b.shared and b.live_instances == 2
    for tenant in tenants:  # a and b drain each tenant's one bucket together
        admitted = 0
        for i in range(150):
            admitted += (await (a if i % 2 else b).acquire(tenant, "search", 1)).admitted
        assert 100 - 2 * 10 <= admitted <= 100  # never more than the burst; at most two leases unspent
    nodes = [redis.Redis(port=server.port) for server in redis_cluster.servers]
    holders = [sum(1 for _ in node.scan_iter(f"{prefix}:{{*}}:*")) for node in nodes]
    assert sum(holders) == len(tenants) and sum(1 for n in holders if n) >= 2  # spread over the masters
    for node in nodes:
        node.script_flush()  # every master forgets the scripts: NOSCRIPT, load, retry
    a.configure(config({"standard": plan(rate=1e-3, burst=100)}, {**tenants, "fresh": "standard"}))
    assert (await a.acquire("fresh", "search", 1)).admitted and a.shared
    for node in nodes:
        node.close()
