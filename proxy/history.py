"""The last 15 minutes of the status page's charts, in fixed memory.

A `History` is a ring of `points` samples taken every `step_s` seconds (450 × 2 s = 15 minutes):
one timestamp per sample and, per series, one 4-byte float per sample (`array('f')`), so a series
costs 1.8 KB whatever happens. A series is named by a tuple: ("gate", "inflight") or
("tenant", "acme", "observed"). A series missing from a sample, or new since older samples, reads
as null there. Time is passed in; nothing here reads a clock.
"""
from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

NAN = math.nan


class History:
    __slots__ = ("points", "step_s", "_times", "_series", "_next", "_count")

    def __init__(self, points: int = 450, step_s: float = 2.0) -> None:
        if points < 2 or step_s <= 0:
            raise ValueError("points must be at least 2 and step_s positive")
        self.points = points
        self.step_s = step_s
        self._times = array("d", [NAN] * points)
        self._series: dict[tuple[str, ...], array] = {}
        self._next = 0  # where the next sample goes
        self._count = 0  # samples held (≤ points)

    def add(self, t: float, values: dict[tuple[str, ...], float]) -> None:
        """One sample at time `t` (seconds, increasing): a value for each series."""
        i = self._next
        self._times[i] = t
        for name, column in self._series.items():
            column[i] = values.get(name, NAN)
        for name, value in values.items():
            if name not in self._series:
                column = self._series[name] = array("f", [NAN] * self.points)
                column[i] = value
        self._next = (i + 1) % self.points
        self._count = min(self._count + 1, self.points)

    def forget(self, keep: Iterable[tuple[str, ...]] | None = None, drop_prefix: tuple[str, ...] | None = None) -> None:
        """Drop series: those starting with `drop_prefix` that are not in `keep`."""
        keep = set(keep or ())
        n = len(drop_prefix or ())
        for name in [k for k in self._series if k[:n] == drop_prefix and k not in keep]:
            del self._series[name]

    def last(self, name: tuple[str, ...]) -> float | None:
        """The latest sample of a series (None if it has none)."""
        column = self._series.get(name)
        if column is None or not self._count:
            return None
        value = column[(self._next - 1) % self.points]
        return None if math.isnan(value) else value

    def since(self, t: float = -math.inf) -> dict:
        """The samples taken after time `t`, oldest first:
        {"step_s", "t": [times], "series": [[name parts..., [values or None]], ...]}."""
        order = [(self._next - self._count + k) % self.points for k in range(self._count)]
        order = [i for i in order if self._times[i] > t]
        series = []
        for name, column in self._series.items():
            values = [None if math.isnan(column[i]) else round(column[i], 3) for i in order]
            if any(v is not None for v in values):
                series.append([*name, values])
        return {"step_s": self.step_s, "t": [self._times[i] for i in order], "series": series}


def merge_histories(parts: list[dict]) -> dict:
    """One history from several workers' `since` answers: series added up at equal timestamps (workers
    sample on the same wall-clock grid). A value missing in one worker counts as 0 if another has one."""
    times = sorted({t for part in parts for t in part.get("t", ())})
    index = {t: k for k, t in enumerate(times)}
    merged: dict[tuple, list] = {}
    for part in parts:
        positions = [index[t] for t in part.get("t", ())]
        for *name, values in part.get("series", ()):
            column = merged.setdefault(tuple(name), [None] * len(times))
            for k, value in zip(positions, values):
                if value is not None:
                    column[k] = (column[k] or 0.0) + value
    step = max((part.get("step_s", 0) for part in parts), default=0)
    return {"step_s": step, "t": times, "series": [[*name, values] for name, values in merged.items()]}
