"""Pure-Python twin of `proxy/_ratelimit.pyx`: the oracle the tests hold the Cython table against.

Never a runtime fallback: the installed package always builds and uses the Cython table. Same class
name, same API, same arithmetic in the same order, so the two agree to within float rounding. Slots
live in parallel lists indexed like the Cython struct array, with the same free-slot stack; a dict
stands in for the compiled table's open-addressing index.
"""
from __future__ import annotations

import math

_MAX_KEYS = 2**30  # the compiled table's index holds int32 slot numbers


class TableFull(Exception):
    """`configure` needed a new slot, the table already holds `max_keys` keys and none is idle."""


class TokenBucketTable:
    """Token buckets keyed by str: rate in cost units per second, burst and levels in cost units."""

    __slots__ = ("max_keys", "last_level", "_index", "_free", "_rate", "_burst", "_tokens", "_last", "_floor")

    def __init__(self, max_keys: int = 1_000_000):
        if max_keys < 1 or max_keys > _MAX_KEYS:
            raise ValueError(f"max_keys must be between 1 and {_MAX_KEYS}, got {max_keys}")
        self.max_keys = max_keys
        self.last_level = 0.0
        self._index: dict[str, int] = {}
        self._free: list[int] = []
        self._rate: list[float] = []
        self._burst: list[float] = []
        self._tokens: list[float] = []
        self._last: list[float] = []
        self._floor: list[float] = []

    def _level(self, slot: int, now: float) -> float:
        elapsed = now - self._last[slot]
        level = self._tokens[slot]
        if elapsed > 0:
            level = level + elapsed * self._rate[slot]
        if level > self._burst[slot]:
            level = self._burst[slot]
        return level

    def _store(self, slot: int, level: float, now: float) -> None:
        self._tokens[slot] = level
        if now > self._last[slot]:
            self._last[slot] = now

    def configure(self, key: str, rate: float, burst: float, now: float, max_debt: float = -1.0) -> None:
        rate, burst, now, max_debt = float(rate), float(burst), float(now), float(max_debt)
        if not rate > 0:
            raise ValueError(f"rate must be > 0 cost units per second, got {rate!r}")
        if not burst > 0:
            raise ValueError(f"burst must be > 0 cost units, got {burst!r}")
        if not max_debt >= 0:
            max_debt = burst
        floor = -max_debt
        slot = self._index.get(key)
        if slot is not None:
            level = self._level(slot, now)
            if level > burst:
                level = burst
            if level < floor:
                level = floor
            self._rate[slot] = rate
            self._burst[slot] = burst
            self._floor[slot] = floor
            self._store(slot, level, now)
            self.last_level = level
            return
        if len(self._index) >= self.max_keys:
            self._evict_idle(now)
            if len(self._index) >= self.max_keys:
                raise TableFull(f"all {self.max_keys} buckets are in use and none is full; cannot add {key!r}")
        if self._free:
            slot = self._free.pop()
            self._rate[slot] = rate
            self._burst[slot] = burst
            self._tokens[slot] = burst
            self._last[slot] = now
            self._floor[slot] = floor
        else:
            slot = len(self._rate)
            self._rate.append(rate)
            self._burst.append(burst)
            self._tokens.append(burst)
            self._last.append(now)
            self._floor.append(floor)
        self._index[key] = slot
        self.last_level = burst

    def try_acquire(self, key: str, cost: float, now: float) -> float:
        if not cost >= 0:
            raise ValueError(f"cost must be >= 0 cost units, got {cost!r}")
        slot = self._index[key]
        level = self._level(slot, now)
        if level >= cost:
            level = level - cost
            self._store(slot, level, now)
            self.last_level = level
            return 0.0
        self.last_level = level
        if cost > self._burst[slot]:
            return math.inf
        return (cost - level) / self._rate[slot]

    def force_charge(self, key: str, cost: float, now: float) -> float:
        if not cost >= 0:
            raise ValueError(f"cost must be >= 0 cost units, got {cost!r}")
        slot = self._index[key]
        level = self._level(slot, now) - cost
        if level < self._floor[slot]:
            level = self._floor[slot]
        self._store(slot, level, now)
        self.last_level = level
        return level

    def credit(self, key: str, amount: float, now: float) -> float:
        if not amount >= 0:
            raise ValueError(f"amount must be >= 0 cost units, got {amount!r}")
        slot = self._index[key]
        level = self._level(slot, now) + amount
        if level > self._burst[slot]:
            level = self._burst[slot]
        self._store(slot, level, now)
        self.last_level = level
        return level

    def level(self, key: str, now: float) -> float:
        level = self._level(self._index[key], now)
        self.last_level = level
        return level

    def remove(self, key: str) -> None:
        self._free.append(self._index.pop(key))

    def keys(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def _evict_idle(self, now: float) -> None:
        idle = [key for key, slot in self._index.items() if self._level(slot, now) >= self._burst[slot]]
        for key in idle:
            self.remove(key)
