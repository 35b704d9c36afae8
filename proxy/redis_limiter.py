"""Shared budgets: every instance draws on one token bucket per (tenant, resource) kept in Redis.

The request path does not wait for Redis while a tenant is within its budget. Each instance
*leases* tokens from the shared bucket and admits requests from its lease in memory; the lease is
topped up in the background when it runs low. One Lua script (`proxy/lua/lease.lua`) does the
shared side atomically on Redis time: refill, book the settlements this instance collected, serve
the requests its lease could not pay (charge now, reserve for a wait, or refuse with a
retry-after), then lease what is left. A request that its lease cannot pay joins the batch of its
bucket's next script call (every such request of one event-loop tick rides in the same call); one
that the shared bucket's last known level already refuses is refused without asking Redis.
Settlements add up per bucket and ride along on the next call. The accuracy bound is written down
in docs/DESIGN.md, "Shared limits (Redis)".

Instances heartbeat into a sorted set (`proxy/lua/heartbeat.lua`); `live_instances` counts those
heard from within `instance_ttl_s`, and each holds 1 / live of the concurrency limits. A Redis
error, or a call slower than `timeout_ms`, switches this instance to a `LocalLimiter` holding its
share of every rate and burst (1 / live instances at last sight) until Redis answers again.
"""
from __future__ import annotations

import asyncio
import importlib.resources
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .config import Config, RedisConfig
from .limiter import Decision, LocalLimiter
from .metrics import Metrics

log = logging.getLogger("sluicegate.redis")

#: first pause before reconnecting after a failure (doubles up to redis.reconnect_max_s)
FIRST_BACKOFF_S = 0.05
#: first contact when (re)connecting: a new connection's handshake, a cluster client's slot map.
#: Not on any request's path (requests are decided locally meanwhile), so it may take longer than
#: one command; the heartbeat that follows must still answer within timeout_ms.
FIRST_CONTACT_S = 1.0


def script_source(name: str) -> str:
    """The text of `proxy/lua/<name>.lua`, read from the installed package."""
    return importlib.resources.files("proxy.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def bucket_key(prefix: str, tenant: str, resource: str) -> str:
    """The Redis key of a tenant's shared bucket, e.g. "sg:{acme}:search".

    The `{tenant}` hash tag puts every key of one tenant in one Redis Cluster slot."""
    return f"{prefix}:{{{tenant}}}:{resource}"


def redis_client(url: str, timeout_s: float) -> Redis | RedisCluster:
    """A client for a `redis.url`.

    redis://[user:password@]host:port/db, rediss://... (TLS), unix:///path/redis.sock, or for
    Redis Cluster redis+cluster://[user:password@]host1:port1,host2:port2 (rediss+cluster:// for
    TLS; any reachable master or replica will do, the rest of the cluster is discovered). Every
    connect and every reply gives up after `timeout_s`; a failed command is retried once at once (a
    pooled connection the server closed), never after a back-off: the limiter has its own.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    scheme, _, rest = url.partition("://")
    if not scheme.endswith("+cluster"):
        return Redis.from_url(url, **options)
    userinfo, _, hosts = rest.rpartition("@")
    nodes = []
    for part in hosts.split("/", 1)[0].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis+cluster URL needs host:port for every node, got {part!r}")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    username, _, password = userinfo.partition(":")
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=scheme == "rediss+cluster",
        **options,
    )


async def bounded(call: Awaitable[Any], timeout_s: float) -> Any:
    """The result of a Redis call, or TimeoutError after `timeout_s` seconds.

    The call runs in a task of its own and is abandoned on time-out: waiting for it is bounded
    by our clock, never by the client honouring a cancellation. redis-py's asyncio client can
    swallow a CancelledError that lands at the wrong moment (redis/redis-py#2028, #2551), which
    would leave `asyncio.timeout` around the call waiting, or a cancelled task running on.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout_s)
    except asyncio.CancelledError:
        _abandon(task)
        raise
    if not done:
        _abandon(task)
        raise TimeoutError
    return task.result()


def _abandon(task: asyncio.Future) -> None:
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nobody reads it: no warning


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s * 1000:.0f} ms"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Lease:
    """This instance's side of one shared bucket: the tokens it leased and has not spent, the
    settlements it has not booked yet, the level Redis last reported, and the requests waiting for
    the bucket's next script call (at most one call per bucket is in flight)."""

    __slots__ = (
        "key", "rate", "burst", "max_debt", "max_wait", "window", "chunk", "low", "pace",
        "held", "pending", "shared", "seen", "used", "queue", "call",
    )

    def __init__(self, key: str, burst: float, now: float):
        self.key = key  # the Redis key, e.g. sg:{acme}:search
        self.held = 0.0  # cost units leased from the shared bucket, not spent yet
        self.pending = 0.0  # net cost units to debit (> 0) or credit (< 0) on the next call
        self.shared = burst  # the shared level Redis last reported (unknown yet: assume full)
        self.seen = now  # when it reported it (local monotonic seconds)
        self.used = -math.inf  # when a request last drew on this bucket
        self.queue: list[tuple[float, asyncio.Future]] = []  # (cost units, its answer) for the next call
        self.call: asyncio.Task | None = None

    def plan(self, rate: float, burst: float, max_debt: float, max_wait: float, chunk: float) -> None:
        self.rate = rate  # cost units per second
        self.burst = burst  # cost units
        self.max_debt = max_debt  # cost units
        self.max_wait = max_wait  # seconds
        self.window = burst / rate  # seconds
        self.chunk = chunk  # cost units leased at a time
        self.low = chunk / 2  # top the lease up below this; book settlements beyond it
        self.pace = rate  # how fast this instance expects the shared level to grow for it

    def estimate(self, now: float) -> float:
        """The shared level at `now` as far as this instance can tell: the last reported level
        refilled at the full rate, or at this instance's share of it while other instances are
        seen taking the refill (`pace`). Tokens this underestimates stay in the bucket for the
        next call; they are never lost."""
        level = self.shared + (now - self.seen) * self.pace
        return level if level < self.burst else self.burst

    def forget(self, now: float) -> None:
        """Back from an outage: nothing leased, nothing owed, the shared level unknown."""
        self.held = self.pending = 0.0
        self.shared, self.seen = self.burst, now
        self.pace = self.rate


class RedisLimiter:
    """Budgets shared by every instance through Redis, with a local fallback (see the module doc).

    `share` is this process's fraction of each limit until Redis says how many instances are live
    (1 / workers). `on_membership_change(live)` is called when the number of live instances
    changes, so the caller can re-split its concurrency limits. `clock` gives monotonic seconds.
    `instance_id` names this process in the membership set (default host:pid:random).
    """

    def __init__(
        self,
        settings: RedisConfig,
        *,
        metrics: Metrics | None = None,
        share: float = 1.0,
        on_membership_change: Callable[[int], None] | None = None,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not share > 0:
            raise ValueError(f"share must be > 0, got {share!r}")
        self.settings = settings
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_membership_change = on_membership_change
        self._clock = clock
        self._timeout = settings.timeout_ms / 1000.0
        self._members_key = f"{settings.key_prefix}:instances"
        self._live = max(1, round(1.0 / share))
        self._local = LocalLimiter(share=1.0 / self._live, clock=clock)
        self._config: Config | None = None
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._holding: set[_Lease] = set()  # leases with tokens or settlements out: the sweep's work list
        self._shared = False  # True while budgets are decided through Redis
        self._closing = False
        self._backoff = FIRST_BACKOFF_S
        self._client: Redis | RedisCluster | None = None
        self._runner: asyncio.Task | None = None
        self._switched = asyncio.Event()  # set (and replaced) at every switch between shared and local
        self.calls = {"lease": 0, "heartbeat": 0}  # script calls made, by script
        self._metrics = metrics
        if metrics is not None:
            self._call_counter = Counter(
                "sluicegate_redis_calls", "Script calls to Redis, by script", ["script"], registry=metrics.registry
            )
            metrics.add_live_gauge(
                "sluicegate_redis_live_instances", "Instances heartbeating into Redis, at last sight", (),
                lambda: [((), float(self._live))],
            )
            metrics.add_live_gauge(
                "sluicegate_redis_leased_cost_units", "Cost units this instance holds leased from each shared bucket",
                ("tenant", "resource"),
                lambda: [(pair, lease.held) for pair, lease in self._leases.items() if lease.held],
            )

    # ---- what the rest of the proxy sees ----
    @property
    def shared(self) -> bool:
        """True while budgets are shared through Redis; False in local fallback (or before start)."""
        return self._shared

    @property
    def live_instances(self) -> int:
        """Instances heartbeating into Redis at last sight (1 / share before the first heartbeat)."""
        return self._live

    @property
    def share(self) -> float:
        """This process's fraction of every limit: 1 / live instances."""
        return 1.0 / self._live

    @property
    def client(self) -> Redis | RedisCluster | None:
        """The Redis client (None before `start`), for other state shared through the same Redis
        (learned costs): one connection pool, one view of Redis health (`shared`, `wait_shared`)."""
        return self._client

    async def wait_shared(self, shared: bool = True) -> None:
        """Return once budgets are shared through Redis (or, with shared=False, once they are local)."""
        while self._shared != shared:
            await self._switched.wait()

    async def sync(self) -> None:
        """Now rather than at the next heartbeat: book every settlement, give back every lease that
        no request used for a heartbeat (every lease, while closing), and wait for those calls."""
        if not self._shared:
            return
        self._sweep()
        calls = [lease.call for lease in (*self._leases.values(), *self._holding) if lease.call is not None]
        if calls:
            await asyncio.wait(calls)

    def configure(self, config: Config, now: float | None = None) -> None:
        """Apply every tenant x resource bucket of `config`, and the same to the local fallback.

        Shared levels live in Redis and are untouched; a lease of a bucket that is gone is given back.
        """
        now = self._clock() if now is None else now
        self._config = config
        self._local.configure(config, now)
        prefix = self.settings.key_prefix
        fraction, horizon = self.settings.lease_fraction, self.settings.lease_horizon_s
        ratio = config.cost.max_debt_ratio
        leases: dict[tuple[str, str], _Lease] = {}
        for name, tenant in config.tenants.items():
            plan = config.plans[tenant.plan]
            max_wait = plan.max_wait_ms / 1000.0
            for resource in plan.resources:
                bucket = plan.bucket(resource)
                lease = self._leases.get((name, resource))
                if lease is None:
                    lease = _Lease(bucket_key(prefix, name, resource), bucket.burst, now)
                # the same debt floor as LocalLimiter: a reservation within max_wait is never clamped
                max_debt = max(bucket.burst * ratio, bucket.rate * max_wait)
                chunk = min(fraction * bucket.burst, bucket.rate * horizon)
                lease.plan(bucket.rate, bucket.burst, max_debt, max_wait, chunk)
                leases[(name, resource)] = lease
        gone = [lease for pair, lease in self._leases.items() if pair not in leases]
        self._leases = leases
        for lease in gone:
            lease.used = -math.inf  # its next call leases nothing
            if self._shared and lease.held > 0.0:
                held, lease.held = lease.held, 0.0
                self._book(lease, -held)

    def try_acquire(self, tenant: str, resource: str, cost: float, shadow: bool = False) -> Decision | None:
        """`acquire`, when it decides without Redis or a wait: paid from this instance's lease, refused
        because the shared bucket's last known level cannot have the tokens in time, or decided by the
        local fallback without sleeping. None when Redis must be asked (or the fallback must wait)."""
        lease = self._leases[(tenant, resource)]
        if not self._shared:
            return self._local.try_acquire(tenant, resource, cost, shadow)
        charge = lease.burst if cost > lease.burst else cost
        now = self._clock()
        lease.used = now
        held = lease.held
        if held >= charge:
            held -= charge
            lease.held = held
            shared = lease.estimate(now)
            if held < lease.low and lease.call is None and shared > 0.0:
                self._kick(lease)  # top the lease up before it runs dry, off the request path
            return Decision(True, 0.0, held + shared, lease.burst, lease.window, None, charge)
        if not charge >= 0.0:
            raise ValueError(f"cost must be a number >= 0, got {cost!r}")
        shared = lease.estimate(now)
        need = charge - held
        if need > shared and (need - shared) / lease.rate > lease.max_wait:
            # Not in time even if no other instance took a token since Redis last reported: refuse
            # without asking. The retry-after is a lower bound, like LocalLimiter's.
            wait = (need - shared) / lease.rate
            return Decision(False, wait, held + shared, lease.burst, lease.window, "budget", 0.0)
        return None

    async def acquire(self, tenant: str, resource: str, cost: float, shadow: bool = False) -> Decision:
        """Charge min(cost, burst) units to the tenant's shared bucket, or after a wait of at most
        the plan's max_wait_ms; the same contract as `LocalLimiter.acquire`.

        Paid from this instance's lease when it holds enough (no Redis); otherwise decided by one
        script call shared with the other requests of this tick, or refused at once when the shared
        bucket's last reported level cannot have the tokens in time. Never waits on Redis longer than
        timeout_ms: a slow or failed Redis decides the request locally (and switches to fallback).
        """
        decision = self.try_acquire(tenant, resource, cost, shadow)
        if decision is not None:
            return decision
        if not self._shared:
            return await self._local.acquire(tenant, resource, cost, shadow)
        lease = self._leases[(tenant, resource)]
        charge = lease.burst if cost > lease.burst else cost
        return await self._acquire_shared(tenant, resource, cost, lease, charge, self._clock(), shadow)

    def settle(self, tenant: str, resource: str, charged: float, observed: float) -> None:
        """Book observed - charged cost units (debt if positive, credit if negative) on the shared
        bucket with the bucket's next script call (at the latest one heartbeat later)."""
        if not self._shared:
            self._local.settle(tenant, resource, charged, observed)
            return
        lease = self._leases.get((tenant, resource))
        delta = observed - charged
        if lease is not None and (delta > 0.0 or delta < 0.0):  # a NaN books nothing
            self._book(lease, delta)

    def level(self, tenant: str, resource: str) -> float:
        """The level this instance sees, in cost units: the shared bucket as last reported and
        refilled since, plus what this instance leased, minus its unbooked debits."""
        lease = self._leases[(tenant, resource)]
        if not self._shared:
            return self._local.level(tenant, resource)
        return lease.estimate(self._clock()) + lease.held - lease.pending

    def shared_level(self, tenant: str, resource: str) -> float | None:
        """The shared bucket's level as last reported by Redis and refilled since, without this
        instance's leases; None while on local fallback. Every instance sees the same bucket, so a
        view over several instances counts it once (see `workers.merge_tenant_reports`)."""
        if not self._shared:
            return None
        return self._leases[(tenant, resource)].estimate(self._clock())

    async def start(self) -> None:
        """Connect, join the membership and start heartbeating. Never raises for Redis trouble:
        Redis down at start means starting in local fallback and reconnecting in the background."""
        if self._runner is not None:
            return
        self._client = redis_client(self.settings.url, self._timeout)
        self._lease_script = self._client.register_script(script_source("lease"))
        self._heartbeat_script = self._client.register_script(script_source("heartbeat"))
        self._shared = False
        try:
            await self._probe()
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the proxy serves on local limits
            self._fall_back(exc, starting=True)
        else:
            self._resume()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="sluicegate-redis")

    async def close(self) -> None:
        """Give back every lease and leave the membership (each bounded by timeout_ms), then disconnect."""
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait((self._runner,), timeout=self._timeout * 2)
            self._runner = None
        if self._shared:
            sync = asyncio.ensure_future(self.sync())
            await asyncio.wait((sync,), timeout=self._timeout * 2)
            if not sync.done():
                _abandon(sync)
            try:
                await bounded(
                    self._heartbeat_script(keys=(self._members_key,), args=self._heartbeat_args(leave=True)),
                    self._timeout,
                )
            except Exception as exc:  # noqa: BLE001 - shutting down either way; the entry expires
                log.debug("leaving the Redis membership failed: %s", _describe(exc, self._timeout))
            self._shared = False
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001 - a dead connection has nothing to close
                pass

    # ---- the shared bucket ----
    async def _acquire_shared(
        self, tenant: str, resource: str, cost: float, lease: _Lease, charge: float, now: float, shadow: bool
    ) -> Decision:
        shared = lease.estimate(now)
        need = charge - lease.held
        if need > shared and (need - shared) / lease.rate > lease.max_wait:
            # Not in time even if no other instance took a token since Redis last reported: refuse
            # without asking. The retry-after is a lower bound, like LocalLimiter's.
            wait = (need - shared) / lease.rate
            return Decision(False, wait, lease.held + shared, lease.burst, lease.window, "budget", 0.0)
        # The lease pays what it can; the shared bucket the rest (charged, reserved, or refused).
        taken, lease.held = lease.held, 0.0
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        lease.queue.append((need, future))
        if lease.call is None:
            self._kick(lease)
        try:
            async with asyncio.timeout(self._timeout):
                wait = await future
        except TimeoutError:
            # Redis is slow: decide this request locally (a charge Redis makes later is given back).
            lease.held += taken
            self._give_back_if_charged(lease, need, future)
            return await self._local.acquire(tenant, resource, cost, shadow)
        except asyncio.CancelledError:
            lease.held += taken
            self._give_back_if_charged(lease, need, future)
            raise
        if wait is None:  # Redis failed: this instance is in local fallback now
            return await self._local.acquire(tenant, resource, cost, shadow)
        if wait < 0.0:
            lease.held += taken
            return Decision(False, -wait, lease.held + lease.shared, lease.burst, lease.window, "budget", 0.0)
        remaining = lease.shared + lease.held
        if wait > 0.0 and not shadow:
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                # The client went away while queued: it takes nothing from the budget.
                lease.held += taken
                self._book(lease, -need)
                raise
        return Decision(True, wait, remaining, lease.burst, lease.window, None, charge)

    def _give_back_if_charged(self, lease: _Lease, need: float, future: asyncio.Future) -> None:
        """The request left after its answer arrived but before it read it: undo the charge."""
        if future.done() and not future.cancelled():
            wait = future.result()
            if wait is not None and wait >= 0.0:
                self._book(lease, -need)

    def _book(self, lease: _Lease, amount: float) -> None:
        """Add `amount` cost units (> 0 debit, < 0 credit) to what the next call books."""
        lease.pending += amount
        self._holding.add(lease)
        if lease.call is None and abs(lease.pending) >= lease.low and self._shared:
            self._kick(lease)

    def _kick(self, lease: _Lease) -> None:
        lease.call = asyncio.get_running_loop().create_task(self._call(lease))

    async def _call(self, lease: _Lease) -> None:
        """Script calls for one bucket, one at a time, until no request waits. Each carries every
        request that queued since the previous call, the net of the settlements, and a top-up of
        the lease (none for a lease unused for a heartbeat, or while closing)."""
        try:
            while self._shared:
                batch, lease.queue = lease.queue, []
                settle, lease.pending = lease.pending, 0.0
                want = 0.0
                if not self._closing and self._clock() - lease.used < self.settings.heartbeat_s:
                    want = max(0.0, lease.chunk - lease.held)
                if not batch and not settle and not want:
                    return
                args = [lease.rate, lease.burst, lease.max_debt, settle, want, lease.max_wait]
                args += [need for need, _ in batch]
                try:
                    reply = await bounded(self._lease_script(keys=(lease.key,), args=args), self._timeout)
                except Exception as exc:  # noqa: BLE001 - whatever Redis did, the requests are decided locally
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
                    self._fall_back(exc)
                    return
                self._count("lease")
                lease.held += float(reply[0])
                lease.shared = float(reply[1])
                lease.seen = self._clock()
                if lease.held > 0.0 or lease.pending:
                    self._holding.add(lease)
                # A refusal after the estimate said "there by now" means other instances took the
                # refill: expect only this instance's share of it until the bucket has tokens to spare.
                if batch and float(reply[2]) < 0.0:
                    lease.pace = lease.rate / self._live
                elif float(reply[0]) >= want:
                    lease.pace = lease.rate
                for (need, future), answer in zip(batch, reply[2:]):
                    wait = float(answer)
                    if future.cancelled():
                        if wait >= 0.0:  # charged for a client that went away meanwhile
                            self._book(lease, -need)
                    else:
                        future.set_result(wait)
                if not lease.queue and abs(lease.pending) < lease.low:
                    return
        finally:
            lease.call = None
            if lease.queue and not self._shared:
                for _, future in lease.queue:
                    if not future.done():
                        future.set_result(None)
                lease.queue = []

    # ---- membership, fallback, recovery ----
    def _heartbeat_args(self, leave: bool = False) -> tuple:
        return (self.instance_id, self.settings.instance_ttl_s, "1" if leave else "0")

    async def _probe(self) -> None:
        """Connect (PING) and heartbeat; raises unless the heartbeat answers within timeout_ms."""
        client = self._client
        assert client is not None
        first_contact = max(self._timeout, FIRST_CONTACT_S)
        if isinstance(client, RedisCluster):
            await bounded(client.initialize(), first_contact)
        await bounded(client.ping(), first_contact)
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        live = await bounded(
            self._heartbeat_script(keys=(self._members_key,), args=self._heartbeat_args()), self._timeout
        )
        self._count("heartbeat")
        self._set_live(int(live))

    async def _run(self) -> None:
        """While shared: heartbeat, give back idle leases, book old settlements. While local:
        reconnect with exponential back-off and resume when Redis answers."""
        while True:
            if self._shared:
                await asyncio.sleep(self.settings.heartbeat_s)
                if not self._shared:
                    continue
                try:
                    await self._heartbeat()
                except Exception as exc:  # noqa: BLE001 - any failure means local limits
                    self._fall_back(exc)
                    continue
                self._sweep()
            else:
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, self.settings.reconnect_max_s)
                try:
                    await self._probe()
                except Exception as exc:  # noqa: BLE001
                    log.debug("Redis still unavailable: %s", _describe(exc, self._timeout))
                    continue
                self._resume()

    def _sweep(self) -> None:
        """Give back the leases no request used for a heartbeat; book settlements that waited one."""
        now = self._clock()
        idle = self.settings.heartbeat_s
        for lease in list(self._holding):
            if lease.call is not None:
                continue
            if lease.held > 0.0 and (self._closing or now - lease.used >= idle):
                lease.pending -= lease.held
                lease.held = 0.0
            if lease.pending:
                self._kick(lease)
            elif lease.held <= 0.0:
                self._holding.discard(lease)

    def _set_live(self, live: int) -> None:
        live = max(1, live)
        if live == self._live:
            return
        self._live = live
        self._local.share = 1.0 / live
        if self._config is not None:
            self._local.configure(self._config)
        log.info("%d live instances share the limits through Redis", live)
        if self.on_membership_change is not None:
            try:
                self.on_membership_change(live)
            except Exception:  # noqa: BLE001 - a caller's bug must not stop the heartbeat
                log.exception("on_membership_change(%d) failed", live)

    def _fall_back(self, exc: BaseException, starting: bool = False) -> None:
        """Switch to local limits (once per outage): gauge, counter, one log line."""
        if not self._shared and not starting:
            return
        self._shared = False
        self._backoff = FIRST_BACKOFF_S
        self._announce_switch()
        if self._metrics is not None:
            self._metrics.redis_up.set(0)
            self._metrics.redis_fallbacks.inc()
        log.warning(
            "Redis at %s %s (%s): limits are local now, this instance holding 1/%d of every rate and burst, "
            "until Redis answers again",
            _redacted(self.settings.url), "unreachable at start" if starting else "failed",
            _describe(exc, self._timeout), self._live,
        )
        if not isinstance(exc, (RedisError, OSError, TimeoutError)):
            log.error("unexpected error talking to Redis", exc_info=exc)

    def _resume(self) -> None:
        now = self._clock()
        for lease in self._leases.values():
            lease.forget(now)
        self._holding.clear()
        self._shared = True
        self._backoff = FIRST_BACKOFF_S
        self._announce_switch()
        if self._metrics is not None:
            self._metrics.redis_up.set(1)
        log.info(
            "limits shared through Redis at %s (%d live instances)", _redacted(self.settings.url), self._live
        )

    def _announce_switch(self) -> None:
        self._switched.set()
        self._switched = asyncio.Event()

    def _count(self, script: str) -> None:
        self.calls[script] += 1
        if self._metrics is not None:
            self._call_counter.labels(script).inc()
