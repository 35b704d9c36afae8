"""The request path, top to bottom.

    identify tenant → parse the call → authorize → read body (bounded) → estimate cost
    → budget (token bucket) → slot (tenant concurrency, global gate) → forward to a node
    → stream the response back → settle the bill with the observed cost → metrics and log

`Proxy.handle` is that path as one coroutine. Every refusal along the way is a `Refusal`
exception that knows its own ES-shaped response; `handle` is the one boundary where it becomes
a status, a counter and a log line. Each request takes one config snapshot and uses it to the end.
"""
from __future__ import annotations

import asyncio
import logging
import time
import zlib

from aiohttp import hdrs, web
from aiohttp.web_request import BaseRequest

from . import esapi
from .accesslog import AccessLog
from .admission import Admission
from .config import Config
from .cost import CostModel, Estimate, IndexSizes, LearnedCosts, observed_cost
from .errors import BodyTooLarge, Refusal, RequestTimeout, Throttled, UpstreamFailure
from .idbinding import IdBinder, Rebound, binding_key
from .limiter import Decision, Limiter
from .listener import check_head
from .metrics import Metrics
from .shapes import ShapeBook
from .tenants import Directory, TenantView, authorize
from .upstream import Upstream, response_headers
from .upstream_http import UpstreamResponse

#: responses up to this size are read whole and sent in one write; larger ones are streamed
SMALL_RESPONSE = 256 * 1024
#: how much of a response body the cost observer looks at
HEAD_BYTES = 512
_COST_HEADER = "X-Sluicegate-Cost"
#: Requests sent again byte for byte (a dashboard's refresh, a health check's search) are not decoded,
#: grant-checked or costed again: per config snapshot, this many bodies that passed their tenant's
#: grant check and this many estimates are remembered, for bodies (and targets) up to MEMO_BYTES.
#: At most a few MB: a remembered body holds its parsed JSON.
BODY_MEMO = 128
ESTIMATE_MEMO = 512
MEMO_BYTES = 4096

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

    __slots__ = ("config", "generation", "digest", "directory", "cost_model", "ids", "granted_bodies", "_estimates", "_sizes")

    def __init__(self, config: Config, generation: int, digest: str):
        self.config = config
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


class Trace:
    """What one request did, for metrics and the access log. One allocation per request."""

    __slots__ = (
        "started", "tenant", "call", "estimated", "charged", "observed", "fingerprint",
        "decision", "reason", "status", "node", "queued_s", "upstream_s", "bytes_in", "bytes_out", "body",
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
        self.inflight = 0
        self.draining = False  # set on SIGTERM: answer what is in flight, close each connection after
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        snap = self.snapshot  # one config snapshot for the whole request
        trace = Trace(time.monotonic())
        self.inflight += 1
        self.idle.clear()
        try:
            response = await self._serve(request, snap, trace)
        except Refusal as refusal:
            trace.status = refusal.status
            if trace.decision == "admitted":
                trace.decision = "throttled" if isinstance(refusal, Throttled) else "refused"
            trace.reason = refusal.label
            response = refusal.response()
            trace.bytes_out = len(response.body)
        except asyncio.CancelledError:
            trace.status, trace.decision, trace.reason = 499, "cancelled", "client_closed"
            self._record(request, trace)
            raise
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            trace.status, trace.decision, trace.reason = 500, "error", "internal"
            response = Refusal.internal().response()
            trace.bytes_out = len(response.body)
        finally:
            self.inflight -= 1
            if not self.inflight:
                self.idle.set()
        if self.draining:
            response.force_close()
        self._record(request, trace)
        return response

    async def _serve(self, request: BaseRequest, snap: Snapshot, trace: Trace) -> web.StreamResponse:
        limits = snap.config.limits
        check_head(request, limits)  # 414 / 431, exactly, whatever the parser's limits were

        # 1. Who is asking, and what are they asking for?
        tenant = snap.directory.identify(request.headers.get(hdrs.AUTHORIZATION), request.path,
                                         getattr(request.protocol, "certificate", None))  # mutual TLS: its names
        trace.tenant = tenant.name
        call = esapi.parse_call(request.method, request.raw_path)
        trace.call = call
        authorize(tenant, call, None)

        # 2. The body, bounded in bytes and time, parsed only where cost or grants need it.
        raw = await read_body(request, limits.max_body_bytes, limits.body_timeout_s)
        trace.bytes_in = len(raw)
        content_type, encoding = request.headers.get(hdrs.CONTENT_TYPE), request.headers.get(hdrs.CONTENT_ENCODING)
        sent = (tenant.name, request.method, request.raw_path, content_type, encoding, raw)
        body = snap.granted_body(sent)
        if body is None:  # not seen byte for byte since the config loaded: decode it, check what it names
            body = esapi.decode_body(call, raw, content_type, encoding, limits)
            authorize(tenant, call, body or esapi.NO_BODY)
            snap.granted(sent, body)
        trace.body = body
        # Scroll, point-in-time and async-search ids are bound to the tenant that opened them.
        rebound = snap.ids.rebind(tenant.name, call, body, request.raw_path)

        # 3. What will it cost the cluster? The learned cost of this shape wins over the estimate.
        estimate = snap.estimate(request.method, request.raw_path, content_type, call, body, self.index_sizes)
        trace.estimated = estimate.cost
        trace.fingerprint = estimate.fingerprint
        learned = self.learned.get(tenant.name, estimate.fingerprint) if snap.config.cost.learn else None
        cost = estimate.cost if learned is None else learned
        # A shape new to this tenant is not assumed cheap at the gate if it cost others more (never billed so).
        shape = self.learned.shape(estimate.fingerprint) if learned is None and snap.config.cost.learn else None

        # 4. Budget: the tenant's token bucket for this resource class (may wait up to max_wait_ms).
        decision = await self.limiter.acquire(tenant.name, call.resource, cost, shadow=not tenant.enforce)
        trace.charged = decision.charged
        trace.queued_s = decision.wait if decision.admitted and tenant.enforce else 0.0  # shadow never sleeps
        if not decision.admitted:
            if tenant.enforce:
                raise budget_exhausted(tenant, call.resource, cost, decision)
            trace.decision, trace.reason = "would_throttle", "budget"

        # 5. Concurrency: a tenant slot, then the global gate. Whatever fails from here on
        #    before the request reaches a node gets its charge refunded.
        try:
            gate_cost = decision.charged if shape is None or shape <= decision.charged else shape
            ticket = await self.admission.enter(tenant, gate_cost, shadow=not tenant.enforce)
        except BaseException:
            self.limiter.settle(tenant.name, call.resource, decision.charged, 0.0)
            raise
        if ticket.waited < 0:
            trace.decision, trace.reason = "would_throttle", "concurrency"
        else:
            trace.queued_s += ticket.waited

        # 6. Forward to a node and stream its answer back.
        try:
            response = await self._forward(request, raw, call, tenant, decision, estimate.cost, trace, rebound)
        except BaseException as exc:
            # An upstream failure's own status (502/503/504) tells the gate's adaptive limit what happened.
            status = exc.status if isinstance(exc, UpstreamFailure) else trace.status
            self.admission.leave(ticket, status, trace.upstream_s, None)
            if trace.node == "":  # never reached a node: the cluster spent nothing
                self.limiter.settle(tenant.name, call.resource, decision.charged, 0.0)
            raise
        self.admission.leave(ticket, trace.status, trace.upstream_s, trace.observed)

        # 7. Settle: true the bill up to what the cluster reported spending.
        self._settle(tenant, call, decision, estimate.fingerprint, trace)
        return response

    async def _forward(
        self,
        request: BaseRequest,
        raw: bytes,
        call: esapi.EsCall,
        tenant: TenantView,
        decision: Decision,
        estimated: float,
        trace: Trace,
        rebound: Rebound | None,
    ) -> web.StreamResponse:
        headers = self.upstream.forward_headers(request.headers, request.remote, request.scheme)
        target, body = request.raw_path, raw or None
        if rebound is not None:  # the node gets its own ids back
            target, body, headers = rebound.request(raw, headers)
        sent_at = time.monotonic()
        node, upstream = await self.upstream.send(
            request.method, target, headers, body, retry_after_send=call.resource in ("search", "read")
        )
        trace.node = node.url
        trace.upstream_s = time.monotonic() - sent_at
        self.metrics.observe_upstream(call.resource, trace.upstream_s)
        trace.status = upstream.status
        try:
            headers = response_headers(upstream)
            headers.append((_COST_HEADER, f"estimated={estimated:.1f}; charged={decision.charged:.1f}"))
            length = upstream.content_length
            if request.method == "HEAD" or (length is not None and length <= SMALL_RESPONSE):
                # Small: usually whole already (it came with the head), answered in one write.
                data = await upstream.read()
                return self._respond(request, upstream, data, headers, trace, rebound)
            return await self._stream(request, upstream, headers, trace, rebound)
        finally:
            upstream.release()

    def _respond(
        self, request: BaseRequest, upstream: UpstreamResponse, data: bytes, headers: list, trace: Trace,
        rebound: Rebound | None,
    ) -> web.Response:
        """The client's response to a small node response read whole.

        A response that carries a scroll, point-in-time or async-search id gets it wrapped for the tenant.
        """
        encoding = upstream.content_encoding
        trace.observed = _observe(data[:HEAD_BYTES], encoding, upstream.status)
        if request.method == "HEAD":
            if upstream.content_length is not None:  # the length a GET would get, as the node said
                headers.append((hdrs.CONTENT_LENGTH, str(upstream.content_length)))
        elif rebound is not None and rebound.wraps(upstream.status, encoding):
            data = rebound.wrap_response(data)
        trace.bytes_out = len(data)
        return web.Response(status=upstream.status, headers=headers, body=data or None)

    async def _stream(
        self, request: BaseRequest, upstream: UpstreamResponse, headers: list, trace: Trace, rebound: Rebound | None
    ) -> web.StreamResponse:
        """Relay a large or unknown-length node response to the client as it arrives (bounded memory)."""
        encoding = upstream.content_encoding
        length = upstream.content_length
        wraps = rebound is not None and rebound.wraps(upstream.status, encoding)
        chunks = upstream.iter_chunks()
        first, grew = await rebound.wrap_stream_head(chunks) if wraps else (b"", 0)  # type: ignore[union-attr]
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if length is not None:
            response.content_length = length + grew
        await response.prepare(request)
        head = b""
        if first:
            head = first[:HEAD_BYTES]
            trace.bytes_out += len(first)
            await response.write(first)
        async for chunk in chunks:
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
            trace.bytes_out += len(chunk)
            await response.write(chunk)
        observed = _observe(head, encoding, upstream.status)
        await response.write_eof()
        # Only now: a client gone during the last write is billed the charge, as one gone mid-stream is;
        # set before, the access log would book a cost the bucket was never settled to.
        trace.observed = observed
        return response

    def _settle(self, tenant: TenantView, call: esapi.EsCall, decision: Decision, fingerprint: int, trace: Trace) -> None:
        observed = trace.observed
        if observed is not None:
            if self.snapshot.config.cost.learn:
                self.learned.observe(tenant.name, fingerprint, observed)
            if decision.charged:
                self.limiter.settle(tenant.name, call.resource, decision.charged, observed)
        elif trace.status in (429, 503) and decision.charged:
            # The cluster refused it without doing the work: give the tenant its budget back.
            self.limiter.settle(tenant.name, call.resource, decision.charged, 0.0)

    def _record(self, request: BaseRequest, trace: Trace) -> None:
        call = trace.call
        resource = call.resource if call is not None else "-"
        metrics = self.metrics
        metrics.count_request(trace.tenant, resource, trace.decision, trace.reason)
        metrics.count_response(trace.tenant, trace.status)
        if trace.charged or trace.observed is not None:
            metrics.count_cost(trace.tenant, resource, trace.estimated, trace.charged, trace.observed)
        if trace.queued_s:
            metrics.observe_queue_wait(trace.tenant, trace.queued_s)
        if trace.fingerprint:  # it got as far as a cost estimate: count it under its query shape
            self.shapes.record(trace.tenant, trace.fingerprint, trace.started, trace.estimated, trace.charged,
                               trace.observed, trace.decision == "throttled" or trace.decision == "would_throttle",
                               request.method, request.raw_path, call, trace.body)
        log = self.access_log
        if log.wants(refused=trace.decision != "admitted"):
            log.write({
                "time": time.time(),
                "tenant": trace.tenant,
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
                "node": trace.node or None,
                "queue_ms": round(trace.queued_s * 1000, 2),
                "upstream_ms": round(trace.upstream_s * 1000, 2),
                "duration_ms": round((time.monotonic() - trace.started) * 1000, 2),
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


async def read_body(request: BaseRequest, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, at most `max_bytes` (413 beyond) and within `timeout_s` (408 beyond)."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise BodyTooLarge(f"request body is {length} bytes, over the limit of {max_bytes} bytes")
    content = request.content
    if content.is_eof():  # the whole body came with the head (most requests): no waiting, no timer
        data = content.read_nowait(-1)
        if len(data) > max_bytes:
            raise BodyTooLarge(f"request body is over the limit of {max_bytes} bytes")
        return data
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                buf += chunk
                if len(buf) > max_bytes:
                    raise BodyTooLarge(f"request body is over the limit of {max_bytes} bytes")
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s}s") from None
    return bytes(buf)


def _observe(head: bytes, encoding: str | None, status: int) -> float | None:
    """Observed cost from the first bytes of a 2xx response (inflating them if the node compressed)."""
    if status >= 300 or not head:
        return None
    if encoding and encoding != "identity":
        try:
            wbits = 47 if encoding == "gzip" else 15 if encoding == "deflate" else 0
            if not wbits:
                return None
            head = zlib.decompressobj(wbits).decompress(head, HEAD_BYTES)
        except zlib.error:
            return None
    return observed_cost(head)

