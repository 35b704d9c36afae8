"""One gate for several instances: each publishes what it holds at the gate, and pools the others'.

Without this each instance admits against a static share of the cluster (1 / live instances). On a
small cluster that share is one or two searches: a dashboard's burst that lands on one instance waits
behind that instance's one storm search while the other instance's room stands idle, and a storm
holds one search per instance where one in all was its room (bench/RESULTS.md, "Two instances").

Each instance publishes its holdings on the Redis channel `{prefix}:gate` — requests and cost units in
flight (what is overdue included), and of those what sits in the room kept for tenants under their
share — whenever they changed, checked every `TICK_S`, and at least every `HEARTBEAT_S`. Each
subscribes to the channel and keeps the others' last message. While every other live instance (the
limiter's heartbeat count) has spoken within `STALE_S`, their sums are pooled into the gate
(`Admission.set_peers`): its checks count everyone's holdings against the whole cluster. Room a peer
gave back admits waiting requests here at once.

What it costs and risks: nothing on the request path (the publisher reads the gate's counters on a
timer); one small PUBLISH per change per `TICK_S` at most, on connections of its own (a client of its
own: sharing the limiter's pool, a connection left broken by a Redis restart failed the limiter's next
call, and the limiter counted a second outage). Two instances may both admit into the same
free room within one tick plus a round trip (a few ms): an overshoot of a request or two, bounded and
brief, where the static split was wrong for every burst. When Redis is down or a peer falls silent
the pool dissolves within `STALE_S` into the static share, as before (fail static, never open).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from .gate import Gate
from .redis_limiter import FIRST_CONTACT_S, RedisLimiter, bounded, redis_client

log = logging.getLogger("sluicegate.gate")

#: how often the publisher looks for a change in this instance's holdings (seconds)
TICK_S = 0.005
#: ... and publishes them even when unchanged, so the others know it is alive (seconds)
HEARTBEAT_S = 0.25
#: an instance that said nothing for this long (seconds) leaves the pool: then the static share
STALE_S = 1.0

#: (requests, cost, requests in the kept room, cost in the kept room)
Holdings = tuple[int, float, int, float]


def gate_channel(prefix: str) -> str:
    """The Redis channel of the instances' gate holdings, e.g. "sg:gate"."""
    return f"{prefix}:gate"


def holdings(gate: Gate) -> Holdings:
    """What this instance holds at the gate, as published (cost to a tenth of a unit)."""
    return (gate.inflight, round(gate.inflight_cost + gate.overdue_cost, 1),
            gate.reserve_inflight, round(gate.reserve_cost, 1))


def encode(instance: str, held: Holdings) -> bytes:
    return f"{instance} {held[0]} {held[1]} {held[2]} {held[3]}".encode()


def decode(data: bytes) -> tuple[str, Holdings] | None:
    """An instance's message, or None if it is not one (another writer on the channel)."""
    try:
        instance, inflight, cost, reserve_inflight, reserve_cost = data.decode().split(" ")
        held = (int(inflight), float(cost), int(reserve_inflight), float(reserve_cost))
    except (ValueError, UnicodeDecodeError):
        return None
    if min(held) < 0 or not all(v < 1e12 for v in held):
        return None
    return instance, held


class PeerBook:
    """The other instances' last holdings, and what pooling them gives. Pure: time is an argument."""

    __slots__ = ("own", "peers")

    def __init__(self, own: str) -> None:
        self.own = own
        self.peers: dict[str, tuple[Holdings, float]] = {}  # instance -> (holdings, heard at)

    def heard(self, instance: str, held: Holdings, now: float) -> bool:
        """A message from `instance`. True if it is another instance's."""
        if instance == self.own:
            return False
        self.peers[instance] = (held, now)
        return True

    def expire(self, now: float) -> None:
        """Forget the instances silent for STALE_S."""
        for instance in [i for i, (_, at) in self.peers.items() if now - at >= STALE_S]:
            del self.peers[instance]

    def pooled(self, live: int, now: float) -> tuple[float, int, float, int, float]:
        """(pool, Σ requests, Σ cost, Σ kept-room requests, Σ kept-room cost) of the others, to pool with
        this instance's: pooled while every other live instance spoke within STALE_S, else the static
        share (pool 1, nothing counted)."""
        fresh = [held for held, at in self.peers.values() if now - at < STALE_S]
        if live <= 1 or len(fresh) < live - 1:
            return 1.0, 0, 0.0, 0, 0.0
        # The pool is the live count: an instance restarted under a new id is heard twice for up to
        # STALE_S, and its old holdings count meanwhile (on the safe side), not its limits.
        return (float(live), sum(h[0] for h in fresh), sum(h[1] for h in fresh),
                sum(h[2] for h in fresh), sum(h[3] for h in fresh))


class GateSharer:
    """Publishes this instance's gate holdings and pools the others' (see the module doc)."""

    def __init__(self, gate: Gate, limiter: RedisLimiter,
                 apply: Callable[[float, int, float, int, float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gate = gate
        self.limiter = limiter
        self.apply = apply  # Admission.set_peers
        self.clock = clock
        self.channel = gate_channel(limiter.settings.key_prefix)
        self.book = PeerBook(limiter.instance_id)
        self.published = 0
        self._timeout = max(limiter.settings.timeout_ms / 1000.0, FIRST_CONTACT_S)  # off the request path
        self._applied: tuple = (1.0, 0, 0.0, 0, 0.0)
        self._tasks: list[asyncio.Task] = []
        self._failing = False
        self._client = None  # its own connections: a publish or a subscription never holds one the limiter needs

    async def start(self) -> None:
        """Start publishing and listening in the background (the limiter must be started first)."""
        if self.limiter.client is None:
            raise RuntimeError("start the RedisLimiter before the GateSharer")
        self._client = redis_client(self.limiter.settings.url, self._timeout)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publish_loop(), name="sluicegate-gate-publish"),
                       loop.create_task(self._listen_loop(), name="sluicegate-gate-listen")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._timeout)
        self._tasks = []
        self._refresh(self.clock(), dissolve=True)
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.aclose(), self._timeout)
            except Exception:  # noqa: BLE001 - a dead connection closes as it can
                pass
            self._client = None

    def _refresh(self, now: float, dissolve: bool = False) -> None:
        """Pool what is known now into the gate, if that changed."""
        if dissolve:
            self.book.peers.clear()
        self.book.expire(now)
        pooled = self.book.pooled(self.limiter.live_instances if self.limiter.shared else 1, now)
        if pooled != self._applied:
            self._applied = pooled
            self.apply(*pooled)

    async def _publish_loop(self) -> None:
        last: Holdings | None = None
        sent_at = -HEARTBEAT_S
        while True:
            if not self.limiter.shared:
                self._refresh(self.clock(), dissolve=True)
                await self.limiter.wait_shared(True)
                last = None
            now = self.clock()
            held = holdings(self.gate)
            if held != last or now - sent_at >= HEARTBEAT_S:
                try:
                    await bounded(self._client.publish(self.channel, encode(self.book.own, held)), self._timeout)
                except Exception as exc:  # noqa: BLE001 - whatever Redis did, the limiter sees it too
                    self._failed(exc)
                else:
                    last, sent_at = held, now
                    self.published += 1
            self._refresh(self.clock())
            await asyncio.sleep(TICK_S)

    async def _listen_loop(self) -> None:
        while True:
            if not self.limiter.shared:
                await self.limiter.wait_shared(True)
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await bounded(pubsub.subscribe(self.channel), self._timeout)
                self._failing = False
                while self.limiter.shared:
                    message = await pubsub.get_message(timeout=HEARTBEAT_S)
                    if message is None or message.get("type") != "message":
                        continue
                    parsed = decode(message["data"])
                    if parsed is not None and self.book.heard(parsed[0], parsed[1], self.clock()):
                        self._refresh(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
                self._refresh(self.clock(), dissolve=True)
                await asyncio.sleep(HEARTBEAT_S)
            finally:
                try:
                    await asyncio.wait_for(pubsub.aclose(), self._timeout)
                except Exception:  # noqa: BLE001 - a dead connection closes as it can
                    pass

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            level = logging.INFO if isinstance(exc, (RedisError, OSError, TimeoutError)) else logging.ERROR
            log.log(level, "gate not pooled with the other instances until Redis answers (%s)", type(exc).__name__)
