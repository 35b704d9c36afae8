"""What a query shape has cost before: an EWMA of observed costs per (tenant, fingerprint), bounded.

Learned from service time, not from queue time: `took` counts the time a search's shard tasks
waited in the nodes' search queues, so while another tenant saturates the cluster a cheap shape
would be learned as expensive. The cluster poller tells `LearnedCosts.queue_wait_ms` how long a
search task has recently waited in a queue (Little's law on the nodes' thread-pool stats,
proxy/clusterhealth.py); `service_cost` takes that out of a search's observation, and an
observation that is mostly queue only ever lowers what was learned.

Pure: observations in, cost units out. No I/O, no clock.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from .cost_observed import Observed

#: a search whose took is under this many times its queue wait is mostly queue: its service time is not
#: known well enough to raise a learned cost, only to lower one (took × shards bounds it from above) ...
WAIT_DOMINANCE = 3.0
#: ... once the wait is this long (ms): a node that queues less than this is busy, not saturated, and a
#: search's own shard tasks queueing behind each other on a small pool look just like it
SATURATED_WAIT_MS = 50.0


def service_cost(observed: float, queue_wait_ms: float) -> tuple[float, bool]:
    """(cost units of service time, whether it is only an upper bound) of one observation, given the mean
    time a search task recently waited in a node's queue (ms).

    A search's shard tasks queue in parallel, once for the query phase and once more for the fetch
    phase when hits were fetched from several shards (`Observed.queue_passes`): service ≈ (took − wait ×
    passes) × shards. When took < WAIT_DOMINANCE × that wait the difference is noise (one task's wait
    varies around the mean): under SATURATED_WAIT_MS it is taken out but never below half the
    observation; beyond, the observation is returned whole as an upper bound. Observations without
    shards (_bulk, _msearch: no search queue of their own to read) are returned as they are."""
    if queue_wait_ms <= 0.0 or type(observed) is not Observed:
        return observed, False
    took, queued = observed.took_ms, queue_wait_ms * observed.queue_passes
    if took >= WAIT_DOMINANCE * queued:
        return (took - queued) * observed.shards, False
    if queued < SATURATED_WAIT_MS:
        return max(took - queued, took / 2.0) * observed.shards, False
    return float(observed), True


def _bounded(observed: float, ewma: float, max_rise: float) -> float:
    """An observation as it may count against an EWMA: at most max_rise × the EWMA (or × 1 unit, from ~0)."""
    top = (ewma if ewma > 1.0 else 1.0) * max_rise
    return observed if observed < top else top


class LearnedCosts:
    """EWMA of observed cost per (tenant, fingerprint) in a bounded LRU.

    One LRU for all tenants, bounded at `max_entries`; a tenant's entries are never read or
    written by another tenant's lookups. Costs are in cost units.

    Beside it, an EWMA per fingerprint over every tenant (`shape`), also bounded at `max_entries`:
    the admission gate's guess for a shape a tenant has never run. It is never a tenant's bill,
    nor shown to a tenant: that would tell one tenant what another's queries cost.

    Observations are learned as service time (`service_cost`, with `queue_wait_ms` set by the cluster
    poller); one that is mostly queue is only an upper bound, and only ever lowers a learned cost.
    After the first observation, one observation counts as at most `max_rise` × the current EWMA:
    the queue wait is known only from the last poll, so at a storm's onset (before the poller has
    seen the queue) a cheap shape would otherwise be learned as expensive and its tenant throttled
    long after the cluster recovered. A real rise is still learned, in a few observations (each may
    grow the EWMA by 1 + alpha × (max_rise - 1)).
    """

    __slots__ = ("max_entries", "alpha", "max_rise", "queue_wait_ms", "_entries", "_shapes")

    def __init__(self, max_entries: int, alpha: float, max_rise: float = math.inf) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        if not max_rise >= 1.0:
            raise ValueError("max_rise must be at least 1")
        self.max_entries = max_entries
        self.alpha = alpha
        self.max_rise = max_rise
        #: ms a search task recently waited in a node's search queue (the cluster poller sets it; 0: no queue)
        self.queue_wait_ms = 0.0
        #: (tenant, fingerprint) -> [ewma cost units, samples]; most recently used last
        self._entries: OrderedDict[tuple[str, int], list] = OrderedDict()
        #: fingerprint -> [ewma cost units over all tenants, samples]; most recently observed last
        self._shapes: OrderedDict[int, list] = OrderedDict()

    def get(self, tenant: str, fingerprint: int) -> float | None:
        """The learned cost of this shape for this tenant (cost units), or None if never observed."""
        entry = self._entries.get((tenant, fingerprint))
        if entry is None:
            return None
        self._entries.move_to_end((tenant, fingerprint))
        return entry[0]

    def observe(self, tenant: str, fingerprint: int, observed: float) -> float:
        """Fold one observed cost (cost units) into the EWMA as service time and return the EWMA; the first
        observation sets it.

        The queue wait is taken out first (`service_cost`). An observation that is mostly queue is folded
        only where it lowers a learned cost (it never creates one). A non-finite or negative observation is
        ignored (the current value, or 0.0, is returned); a later one above `max_rise` × the EWMA counts as
        that much.
        """
        service, upper_bound = service_cost(observed, self.queue_wait_ms)
        if upper_bound:
            return self._lower(tenant, fingerprint, service)
        return self._learn(tenant, fingerprint, service)

    def _learn(self, tenant: str, fingerprint: int, service: float) -> float:
        """Fold one service-time observation made here (subclasses also pass it on to other instances)."""
        return self.merge(tenant, fingerprint, service, 1)

    def _lower(self, tenant: str, fingerprint: int, bound: float) -> float:
        """An upper bound on a shape's service cost: fold it where it is below what was learned, per table.

        A shape nobody has a clean observation of keeps the lowest bound seen as its cross-tenant cost
        (`shape`, the gate's count only; 0 samples, so the first clean observation replaces it): at a
        storm's onset the cluster is saturated, and a search estimated at 88 units that took 1,000 would
        otherwise count at the gate as 88 for every tenant's first one, and go in as a quiet tenant's."""
        key = (tenant, fingerprint)
        entry = self._entries.get(key)
        shape = self._shapes.get(fingerprint)
        if shape is None:
            self._shapes[fingerprint] = [float(bound), 0]
            if len(self._shapes) > self.max_entries:
                self._shapes.popitem(last=False)
        elif shape[1] == 0:
            shape[0] = min(shape[0], bound)
            self._shapes.move_to_end(fingerprint)
        elif bound < shape[0]:
            self._fold(self._shapes, fingerprint, bound, 1)
        if entry is None:
            return 0.0
        if bound < entry[0]:
            return self._fold(self._entries, key, bound, 1)
        self._entries.move_to_end(key)
        return entry[0]

    def merge(self, tenant: str, fingerprint: int, observed: float, count: int) -> float:
        """Fold `count` observations made elsewhere (another instance), whose mean is `observed` cost
        units, into the EWMA as if they had been observed here, one by one, each equal to the mean:
        ewma += (1 - (1 - alpha) ** count) * (observed - ewma). The first ones set it. Returns it.

        count = 1 is exactly `observe`. A count below 1 or a non-finite or negative mean is ignored.
        The per-shape EWMA over every tenant (`shape`) takes them too.
        """
        if count < 1 or not (observed >= 0.0 and math.isfinite(observed)):
            entry = self._entries.get((tenant, fingerprint))
            return entry[0] if entry is not None else 0.0
        self._fold(self._shapes, fingerprint, observed, count)
        return self._fold(self._entries, (tenant, fingerprint), observed, count)

    def _fold(self, table: OrderedDict, key: object, observed: float, count: int) -> float:
        entry = table.get(key)
        if entry is None or entry[1] == 0:  # nothing learned yet, or only an upper bound (`_lower`)
            table[key] = [float(observed), count]
            table.move_to_end(key)
            if len(table) > self.max_entries:
                table.popitem(last=False)
            return float(observed)
        weight = self.alpha if count == 1 else 1.0 - (1.0 - self.alpha) ** count
        entry[0] += weight * (_bounded(observed, entry[0], self.max_rise) - entry[0])
        entry[1] += count
        table.move_to_end(key)
        return entry[0]

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, fingerprint: int) -> float | None:
        """The learned cost of this shape over every tenant (cost units), or None if nobody ran it.

        For admission's counting only: never charge it to a tenant or show it to one."""
        entry = self._shapes.get(fingerprint)
        return None if entry is None else entry[0]

    def for_tenant(self, tenant: str, limit: int = 20) -> list[tuple[int, float, int]]:
        """Up to `limit` (fingerprint, ewma cost units, samples) of one tenant, most recently used first."""
        out: list[tuple[int, float, int]] = []
        if limit <= 0:
            return out
        for (name, fingerprint), (ewma, samples) in reversed(self._entries.items()):
            if name == tenant:
                out.append((fingerprint, ewma, samples))
                if len(out) >= limit:
                    break
        return out

