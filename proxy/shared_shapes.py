"""The costliest query shapes, merged across instances through the Redis the limits already use.

Every `shapes.publish_interval_s` (5 s) each instance publishes, for each tenant it recorded
requests of since its last publish, its own window of that tenant's shapes: slot by slot, its top
`shapes.top` shapes with their counts and examples, the rest folded into each slot's "other"
tally. One script call per tenant (`proxy/lua/shapes.lua`) replaces the instance's field in the
hash `{prefix}:{tenant}:shapes`; a field not refreshed within the window is removed, and the key
expires a window after its last write. Memory in Redis: per tenant and instance, at most
`SLOTS × top` entries and `top` examples (~30 KB at the defaults).

A report (`GET /tenants/{name}/shapes`) reads the hash (one HGETALL) and adds the other instances'
slots that are still inside the window to this instance's own, which are live: the others' are at
most one publish interval old. Slot times travel as Unix time, so instance clocks only need to
agree to within a slot (30 s at the defaults).

Nothing here is on the request path. Publishing runs while the `RedisLimiter` shares budgets and
pauses in its local fallback; a failed publish marks its tenants to be published again next round.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson
from redis.exceptions import RedisError

from .redis_limiter import FIRST_CONTACT_S, RedisLimiter, bounded, script_source
from .shapes import ShapeBook

log = logging.getLogger("sluicegate.shapes")

#: one extra slot for a report: (start time on this process's clock, shapes, other, examples)
Extra = tuple[float, dict[int, list], list, dict[int, tuple[str, str]]]


def shapes_key(prefix: str, tenant: str) -> str:
    """The Redis hash of a tenant's published shapes, e.g. "sg:{acme}:shapes" (the tenant's Cluster slot)."""
    return f"{prefix}:{{{tenant}}}:shapes"


def publication(book: ShapeBook, tenant: str, now: float, wall_offset: float) -> bytes:
    """This instance's window of `tenant` as published: its top shapes slot by slot, the rest in "other".

    `now` is on the book's clock; `wall_offset` turns that clock into Unix time (time.time() - now)."""
    slots = book.slots(tenant, now)
    totals: dict[int, list] = {}
    for _, shapes, _ in slots:
        for fingerprint, entry in shapes.items():
            total = totals.setdefault(fingerprint, [0.0, 0])
            total[0] += entry[2]
            total[1] += entry[0]
    chosen = set(sorted(totals, key=lambda fp: (totals[fp][0], totals[fp][1]), reverse=True)[: book.top])
    out = []
    for start, shapes, other in slots:
        mine, rest = {}, list(other)
        for fingerprint, entry in shapes.items():
            if fingerprint in chosen:
                mine[f"{fingerprint:016x}"] = entry
            else:
                for i in range(6):
                    rest[i] += entry[i]
        out.append([start + wall_offset, mine, rest])
    examples = {f"{fp:016x}": list(book.example(tenant, fp) or ("-", "")) for fp in chosen}
    return orjson.dumps({"v": 1, "slot_s": book.slot_s, "slots": out, "examples": examples})


def parse_publication(data: bytes, now_wall: float, window_s: float, wall_offset: float) -> list[Extra]:
    """The slots of another instance's publication still inside the window at `now_wall` (Unix time),
    their start times moved onto this process's clock (minus `wall_offset`). Unreadable data gives []."""
    try:
        doc = orjson.loads(data)
        slot_s = float(doc["slot_s"])
        examples = {int(fp, 16): (str(ex[0]), str(ex[1])) for fp, ex in doc["examples"].items()}
        out = []
        for start, shapes, other in doc["slots"]:
            start = float(start)
            if start + slot_s <= now_wall - window_s:
                continue  # left the window since it was published
            entries = {int(fp, 16): _entry(entry) for fp, entry in shapes.items()}
            mine = {fp: examples[fp] for fp in entries if fp in examples}
            out.append((start - wall_offset, entries, _entry(other), mine))
        return out
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return []  # another writer, another version: not ours to read


def _entry(values: list) -> list:
    if len(values) != 6:
        raise ValueError("an entry has six fields")
    return [int(values[0]), int(values[1]), float(values[2]), float(values[3]), float(values[4]), int(values[5])]


class ShapeSharer:
    """Publishes this instance's shapes and reads the other instances' (see the module doc)."""

    def __init__(self, book: ShapeBook, limiter: RedisLimiter, interval_s: float):
        self.book = book
        self.limiter = limiter
        self.interval_s = interval_s
        self.prefix = limiter.settings.key_prefix
        self.published = 0  # tenant publications made
        self._own = limiter.instance_id
        self._timeout = max(limiter.settings.timeout_ms / 1000.0, FIRST_CONTACT_S)  # off the request path
        self._script = None
        self._runner: asyncio.Task | None = None
        self._failing = False

    async def start(self) -> None:
        """Start publishing in the background (the limiter must be started first)."""
        client = self.limiter.client
        if client is None:
            raise RuntimeError("start the RedisLimiter before the ShapeSharer")
        self._script = client.register_script(script_source("shapes"))
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="sluicegate-shapes")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait((self._runner,), timeout=self._timeout)
            self._runner = None

    async def publish(self) -> None:
        """Publish every tenant recorded since the last publish. Raises what Redis raised; the tenants
        not published are marked to be published again."""
        now = time.monotonic()
        offset = time.time() - now
        tenants = self.book.take_dirty()
        for i, tenant in enumerate(tenants):
            args = (self._own, publication(self.book, tenant, now, offset), self.book.window_s)
            try:
                await bounded(self._script(keys=(shapes_key(self.prefix, tenant),), args=args), self._timeout)  # type: ignore[misc]
            except BaseException:
                self.book.mark_dirty(tenants[i:])
                raise
            self.published += 1

    async def others(self, tenant: str) -> list[Extra]:
        """The other instances' slots of `tenant` inside the window. Raises what Redis raised."""
        client = self.limiter.client
        if client is None or not self.limiter.shared:
            raise ConnectionError("Redis is not in use (local fallback)")
        fields = await bounded(client.hgetall(shapes_key(self.prefix, tenant)), self._timeout)
        now = time.monotonic()
        wall = time.time()
        out: list[Extra] = []
        own = self._own.encode()
        for field, value in fields.items():
            if field == own or field.endswith(b"@"):
                continue
            out += parse_publication(value, wall, self.book.window_s, wall - now)
        return out

    async def _run(self) -> None:
        while True:
            if not self.limiter.shared:
                await self.limiter.wait_shared(True)
            try:
                await self.publish()
            except Exception as exc:  # noqa: BLE001 - whatever Redis did, try again next round
                if not self._failing:
                    self._failing = True
                    level = logging.INFO if isinstance(exc, (RedisError, OSError, TimeoutError)) else logging.ERROR
                    log.log(level, "query shapes not shared until Redis answers (%s)", type(exc).__name__)
            else:
                self._failing = False
            await asyncio.sleep(self.interval_s)
