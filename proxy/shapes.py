"""The costliest query shapes per tenant over a sliding window, in bounded memory.

Each request that got as far as a cost estimate is recorded under its tenant and its shape
fingerprint (`cost.py`): requests, cost units estimated, charged and observed, and whether it was
throttled. Recording is a dict update; a shape new to the tenant's window also gets its redacted
example (`redact.example`) once, its only work beyond that.

**Window.** The window (`shapes.window_s`, 300 s) is cut into `SLOTS` (10) slots of equal length; a
report adds up the slots that overlap the last `window_s` seconds, so it covers between 9/10 and
all of the window. Time is passed in (seconds on any clock); nothing here reads a clock.

**Memory.** Per tenant and slot at most `2 × top` shapes are held (`shapes.top`, 20). When a slot
holds more, it keeps the `top` with the most observed cost (then requests) and folds the rest into
an "other shapes" tally, so every request stays counted somewhere. A tenant holds at most
`SLOTS × 2 × top` entries and as many examples (each at most `redact.MAX_CHARS` characters): about
80 KB per tenant in the worst case at the defaults; a tenant idle for a window holds nothing.
A shape whose cost keeps it among a slot's top is counted exactly; one pruned from a slot loses
what it had there (shown under `other`).

Reports merge: `merge_reports` adds up the reports of several workers or instances shape by shape.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from . import redact
from .esapi import Body, EsCall

#: slots per window
SLOTS = 10
# fields of one entry: a list, updated in place (cheapest to update on the request path)
REQUESTS, ANSWERED, OBSERVED, ESTIMATED, CHARGED, THROTTLED = range(6)


class _Slot:
    __slots__ = ("index", "shapes", "other")

    def __init__(self, index: int) -> None:
        self.index = index  # floor(start time / slot length)
        self.shapes: dict[int, list] = {}  # fingerprint -> [requests, answered, observed, estimated, charged, throttled]
        self.other = [0, 0, 0.0, 0.0, 0.0, 0]  # what pruning folded away, same fields


class _Tenant:
    __slots__ = ("slots", "current", "examples", "dirty")

    def __init__(self) -> None:
        self.slots: list[_Slot] = []  # oldest first, at most SLOTS
        self.current: _Slot | None = None
        self.examples: dict[int, tuple[str, str]] = {}  # fingerprint -> (endpoint, redacted example)
        self.dirty = False  # recorded since the last `take_dirty` (for publishing to Redis)


class ShapeBook:
    """Per tenant, the query shapes seen in the last `window_s` seconds (see the module doc)."""

    __slots__ = ("window_s", "slot_s", "top", "_tenants")

    def __init__(self, window_s: float = 300.0, top: int = 20) -> None:
        if window_s <= 0 or top < 1:
            raise ValueError("window_s must be positive and top at least 1")
        self.window_s = float(window_s)
        self.slot_s = self.window_s / SLOTS
        self.top = top
        self._tenants: dict[str, _Tenant] = {}

    def configure(self, window_s: float, top: int) -> None:
        """Apply new settings; a changed window starts afresh (old slots have another length)."""
        if window_s != self.window_s:
            self._tenants.clear()
            self.window_s = float(window_s)
            self.slot_s = self.window_s / SLOTS
        self.top = top

    def forget_tenants(self, keep: Iterable[str]) -> None:
        """Drop the tenants a reload removed."""
        keep = set(keep)
        for name in [n for n in self._tenants if n not in keep]:
            del self._tenants[name]

    # ---- the request path ----
    def record(
        self, tenant: str, fingerprint: int, now: float, estimated: float, charged: float, observed: float | None,
        throttled: bool, method: str, target: str, call: EsCall | None, body: Body | None,
    ) -> None:
        """Count one request of `tenant` with shape `fingerprint` at time `now` (seconds). Costs in cost
        units; `observed` is None when the cluster reported none (refused, failed, not a search)."""
        book = self._tenants.get(tenant)
        if book is None:
            book = self._tenants[tenant] = _Tenant()
        slot = book.current
        index = int(now // self.slot_s)
        if slot is None or slot.index != index:
            slot = self._rotate(book, index)
        entry = slot.shapes.get(fingerprint)
        if entry is None:
            entry = slot.shapes[fingerprint] = [0, 0, 0.0, 0.0, 0.0, 0]
            if fingerprint not in book.examples:  # once per shape per window: render it without the data
                kind = call.kind if call is not None else "-"
                book.examples[fingerprint] = (kind, redact.example(method, target, call, body))
        entry[REQUESTS] += 1
        entry[ESTIMATED] += estimated
        entry[CHARGED] += charged
        if observed is not None:
            entry[ANSWERED] += 1
            entry[OBSERVED] += observed
        if throttled:
            entry[THROTTLED] += 1
        book.dirty = True
        if len(slot.shapes) > 2 * self.top:  # amortised: once per `top` new shapes
            self._prune(book, slot)

    def _rotate(self, book: _Tenant, index: int) -> _Slot:
        slot = _Slot(index)
        book.slots = [s for s in book.slots if s.index > index - SLOTS] + [slot]
        book.current = slot
        live = set()
        for s in book.slots:
            live.update(s.shapes)
        for fingerprint in [f for f in book.examples if f not in live]:
            del book.examples[fingerprint]
        return slot

    def _prune(self, book: _Tenant, slot: _Slot) -> None:
        ranked = sorted(slot.shapes.items(), key=lambda item: (item[1][OBSERVED], item[1][REQUESTS]), reverse=True)
        other = slot.other
        for fingerprint, entry in ranked[self.top:]:
            for i in range(6):
                other[i] += entry[i]
            del slot.shapes[fingerprint]
            if not any(fingerprint in s.shapes for s in book.slots):
                book.examples.pop(fingerprint, None)

    # ---- reading ----
    def tenants(self) -> list[str]:
        return list(self._tenants)

    def slots(self, tenant: str, now: float) -> list[tuple[float, dict[int, list], list]]:
        """The tenant's slots inside the window at `now`: (slot start time, shapes, other), oldest first."""
        book = self._tenants.get(tenant)
        if book is None:
            return []
        first = int(now // self.slot_s) - SLOTS + 1
        return [(s.index * self.slot_s, s.shapes, s.other) for s in book.slots if s.index >= first]

    def example(self, tenant: str, fingerprint: int) -> tuple[str, str] | None:
        """(endpoint, redacted example) of a shape in the tenant's window."""
        book = self._tenants.get(tenant)
        return None if book is None else book.examples.get(fingerprint)

    def mark_dirty(self, tenants: Iterable[str]) -> None:
        """Mark tenants to be returned by the next `take_dirty` (a publish that failed)."""
        for name in tenants:
            book = self._tenants.get(name)
            if book is not None:
                book.dirty = True

    def take_dirty(self) -> list[str]:
        """Tenants recorded since the last call (and clears the mark)."""
        out = []
        for name, book in self._tenants.items():
            if book.dirty:
                book.dirty = False
                out.append(name)
        return out

    def report(
        self, tenant: str, now: float, limit: int | None = None, learned: Callable[[int], float | None] | None = None,
        extra: Iterable[tuple[float, dict[int, list], list, dict[int, tuple[str, str]]]] = (),
    ) -> dict:
        """The tenant's shapes in the window at `now`, costliest (observed) first, at most `limit` (`top`).

        `learned(fingerprint)` gives the learned cost of a shape; `extra` adds slots recorded elsewhere
        (other instances, through Redis): (slot start time, shapes, other, examples), already windowed.
        """
        totals: dict[int, list] = {}
        other = [0, 0, 0.0, 0.0, 0.0, 0]
        examples: dict[int, tuple[str, str]] = {}
        book = self._tenants.get(tenant)
        if book is not None:
            examples.update(book.examples)
        sources = [(shapes, slot_other, {}) for _, shapes, slot_other in self.slots(tenant, now)]
        sources += [(shapes, slot_other, theirs) for _, shapes, slot_other, theirs in extra]
        for shapes, slot_other, their_examples in sources:
            for fingerprint, entry in shapes.items():
                total = totals.get(fingerprint)
                if total is None:
                    totals[fingerprint] = list(entry)
                else:
                    for i in range(6):
                        total[i] += entry[i]
            for i in range(6):
                other[i] += slot_other[i]
            for fingerprint, ex in their_examples.items():
                examples.setdefault(fingerprint, ex)
        return build_report(tenant, self.window_s, totals, other, examples, limit or self.top, learned)


def build_report(
    tenant: str, window_s: float, totals: dict[int, list], other: list, examples: dict[int, tuple[str, str]],
    limit: int, learned: Callable[[int], float | None] | None,
) -> dict:
    """The JSON report of `/tenants/{name}/shapes` from summed entries (see `ShapeBook.report`)."""
    ranked = sorted(totals.items(), key=lambda item: (item[1][OBSERVED], item[1][THROTTLED], item[1][REQUESTS]),
                    reverse=True)
    shapes = []
    for fingerprint, entry in ranked[:limit]:
        endpoint, text = examples.get(fingerprint, ("-", ""))
        shapes.append(shape_row(fingerprint, endpoint, text, entry, learned(fingerprint) if learned else None))
    for _, entry in ranked[limit:]:  # beyond the limit: counted, not listed
        for i in range(6):
            other[i] += entry[i]
    return {
        "tenant": tenant,
        "window_s": window_s,
        "shapes": shapes,
        "other": {"requests": other[REQUESTS], "throttled": other[THROTTLED],
                  "cost_observed_total": round(other[OBSERVED], 2)},
    }


def shape_row(fingerprint: int, endpoint: str, text: str, entry: list, learned: float | None) -> dict:
    """One shape of a report. Costs in cost units; means per request (observed: per answered request)."""
    requests, answered = entry[REQUESTS], entry[ANSWERED]
    return {
        "fingerprint": f"{fingerprint:016x}",
        "endpoint": endpoint,
        "example": text,
        "requests": requests,
        "answered": answered,
        "throttled": entry[THROTTLED],
        "cost_observed_total": round(entry[OBSERVED], 2),
        "cost_observed_mean": round(entry[OBSERVED] / answered, 2) if answered else None,
        "cost_estimated_mean": round(entry[ESTIMATED] / requests, 2) if requests else None,
        "cost_charged_mean": round(entry[CHARGED] / requests, 2) if requests else None,
        "cost_learned": None if learned is None else round(learned, 2),
    }


def merge_reports(reports: list[dict], limit: int | None = None) -> dict:
    """One report from several (workers without Redis: each saw its own requests), shape by shape."""
    if not reports:
        return {"tenant": None, "window_s": None, "shapes": [], "other": {}}
    totals: dict[int, list] = {}
    examples: dict[int, tuple[str, str]] = {}
    learned: dict[int, list[float]] = {}
    other = [0, 0, 0.0, 0.0, 0.0, 0]
    for report in reports:
        for row in report.get("shapes", ()):
            fingerprint = int(row["fingerprint"], 16)
            requests, answered = row["requests"], row["answered"]
            entry = [requests, answered, row["cost_observed_total"],
                     (row["cost_estimated_mean"] or 0.0) * requests, (row["cost_charged_mean"] or 0.0) * requests,
                     row["throttled"]]
            total = totals.setdefault(fingerprint, [0, 0, 0.0, 0.0, 0.0, 0])
            for i in range(6):
                total[i] += entry[i]
            examples.setdefault(fingerprint, (row["endpoint"], row["example"]))
            if row.get("cost_learned") is not None:
                learned.setdefault(fingerprint, []).append(row["cost_learned"])
        theirs = report.get("other", {})
        other[REQUESTS] += theirs.get("requests", 0)
        other[THROTTLED] += theirs.get("throttled", 0)
        other[OBSERVED] += theirs.get("cost_observed_total", 0.0)
    limit = limit or max((len(r.get("shapes", ())) for r in reports), default=0) or 1

    def mean_learned(fingerprint: int) -> float | None:
        seen = learned.get(fingerprint)
        return math.fsum(seen) / len(seen) if seen else None

    return build_report(reports[0].get("tenant"), reports[0].get("window_s"), totals, other, examples, limit,
                        mean_learned)
