"""Learned costs shared through Redis (proxy/shared_costs.py): the bounded batch on its own, then
"instances" (a RedisLimiter, a SharedLearnedCosts and a CostSharer each) on real redis-server
processes and a real 3-master Redis Cluster, nothing stands in for them.

Tests drive rounds with `sync()` where they can. Where the background loop must do the work (a new
instance warming up, recovery after an outage) they poll the observable result with a deadline.
"""
from __future__ import annotations

import asyncio

import pytest
import redis
from redis.crc import key_slot

from proxy.config import RedisConfig, hash_secret, parse_config
from proxy.cost import LearnedCosts
from proxy.metrics import Metrics
from proxy.redis_limiter import RedisLimiter
from proxy.shared_costs import CostSharer, PendingObservations, SharedLearnedCosts, costs_key, learned_costs
from tests.processes import RedisServer, metric_value

CONFIG = parse_config({
    "upstream": {"nodes": ["http://127.0.0.1:9200"]},
    "plans": {"standard": {"search": {"rate": 100, "burst": 1000}, "resources": ["search"]}},
    "tenants": {name: {"plan": "standard", "api_keys": [hash_secret(name)], "indices": [f"{name}-*"]}
                for name in ("acme", "globex")},
})
SHAPE, OTHER = 0x9F3A_0000_0000_0001, 0x0000_0000_0000_BEEF


# ---- the batch, without Redis ----

def test_pending_observations_add_up_per_pair_and_come_out_first_in_first():
    pending = PendingObservations(10)
    for cost in (100.0, 300.0):
        pending.add("acme", SHAPE, cost)
    pending.add("globex", SHAPE, 5.0)
    pending.add("acme", OTHER, float("nan"))  # ignored, like LearnedCosts.observe ignores it
    pending.add("acme", OTHER, -1.0)
    assert len(pending) == 2
    assert pending.take(1) == [("acme", SHAPE, 2, 200.0)]
    assert pending.take(5) == [("globex", SHAPE, 1, 5.0)]
    assert pending.take(5) == [] and len(pending) == 0


def test_pending_observations_are_bounded_and_drop_the_oldest_pair():
    pending = PendingObservations(3)
    pending.add("acme", 1, 1.0)
    pending.add("acme", 1, 1.0)
    for fingerprint in (2, 3, 4):
        pending.add("acme", fingerprint, 1.0)
    assert len(pending) == 3 and pending.dropped == 2  # pair 1 (two observations) went first
    assert [fp for _, fp, _, _ in pending.take(10)] == [2, 3, 4]


def test_local_observations_are_queued_and_merged_ones_are_not():
    learned = SharedLearnedCosts(16, 0.5, max_pending=16)
    assert learned.observe("acme", SHAPE, 800.0) == 800.0
    learned.merge("acme", OTHER, 50.0, 3)  # came from another instance: never sent back
    assert learned.pending.take(10) == [("acme", SHAPE, 1, 800.0)]
    assert learned.get("acme", OTHER) == 50.0


def test_without_redis_or_when_turned_off_learned_costs_stay_local():
    from proxy.limiter import LocalLimiter

    learned, sharer = learned_costs(CONFIG, LocalLimiter())
    assert type(learned) is LearnedCosts and sharer is None
    off = CONFIG.model_copy(update={"redis": RedisConfig(url="redis://127.0.0.1:1/0", share_learned_costs=False)})
    learned, sharer = learned_costs(off, RedisLimiter(off.redis))
    assert type(learned) is LearnedCosts and sharer is None


# ---- instances on a real redis-server ----

class Instance:
    def __init__(self, limiter: RedisLimiter, learned: SharedLearnedCosts, sharer: CostSharer, metrics: Metrics):
        self.limiter, self.learned, self.sharer, self.metrics = limiter, learned, sharer, metrics


@pytest.fixture
async def instances(redis_server, prefix):
    """Factory: started instances sharing learned costs through one Redis; all closed at teardown.
    The default interval is an hour: rounds happen when a test calls `sync()` (and once at start)."""
    made: list[Instance] = []

    async def make(url: str | None = None, stream_max: int = 1000, max_pending: int = 1000, **settings) -> Instance:
        settings = {"url": url or redis_server.url, "key_prefix": prefix, "learned_costs_interval_s": 3600, **settings}
        metrics = Metrics()
        limiter = RedisLimiter(RedisConfig(**settings), metrics=metrics)
        limiter.configure(CONFIG)
        learned = SharedLearnedCosts(1000, 0.5, max_pending)
        sharer = CostSharer(learned, limiter, stream_max=stream_max, metrics=metrics)
        instance = Instance(limiter, learned, sharer, metrics)
        made.append(instance)
        await limiter.start()
        await sharer.start()
        return instance

    yield make
    for instance in made:
        await instance.sharer.close()
        await instance.limiter.close()


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    """Poll an observable condition until it holds; the deadline is a hang guard, not a timing assertion."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def test_an_observation_published_by_one_instance_is_merged_by_the_other(instances, redis_server, prefix):
    a, b = await instances(), await instances()
    a.learned.observe("acme", SHAPE, 800.0)
    a.learned.observe("acme", SHAPE, 1000.0)
    assert b.learned.get("acme", SHAPE) is None
    await a.sharer.sync()
    await b.sharer.sync()
    assert b.learned.get("acme", SHAPE) == 900.0  # first sight: the mean of what a saw
    assert b.learned.for_tenant("acme") == [(SHAPE, 900.0, 2)]
    assert b.learned.get("globex", SHAPE) is None  # still per tenant
    assert a.sharer.counts["published"] == 2 and b.sharer.counts["merged"] == 2
    text = b.metrics.render().decode()
    assert metric_value(text, "sluicegate_shared_cost_observations_total", outcome="merged") == 2
    assert metric_value(a.metrics.render().decode(), "sluicegate_shared_cost_observations_total",
                        outcome="published") == 2
    # One stream key, named after the prefix like the membership set.
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.xlen(costs_key(prefix)) == 1 and client.ttl(costs_key(prefix)) > 0
    finally:
        client.close()


async def test_remote_observations_fold_into_a_local_ewma_like_local_ones(instances):
    a, b = await instances(), await instances()
    b.learned.observe("acme", SHAPE, 100.0)
    for _ in range(3):
        a.learned.observe("acme", SHAPE, 20.0)
    await a.sharer.sync()
    await b.sharer.sync()
    reference = LearnedCosts(16, 0.5)
    for cost in (100.0, 20.0, 20.0, 20.0):
        reference.observe("acme", SHAPE, cost)
    assert b.learned.get("acme", SHAPE) == pytest.approx(reference.get("acme", SHAPE))
    assert b.learned.for_tenant("acme")[0][2] == 4


async def test_own_entries_are_not_merged_and_nothing_is_merged_twice(instances):
    a, b = await instances(), await instances()
    a.learned.observe("acme", SHAPE, 500.0)
    for _ in range(3):
        await a.sharer.sync()
        await b.sharer.sync()
    assert a.learned.for_tenant("acme") == [(SHAPE, 500.0, 1)]  # its own observation, once
    assert a.sharer.counts["merged"] == 0
    assert b.learned.for_tenant("acme") == [(SHAPE, 500.0, 1)]  # read once, however many rounds
    # and what b merged does not travel back to a
    assert len(b.learned.pending) == 0
    await b.sharer.sync()
    await a.sharer.sync()
    assert a.learned.for_tenant("acme") == [(SHAPE, 500.0, 1)]


async def test_the_background_loop_shares_and_a_new_instance_starts_warm(instances):
    a = await instances(learned_costs_interval_s=0.05)
    b = await instances(learned_costs_interval_s=0.05)
    a.learned.observe("acme", SHAPE, 800.0)
    b.learned.observe("globex", OTHER, 40.0)
    await until(lambda: b.learned.get("acme", SHAPE) == 800.0, "b to merge a's observation")
    await until(lambda: a.learned.get("globex", OTHER) == 40.0, "a to merge b's observation")
    late = await instances()  # its first round, at start, reads the stream from its beginning
    await until(lambda: late.learned.get("acme", SHAPE) == 800.0 and late.learned.get("globex", OTHER) == 40.0,
                "a new instance to read what the others learned before it started")


async def test_a_new_instance_pages_through_a_long_stream(instances):
    a = await instances(stream_max=5000, max_pending=5000)
    for fingerprint in range(1200):  # more than one script call and several reads
        a.learned.observe("acme", fingerprint, float(fingerprint))
    await a.sharer.sync()
    late = await instances()
    await late.sharer.sync()
    assert late.sharer.counts["merged"] == 1200
    assert late.learned.get("acme", 1199) == 1199.0 and late.learned.get("acme", 200) == 200.0
    assert len(late.learned) == 1000 and late.learned.get("acme", 0) is None  # its table's bound holds


async def test_the_stream_is_capped_near_stream_max(instances, redis_server, prefix):
    a = await instances(stream_max=100)
    for fingerprint in range(2000):
        a.learned.observe("acme", fingerprint, 1.0)
    await a.sharer.sync()
    client = redis.Redis(port=redis_server.port)
    try:
        # MAXLEN ~ trims whole stream nodes (100 entries each by default): approximately the cap
        assert 100 <= client.xlen(costs_key(prefix)) <= 100 + 200
    finally:
        client.close()


async def test_a_full_batch_drops_its_oldest_pair_and_counts_it(instances):
    a = await instances(max_pending=2)
    b = await instances()
    for fingerprint in (1, 2, 3):
        a.learned.observe("acme", fingerprint, 10.0)
    await a.sharer.sync()
    await b.sharer.sync()
    assert b.learned.get("acme", 1) is None and b.learned.get("acme", 3) == 10.0
    assert a.sharer.counts["dropped"] == 1
    assert metric_value(a.metrics.render().decode(), "sluicegate_shared_cost_observations_total",
                        outcome="dropped") == 1


async def test_entries_it_cannot_read_are_skipped(instances, redis_server, prefix):
    a, b = await instances(), await instances()
    client = redis.Redis(port=redis_server.port)
    try:
        client.xadd(costs_key(prefix), {"i": "someone-else", "t": "acme", "f": "not-hex", "n": "1", "c": "5"})
        client.xadd(costs_key(prefix), {"unrelated": "entry"})
    finally:
        client.close()
    a.learned.observe("acme", SHAPE, 7.0)
    await a.sharer.sync()
    await b.sharer.sync()
    assert b.learned.for_tenant("acme") == [(SHAPE, 7.0, 1)]


# ---- outage ----

@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "own-redis")
    yield server
    server.stop()


async def test_kill_9_and_restart_pauses_sharing_and_it_resumes(instances, own_redis):
    settings = {"url": own_redis.url, "heartbeat_s": 0.05, "reconnect_max_s": 0.2, "learned_costs_interval_s": 0.05}
    a, b = await instances(**settings), await instances(**settings)
    a.learned.observe("acme", SHAPE, 800.0)
    await until(lambda: b.learned.get("acme", SHAPE) == 800.0, "sharing before the outage")

    own_redis.kill()
    for fingerprint in range(50):  # observations during the outage: the request path never notices
        a.learned.observe("acme", fingerprint, 3.0)
    async with asyncio.timeout(10):  # hang guards
        await a.limiter.wait_shared(False)
        await b.limiter.wait_shared(False)
    assert len(a.learned.pending) <= 1000  # bounded meanwhile

    own_redis.start()  # empty: the stream is gone, the new one starts over
    async with asyncio.timeout(10):
        await a.limiter.wait_shared(True)
        await b.limiter.wait_shared(True)
    a.learned.observe("globex", OTHER, 61.0)
    await until(lambda: b.learned.get("globex", OTHER) == 61.0, "sharing after Redis came back")
    for instance in (a, b):
        assert not instance.sharer._runner.done()  # the loop is alive: nothing raised out of it


async def test_a_redis_restarted_empty_with_a_clock_behind_is_read_from_its_start(instances, own_redis, prefix):
    b = await instances(url=own_redis.url, heartbeat_s=0.05, reconnect_max_s=0.2, learned_costs_interval_s=0.05)
    writer = redis.Redis(port=own_redis.port)
    try:
        writer.xadd(costs_key(prefix), {"i": "elsewhere", "t": "acme", "f": f"{SHAPE:016x}", "n": 1, "c": 5.0})
        await until(lambda: b.learned.get("acme", SHAPE) == 5.0, "b to read the first stream")
        own_redis.kill()
        async with asyncio.timeout(10):
            await b.limiter.wait_shared(False)
        own_redis.start()
        # The new stream's ids are far behind the last id b read, as after a restart on a host whose
        # clock is behind: read from where b stopped, it would look empty until that clock caught up.
        writer.xadd(costs_key(prefix), {"i": "elsewhere", "t": "globex", "f": f"{OTHER:016x}", "n": 1, "c": 9.0},
                    id="1-1")
        await until(lambda: b.learned.get("globex", OTHER) == 9.0, "b to read the new stream from its start")
    finally:
        writer.close()


async def test_redis_down_at_start_shares_once_it_comes_up(instances, tmp_path):
    from tests.processes import free_port

    port = free_port()
    late = await instances(url=f"redis://127.0.0.1:{port}/0", reconnect_max_s=0.2, learned_costs_interval_s=0.05)
    assert not late.limiter.shared
    late.learned.observe("acme", SHAPE, 12.0)  # kept until Redis answers
    server = RedisServer(tmp_path / "late-redis", port=port)
    try:
        other = await instances(url=server.url, learned_costs_interval_s=0.05)
        await until(lambda: other.learned.get("acme", SHAPE) == 12.0, "the batch kept through the outage")
    finally:
        for instance in (late, locals().get("other")):
            if instance is not None:
                await instance.sharer.close()
                await instance.limiter.close()
        server.stop()


# ---- Redis Cluster ----

async def test_a_three_master_cluster_shares_learned_costs(instances, redis_cluster, prefix):
    a = await instances(url=redis_cluster.url)
    b = await instances(url=redis_cluster.url)
    assert a.limiter.shared and b.limiter.shared
    for tenant in ("acme", "globex"):
        a.learned.observe(tenant, SHAPE, 300.0)
    await a.sharer.sync()
    await b.sharer.sync()
    assert b.learned.get("acme", SHAPE) == 300.0 and b.learned.get("globex", SHAPE) == 300.0
    # one key, on the master that owns its slot
    slot = key_slot(costs_key(prefix).encode())
    nodes = [redis.Redis(port=server.port) for server in redis_cluster.servers]
    try:
        holders = [node for node in nodes if node.execute_command("CLUSTER COUNTKEYSINSLOT", slot)]
        assert len(holders) == 1  # the one master that owns the stream's slot
        assert holders[0].execute_command("CLUSTER KEYSLOT", costs_key(prefix)) == slot
    finally:
        for node in nodes:
            node.close()
    assert key_slot(b"sg:costs") == 2730  # the default prefix's slot, as docs/DESIGN.md says
