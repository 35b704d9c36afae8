"""What a query shape has cost before: an EWMA of observed costs per (tenant, fingerprint), bounded.

Pure: observations in, cost units out. No I/O, no clock.
"""
from __future__ import annotations

import math
from collections import OrderedDict


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

    After the first observation, one observation counts as at most `max_rise` × the current EWMA:
    an observed cost includes the time the shard tasks queued in the cluster, so while the cluster
    is saturated (a storm's onset, a client that bypasses the proxy) a cheap shape would otherwise
    be learned as expensive and its tenant throttled long after the cluster recovered. A real rise
    is still learned, in a few observations (each may grow the EWMA by 1 + alpha × (max_rise - 1)).
    """

    __slots__ = ("max_entries", "alpha", "max_rise", "_entries", "_shapes")

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
        """Fold one observed cost (cost units) into the EWMA and return it; the first observation sets it.

        A non-finite or negative observation is ignored (the current value, or 0.0, is returned); a later
        one above `max_rise` × the EWMA counts as that much.
        """
        return self.merge(tenant, fingerprint, observed, 1)

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
        if entry is None:
            table[key] = [float(observed), count]
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

