"""Budgets: one token bucket per (tenant, resource), charged in cost units before a request goes upstream.

`Limiter` is what `flow.py` talks to. `LocalLimiter` keeps every bucket in this process, in the
compiled `TokenBucketTable`; a `RedisLimiter` (shared buckets, Lua in `proxy/lua/`) implements the
same protocol. A request that finds too few tokens may wait up to its plan's `max_wait_ms`: it
reserves its tokens at once (the level goes below zero) and then sleeps, so later arrivals queue
behind it in arrival order. Beyond `max_wait_ms` it is refused with a retry-after.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol, runtime_checkable

import cython

from ._ratelimit import TokenBucketTable
from .config import Config


class Decision:
    """What the budget said about one request. Cost units throughout, times in seconds.

    A plain slotted class, not a dataclass: one is made per request, and a dataclass's generated
    __init__ stays interpreted bytecode even in the compiled build."""

    __slots__ = ("admitted", "wait", "remaining", "limit", "window", "reason", "charged")

    def __init__(self, admitted: bool, wait: float, remaining: float, limit: float, window: float,
                 reason: str | None, charged: float):
        self.admitted = admitted
        self.wait = wait  # seconds waited before admission (admitted), or retry-after seconds (refused)
        self.remaining = remaining  # bucket level after the decision, cost units (negative while others queue)
        self.limit = limit  # the bucket's burst, cost units
        self.window = window  # burst / rate: seconds to refill from empty (for the RateLimit-Policy header)
        self.reason = reason  # None when admitted; "budget" when refused for lack of tokens
        self.charged = charged  # cost units charged up front (0 when refused)

    def _fields(self) -> tuple:
        return (self.admitted, self.wait, self.remaining, self.limit, self.window, self.reason, self.charged)

    def __eq__(self, other: object) -> bool:
        return type(other) is Decision and self._fields() == other._fields()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return "Decision(" + ", ".join(f"{name}={value!r}" for name, value in zip(self.__slots__, self._fields())) + ")"


@runtime_checkable
class Limiter(Protocol):
    """What the request path needs from a budget store; cost units and seconds throughout."""

    def configure(self, config: Config, now: float | None = None) -> None:
        """(Re)apply every tenant x resource bucket of `config`; keep the levels of buckets that
        still exist, drop the buckets of tenants (or resources) that are gone."""

    def try_acquire(self, tenant: str, resource: str, cost: float, shadow: bool = False) -> Decision | None:
        """`acquire`'s decision when it can be made without waiting (admitted at once, refused at once,
        any shadow request); None when the request may have to wait: then `await acquire(...)` decides.
        Nothing is charged when it returns None."""

    async def acquire(self, tenant: str, resource: str, cost: float, shadow: bool = False) -> Decision:
        """Charge `cost` units to the tenant's bucket for `resource`, waiting up to the plan's
        max_wait_ms. `shadow`: never wait or refuse, only account (the caller forwards anyway)."""

    def settle(self, tenant: str, resource: str, charged: float, observed: float) -> None:
        """True the bill once the cluster said what the request cost: debit or credit the difference."""

    def level(self, tenant: str, resource: str) -> float:
        """The bucket's level now, in cost units (negative while in debt)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _Budget:
    """One bucket's settings, resolved from the plan once per configure so a request does no lookups."""

    __slots__ = ("key", "rate", "burst", "max_debt", "max_wait", "window")

    def __init__(self, key: str, rate: float, burst: float, max_debt: float, max_wait: float):
        self.key = key
        self.rate = rate  # cost units per second
        self.burst = burst  # cost units
        self.max_debt = max_debt  # cost units
        self.max_wait = max_wait  # seconds
        self.window = burst / rate  # seconds


def bucket_key(tenant: str, resource: str) -> str:
    """The table key of a tenant's bucket for a resource class, e.g. "acme:search"."""
    return f"{tenant}:{resource}"


class LocalLimiter:
    """Every bucket in this process, in the compiled token-bucket table.

    `share` scales every rate and burst: N worker processes that split a limit without Redis each
    hold share = 1/N of it. `clock` gives seconds (monotonic). `table_factory` builds the table;
    tests pass the pure-Python twin's class to run every case against both.
    """

    def __init__(
        self,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        table_factory: Callable[[], TokenBucketTable] = TokenBucketTable,
    ):
        if not share > 0:
            raise ValueError(f"share must be > 0, got {share!r}")
        self.share = share
        self._clock = clock
        self._table = table_factory()
        self._budgets: dict[tuple[str, str], _Budget] = {}

    def configure(self, config: Config, now: float | None = None) -> None:
        """Apply every tenant x resource bucket of `config` (rates and bursts x share).

        Buckets that still exist keep their level (clamped to a smaller burst, never refilled);
        buckets of tenants or resources no longer in the config are dropped first, so their slots
        are free for new ones.
        """
        now = self._clock() if now is None else now
        share = self.share
        ratio = config.cost.max_debt_ratio
        budgets: dict[tuple[str, str], _Budget] = {}
        for name, tenant in config.tenants.items():
            plan = config.plans[tenant.plan]
            max_wait = plan.max_wait_ms / 1000.0
            for resource in plan.resources:
                bucket = plan.bucket(resource)
                rate = bucket.rate * share
                burst = bucket.burst * share
                # deep enough that a reservation within max_wait is never clamped by the floor
                max_debt = max(burst * ratio, rate * max_wait)
                budgets[(name, resource)] = _Budget(bucket_key(name, resource), rate, burst, max_debt, max_wait)
        table = self._table
        for pair, old in self._budgets.items():
            if pair not in budgets and old.key in table:
                table.remove(old.key)
        for budget in budgets.values():
            table.configure(budget.key, budget.rate, budget.burst, now, budget.max_debt)
        self._budgets = budgets

    @cython.locals(budget=_Budget)  # a C type, compiled
    def try_acquire(self, tenant: str, resource: str, cost: float, shadow: bool = False) -> Decision | None:
        """`acquire`, when it decides without sleeping: admitted from the bucket now, refused (the wait
        would be longer than max_wait_ms), or a shadow request (never sleeps). None when an enforced
        request must wait for its tokens; then nothing was charged and `acquire` waits."""
        budget = self._budgets[(tenant, resource)]
        charge = budget.burst if cost > budget.burst else cost  # a NaN cost stays NaN: the table refuses it
        table = self._table
        now = self._clock()
        try:
            wait = table.try_acquire(budget.key, charge, now)
        except KeyError:  # evicted while idle (full): it comes back as it left
            self._restore(budget, now)
            wait = table.try_acquire(budget.key, charge, now)
        if wait == 0.0:
            return Decision(True, 0.0, table.last_level, budget.burst, budget.window, None, charge)
        if wait > budget.max_wait:
            return Decision(False, wait, table.last_level, budget.burst, budget.window, "budget", 0.0)
        if not shadow:
            return None
        # Reserve now, as an enforced request would, so later arrivals see the same books.
        remaining = table.force_charge(budget.key, charge, now)
        return Decision(True, wait, remaining, budget.burst, budget.window, None, charge)

    async def acquire(self, tenant: str, resource: str, cost: float, shadow: bool = False) -> Decision:
        """Charge min(cost, burst) units now, or after a wait of at most the plan's max_wait_ms.

        A cost above the whole burst is admitted from a full bucket; `settle` books the rest as
        debt. Refused (reason "budget", wait = retry-after seconds) when the wait would be longer;
        a refusal charges nothing. If the task is cancelled while waiting, the charge is given
        back. `shadow` keeps the same books but never sleeps; it reports admitted=False where
        enforcement would refuse. KeyError for a tenant or resource that is not configured.
        """
        decision = self.try_acquire(tenant, resource, cost, shadow)
        if decision is not None:
            return decision
        budget = self._budgets[(tenant, resource)]
        charge = budget.burst if cost > budget.burst else cost
        table = self._table
        now = self._clock()
        wait = table.try_acquire(budget.key, charge, now)  # again: time moved since (this path is rare)
        if wait == 0.0:
            return Decision(True, 0.0, table.last_level, budget.burst, budget.window, None, charge)
        if wait > budget.max_wait:
            return Decision(False, wait, table.last_level, budget.burst, budget.window, "budget", 0.0)
        # Reserve now, so whoever arrives next queues behind this request (FIFO by reservation).
        remaining = table.force_charge(budget.key, charge, now)
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            # The client went away while queued: it takes nothing from the budget.
            self._apply(tenant, resource, charge, debit=False)
            raise
        return Decision(True, wait, remaining, budget.burst, budget.window, None, charge)

    def settle(self, tenant: str, resource: str, charged: float, observed: float) -> None:
        """Book observed - charged cost units: more is debt (floored at max debt), less is a credit.

        observed=0 refunds a request the cluster never did. A tenant dropped by a reload while its
        request was in flight is ignored.
        """
        delta = observed - charged
        if delta > 0:
            self._apply(tenant, resource, delta, debit=True)
        elif delta < 0:
            self._apply(tenant, resource, -delta, debit=False)

    def level(self, tenant: str, resource: str) -> float:
        """The bucket's level now in cost units (negative while in debt). KeyError if not configured."""
        budget = self._budgets[(tenant, resource)]
        now = self._clock()
        try:
            return self._table.level(budget.key, now)
        except KeyError:
            self._restore(budget, now)
            return self._table.level(budget.key, now)

    async def start(self) -> None:
        """Nothing to connect to: local buckets are ready once configured."""

    async def close(self) -> None:
        """Nothing to release."""

    @cython.locals(budget=_Budget)  # a C type, compiled
    def _apply(self, tenant: str, resource: str, amount: float, debit: bool) -> None:
        budget = self._budgets.get((tenant, resource))
        if budget is None:
            return
        table = self._table
        book = table.force_charge if debit else table.credit
        now = self._clock()
        try:
            book(budget.key, amount, now)
        except KeyError:
            self._restore(budget, now)
            book(budget.key, amount, now)

    def _restore(self, budget: _Budget, now: float) -> None:
        self._table.configure(budget.key, budget.rate, budget.burst, now, budget.max_debt)
