"""Learned costs shared between instances through the Redis that the limits already use.

Each instance adds the cost observations it makes to a bounded batch: per (tenant, query-shape
fingerprint), a count and a sum of cost units. Every `learned_costs_interval_s` it publishes the
batch with one script call (`proxy/lua/costs.lua`: one entry per pair, appended to the stream
`{prefix}:costs`, which is capped near `cost.learn_lru_size` entries), then reads what was appended
since its last read (XREAD from its last id), skips its own entries, and folds the others into
its `LearnedCosts` with `merge`, as if it had observed them itself. A new instance reads the
stream from its start, so it begins with about a table's worth of the others' recent observations.

Nothing here is on the request path: a request only adds to the batch (a dict update). Redis
health is the `RedisLimiter`'s, and so is the client: sharing runs while budgets are shared
through Redis and pauses while the limiter is in its local fallback (which logs the outage once
and reconnects with back-off). A failed call here logs once, drops that call's observations, and
waits for the limiter's next heartbeat. The batch is bounded: beyond `learned_costs_max_pending`
pairs, the pair that entered it first is dropped. Delay bound and outage behaviour:
docs/DESIGN.md, "Shared limits (Redis)".
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict

from prometheus_client import Counter
from redis.exceptions import RedisError, ResponseError

from .config import Config
from .cost import LearnedCosts
from .limiter import Limiter
from .metrics import Metrics
from .redis_limiter import FIRST_CONTACT_S, RedisLimiter, bounded, script_source

log = logging.getLogger("sluicegate.costs")

#: (tenant, fingerprint) pairs per script call: bounds how long one call keeps Redis busy
PUBLISH_CHUNK = 500
#: stream entries per read (a new instance pages through the stream this many at a time)
READ_COUNT = 256
#: reads per round at most: a round that is behind catches up over the next rounds, publishing meanwhile
READ_PAGES = 64
#: the stream outlives its last write by this long (seconds); learned costs older than that are stale
STREAM_TTL_S = 86_400


def costs_key(prefix: str) -> str:
    """The Redis key of the learned-cost stream, e.g. "sg:costs": one key, so one Redis Cluster slot."""
    return f"{prefix}:costs"


class PendingObservations:
    """Cost observations made here and not published yet: per (tenant, fingerprint) a count and a sum
    of cost units, at most `max_pairs` pairs. Beyond that the pair that entered first is dropped."""

    __slots__ = ("max_pairs", "pairs", "dropped")

    def __init__(self, max_pairs: int) -> None:
        if max_pairs < 1:
            raise ValueError("max_pairs must be at least 1")
        self.max_pairs = max_pairs
        #: (tenant, fingerprint) -> [count, sum of cost units]; first entered first
        self.pairs: OrderedDict[tuple[str, int], list] = OrderedDict()
        self.dropped = 0  # observations dropped on overflow (the sharer counts and resets it)

    def add(self, tenant: str, fingerprint: int, observed: float) -> None:
        """Queue one observation (cost units); a non-finite or negative one is ignored, as by LearnedCosts."""
        if not (observed >= 0.0 and math.isfinite(observed)):
            return
        entry = self.pairs.get((tenant, fingerprint))
        if entry is not None:
            entry[0] += 1
            entry[1] += observed
            return
        self.pairs[(tenant, fingerprint)] = [1, float(observed)]
        if len(self.pairs) > self.max_pairs:
            _, (count, _) = self.pairs.popitem(last=False)
            self.dropped += count

    def take(self, limit: int) -> list[tuple[str, int, int, float]]:
        """Remove and return up to `limit` pairs, first entered first, as (tenant, fingerprint, count, mean)."""
        out = []
        pairs = self.pairs
        while pairs and len(out) < limit:
            (tenant, fingerprint), (count, total) = pairs.popitem(last=False)
            out.append((tenant, fingerprint, count, total / count))
        return out

    def __len__(self) -> int:
        return len(self.pairs)


class SharedLearnedCosts(LearnedCosts):
    """Learned costs whose local observations are also queued (`pending`) for the other instances.

    What the others observed arrives through `merge`, which queues nothing: no entry travels twice.
    """

    __slots__ = ("pending",)

    def __init__(self, max_entries: int, alpha: float, max_pending: int, max_rise: float = math.inf) -> None:
        super().__init__(max_entries, alpha, max_rise)
        self.pending = PendingObservations(max_pending)

    def _learn(self, tenant: str, fingerprint: int, service: float) -> float:
        # what travels is the service time learned here; an upper bound that only lowered a cost stays local
        self.pending.add(tenant, fingerprint, service)
        return super()._learn(tenant, fingerprint, service)


class CostSharer:
    """Publishes this instance's learned-cost observations to the stream and merges the other
    instances' into `learned` (see the module doc). Uses `limiter`'s client and instance id, and
    runs while `limiter` shares budgets through Redis. `stream_max` caps the stream (entries)."""

    def __init__(
        self, learned: SharedLearnedCosts, limiter: RedisLimiter, *, stream_max: int, metrics: Metrics | None = None
    ):
        settings = limiter.settings
        self.learned = learned
        self.limiter = limiter
        self.key = costs_key(settings.key_prefix)
        self.interval = settings.learned_costs_interval_s
        self.stream_max = stream_max
        self.last_id = b"0-0"  # the newest entry read: a new instance reads the stream from its start
        self.counts = {"published": 0, "merged": 0, "dropped": 0}  # observations, by outcome
        # Off the request path: a call may take longer than timeout_ms (the client still bounds each reply).
        self._timeout = max(settings.timeout_ms / 1000.0, FIRST_CONTACT_S)
        self._own = limiter.instance_id.encode()
        self._lock = asyncio.Lock()  # one round at a time: two concurrent reads would merge twice
        self._runner: asyncio.Task | None = None
        self._script = None
        self._recheck = False  # after an outage: is the stream still the one `last_id` points into?
        self._failing = False
        self._counter = None
        if metrics is not None:
            self._counter = Counter(
                "sluicegate_shared_cost_observations",
                "Learned-cost observations shared through Redis: published by this instance, merged from "
                "other instances, dropped unpublished (batch overflow or a failed call)",
                ["outcome"], registry=metrics.registry,
            )
            for outcome in self.counts:
                self._counter.labels(outcome)

    async def start(self) -> None:
        """Start publishing and reading in the background (the limiter must be started first).
        Never raises for Redis trouble: sharing starts when the limiter reaches Redis."""
        if self._runner is not None:
            return
        client = self.limiter.client
        if client is None:
            raise RuntimeError("start the RedisLimiter before the CostSharer")
        self._script = client.register_script(script_source("costs"))
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="sluicegate-costs")
        log.info("learned costs shared through the Redis stream %s every %.0f ms", self.key, self.interval * 1000)

    async def close(self) -> None:
        """Stop, publishing what is pending if Redis is up (bounded by a second or timeout_ms)."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait((self._runner,), timeout=self._timeout)
            self._runner = None
        if self.limiter.shared and len(self.learned.pending):
            flush = asyncio.ensure_future(self._publish_locked())
            await asyncio.wait((flush,), timeout=self._timeout)
            if not flush.done():
                flush.cancel()
            elif not flush.cancelled() and flush.exception() is not None:
                log.debug("publishing the last learned costs failed: %s", _describe(flush.exception()))

    async def sync(self) -> None:
        """One round now: publish what is pending, then merge what the others published since the
        last read. Raises what Redis raised (the background loop catches it)."""
        async with self._lock:
            if self._recheck:
                await self._check_stream()
            await self._publish()
            await self._receive()

    # ---- one round ----
    async def _publish_locked(self) -> None:
        async with self._lock:
            await self._publish()

    async def _publish(self) -> None:
        pending = self.learned.pending
        dropped, pending.dropped = pending.dropped, 0
        self._count("dropped", dropped)
        while len(pending):
            batch = pending.take(PUBLISH_CHUNK)
            args: list = [self.stream_max, STREAM_TTL_S * 1000, self._own]
            observations = 0
            for tenant, fingerprint, count, mean in batch:
                args += (tenant.encode("utf-8", "surrogatepass"), f"{fingerprint:016x}", count, repr(mean))
                observations += count
            try:
                last = await bounded(self._script(keys=(self.key,), args=args), self._timeout)  # type: ignore[misc]
            except BaseException:
                # Maybe booked, maybe not (a time-out): dropping never publishes an observation twice.
                self._count("dropped", observations)
                raise
            self._count("published", observations)
            if last and _entry_id(last) < _entry_id(self.last_id):
                # The new entry is older than the last one read: the stream was recreated (a Redis that
                # restarted empty, with a clock behind the old one's). Read the new one from its start.
                self.last_id = b"0-0"

    async def _receive(self) -> None:
        client = self.limiter.client
        assert client is not None
        for _ in range(READ_PAGES):
            reply = await bounded(client.xread({self.key: self.last_id}, count=READ_COUNT), self._timeout)
            entries = _entries(reply)
            if not entries:
                return
            merged = 0
            for _, fields in entries:
                merged += self._merge(fields)
            self.last_id = entries[-1][0]
            self._count("merged", merged)
            if len(entries) < READ_COUNT:
                return

    def _merge(self, fields: dict) -> int:
        """Fold one entry of another instance into the learned costs; the observations it held."""
        if not fields or fields.get(b"i") == self._own:
            return 0
        try:
            tenant = fields[b"t"].decode("utf-8", "surrogatepass")
            fingerprint = int(fields[b"f"], 16)
            count = int(fields[b"n"])
            mean = float(fields[b"c"])
        except (KeyError, ValueError, UnicodeDecodeError):
            return 0  # not ours to read (another writer, another version): skip it
        if count < 1:
            return 0
        self.learned.merge(tenant, fingerprint, mean, count)
        return count

    async def _check_stream(self) -> None:
        """After an outage: if the stream's newest entry is older than the last one read (or the
        stream is gone), this is a new stream; read it from its start."""
        client = self.limiter.client
        assert client is not None
        newest = await bounded(client.xrevrange(self.key, count=1), self._timeout)
        if not newest or _entry_id(newest[0][0]) < _entry_id(self.last_id):
            self.last_id = b"0-0"
        self._recheck = False

    # ---- the background loop ----
    async def _run(self) -> None:
        """A round every interval while the limiter shares budgets through Redis; while it is in
        its local fallback, wait for it to reconnect (its back-off, its log line)."""
        while True:
            if not self.limiter.shared:
                self._recheck = True
                await self.limiter.wait_shared(True)
            try:
                await self.sync()
            except Exception as exc:  # noqa: BLE001 - whatever Redis did, no sharing for a while
                self._failed(exc)
                self._recheck = True
                await self._until_next_heartbeat()
                continue
            if self._failing:
                self._failing = False
                log.info("learned costs shared through Redis again")
            await asyncio.sleep(self.interval)

    def _failed(self, exc: BaseException) -> None:
        """One log line per run of failures; the limiter's heartbeat decides whether Redis is down."""
        if self._failing:
            log.debug("sharing learned costs failed again: %s", _describe(exc))
            return
        self._failing = True
        if isinstance(exc, ResponseError):  # Redis is up and refused: the limiter will not say so
            log.warning("learned costs not shared: Redis answered %s", _describe(exc))
        elif isinstance(exc, (RedisError, OSError, TimeoutError)):  # an outage: the limiter warns about it
            log.info("learned costs not shared until Redis answers (%s)", _describe(exc))
        else:
            log.error("unexpected error sharing learned costs", exc_info=exc)

    async def _until_next_heartbeat(self) -> None:
        """Wait one heartbeat, or less if the limiter switches to its local fallback meanwhile."""
        local = asyncio.ensure_future(self.limiter.wait_shared(False))
        try:
            await asyncio.wait((local,), timeout=self.limiter.settings.heartbeat_s)
        finally:
            local.cancel()

    def _count(self, outcome: str, observations: int) -> None:
        if observations:
            self.counts[outcome] += observations
            if self._counter is not None:
                self._counter.labels(outcome).inc(observations)


def learned_costs(
    config: Config, limiter: Limiter, metrics: Metrics | None = None
) -> tuple[LearnedCosts, CostSharer | None]:
    """This process's learned-cost table, and the sharer that exchanges it with the other instances
    when budgets are shared through Redis and `redis.share_learned_costs` is on (else None: without
    Redis every instance, and every `--workers` worker, learns on its own)."""
    cost = config.cost
    if not isinstance(limiter, RedisLimiter) or config.redis is None or not config.redis.share_learned_costs:
        return LearnedCosts(cost.learn_lru_size, cost.learn_alpha, cost.learn_max_rise), None
    learned = SharedLearnedCosts(
        cost.learn_lru_size, cost.learn_alpha, config.redis.learned_costs_max_pending, cost.learn_max_rise
    )
    return learned, CostSharer(learned, limiter, stream_max=cost.learn_lru_size, metrics=metrics)


def _entries(reply) -> list:
    """The (id, fields) entries of an XREAD reply for one stream: a RESP2 list [[key, entries]], a
    RESP3 map {key: [entries]}, or redis-py's unified map {key: entries}."""
    if not reply:
        return []
    stream = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    if stream and isinstance(stream[0], list):
        stream = stream[0]
    return stream or []


def _entry_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id "ms-seq" as a pair that orders like Redis orders ids."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
