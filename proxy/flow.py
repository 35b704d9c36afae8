"""The request path, top to bottom.

    identify tenant → parse the call → authorize → read body (bounded) → estimate cost
    → budget (token bucket) → slot (tenant concurrency, global gate) → forward to a node
    → leave the slot and the gate once the node has answered → stream the response back
    → settle the bill with the observed cost → metrics and log

`Proxy.handle` is that path as one coroutine, from the request the listener parsed to the response
written back through it. The steps that usually decide at once are plain calls: the budget
(`try_acquire`) and the slot (`try_enter`) have an `await` only for a request that must wait, and
the node is awaited once. Every refusal along the way is a `Refusal` exception that knows its own
ES-shaped response; `handle` is the one boundary where it becomes a status, a counter and a log
line. Each request takes one config snapshot and uses it to the end.
"""
from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from time import monotonic

import cython

from . import esapi
from .accesslog import AccessLog
from .admission import Admission, Ticket
from .config import Config, HardLimits
from .cost import CostModel, Estimate, IndexSizes, observed_cost
from .cost_learned import LearnedCosts
from .errors import BodyTooLarge, Refusal, Throttled, UpstreamFailure
from .esapi import parse_call
from .guardrails import GUARDED, GuardrailRefused, guard
from .idbinding import IdBinder, Rebound, binding_key
from .limiter import Decision, Limiter
from .listener import ClientGone, Request
from .metrics import Metrics
from .opaque import echoed_field, forwarded_field, new_request_id
from .runaway import CLIENT_GONE, MAX_COST_FACTOR, MAX_DURATION, SHED, Runaway, cancelled
from .shapes import ShapeBook
from .tenants import Directory, TenantView, authorize
from .upstream import Upstream, hedge_after, passed_fields
from .upstream_http import UpstreamProtocolError, UpstreamResponse

#: responses up to this size are read whole and sent in one write; larger ones are streamed
SMALL_RESPONSE = 256 * 1024
#: how much of a response body the cost observer looks at
HEAD_BYTES = 512
#: resource classes whose requests are safe to send again to another node after a failure
_RETRYABLE = frozenset(("search", "read"))
#: Requests sent again byte for byte (a dashboard's refresh, a health check's search) are not decoded,
#: grant-checked or costed again: per config snapshot, this many bodies that passed their tenant's
#: grant check and this many estimates are remembered, for bodies (and targets) up to MEMO_BYTES.
#: At most a few MB: a remembered body holds its parsed JSON.
BODY_MEMO = 128
ESTIMATE_MEMO = 512
MEMO_BYTES = 4096
COST_FIELDS_MEMO = 256
#: a compressed body larger than this is inflated in steps, other requests served between them
INFLATE_IN_STEPS_BYTES = 8 * 1024
#: what inflating costs the tenant's budget, in cost units (thread-milliseconds) per inflated byte: ~2 ms a MiB
INFLATE_COST_PER_BYTE = 2.0 / (1 << 20)
#: the header a rewritten (guardrails) body no longer has
_ENCODING = frozenset((b"content-encoding",))
_JSON_TYPE = b"Content-Type: application/json\r\n"

log = logging.getLogger("sluicegate.flow")


class Memo(dict):
    """A dict that forgets its oldest entry once it holds more than `size`."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def keep(self, key, value) -> None:
        self[key] = value
        if len(self) > self.size:
            del self[next(iter(self))]


class Snapshot:
    """Everything derived from one config file, built once per load (memos aside, never mutated)."""

    __slots__ = ("config", "generation", "digest", "directory", "cost_model", "ids", "granted_bodies", "_estimates", "_sizes",
                 "limits", "max_body_bytes", "learn")

    def __init__(self, config: Config, generation: int, digest: str):
        self.config = config
        # what every request reads of the config, read once here (the config's models are slow to read)
        self.limits = config.limits
        self.max_body_bytes = config.limits.max_body_bytes
        self.learn = config.cost.learn
        self.generation = generation
        self.digest = digest
        self.directory = Directory(config)
        self.cost_model = CostModel(config.cost.weights)
        self.ids = IdBinder(binding_key(config))
        #: (tenant, method, target, Content-Type, Content-Encoding, bytes as received) → the decoded body
        #: that passed that tenant's grant check: decoding and the check depend on nothing else
        self.granted_bodies = Memo(BODY_MEMO)
        self._estimates = Memo(ESTIMATE_MEMO)
        self._sizes: IndexSizes | None = None  # the index sizes the remembered estimates were made with

    def granted_body(self, sent: tuple) -> esapi.Body | None:
        """The body decoded from `sent` that passed its tenant's grant check before, if remembered."""
        return self.granted_bodies.get(sent) if len(sent[-1]) <= MEMO_BYTES else None  # never hash a big body

    def granted(self, sent: tuple, body: esapi.Body | None) -> None:
        """`body`, decoded from `sent` (see granted_bodies), passed its tenant's grant check."""
        if body is not None and sum(len(part) for part in sent if part) + len(body.data) <= MEMO_BYTES:
            self.granted_bodies.keep(sent, body)

    def estimate(self, method: str, target: str, content_type: str | None, call: esapi.EsCall,
                 body: esapi.Body | None, sizes: IndexSizes | None) -> Estimate:
        """`cost_model.estimate(call, body, sizes)`, remembered for a request identical in method,
        target, Content-Type and (inflated) body. Sound because an estimate depends on nothing but the
        call, the body, this snapshot's weights and the index sizes: a reload starts afresh, and so
        does each new poll of the sizes (the poller swaps in a new object)."""
        data = body.data if body is not None else b""
        if len(target) + len(data) > MEMO_BYTES:
            return self.cost_model.estimate(call, body, sizes)
        if sizes is not self._sizes:
            self._estimates.clear()
            self._sizes = sizes
        key = (method, target, content_type, data)
        estimate = self._estimates.get(key)
        if estimate is None:
            estimate = self.cost_model.estimate(call, body, sizes)
            self._estimates.keep(key, estimate)
        return estimate


class InflateLanes:
    """One compressed body inflating at a time per tenant: the others of that tenant wait their turn, so a
    tenant sending gzip bombs on many connections adds one step (INFLATE_STEP of output) per loop turn to
    everyone else's latency, not one per bomb."""

    __slots__ = ("busy",)

    def __init__(self) -> None:
        #: tenant → the waiters for its lane (an empty deque: busy, nobody waiting)
        self.busy: dict[str, deque[asyncio.Future[None]]] = {}

    async def enter(self, tenant: str) -> None:
        waiters = self.busy.get(tenant)
        if waiters is None:
            self.busy[tenant] = deque()
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave(tenant)  # handed the lane as it was cancelled: pass it on
            else:
                waiters.remove(waiter)
            raise

    def leave(self, tenant: str) -> None:
        waiters = self.busy[tenant]
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the lane passes to the next body, still busy
                return
        del self.busy[tenant]


class HeldBodies:
    """Request bodies held at once, in bytes, all tenants and per tenant: the proxy's memory ceiling
    (limits.max_buffered_bytes, of which one tenant may hold limits.buffered_tenant_share)."""

    __slots__ = ("total", "by_tenant")

    def __init__(self) -> None:
        self.total = 0
        self.by_tenant: dict[str, int] = {}

    def take(self, tenant: str, size: int, limits: HardLimits) -> None:
        """Count a body of `size` bytes as held by `tenant`, or raise a 429 saying which bound it would pass."""
        ceiling = limits.max_buffered_bytes
        held = self.by_tenant.get(tenant, 0)
        if self.total + size > ceiling:
            raise Throttled(f"the proxy holds {self.total} bytes of request bodies; this one ({size} bytes) would pass "
                            f"limits.max_buffered_bytes ({ceiling}): retry shortly", why="buffered_bodies", retry_after=1.0)
        share = int(ceiling * limits.buffered_tenant_share)
        if held and held + size > share:
            raise Throttled(f"tenant '{tenant}' has {held} bytes of request bodies held; this one ({size} bytes) would "
                            f"pass its share of limits.max_buffered_bytes ({share}): retry shortly",
                            why="buffered_bodies", retry_after=1.0)
        self.total += size
        self.by_tenant[tenant] = held + size

    def give_back(self, tenant: str, size: int) -> None:
        self.total -= size
        left = self.by_tenant[tenant] - size
        if left:
            self.by_tenant[tenant] = left
        else:
            del self.by_tenant[tenant]


class Trace:
    """What one request did, for metrics and the access log. One allocation per request."""

    __slots__ = (
        "started", "tenant", "call", "estimated", "charged", "observed", "fingerprint",
        "decision", "reason", "status", "node", "queued_s", "upstream_s", "bytes_in", "bytes_out", "body",
        "request_id", "task", "sent_at", "sent_to", "deadline", "limit_s", "limit_reason", "killed",
    )

    def __init__(self, started: float):
        self.started = started
        self.tenant = "-"
        self.call: esapi.EsCall | None = None
        self.estimated = 0.0
        self.charged = 0.0
        self.observed: float | None = None
        self.fingerprint = 0
        self.decision = "admitted"
        self.reason = ""
        self.status = 0
        self.node = ""
        self.queued_s = 0.0
        self.upstream_s = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.body: esapi.Body | None = None
        #: what follows the tenant in the forwarded X-Opaque-Id: the client's own id, or one of the proxy's
        self.request_id = b""
        # runaway control (proxy/runaway.py), once the request is sent: the task serving it, when and where
        # it was sent (monotonic s, node URL), when its plan's limit runs out (0: never), and why it was cancelled
        self.task = None
        self.sent_at = 0.0
        self.sent_to = ""
        self.deadline = 0.0
        self.limit_s = 0.0
        self.limit_reason = ""
        self.killed = ""


class Proxy:
    """One worker's request path. `snapshot` is replaced atomically on reload."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        limiter: Limiter,
        learned: LearnedCosts,
        admission: Admission,
        upstream: Upstream,
        metrics: Metrics,
        access_log: AccessLog,
        shapes: ShapeBook | None = None,
        runaway: Runaway | None = None,
    ):
        self.snapshot = snapshot
        self.limiter = limiter
        self.learned = learned
        self.admission = admission
        self.upstream = upstream
        self.metrics = metrics
        self.access_log = access_log
        self.shapes = shapes if shapes is not None else ShapeBook()  # the costliest query shapes, for the cockpit
        self.index_sizes: IndexSizes | None = None  # documents per index, swapped in by the cluster poller
        self.runaway = runaway if runaway is not None else Runaway(metrics)  # the requests at the cluster
        self._running = self.runaway.running  # (read on every request)
        self.inflight = 0
        self.draining = False  # set on SIGTERM (the listener closes each connection after its response)
        self._idle: asyncio.Future[None] | None = None  # what wait_idle awaits, while anyone does
        #: the X-Sluicegate-Cost header line per (estimated, charged): most requests repeat a few pairs
        self._cost_fields = Memo(COST_FIELDS_MEMO)
        #: tenant → bytes of node responses read ahead for its clients and not yet written to them
        self.client_buffers: dict[str, int] = {}
        self.held_bodies = HeldBodies()
        self.inflate_lanes = InflateLanes()

    async def wait_idle(self) -> None:
        """Until no request is in flight."""
        if self.inflight:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)

    @cython.locals(request=Request, snap=Snapshot, trace=Trace, ticket=Ticket, upstream=UpstreamResponse, decision=Decision)  # C types, compiled
    async def handle(self, request: Request) -> None:
        """Serve one request the listener parsed, and answer it through `request`."""
        snap = self.snapshot  # one config snapshot for the whole request
        trace = Trace(monotonic())
        self.inflight += 1
        held = 0  # bytes of this request's body counted in held_bodies
        try:
            limits = snap.limits
            max_body = snap.max_body_bytes

            # 1. Who is asking, and what for?
            method, target = request.method, request.target
            tenant = snap.directory.identify(request.authorization, target, request.certificate)  # mutual TLS: its names
            name = trace.tenant = tenant.name
            opaque = request.opaque_id
            trace.request_id = opaque if opaque is not None else new_request_id()
            call = trace.call = parse_call(method, target)
            resource = call.resource

            # 2. May they? The path is checked before the body is read; the body (bounded in bytes and
            #    time) is parsed only where cost or grants need it. A request this tenant sent byte for
            #    byte before under this config (a dashboard's refresh) passed both: it is not checked again.
            content_type, encoding = request.content_type, request.content_encoding
            body = None
            if request.complete and not request.too_large and request.body_size <= max_body:
                raw = request.body  # the usual case: it came with the head
                sent = (name, method, target, content_type, encoding, raw)
                body = snap.granted_body(sent)
            if body is None:
                authorize(tenant, call, None)
                if not request.complete or request.too_large or request.body_size > max_body:
                    length = request.content_length
                    if length is None or length <= max_body:  # (over it: a 413 at once)
                        size = max_body if length is None else length
                        self.held_bodies.take(name, size, limits)  # before a byte more of it is read
                        held = size
                    raw = await read_body(request, limits)
                    sent = (name, method, target, content_type, encoding, raw)
                if encoding is None or len(raw) <= INFLATE_IN_STEPS_BYTES:
                    body = esapi.decode_body(call, raw, content_type, encoding, limits)
                else:
                    body = await self._inflate(name, call, raw, content_type, encoding, limits)
                authorize(tenant, call, body or esapi.NO_BODY)
                snap.granted(sent, body)
            trace.bytes_in = len(raw)
            # Guardrails: a search over its plan's bounds is degraded (rewritten) or refused (400), or in shadow
            # only counted. Everything after (the estimate, the fingerprint, the node) sees what is forwarded.
            degraded = b""
            recoded = False  # the body forwarded is the proxy's (uncompressed), not the client's bytes
            if tenant.guarded and call.kind in GUARDED:
                guarded = self._guard(tenant, tenant.plan.guardrails, call, target, raw, body)
                if guarded is not None:
                    recoded = guarded[2] is not raw
                    call, target, raw, body, degraded = guarded
                    trace.call = call
            trace.body = body
            # Scroll, point-in-time and async-search ids are bound to the tenant that opened them.
            rebound = snap.ids.rebind(name, call, body, target)

            # 3. What will it cost the cluster? The learned cost of this shape wins over the estimate.
            estimate = snap.estimate(method, target, content_type, call, body, self.index_sizes)
            estimated = trace.estimated = estimate.cost
            fingerprint = trace.fingerprint = estimate.fingerprint
            learn = snap.learn
            learned = self.learned.get(name, fingerprint) if learn else None
            cost = estimated if learned is None else learned
            if encoding is not None and body is not None and body.data is not raw:
                cost += len(body.data) * INFLATE_COST_PER_BYTE  # the proxy's own work, billed like the cluster's
            # A shape new to this tenant is not assumed cheap at the gate if it cost others more (never billed so).
            shape = self.learned.shape(fingerprint) if learned is None and learn else None

            # 4. Budget: the tenant's token bucket for this resource class; usually decided at once,
            #    else the request waits for its tokens (up to max_wait_ms).
            shadow = not tenant.enforce
            decision = self.limiter.try_acquire(name, resource, cost, shadow)
            if decision is None:
                decision = await self.limiter.acquire(name, resource, cost, shadow)
            charged = trace.charged = decision.charged
            if not decision.admitted:
                if not shadow:
                    raise budget_exhausted(tenant, resource, cost, decision)
                trace.decision, trace.reason = "would_throttle", "budget"
            elif not shadow:  # shadow never sleeps
                trace.queued_s = decision.wait

            # 5. Concurrency: a tenant slot, then the global gate; usually at once, else in the fair
            #    queue. Whatever fails from here on before the request reaches a node is refunded.
            try:
                gate_cost = charged if shape is None or shape <= charged else shape
                # a search shape nobody has run yet is only estimated (the gate does not trust that it is cheap)
                known = learned is not None or shape is not None or resource != "search" or not learn
                entry = self.admission.try_enter(name, gate_cost, shadow, known)
                ticket = entry if type(entry) is Ticket else await self.admission.wait(entry)  # type: ignore[arg-type]
            except BaseException:
                self.limiter.settle(name, resource, charged, 0.0)
                raise
            if ticket.waited < 0:
                trace.decision, trace.reason = "would_throttle", "concurrency"
            else:
                trace.queued_s += ticket.waited

            # 6. Forward to a node, and send its answer back: a small one whole, in one write; a large
            #    one streamed as it arrives. Once the node has answered, the request leaves its slot and
            #    the gate: the cluster's work is done, and relaying to a slow client is the proxy's cost. From
            #    here on the request is in flight at the cluster: the runaway sweep cancels it past its plan's limits.
            self._in_flight(tenant, call, trace, request.task)
            try:
                forward, forwarded, passed = target, raw or None, request.passed_fields
                if recoded:
                    if request.content_encoding is not None:
                        passed = passed_fields(request.headers, _ENCODING)  # the rewritten body is not compressed
                    if content_type is None:  # a body the client did not send (a timeout injected into a GET)
                        passed += _JSON_TYPE
                if rebound is not None:  # the node gets its own ids back
                    forward, forwarded = rebound.request(raw)
                    passed = passed_fields(request.headers, rebound.dropped_headers)
                fields = self.upstream.forward_fields(passed, request.forwarded_for, request.client, request.scheme) \
                    + forwarded_field(name, trace.request_id)  # the tenant on the cluster's task
                sent_at = trace.sent_at
                retryable = resource in _RETRYABLE
                upstream = await self.upstream.send(
                    method, forward, fields, forwarded, retryable,
                    hedge_after(gate_cost, self.admission.gate._threads_per_request()) if retryable else 0.0, trace,
                )
                try:
                    trace.node = upstream.node.url  # type: ignore[attr-defined]
                    trace.upstream_s = monotonic() - sent_at
                    trace.status = upstream.status
                    fields = upstream.relayed + self._cost_field(estimated, charged) + echoed_field(opaque) + degraded
                    length = upstream.content_length
                    if method == "HEAD" or (length is not None and length <= SMALL_RESPONSE):
                        data = upstream.read_now() if upstream.complete else await upstream.read()
                        self._respond(request, upstream, data, fields, trace, rebound)
                    else:
                        await self._stream(request, upstream, fields, trace, rebound, ticket, limits)
                finally:
                    upstream.release()
                    self.metrics.observe_upstream(resource, trace.upstream_s)
            except BaseException as exc:
                # An upstream failure's own status (502/503/504) tells the gate's adaptive limit what happened.
                status = exc.status if isinstance(exc, UpstreamFailure) else trace.status
                self.admission.leave(ticket, status, trace.upstream_s, None)
                if isinstance(exc, (asyncio.CancelledError, ClientGone)):
                    self._settle_abandoned(tenant, call, decision, fingerprint, trace)
                elif trace.node == "":  # never reached a node: the cluster spent nothing
                    self.limiter.settle(name, resource, charged, 0.0)
                raise
            self.admission.leave(ticket, trace.status, trace.upstream_s, trace.observed)

            # 7. Settle: true the bill up to what the cluster reported spending.
            self._settle(tenant, call, decision, fingerprint, trace)
        except Refusal as refusal:
            trace.status = refusal.status
            if trace.decision == "admitted":
                trace.decision = "throttled" if isinstance(refusal, Throttled) else "refused"
            trace.reason = refusal.label
            if request.started:  # cannot happen before a node answers; never send two responses
                request.abort()
            else:
                answer = refusal.body()
                trace.bytes_out = len(answer)
                request.respond(refusal.status, refusal.fields() + echoed_field(request.opaque_id), answer)
        except (asyncio.CancelledError, ClientGone) as exc:
            why = trace.killed
            if not why or not isinstance(exc, asyncio.CancelledError):
                # The client went away: its request is abandoned, and the node's connection with it (closing
                # it cancels the search on the cluster).
                trace.status, trace.decision, trace.reason = 499, "cancelled", CLIENT_GONE
                if trace.sent_at:
                    self.metrics.cancelled.labels(trace.tenant, CLIENT_GONE).inc()
                self._record(request, trace)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            # The proxy cancelled it (runaway sweep, operator, shedding): its client is still there.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            refusal = cancelled(why, trace.tenant, trace, snap.config.shedding.cooldown_s)
            trace.status, trace.decision, trace.reason = refusal.status, "cancelled", why
            self.metrics.cancelled.labels(trace.tenant, why).inc()
            if request.started:  # cut short mid-response: the client sees it end early
                request.abort()
            else:
                answer = refusal.body()
                trace.bytes_out = len(answer)
                request.respond(refusal.status, refusal.fields() + self._cost_field(trace.estimated, trace.charged)
                                + echoed_field(request.opaque_id), answer)
        except Exception as exc:
            if request.started:  # the node failed mid-response, or a bug: the client sees the response cut short
                if isinstance(exc, UpstreamProtocolError):
                    log.warning("%s %s: cut short: %s", request.method, request.target[:200], exc)
                else:
                    log.exception("unexpected error relaying %s %s", request.method, request.target[:200])
                trace.decision, trace.reason = "error", "upstream" if isinstance(exc, UpstreamProtocolError) else "internal"
                request.abort()
            else:
                log.exception("unexpected error serving %s %s", request.method, request.target[:200])
                trace.status, trace.decision, trace.reason = 500, "error", "internal"
                refusal = Refusal.internal()
                answer = refusal.body()
                trace.bytes_out = len(answer)
                request.respond(refusal.status, refusal.fields(), answer)
        finally:
            if held:
                self.held_bodies.give_back(name, held)
            if trace.sent_at:
                self._running.pop(trace, None)
            self.inflight -= 1
            if not self.inflight and self._idle is not None:
                self._idle.set_result(None)
                self._idle = None
        self._record(request, trace)

    async def _inflate(self, tenant: str, call: esapi.EsCall, raw: bytes, content_type: str | None, encoding: str,
                       limits: HardLimits) -> esapi.Body | None:
        """decode_body, inflating in 64 KiB steps with the loop free between them, one body at a time per tenant
        (InflateLanes), so a big compressed body cannot stall other requests (a worker thread would: the GIL
        convoy costs the loop up to 5 ms a switch). A body refused for inflating too far still costs its tenant
        the inflating done."""
        steps = esapi.inflate_steps(call, raw, content_type, encoding, limits)
        lanes = self.inflate_lanes
        await lanes.enter(tenant)
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    inflated = done.value
                    break
                await asyncio.sleep(0)
            return esapi.decode_body(call, raw, content_type, encoding, limits, inflated)
        except BodyTooLarge as refusal:
            inflated = getattr(refusal, "inflated", 0)
            if inflated:
                self.limiter.settle(tenant, call.resource, 0.0, inflated * INFLATE_COST_PER_BYTE)
            raise
        finally:
            lanes.leave(tenant)

    def _guard(self, tenant: TenantView, rails, call: esapi.EsCall, target: str, raw: bytes, body: esapi.Body | None):
        """The plan's guardrails on a search: None when nothing changes (none fired, or shadow), else
        (call, target, raw body, body, X-Sluicegate-Degraded line) as rewritten. Raises GuardrailRefused."""
        shadow = rails.shadow or not tenant.enforce
        counter = self.metrics.degraded
        try:
            outcome = guard(rails, tenant.name, call.kind, target, call.params,
                            body.json if body is not None else None, body.lines if body is not None else None)
        except GuardrailRefused as refusal:
            counter.labels(tenant.name, refusal.guardrail, "shadow_refuse" if shadow else "refuse").inc()
            if shadow:
                return None
            raise
        if outcome is None:
            return None
        for name in outcome.hits:
            counter.labels(tenant.name, name, "shadow_cap" if shadow else "cap").inc()
        if shadow:
            return None
        if outcome.target is not None:
            target = outcome.target
            call = parse_call(call.method, target)
        if outcome.data is not None:
            raw = outcome.data
            body = esapi.Body(raw, raw, outcome.json, outcome.lines, body.ndjson_lines if body is not None else 0)
        return call, target, raw, body, outcome.header()

    def _in_flight(self, tenant: TenantView, call: esapi.EsCall, trace: Trace, task: asyncio.Task | None) -> None:
        """Register a request about to be sent with the runaway sweep, with its plan's deadline and the task
        that serves it (what the sweep cancels)."""
        limit, why = tenant.max_durations.get(call.resource), MAX_DURATION
        factor = tenant.max_cost_factor if trace.charged > 0.0 else None
        if factor is not None:
            by_cost = factor * trace.charged / 1000.0  # cost units are thread-ms; one thread: the longest it may take
            if limit is None or by_cost < limit:
                limit, why = by_cost, MAX_COST_FACTOR
        now = trace.sent_at = monotonic()
        if limit is not None and tenant.enforce:  # a shadow tenant's requests run to the end
            trace.deadline, trace.limit_s, trace.limit_reason = now + limit, limit, why
        trace.task = task
        self._running[trace] = None

    def _settle_abandoned(self, tenant: TenantView, call: esapi.EsCall, decision: Decision, fingerprint: int,
                          trace: Trace) -> None:
        """Bill a request abandoned at the cluster (its client left, or the proxy cancelled it) for what the
        cluster spent until then: the time it was there, one thread's worth (ms), unless the response had
        already said. A request cancelled at its plan's limit teaches its shape that cost, so the next one is
        charged it up front. A request shed to relieve an overloaded cluster is not refunded the part it did not
        get to spend: its tenant pays for the whole request it asked for, so shedding drains the budget of a
        tenant over its share rather than handing the work back to it."""
        spent = trace.observed
        if spent is None:
            # to 0.01 ms, as the access log books it: the bill and the log add up to the same
            spent = trace.observed = round((monotonic() - trace.sent_at) * 1000.0, 2) if trace.sent_at else 0.0
        if decision.charged:
            bill = spent if trace.killed != SHED or spent > decision.charged else decision.charged
            self.limiter.settle(tenant.name, call.resource, decision.charged, bill)
        if trace.killed in (MAX_DURATION, MAX_COST_FACTOR) and self.snapshot.learn:
            self.learned.observe(tenant.name, fingerprint, spent)

    def _cost_field(self, estimated: float, charged: float) -> bytes:
        """The X-Sluicegate-Cost header line: what the request was estimated at and charged (cost units)."""
        key = (estimated, charged)
        field = self._cost_fields.get(key)
        if field is None:
            field = b"X-Sluicegate-Cost: estimated=%.1f; charged=%.1f\r\n" % key
            self._cost_fields.keep(key, field)
        return field

    def _respond(
        self, request: Request, upstream: UpstreamResponse, data: bytes, fields: bytes, trace: Trace,
        rebound: Rebound | None,
    ) -> None:
        """Answer with a small node response read whole, in one write.

        A response that carries a scroll, point-in-time or async-search id gets it wrapped for the tenant.
        """
        status = upstream.status
        if request.method == "HEAD":  # the length a GET would get, as the node said (no body: no cost read)
            request.respond(status, fields, b"", upstream.content_length)
            return
        encoding = upstream.content_encoding
        sent = data
        if rebound is not None and rebound.wraps(status, encoding):
            sent = rebound.wrap_response(data)
        trace.bytes_out = len(sent)
        request.respond(status, fields, sent)
        trace.observed = _observe(data, encoding, status)  # once answered: reading the cost is not on the client's clock

    async def _stream(
        self, request: Request, upstream: UpstreamResponse, fields: bytes, trace: Trace, rebound: Rebound | None,
        ticket: Ticket, limits: HardLimits,
    ) -> None:
        """Relay a large or unknown-length node response to the client as it arrives, leaving the slot and
        the gate with its first bytes. While the tenant's read-ahead (limits.client_buffer_bytes_per_tenant)
        has room for the whole response, the node is read at its own pace and the proxy holds what the client
        has not read yet; beyond it, while the client reads slowly, the node's connection is not read."""
        encoding = upstream.content_encoding
        length = upstream.content_length
        tenant = ticket.tenant
        buffers = self.client_buffers
        ahead = 0
        if length is not None and buffers.get(tenant, 0) + length <= limits.client_buffer_bytes_per_tenant:
            ahead = length
            buffers[tenant] = buffers.get(tenant, 0) + ahead
            upstream.high_water = ahead  # the node is never paused for this client
        try:
            wraps = rebound is not None and rebound.wraps(upstream.status, encoding)
            chunks = upstream.iter_chunks()
            first, grew = await rebound.wrap_stream_head(chunks) if wraps else (b"", 0)  # type: ignore[union-attr]
            request.begin(upstream.status, fields, None if length is None else length + grew,
                          source=None if ahead else upstream)
            head = b""
            if first:
                head = first[:HEAD_BYTES]
                trace.bytes_out += len(first)
                request.send(first)
            async for chunk in chunks:
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
                if ticket.held:  # the node has answered: the request leaves its slot and the gate
                    self.admission.leave(ticket, trace.status, trace.upstream_s, _observe(head, encoding, upstream.status))
                trace.bytes_out += len(chunk)
                request.send(chunk)
                if request.writing_paused:
                    await request.drain()
            observed = _observe(head, encoding, upstream.status)
            request.end()
        finally:
            if ahead:
                left = buffers[tenant] - ahead
                if left:
                    buffers[tenant] = left
                else:
                    del buffers[tenant]
        # Only now: a client gone during the last write is billed the charge, as one gone mid-stream is;
        # set before, the access log would book a cost the bucket was never settled to.
        trace.observed = observed

    def _settle(self, tenant: TenantView, call: esapi.EsCall, decision: Decision, fingerprint: int, trace: Trace) -> None:
        observed = trace.observed
        if observed is not None:
            if self.snapshot.learn:
                self.learned.observe(tenant.name, fingerprint, observed)
            if decision.charged:
                self.limiter.settle(tenant.name, call.resource, decision.charged, observed)
        elif trace.status in (429, 503) and decision.charged:
            # The cluster refused it without doing the work: give the tenant its budget back.
            self.limiter.settle(tenant.name, call.resource, decision.charged, 0.0)

    def _record(self, request: Request, trace: Trace) -> None:
        call = trace.call
        resource = call.resource if call is not None else "-"
        metrics = self.metrics
        metrics.count(trace.tenant, resource, trace.decision, trace.reason, trace.status, trace.estimated, trace.charged,
                      trace.observed)
        if trace.queued_s:
            metrics.observe_queue_wait(trace.tenant, trace.queued_s)
        if trace.fingerprint:  # it got as far as a cost estimate: count it under its query shape
            self.shapes.record(trace.tenant, trace.fingerprint, trace.started, trace.estimated, trace.charged,
                               trace.observed, trace.decision == "throttled" or trace.decision == "would_throttle",
                               request.method, request.target, call, trace.body)
        log = self.access_log
        if log.wants(refused=trace.decision != "admitted"):
            log.write({
                "time": time.time(),
                "tenant": trace.tenant,
                "request_id": trace.request_id.decode("latin-1") or None,
                "method": request.method,
                "kind": call.kind if call else None,
                "index": ",".join(call.indices) if call else None,
                "resource": resource,
                "fingerprint": f"{trace.fingerprint:016x}",
                "cost_estimated": round(trace.estimated, 2),
                "cost_charged": round(trace.charged, 2),
                "cost_observed": None if trace.observed is None else round(trace.observed, 2),
                "decision": trace.decision,
                "reason": trace.reason or None,
                "status": trace.status,
                "node": trace.node or trace.sent_to or None,  # sent to, if it never answered
                "queue_ms": round(trace.queued_s * 1000, 2),
                "upstream_ms": round(trace.upstream_s * 1000, 2),
                "duration_ms": round((monotonic() - trace.started) * 1000, 2),
                "bytes_in": trace.bytes_in,
                "bytes_out": trace.bytes_out,
            })


def budget_exhausted(tenant: TenantView, resource: str, cost: float, decision: Decision) -> Throttled:
    """The 429 for a tenant whose token bucket cannot pay for this request within max_wait_ms."""
    return Throttled(
        f"tenant '{tenant.name}' exhausted its {resource} budget (cost {cost:.0f} > {max(decision.remaining, 0):.0f} "
        f"available); retry after {decision.wait:.1f}s",
        why="budget",
        retry_after=decision.wait,
        policy=f"{tenant.name}-{resource}",
        limit=decision.limit,
        remaining=decision.remaining,
        window=decision.window,
    )


async def read_body(request: Request, limits: HardLimits) -> bytes:
    """The request body, at most `limits.max_body_bytes` (413 beyond) and within `limits.body_timeout_s`
    (408 beyond) once asked for; `100 Continue` is sent first to a client that waits for it."""
    max_bytes = limits.max_body_bytes
    length = request.content_length
    if length is not None and length > max_bytes:
        raise BodyTooLarge(f"request body is {length} bytes, over the limit of {max_bytes} bytes")
    return await request.read_body(max_bytes, limits.body_timeout_s)


def _observe(head: bytes, encoding: str | None, status: int) -> float | None:
    """Observed cost from the first bytes (HEAD_BYTES) of a 2xx response (inflating them if the node compressed)."""
    if status >= 300 or not head:
        return None
    if len(head) > HEAD_BYTES:
        head = head[:HEAD_BYTES]
    if encoding and encoding != "identity":
        try:
            wbits = 47 if encoding == "gzip" else 15 if encoding == "deflate" else 0
            if not wbits:
                return None
            head = zlib.decompressobj(wbits).decompress(head, HEAD_BYTES)
        except zlib.error:
            return None
    return observed_cost(head)

