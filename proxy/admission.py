"""Admission: tenant slots, the global gate in front of the cluster, and the fair queue between them.

    request ─► tenant slot (max_concurrent)  ─┐
               and the gate (limit, capacity) ├─► admitted: a Ticket, given back with `leave`
           or a place in the tenant's queue  ─┘   (or 429: concurrency | overload | queue_timeout | shed)

A request is admitted when its tenant has a free slot *and* the gate has room. The gate has two
limits, in the cluster's terms:

* **limit** — requests in flight. It adapts to upstream latency, to upstream 429/503s and timeouts
  (`GradientLimit`, or `AimdLimit`), is capped by what the cluster's search thread pools can run
  at once (threads ÷ threads a request holds), and shrinks in proportion when data nodes drop out.
* **capacity** — cost units in flight. A cost unit is one millisecond of one search thread, so
  the cluster's threads can hold `threads × horizon` units in flight without queueing, where the
  horizon is how long admitted cost stays in flight (cost-weighted upstream latency; Little's law).

**Headroom.** A tenant over its fair share (its plan weight's part of the gate, judged in cost on
all it asks for: in flight and queued) is admitted only while the gate is within
`capacity_headroom` of both limits; the rest is kept for tenants under their share, so a quiet
tenant's cheap request never waits behind a storm, at the gate or in the cluster's thread pools.

**Fan-out**: see proxy/gate.py, the gate's capacity model (`Gate`: limit, capacity, the two rooms).

**A share is at least two requests.** On a small cluster shared by many tenants, a weighted share of
the gate can be less than one cheap search (14 tenants on 6 threads: ~70 units in flight each,
against 40-160 for a term query on a busy node). Then every tenant is over its share, the kept
room serves nobody, and the quiet tenants wait behind the storm for the over-share room. So a tenant
asking for no more than `SHARE_FLOOR_REQUESTS` (2) average requests (`Gate.mean_cost`: Σ cost ÷
requests, completed over the last ~`MEMORY_S`) is within its share whatever the weights say; a storming
tenant's backlog, or one of its searches alone, is not (they cost many times the average). Two, not one:
a steady tenant's next search may arrive while its last is still in flight (or stuck on a lost node), and
with a floor of one that made it an over-share tenant, which goes only while the gate has over-share room
— on a small cluster, only while the gate is empty — so its backlog grew and kept it there (Elasticsearch,
a node rejoining: searches of 5-20 ms waiting 2 s at the gate, 18 `queue_timeout`s). Not for a tenant
the gate turned away (queue_timeout, concurrency, shed) within `REFUSED_HOLD_S`: a storm's retries, one or
two at a time per instance and learned at what they cost alone, were within two average requests too, and
ten tenants' went into the kept room together (OpenSearch, two instances: 650-800 units each on the one
core, quiet searches waiting up to 580 ms behind them).

**Borrowing.** While no tenant under its share waits, a tenant over it may put requests into the idle
kept room if it is in a burst: busy (something in flight or queued) for at most `BORROW_BURST_S`, after
a pause of at least `BORROW_IDLE_S`, and seen within `PRESENCE_S` before; holding no over-share request;
all it asks for fitting the kept room. A dashboard's parallel searches are a burst; a storm's
closed-loop workers never pause, and at its onset it was not seen before. The room is taken back (the
borrower's requests move out of it) as soon as a tenant under its share needs it.

**One unknown request at a time in the kept room.** A search shape nobody has run yet is only
estimated, and estimates can be an order of magnitude low (the simulator's `script_score` storm: 88
units estimated, 1,000 spent). Within its share it would go into the kept room, and at a storm's onset
ten tenants' first searches did at once, on the threads the quiet tenants needed (two instances: a
good search waited 360 ms, 22x its baseline p99). So the kept room holds at most one request whose cost
is not *known* (`known`: learned from responses, or not a search) per process at a time, the probe
that learns it; other unknown requests are judged as over-share ones until theirs is learned. A tenant
alone (no other one active) is not held to it: there is nobody to keep the room for.

**Overdue requests.** A request counts at the gate as its estimated (or learned) cost. One that stays
in flight well past what that cost implies (elapsed × threads per request, over `OVERDUE_SLACK` × its
count) was under-priced, and the cluster is still spending on it: it counts as what it has spent so
far, in the over-share check, so no further over-share work goes in until it drains. Re-evaluated at
most every `OVERDUE_TICK_S`, whenever a request arrives or the queue is pumped.

**Contention.** The headroom is `capacity_headroom` (0.8) while a busy tenant is alone, so it may use
most of the cluster. It drops to `capacity_headroom_contended` (0.5) as soon as a tenant over its
share asks while another tenant has been seen under its share within `CONTENDED_HOLD_S` — before
that quiet tenant ever has to wait, so a storm's first wave already leaves it room — and also when
a tenant under its share does have to wait while others hold over-share room. It stays there while
either keeps happening, and for `CONTENDED_HOLD_S` after: over-share work drains down to the smaller
room as it completes, and the quiet tenants' next bursts find the threads free.

**Fair order.** Waiting requests are released in start-time fair queueing order across tenants:
each tenant's next request carries the tag max(virtual time, the tenant's last finish tag), a
released request advances its tenant's finish tag by cost / plan weight, and the smallest tag goes
first. A tenant's own queue stays FIFO. A storming tenant's tags run far ahead, so anyone else's
next request is ahead of its backlog.

**Held back after a shed.** When overload shedding (proxy/runaway.py) cancels a request of a tenant over
its share, `hold_back` refuses that tenant's requests beyond its share (429 `shed`) until a deadline, and
its queue with them if it is over its share then: the threads the cancel freed go to the others, not to
the tenant's own retry. Requests within its share still go; `release` ends the hold when the distress does.

The logic is pure: every method that needs the time takes `now` (seconds, monotonic). `enter` is
the only coroutine; it waits on a future that the pure part resolves.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable

import cython

from .config import Config
from .errors import Throttled
from .gate import (  # noqa: F401  (re-exported: the gate's names were admission's before the split)
    ALGORITHMS,
    REASONS,
    UNKNOWN,
    AimdLimit,
    ClusterReading,
    Gate,
    GradientLimit,
)
from .tenants import TenantView

#: a tenant asking for no more than this many average requests (in cost) is within its share, whatever its weight
SHARE_FLOOR_REQUESTS = 2.0
#: requests whose cost is not known (only estimated) that the kept room holds at once (per process)
KEPT_PROBES = 1
#: ... unless the gate refused one of its requests (queue_timeout, concurrency, shed) within this many seconds
REFUSED_HOLD_S = 5.0
#: smallest cost a request is charged in the fair queue's tags, so zero-cost requests cannot flood it
MIN_TAG_COST = 1.0
#: a request in flight counts as what it has spent once that is over this multiple of what it was counted as ...
OVERDUE_SLACK = 2.0
#: ... and it has been in flight this long (seconds): a cheap request's round trip is never overdue
OVERDUE_MIN_S = 0.05
#: what in-flight requests have spent is re-evaluated at most this often (seconds)
OVERDUE_TICK_S = 0.02
#: the contended headroom holds this long (seconds) after a tenant under its share last had to wait:
#: longer than an expensive request's round trip, so the room freed is still free for the next burst
CONTENDED_HOLD_S = 5.0
#: a tenant counts in the fair shares for this long (seconds) after its last request, not only while it
#: has one in flight: a quiet tenant's cheap searches are rarely in flight at the instant a storm asks
PRESENCE_S = 5.0
#: ... renewed at most this often per tenant (seconds), so presence costs nothing per request
PRESENCE_REFRESH_S = 0.5
#: a tenant over its share may borrow the idle kept room for a burst: one that began at most this long ago
#: (seconds) ...
BORROW_BURST_S = 1.0
#: ... after the tenant had had nothing in flight or queued for at least this long (seconds; longer than a
#: closed-loop client's turnaround, shorter than most gaps of a tenant sending a few searches a second), and
#: had been seen within PRESENCE_S: a dashboard's burst every few seconds is, and a steady tenant's next
#: search mostly; a storm, busy without a pause, is not, nor a tenant that was not seen before it began
BORROW_IDLE_S = 0.05


# ============================================================================================
# Tenants, tickets, waiters
# ============================================================================================


class TenantSlots:
    """One tenant's slots and FIFO queue, and its place in the fair queue."""

    __slots__ = ("name", "max_concurrent", "max_queue", "max_wait_s", "weight", "inflight", "inflight_cost",
                 "queued_cost", "reserve_inflight", "reserve_cost", "reserve_epoch", "waiters", "finish", "active",
                 "present_until", "idle_since", "idle_gap", "busy_since", "admitted", "throttled", "would_throttle",
                 "abandoned", "shed_until", "shed", "refused_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.max_concurrent = 1
        self.max_queue = 0
        self.max_wait_s = 0.0
        self.weight = 1.0
        self.inflight = 0
        self.inflight_cost = 0.0  # charged cost units in flight, for the fair-share test
        self.queued_cost = 0.0  # ... and waiting: a tenant's share is judged on all it asks for
        # requests admitted while the tenant was under its share, still counted in the room kept for such
        # tenants; a new epoch moves them all out at once when the tenant turns out to be over its share
        self.reserve_inflight = 0
        self.reserve_cost = 0.0
        self.reserve_epoch = 0
        self.waiters: deque[Waiter] = deque()
        self.finish = 0.0  # virtual finish tag of the tenant's last admitted request
        self.active = False  # in flight, queued or present: counts in the fair shares
        self.present_until = -math.inf  # seconds (the admission clock): seen within PRESENCE_S before this
        # its busy periods (something in flight or queued), for borrowing: when the last idle one began, how
        # long the idle period before the current busy one lasted, and when that busy one began (seconds)
        self.idle_since = -math.inf
        self.idle_gap = math.inf
        self.busy_since = -math.inf
        self.admitted = 0
        self.throttled = 0
        self.would_throttle = 0
        self.abandoned = 0  # requests whose client went away while they were queued
        self.shed_until = -math.inf  # seconds (the admission clock): over-share requests refused until then
        self.shed = 0  # requests refused (or dropped from the queue) while shedding held the tenant back
        #: seconds (the admission clock): when the gate last refused one of its requests for asking too much
        #: (queue_timeout, concurrency, shed; not overload, which is everyone's): no share floor for REFUSED_HOLD_S
        self.refused_at = -math.inf

    @property
    def queued(self) -> int:
        return len(self.waiters)


class Ticket:
    """Proof of a held slot and place at the gate; give it back with `Admission.leave`."""

    __slots__ = ("tenant", "cost", "waited", "held", "slots", "counted", "reserve", "epoch", "admitted_at", "overdue",
                 "probe")

    def __init__(
        self, slots: TenantSlots, cost: float, waited: float, counted: float, reserve: bool, admitted_at: float = 0.0
    ):
        self.tenant = slots.name
        self.cost = cost
        #: seconds waited in the queue; negative: a shadow tenant's request that enforcement would have queued
        self.waited = waited
        self.held = True
        self.slots = slots
        self.counted = counted  # cost units it counts at the gate
        self.reserve = reserve  # admitted into the room kept for tenants under their share ...
        self.epoch = slots.reserve_epoch  # ... and still counted there while its tenant's epoch is this
        self.admitted_at = admitted_at  # seconds (the admission clock)
        self.overdue = 0.0  # cost units spent beyond `counted`, while overdue (see Admission.refresh_overdue)
        self.probe = False  # an unknown cost admitted into the kept room (Admission._probes)

    @property
    def in_reserve(self) -> bool:
        return self.reserve and self.epoch == self.slots.reserve_epoch


class Waiter:
    """A request waiting in its tenant's queue. `on_grant(ticket)` is called when it is admitted."""

    __slots__ = ("slots", "cost", "since", "seq", "ticket", "on_grant", "on_refuse", "known", "burst")

    def __init__(self, slots: TenantSlots, cost: float, since: float, seq: int, known: bool = True,
                 burst: bool = False):
        self.slots = slots
        self.cost = cost
        self.since = since
        self.seq = seq
        self.ticket: Ticket | None = None
        self.on_grant: Callable[[Ticket], None] | None = None
        #: called with the Throttled that takes it out of the queue (shedding held its tenant back)
        self.on_refuse: Callable[[Throttled], None] | None = None
        self.known = known  # its cost was learned, not only estimated (Gate.fits)
        self.burst = burst  # it arrived in its tenant's burst (Admission._in_burst): it keeps that claim while queued


# ============================================================================================
# Admission
# ============================================================================================


class Admission:
    """Tenant slots + the gate + the fair queue. Pure apart from `enter`; `clock` gives seconds."""

    __slots__ = ("clock", "tenants", "gate", "vtime", "_backlog", "_reserve_holders", "_held", "_overdue", "_overdue_at",
                 "_active_weight", "_active_count", "_seq", "_quiet", "_presence", "_probes")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.tenants: dict[str, TenantSlots] = {}
        self.gate = Gate()
        self.vtime = 0.0  # the fair queue's virtual time: start tag of the latest admission
        self._backlog: dict[TenantSlots, None] = {}  # tenants with waiters, in insertion order
        self._reserve_holders: dict[TenantSlots, None] = {}  # tenants with requests in the kept room
        self._held: dict[Ticket, None] = {}  # tickets in flight, oldest first
        self._overdue = 0.0  # Σ Ticket.overdue of the held tickets (the gate counts at most the over-share room)
        self._overdue_at = -math.inf
        self._active_weight = 0.0
        self._active_count = 0
        self._seq = 0
        # the two most recent distinct tenants seen asking within their share, and when: the most recent
        # one other than a given tenant is always among them
        self._quiet: list[tuple[TenantSlots, float]] = []
        self._presence: deque[tuple[float, TenantSlots]] = deque()  # (present until, tenant), oldest first
        self._probes = 0  # requests of unknown cost in the kept room (KEPT_PROBES)

    # ---- configuration ----
    def configure(self, config: Config, share: float = 1.0) -> None:
        """Apply plans and the gate's settings. `share` is this instance's fraction (1 / live instances)."""
        self.gate.configure(config.admission, share)
        fresh: dict[str, TenantSlots] = {}
        for name, spec in config.tenants.items():
            plan = config.plans[spec.plan]
            slots = self.tenants.get(name) or TenantSlots(name)
            slots.max_concurrent = max(1, round(plan.max_concurrent * share))
            slots.max_queue = max(0, round(plan.max_queue * share))
            slots.max_wait_s = plan.max_wait_ms / 1000.0
            if slots.active:
                self._active_weight += plan.weight - slots.weight
            slots.weight = plan.weight
            fresh[name] = slots
        # Tenants removed by this reload keep their queued requests in the backlog until they drain.
        self.tenants = fresh
        self.pump(self.clock())  # a raised limit may free waiting requests at once

    # ---- the request path ----
    async def enter(self, tenant: TenantView, cost: float, shadow: bool = False, known: bool = True) -> Ticket:
        """Take a slot and a place at the gate for `cost` units, waiting up to the plan's max_wait_ms.

        Raises Throttled: "concurrency" (the tenant's queue is full), "overload" (the gate's queue is
        full) or "queue_timeout" (waited max_wait_ms). Shadow requests never wait and are never
        refused; `Ticket.waited` < 0 says enforcement would have queued or refused them.
        """
        got = self.try_enter(tenant.name, cost, shadow, known)
        return got if type(got) is Ticket else await self.wait(got)  # type: ignore[arg-type]

    def try_enter(self, tenant: str, cost: float, shadow: bool = False, known: bool = True) -> Ticket | Waiter:
        """`enter` without waiting: a Ticket when admitted at once (the common case), else the Waiter
        queued for it, to `await wait(waiter)`. Raises Throttled as `enter` does. `known`: the cost was
        learned from responses to this shape, not only estimated."""
        return self.request(tenant, cost, self.clock(), shadow, known)

    async def wait(self, waiter: Waiter) -> Ticket:
        """Wait, up to the tenant's max_wait_ms, for a queued request to be admitted (see `enter`)."""
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()

        def granted(ticket: Ticket) -> None:
            if not future.done():
                future.set_result(ticket)

        def refused(refusal: Throttled) -> None:
            if not future.done():
                future.set_exception(refusal)

        waiter.on_grant = granted
        waiter.on_refuse = refused
        try:
            async with asyncio.timeout(waiter.slots.max_wait_s):
                return await future
        except BaseException as exc:
            ticket = waiter.ticket
            if ticket is not None:  # admitted in the same instant as the timeout or the cancellation
                if isinstance(exc, TimeoutError):
                    return ticket
                self.leave(ticket)  # the client is gone: pass the slot on at once
                raise
            now = self.clock()
            self.withdraw(waiter, now)
            if not isinstance(exc, (TimeoutError, Throttled)):  # (Throttled: shedding refused its queue)
                waiter.slots.abandoned += 1
            if isinstance(exc, TimeoutError):
                slots = waiter.slots
                slots.throttled += 1
                slots.refused_at = now
                retry = max(slots.max_wait_s, 1.0)
                raise Throttled(
                    f"tenant '{slots.name}' waited {slots.max_wait_s:.1f}s for a slot ({slots.inflight} of "
                    f"{slots.max_concurrent} in flight, {self.gate.inflight} requests at the gate, limit "
                    f"{self.gate._limit():.0f}); retry after {retry:.1f}s",
                    why="queue_timeout",
                    retry_after=retry,
                ) from None
            raise

    @cython.locals(slots=TenantSlots)  # a C type, compiled
    def request(self, tenant: str, cost: float, now: float, shadow: bool = False, known: bool = True) -> Ticket | Waiter:
        """Admit now (a Ticket) or queue (a Waiter, whose `on_grant` fires on admission). Raises Throttled."""
        slots = self.tenants[tenant]
        gate = self.gate
        if not slots.inflight and not slots.waiters:  # a busy period begins
            slots.idle_gap = now - slots.idle_since
            slots.busy_since = now
        if now - self._overdue_at >= OVERDUE_TICK_S:
            self.refresh_overdue(now)
        if gate.contended_until is not None:
            gate.uncontend(now)
        self.expire_presence(now)
        if slots.present_until - now < PRESENCE_S - PRESENCE_REFRESH_S:
            slots.present_until = now + PRESENCE_S
            self._presence.append((slots.present_until, slots))
            self._activate(slots)
        # The gate's derived limits, once for this request: nothing below changes them.
        capacity, limit = gate._capacity_cost(), gate._limit()
        under = self._under_share(slots, now, cost, capacity, limit)
        if not under and slots.shed_until > now and not shadow:
            slots.throttled += 1
            slots.refused_at = now
            slots.shed += 1
            raise self._shed_refusal(slots, now)
        if under:
            self._seen_quiet(slots, now)
        else:
            seen = self._quiet_other(slots, now)
            if seen is not None:  # a tenant over its share while others ask for little: keep them their room now
                gate.contend(seen + CONTENDED_HOLD_S)
        # the kept room: for a request under its share, unless its cost is unknown and a probe is out already
        # (and others are about: a tenant alone keeps the room for nobody)
        kept = under and (known or self._probe_free())
        burst = self._in_burst(slots, now)
        if shadow:
            would = (bool(slots.waiters) or slots.inflight >= slots.max_concurrent
                     or not self._fits(cost, kept, now, capacity, limit, known, burst))
            if would:
                slots.would_throttle += 1
            return self._admit(slots, cost, now, -1.0 if would else 0.0, kept, capacity, known)
        if (not self._backlog and slots.inflight < slots.max_concurrent
                and self._fits(cost, kept, now, capacity, limit, known, burst)):
            return self._admit(slots, cost, now, 0.0, kept, capacity, known)  # nobody waits anywhere: the common case
        self._seq += 1
        waiter = Waiter(slots, cost, now, self._seq, known, burst)
        slots.waiters.append(waiter)
        slots.queued_cost += cost
        self._backlog[slots] = None
        gate.queued += 1
        self._activate(slots)
        self.pump(now)
        # A tenant under its share waits while others hold over-share room: narrow that room for a while.
        # (A lone tenant's own over-share requests do not count: it would only be throttling itself.)
        others_over = ((gate.inflight - gate.reserve_inflight) - (slots.inflight - slots.reserve_inflight)
                       + (gate.peer_inflight - gate.peer_reserve_inflight))  # (other instances': 0 unless pooled)
        if waiter.ticket is None and under and others_over > 0 and gate.contend(now + CONTENDED_HOLD_S):
            self.pump(now)  # the room kept for tenants under their share just grew
        if waiter.ticket is not None:
            return waiter.ticket
        if len(slots.waiters) > slots.max_queue or slots.max_wait_s <= 0.0:
            self.withdraw(waiter, now)
            slots.throttled += 1
            slots.refused_at = now
            retry = max(slots.max_wait_s, 1.0)
            raise Throttled(
                f"tenant '{tenant}' has {slots.inflight} requests in flight and {len(slots.waiters)} queued "
                f"(max_concurrent {slots.max_concurrent}, max_queue {slots.max_queue}); retry after {retry:.1f}s",
                why="concurrency",
                retry_after=retry,
            )
        if gate.queued > gate.max_queue:
            self.withdraw(waiter, now)
            slots.throttled += 1
            raise Throttled(
                f"the cluster is overloaded: {gate.queued} requests are queued at the gate (max {gate.max_queue}), "
                f"{gate.inflight} in flight (limit {gate._limit():.0f}); retry after 1s",
                why="overload",
                retry_after=1.0,
            )
        return waiter

    def hold_back(self, tenant: str, until: float, now: float) -> int:
        """Overload shedding cancelled one of `tenant`'s requests: until `until` (seconds, the admission clock)
        its requests beyond its fair share are refused at once (429 `shed`, Retry-After) instead of taking the
        place of the one cancelled, and if it is over its share now its queue is refused too. Requests within
        its share still go. Returns how many queued requests were refused."""
        slots = self.tenants.get(tenant)
        if slots is None:
            return 0
        if until > slots.shed_until:
            slots.shed_until = until
        if not slots.waiters or self._under_share(slots, now):
            return 0
        refused = 0
        while slots.waiters:
            waiter = slots.waiters[-1]  # newest first: withdraw is cheapest from the end
            self.withdraw(waiter, now)
            slots.throttled += 1
            slots.refused_at = now
            slots.shed += 1
            refused += 1
            if waiter.on_refuse is not None:
                waiter.on_refuse(self._shed_refusal(slots, now))
        return refused

    def release(self, tenant: str) -> None:
        """The distress is over: `tenant`'s over-share requests are admitted again as before."""
        slots = self.tenants.get(tenant)
        if slots is not None:
            slots.shed_until = -math.inf

    def _shed_refusal(self, slots: TenantSlots, now: float) -> Throttled:
        retry = max(slots.shed_until - now, 1.0)
        return Throttled(
            f"tenant '{slots.name}' is over its fair share of an overloaded cluster, and one of its requests was "
            f"cancelled to relieve it; requests beyond its share are refused for {retry:.1f}s more",
            why="shed",
            retry_after=retry,
        )

    def expire_presence(self, now: float) -> None:
        """Tenants not seen for PRESENCE_S, with nothing in flight or queued, leave the fair shares."""
        presence = self._presence
        while presence and presence[0][0] <= now:
            self._deactivate(presence.popleft()[1], now)

    def _seen_quiet(self, slots: TenantSlots, now: float) -> None:
        quiet = self._quiet
        if quiet and quiet[0][0] is slots:
            quiet[0] = (slots, now)
        else:
            quiet.insert(0, (slots, now))
            del quiet[2:]

    def _quiet_other(self, slots: TenantSlots, now: float) -> float | None:
        """When another tenant last asked within its share, if that was in the last CONTENDED_HOLD_S."""
        for other, seen in self._quiet:
            if other is not slots:
                return seen if now - seen < CONTENDED_HOLD_S else None
        return None

    def withdraw(self, waiter: Waiter, now: float) -> None:
        """A waiter gives up (timed out, or its client went away). If it was admitted meanwhile, its
        slot is given back; either way it leaves no trace."""
        if waiter.ticket is not None:
            self.leave(waiter.ticket, now=now)
            return
        slots = waiter.slots
        try:
            slots.waiters.remove(waiter)
        except ValueError:
            return
        slots.queued_cost = slots.queued_cost - waiter.cost if slots.waiters else 0.0
        self.gate.queued -= 1
        if not slots.waiters:
            self._backlog.pop(slots, None)
            if not slots.inflight:
                slots.idle_since = now
        self._deactivate(slots, now)
        self.pump(now)

    def leave(
        self,
        ticket: Ticket,
        status: int = 0,
        upstream_s: float = 0.0,
        observed: float | None = None,
        now: float | None = None,
    ) -> None:
        """Give the slot and the gate's place back; waiting requests are admitted in fair order.

        `status` is the upstream's HTTP status (0 when it never answered), `upstream_s` the time to its
        response head in seconds, `observed` the cost units it reported (None if unknown).
        """
        if not ticket.held:
            return
        ticket.held = False
        now = self.clock() if now is None else now
        slots = ticket.slots
        slots.inflight -= 1
        slots.inflight_cost = slots.inflight_cost - ticket.cost if slots.inflight else 0.0
        if not slots.inflight and not slots.waiters:
            slots.idle_since = now
        gate = self.gate
        in_reserve = ticket.reserve and ticket.epoch == slots.reserve_epoch  # Ticket.in_reserve
        if ticket.probe:
            self._probes -= 1
        del self._held[ticket]
        if ticket.overdue:
            self._overdue = max(0.0, self._overdue - ticket.overdue) if self._held else 0.0  # no float dust below 0
            gate.overdue_cost = min(self._overdue, gate.overdue_cost)
        if not self._held:
            self._overdue = gate.overdue_cost = 0.0  # exactly nothing at idle
        gate.give_back(ticket.counted, in_reserve)
        if in_reserve:
            slots.reserve_inflight -= 1
            slots.reserve_cost = slots.reserve_cost - ticket.counted if slots.reserve_inflight else 0.0
            if not slots.reserve_inflight:
                self._reserve_holders.pop(slots, None)
        gate.observe(now, ticket.cost, status, upstream_s, observed)
        if slots.active and not slots.inflight and not slots.waiters and slots.present_until <= now:
            self._deactivate(slots, now)
        if self._backlog:
            self.pump(now)

    def upstream_error(self, kind: str, now: float | None = None) -> None:
        """The upstream layer's failures ("timeout", "unreachable", "protocol") inform the gate."""
        self.gate.upstream_error(kind, self.clock() if now is None else now)

    def set_peers(self, pool: float, inflight: int, cost: float, reserve_inflight: int, reserve_cost: float,
                  now: float | None = None) -> None:
        """Other instances' holdings at the gate changed (proxy/shared_gate.py): pool them with this
        process's (`Gate.set_peers`); room they gave back may admit waiting requests at once."""
        self.gate.set_peers(pool, inflight, cost, reserve_inflight, reserve_cost)
        if self._backlog:
            self.pump(self.clock() if now is None else now)

    def observe_cluster(self, reading: ClusterReading, now: float | None = None) -> None:
        """A cluster-health poll; a grown capacity may admit waiting requests at once."""
        now = self.clock() if now is None else now
        self.gate.observe_cluster(reading, now)
        self.pump(now)

    def refresh_overdue(self, now: float) -> None:
        """Count requests in flight for longer than their cost implies as what they have spent so far.

        Spent = seconds in flight × threads per request × 1000 (cost units are thread-milliseconds). A request
        is overdue once that is over OVERDUE_SLACK × what it counts as at the gate and it has been in flight
        OVERDUE_MIN_S; its excess counts in the over-share check (`Gate.overdue_cost`), in all at most the
        over-share room, so the room kept for tenants under their share stays theirs.
        """
        self._overdue_at = now
        gate = self.gate
        capacity = gate._capacity_cost()
        if capacity is None or not self._held:
            for ticket in self._held:
                ticket.overdue = 0.0
            self._overdue = gate.overdue_cost = 0.0
            return
        rate = gate._threads_per_request() * 1000.0
        total = 0.0
        for ticket in self._held:
            age = now - ticket.admitted_at
            spent = age * rate
            if age >= OVERDUE_MIN_S and spent > OVERDUE_SLACK * ticket.counted:
                ticket.overdue = spent - ticket.counted
                total += ticket.overdue
            else:
                ticket.overdue = 0.0
        cap = capacity * gate.headroom
        self._overdue = total
        gate.overdue_cost = total if total < cap else cap

    # ---- the fair queue ----
    def pump(self, now: float) -> None:
        """Admit waiting requests while there is room, in start-time fair order."""
        if self._backlog and now - self._overdue_at >= OVERDUE_TICK_S:
            self.refresh_overdue(now)
        while self._backlog:
            picked, reserve = self._pick(now)
            if picked is None:
                return
            waiter = picked.waiters.popleft()
            picked.queued_cost = picked.queued_cost - waiter.cost if picked.waiters else 0.0
            if not picked.waiters:
                del self._backlog[picked]
            self.gate.queued -= 1
            ticket = self._admit(picked, waiter.cost, now, now - waiter.since, reserve, UNKNOWN, waiter.known)
            waiter.ticket = ticket
            if waiter.on_grant is not None:
                waiter.on_grant(ticket)

    def _pick(self, now: float) -> tuple[TenantSlots | None, bool]:
        """The tenant whose head request goes next (None if no one fits), and whether it goes into the room
        kept for tenants under their share (it is under its share, or borrows that room while it is idle).

        Over-share tenants go strictly by tag: if the smallest tag does not fit, none of them goes
        (a cheaper request must not starve an expensive one forever); a head the core-bound gate holds
        back whatever the room (`Gate.core_bound_holds`) has no turn. Under-share tenants may use the
        headroom and go whenever theirs fits. While no tenant under its share waits, a small over-share
        ask (`_may_borrow`) may borrow the kept room, smallest tag first. A request of unknown cost goes
        into the kept room only while no other one is there (KEPT_PROBES); until then it is an over-share one.
        """
        gate = self.gate
        vtime = self.vtime
        over: tuple[float, int, TenantSlots] | None = None
        under: tuple[float, int, TenantSlots] | None = None
        borrow: tuple[float, int, TenantSlots] | None = None
        under_waiting = False
        probe = self._probe_free()
        for slots in self._backlog:
            if slots.inflight >= slots.max_concurrent:
                continue
            head = slots.waiters[0]
            key = (max(vtime, slots.finish), head.seq, slots)
            if (head.known or probe) and self._under_share(slots, now):
                under_waiting = True
                if (under is None or key[:2] < under[:2]) and self._fits_reserve(head.cost, now):
                    under = key
                continue
            if (over is None or key[:2] < over[:2]) and not gate.core_bound_holds(head.cost, head.known, head.burst):
                over = key  # (a request the core-bound gate holds back does not hold up the others' turns)
            if (borrow is None or key[:2] < borrow[:2]) and (head.known or probe) and self._may_borrow(slots, now):
                borrow = key
        if over is not None:
            head = over[2].waiters[0]
            if not gate.fits(head.cost, False, UNKNOWN, UNKNOWN, head.known, head.burst):
                over = None
        if over is None:
            if under is not None:
                return under[2], True
            if borrow is not None and not under_waiting and gate.fits(borrow[2].waiters[0].cost, reserve=True):
                return borrow[2], True
            return None, False
        if under is None or over[:2] < under[:2]:
            return over[2], False
        return under[2], True

    def _probe_free(self) -> bool:
        """May one more request of unknown cost go into the kept room (KEPT_PROBES; a tenant alone: always)?"""
        return self._probes < KEPT_PROBES or self._active_count <= 1

    def _in_burst(self, slots: TenantSlots, now: float) -> bool:
        """Is the tenant in a burst: busy for at most BORROW_BURST_S, after a pause of at least BORROW_IDLE_S,
        and seen within PRESENCE_S before? A dashboard's bursts are; a storm (busy without a pause, and new
        at its onset) is not."""
        return now - slots.busy_since <= BORROW_BURST_S and BORROW_IDLE_S <= slots.idle_gap <= PRESENCE_S

    def _may_borrow(self, slots: TenantSlots, now: float) -> bool:
        """May a tenant over its share borrow the room kept for tenants under theirs (while none of them
        waits)? Only for a burst: its busy period began at most BORROW_BURST_S ago, after an idle one of
        at least BORROW_IDLE_S, and it was seen within PRESENCE_S before (a tenant new to the cluster, such
        as a storm at its onset, is not). A dashboard's parallel searches every few seconds are a burst; a
        storming tenant's closed-loop workers keep it busy without a pause. A tenant holding over-share room
        already (its burst found that room free, or lent room was taken back) waits for it, and so does a burst
        larger than the whole kept room (in cost). Neither the cost of its requests nor its share
        decides this: on a starved cluster the learned costs of a storm's searches and of a dashboard's
        differed by less than 2x. What it borrows is given back as soon as a tenant under its share needs
        the room (`_fits_reserve`)."""
        gate = self.gate
        if not (gate.enabled and slots.inflight == slots.reserve_inflight  # none over-share in flight
                and self._in_burst(slots, now)):
            return False
        capacity = gate._capacity_cost()  # and the whole burst fits in the kept room
        return capacity is None or slots.inflight_cost + slots.queued_cost <= (1.0 - gate.headroom) * capacity

    def _fits(self, cost: float, kept: bool, now: float, capacity: float | None | object = UNKNOWN,
              limit: float | object = UNKNOWN, known: bool = True, burst: bool = False) -> bool:
        if kept:
            return self._fits_reserve(cost, now, capacity, limit)
        return self.gate.fits(cost, False, capacity, limit, known, burst)

    def _fits_reserve(self, cost: float, now: float, capacity: float | None | object = UNKNOWN,
                      limit: float | object = UNKNOWN) -> bool:
        """Room for an under-share request; if the kept room looks full, first move out of it the requests
        of tenants that have since gone over their share (a tenant alone at first gets it all)."""
        gate = self.gate
        if gate.fits(cost, True, capacity, limit):
            return True
        reclaimed = False
        for slots in list(self._reserve_holders):
            if not self._under_share(slots, now):
                gate.leave_reserve(slots.reserve_inflight, slots.reserve_cost)
                slots.reserve_inflight, slots.reserve_cost = 0, 0.0
                slots.reserve_epoch += 1
                del self._reserve_holders[slots]
                reclaimed = True
        return reclaimed and gate.fits(cost, reserve=True)

    def _under_share(self, slots: TenantSlots, now: float, extra: float | None = None,
                     capacity: float | None | object = UNKNOWN, limit: float | object = UNKNOWN) -> bool:
        """Is all the tenant asks for — in flight, queued, and a request of `extra` cost units — within its
        weighted share of the gate (in cost), or within SHARE_FLOOR_REQUESTS average requests (unless the gate
        refused it within REFUSED_HOLD_S before `now`)? A tenant with a backlog beyond its share is over it for
        every request, its first included: the room kept back is for tenants that ask for little."""
        gate = self.gate
        if not gate.enabled:
            return True
        weights = self._active_weight + (0.0 if slots.active else slots.weight)
        fraction = slots.weight / weights if weights > 0 else 1.0
        if capacity is UNKNOWN:
            capacity = gate._capacity_cost()
        if capacity is None:
            asked_count = slots.inflight + len(slots.waiters) + (0 if extra is None else 1)
            return asked_count <= (gate._limit() if limit is UNKNOWN else limit) * gate.headroom * fraction  # type: ignore[operator]
        asked = slots.inflight_cost + slots.queued_cost + (extra or 0.0)
        share = capacity * gate.headroom * fraction  # type: ignore[operator]
        if asked <= share:
            return True
        # ... and never less than two average requests: on a small cluster shared by many tenants, a fair
        # share can be less than one cheap search; but not for a tenant the gate turned away lately
        return asked <= SHARE_FLOOR_REQUESTS * gate._mean_cost() and now - slots.refused_at > REFUSED_HOLD_S

    def _admit(self, slots: TenantSlots, cost: float, now: float, waited: float, reserve: bool,
               capacity: float | None | object = UNKNOWN, known: bool = True) -> Ticket:
        start = max(self.vtime, slots.finish)
        slots.finish = start + max(cost, MIN_TAG_COST) / slots.weight
        self.vtime = start
        gate = self.gate
        counted = gate.counted(cost, capacity)
        gate.take(counted, reserve)
        if reserve:
            slots.reserve_inflight += 1
            slots.reserve_cost += counted
            self._reserve_holders[slots] = None
        slots.inflight += 1
        slots.inflight_cost += cost
        slots.admitted += 1
        self._activate(slots)
        ticket = Ticket(slots, cost, waited, counted, reserve, now)
        if reserve and not known:
            ticket.probe = True
            self._probes += 1
        self._held[ticket] = None
        return ticket

    def _activate(self, slots: TenantSlots) -> None:
        if not slots.active:
            slots.active = True
            self._active_weight += slots.weight
            self._active_count += 1

    def _deactivate(self, slots: TenantSlots, now: float) -> None:
        if slots.active and not slots.inflight and not slots.waiters and slots.present_until <= now:
            slots.active = False
            self._active_count -= 1
            self._active_weight = self._active_weight - slots.weight if self._active_count else 0.0

    # ---- reporting ----
    def report(self, now: float | None = None) -> dict:
        """The gate for /tenants: limit and its reason, capacity, what is in flight and queued."""
        now = self.clock() if now is None else now
        gate = self.gate
        capacity = gate._capacity_cost()
        return {
            "enabled": gate.enabled,
            "algorithm": gate.algorithm.name,
            "limit": round(gate._limit(), 2),
            "reason": gate.reason(now),
            "detail": gate.detail(now),
            "capacity": None if capacity is None else round(capacity, 1),
            "capacity_headroom": gate.headroom,
            "contended": gate.contended_until is not None,
            "capacity_per_s": gate.capacity_per_s,
            "horizon_ms": round(gate.horizon_ms, 2),
            "threads_per_request": round(gate._threads_per_request(), 3),
            "fan_out": round(gate.fan_out, 2),
            "data_nodes": gate.data_nodes,
            "data_nodes_max": gate.data_nodes_max,
            "search_threads": gate.threads,
            "search_threads_max": gate.threads_max,
            "cores": gate.cores,
            "inflight": gate.inflight,
            "inflight_cost": round(gate.inflight_cost, 2),
            "overdue_cost": round(gate.overdue_cost, 2),
            "queued": gate.queued,
            "max_queue": gate.max_queue,
            # other instances' holdings, pooled with these (proxy/shared_gate.py); pool 1: a static share
            "pool": gate.pool,
            "peer_inflight": gate.peer_inflight,
            "peer_inflight_cost": round(gate.peer_cost, 2),
        }

    def register_gauges(self, add: Callable[[str, str, tuple[str, ...], Callable[[], Iterable]], None]) -> None:
        """Register the gate's live gauges with `Metrics.add_live_gauge`."""
        gate = self.gate
        one = lambda value: lambda: [((), float(value()))]  # noqa: E731
        add("sluicegate_gate_limit", "Requests the global gate lets in flight now", (), one(lambda: gate.limit))
        add("sluicegate_gate_inflight", "Requests in flight through the global gate", (), one(lambda: gate.inflight))
        add("sluicegate_gate_inflight_cost_units", "Cost units in flight through the global gate", (),
            one(lambda: gate.inflight_cost))
        add("sluicegate_gate_capacity_cost_units",
            "Cost units the live search threads hold in flight without queueing (0: not known)", (),
            one(lambda: gate.capacity_cost or 0.0))
        add("sluicegate_gate_queued", "Requests waiting for a tenant slot or the gate", (), one(lambda: gate.queued))
        add("sluicegate_gate_search_threads", "Live search threads of the cluster's data nodes (last poll)", (),
            one(lambda: gate.threads))
        add("sluicegate_gate_cores", "Processors of the live data nodes' hosts, each host once (0: not known)", (),
            one(lambda: gate.cores))
        add("sluicegate_gate_pooled_instances", "Instances whose gates this one pools through Redis, itself "
            "included (1: its static share alone)", (), one(lambda: gate.pool))

        def reason():
            now = self.clock()
            current = gate.reason(now)
            return [((why,), 1.0 if why == current else 0.0) for why in REASONS]

        add("sluicegate_gate_reason", "Why the gate's limit is what it is (1 for the current reason)", ("reason",),
            reason)
