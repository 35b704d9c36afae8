"""One gate for several instances (proxy/shared_gate.py): the message and the peer book on their own,
then instances (a RedisLimiter, an Admission and a GateSharer each) on a real redis-server that is
killed and started again. Nothing stands in for Redis.

The background loops do the work here, so the tests wait for what they can observe (a grant's future,
or a polled condition with a deadline that is a hang guard, not a timing assertion).
"""
from __future__ import annotations

import asyncio

import pytest

from proxy.admission import Admission, ClusterReading, Ticket, Waiter
from proxy.config import RedisConfig
from proxy.redis_limiter import RedisLimiter
from proxy.shared_gate import STALE_S, GateSharer, PeerBook, decode, encode
from tests.processes import RedisServer
from tests.test_admission import config
from tests.test_shared_costs import until

CONFIG = config({"storm": {}, "quiet": {}}, capacity_headroom=0.5)


# ---- the message and the peer book, without Redis ----

def test_a_message_round_trips_and_anything_else_on_the_channel_is_ignored():
    held = (3, 2500.5, 1, 80.0)
    assert decode(encode("host:12:ab", held)) == ("host:12:ab", held)
    for junk in (b"", b"hello", b"a 1 2 3", b"a 1 2 3 x", b"a -1 2 3 4", b"a 1 nan 3 4", b"a 1 inf 3 4", b"\xff 1 2 3 4"):
        assert decode(junk) is None, junk


def test_the_others_pool_only_while_every_live_instance_has_spoken_lately():
    book = PeerBook("me")
    assert not book.heard("me", (9, 9.0, 9, 9.0), 0.0)  # its own messages come back on the channel
    assert book.pooled(live=2, now=0.0) == (1.0, 0, 0.0, 0, 0.0)  # nobody else heard: each its own share
    assert book.heard("b", (2, 300.0, 1, 40.0), 0.0)
    assert book.pooled(live=2, now=0.1) == (2.0, 2, 300.0, 1, 40.0)
    assert book.pooled(live=3, now=0.1) == (1.0, 0, 0.0, 0, 0.0)  # a third instance not heard from: static
    book.heard("c", (1, 100.0, 0, 0.0), 0.2)
    assert book.pooled(live=3, now=0.3) == (3.0, 3, 400.0, 1, 40.0)
    # b restarted as c (a new id): both are heard for a while, their holdings count, the pool stays 2
    assert book.pooled(live=2, now=0.3) == (2.0, 3, 400.0, 1, 40.0)
    assert book.pooled(live=3, now=STALE_S + 0.1) == (1.0, 0, 0.0, 0, 0.0)  # b fell silent
    book.expire(STALE_S + 0.1)
    assert list(book.peers) == ["c"]
    assert book.pooled(live=2, now=STALE_S + 0.1) == (2.0, 1, 100.0, 0, 0.0)  # b is gone from the heartbeats too


# ---- instances on a real redis-server ----

class Instance:
    def __init__(self, admission: Admission, limiter: RedisLimiter, sharer: GateSharer):
        self.admission, self.limiter, self.sharer = admission, limiter, sharer
        self.gate = admission.gate

    def fill(self, tenant: str, cost: float) -> list[Ticket]:
        """Admit `tenant`'s requests until one would wait (that one is withdrawn)."""
        tickets = []
        while isinstance(got := self.admission.try_enter(tenant, cost), Ticket):
            tickets.append(got)
        self.admission.withdraw(got, self.admission.clock())
        return tickets


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "own-redis")
    yield server
    server.stop()


@pytest.fixture
async def instances(own_redis, prefix):
    """Factory: started instances on `own_redis`, in front of a cluster of six search threads."""
    made: list[Instance] = []

    async def make() -> Instance:
        settings = RedisConfig(url=own_redis.url, key_prefix=prefix, heartbeat_s=0.05, reconnect_max_s=0.2)
        limiter = RedisLimiter(settings, share=0.5)
        limiter.configure(CONFIG)
        admission = Admission()
        admission.configure(CONFIG, share=0.5)
        admission.observe_cluster(ClusterReading(data_nodes=3, search_threads=6))
        admission.leave(admission.try_enter("quiet", 1))  # the quiet tenant was seen: the storm is over its share
        instance = Instance(admission, limiter, GateSharer(admission.gate, limiter, admission.set_peers))
        made.append(instance)
        await limiter.start()
        await instance.sharer.start()
        return instance

    yield make
    for instance in made:
        await instance.sharer.close()
        await instance.limiter.close()


async def test_instances_pool_their_gates_and_room_one_gives_back_admits_the_others_waiter(instances):
    """Six threads, headroom 0.5: the whole cluster's over-share room is three requests; a static half
    is one. Pooled, one instance may take all three while the other holds none, and the other's storm
    request waits until one of them is given back — over Redis, at once."""
    a, b = await instances(), await instances()
    await until(lambda: a.gate.pool == 2.0 and b.gate.pool == 2.0, "the two gates to pool")
    held = a.fill("storm", 1000)
    assert len(held) == 3  # the whole cluster's over-share room (the static half would be 1)
    await until(lambda: b.gate.peer_inflight == 3, "b to hear what a holds")
    assert b.admission.report()["peer_inflight_cost"] == 3000.0
    waiter = b.admission.try_enter("storm", 1000)
    assert isinstance(waiter, Waiter)
    granted = asyncio.get_running_loop().create_future()
    waiter.on_grant = granted.set_result
    a.admission.leave(held.pop())
    ticket = await asyncio.wait_for(granted, 10)  # hang guard
    assert ticket.held and not ticket.in_reserve
    for other in held:
        a.admission.leave(other)
    b.admission.leave(ticket)
    await until(lambda: a.gate.peer_inflight == 0 and b.gate.peer_inflight == 0, "both to hear the other is idle")


async def test_with_redis_gone_each_instance_falls_back_to_its_static_share_and_pools_again_after(instances,
                                                                                                    own_redis):
    a, b = await instances(), await instances()
    await until(lambda: a.gate.pool == 2.0 and b.gate.pool == 2.0, "the two gates to pool")
    held = a.fill("storm", 1000)
    await until(lambda: b.gate.peer_inflight == 3, "b to hear what a holds")
    waiter = b.admission.try_enter("storm", 1000)
    assert isinstance(waiter, Waiter)
    granted = asyncio.get_running_loop().create_future()
    waiter.on_grant = granted.set_result

    own_redis.kill()
    # b no longer knows what a holds: it counts its own half again, which is free — its waiter goes in
    ticket = await asyncio.wait_for(granted, 10)
    assert b.gate.pool == 1.0 and b.gate.peer_inflight == 0
    assert len(b.fill("storm", 1000)) == 0  # ... and its half's room (one request) is taken by it
    for sharer_task in (*a.sharer._tasks, *b.sharer._tasks):
        assert not sharer_task.done()  # nothing raised out of the loops

    own_redis.start()
    await until(lambda: a.gate.pool == 2.0 and b.gate.pool == 2.0, "the gates to pool again after Redis came back")
    assert a.gate.peer_inflight == 1 and b.gate.peer_inflight == 3
    for t in held:
        a.admission.leave(t)
    b.admission.leave(ticket)
