"""Concurrency admission: per-tenant slots and queues in front of the upstream.

A tenant holds at most `max_concurrent` requests in flight and `max_queue` waiting. A waiter is
handed its slot directly by the request that leaves (no thundering herd, FIFO within a tenant).
A request that would wait longer than the plan's `max_wait_ms` is refused with 429.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from .config import Config
from .errors import Throttled
from .tenants import TenantView


@dataclass(slots=True)
class TenantSlots:
    max_concurrent: int
    max_queue: int
    max_wait_s: float
    inflight: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    admitted: int = 0
    throttled: int = 0

    @property
    def queued(self) -> int:
        return len(self.waiters)


@dataclass(slots=True)
class Ticket:
    """Proof of a held slot; give it back with `Admission.leave`."""

    tenant: str
    cost: float
    waited: float
    held: bool = True


class Admission:
    def __init__(self) -> None:
        self.tenants: dict[str, TenantSlots] = {}
        self.would_throttle = 0

    def configure(self, config: Config, share: float = 1.0) -> None:
        """Apply each tenant's plan. `share` is this instance's fraction of the limits (1 / live instances)."""
        fresh: dict[str, TenantSlots] = {}
        for name, spec in config.tenants.items():
            plan = config.plans[spec.plan]
            slots = self.tenants.get(name) or TenantSlots(0, 0, 0.0)
            slots.max_concurrent = max(1, round(plan.max_concurrent * share))
            slots.max_queue = max(0, round(plan.max_queue * share))
            slots.max_wait_s = plan.max_wait_ms / 1000.0
            fresh[name] = slots
            self._hand_over(slots)  # a raised limit may free waiting requests at once
        self.tenants = fresh

    async def enter(self, tenant: TenantView, cost: float, shadow: bool = False) -> Ticket:
        """Take a slot for `tenant`, waiting up to its plan's max wait. Raises Throttled (429).

        In shadow mode the slot is counted but never waited for or refused; the would-be
        refusal is returned in `Ticket.waited` < 0 so the caller can count it.
        """
        slots = self.tenants[tenant.name]
        if slots.inflight < slots.max_concurrent and not slots.waiters:
            slots.inflight += 1
            slots.admitted += 1
            return Ticket(tenant.name, cost, 0.0)
        if shadow:
            slots.inflight += 1
            slots.admitted += 1
            return Ticket(tenant.name, cost, -1.0)
        if len(slots.waiters) >= slots.max_queue:
            slots.throttled += 1
            raise Throttled(
                f"tenant '{tenant.name}' has {slots.inflight} requests in flight and {len(slots.waiters)} queued "
                f"(max_concurrent {slots.max_concurrent}, max_queue {slots.max_queue}); retry shortly",
                why="concurrency",
                retry_after=max(slots.max_wait_s, 1.0),
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        slots.waiters.append(waiter)
        started = loop.time()
        try:
            async with asyncio.timeout(slots.max_wait_s):
                await waiter
        except BaseException as exc:  # timed out, or the client went away while queued
            if waiter.done() and not waiter.cancelled():
                # `leave` handed us the slot in the same instant: pass it on, never leak it.
                slots.inflight -= 1
                self._hand_over(slots)
            else:
                waiter.cancel()
                _discard(slots.waiters, waiter)
            if isinstance(exc, TimeoutError):
                slots.throttled += 1
                raise Throttled(
                    f"tenant '{tenant.name}' waited {slots.max_wait_s:.1f}s for one of its {slots.max_concurrent} "
                    f"concurrent slots; retry after {max(slots.max_wait_s, 1.0):.1f}s",
                    why="queue_timeout",
                    retry_after=max(slots.max_wait_s, 1.0),
                ) from None
            raise
        # `leave` handed the slot over (inflight already counts it).
        slots.admitted += 1
        return Ticket(tenant.name, cost, loop.time() - started)

    def leave(self, ticket: Ticket, status: int = 0, upstream_s: float = 0.0, observed: float | None = None) -> None:
        """Give the slot back: the longest waiter of the same tenant gets it directly.

        `status` is the upstream's HTTP status (0 when it was never reached), `upstream_s` the time
        to its response head in seconds, `observed` the cost units it reported (None if unknown).
        """
        if not ticket.held:
            return
        ticket.held = False
        slots = self.tenants.get(ticket.tenant)
        if slots is None:  # tenant removed by a reload while this request ran
            return
        slots.inflight -= 1
        self._hand_over(slots)

    @staticmethod
    def _hand_over(slots: TenantSlots) -> None:
        while slots.waiters and slots.inflight < slots.max_concurrent:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                slots.inflight += 1
                waiter.set_result(None)


def _discard(waiters: deque[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    try:
        waiters.remove(waiter)
    except ValueError:
        pass
