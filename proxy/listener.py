"""The proxy's HTTP listener: aiohttp's low-level server with the hard limits enforced at the HTTP layer.

What aiohttp's parser refuses is answered Elasticsearch-shaped, as ES itself would: a request
line too long is 414 `too_long_http_line_exception`, a header too large or too many headers is
431 `too_long_http_header_exception`, anything else malformed is 400. A client must finish its
request head within `limits.header_timeout_s` (from the moment the connection opens, or from the
first byte of the next request on a kept-alive one), or it is sent a 408 and disconnected: the
slowloris defence. And one client address holds at most `limits.max_connections_per_client`
connections at once; a connection beyond that is closed as soon as it is accepted.

`check_head` applies the URL and header limits to each parsed request again, so they hold
exactly even when the parser's own limits (fixed per connection when it opened) are looser, for
example after a reload lowered them. `flow` calls it first thing.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from . import tls
from .config import HardLimits
from .errors import BadRequest, HeadersTooLarge, Refusal, RequestTimeout, UpstreamFailure, UriTooLong, error_body

log = logging.getLogger("sluicegate.listener")


def check_head(request: BaseRequest, limits: HardLimits) -> None:
    """Refuse a request whose target is longer than max_url_bytes (414) or whose headers are more than
    max_headers or larger than max_header_bytes in total (431)."""
    if len(request.raw_path) > limits.max_url_bytes:
        raise UriTooLong(f"An HTTP line is larger than {limits.max_url_bytes} bytes (limits.max_url_bytes)")
    raw = request.raw_headers
    if len(raw) > limits.max_headers:
        raise HeadersTooLarge(f"the request has {len(raw)} headers, more than {limits.max_headers} (limits.max_headers)")
    size = 0
    for name, value in raw:
        size += len(name) + len(value) + 4  # "name: value\r\n"
    if size > limits.max_header_bytes:
        raise HeadersTooLarge(f"HTTP header is larger than {limits.max_header_bytes} bytes (limits.max_header_bytes)")


def parser_limits(limits: HardLimits) -> dict[str, Any]:
    """aiohttp's own parser limits for a new connection.

    Its request-line limit counts the target only, like max_url_bytes. Its field limit is per header;
    the total is check_head's. The two must differ so that a LineTooLong says which one was hit.
    """
    field = limits.max_header_bytes + (1 if limits.max_header_bytes == limits.max_url_bytes else 0)
    return {
        "max_line_size": limits.max_url_bytes,
        "max_field_size": field,
        "max_headers": limits.max_headers,
        "auto_decompress": False,  # esapi inflates, bounded; the node gets the bytes as they were sent
        "keepalive_timeout": limits.keepalive_timeout_s,
    }


class ProxyRequest(BaseRequest):
    """A request whose response goes out with the node's headers only: aiohttp adds its own `Server`
    (naming Python's and aiohttp's versions), which Elasticsearch and OpenSearch never send."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers.popall(hdrs.SERVER, None)


class Listener(web.Server):
    """`web.Server` whose connections enforce the hard limits. `limits` is read when a connection opens."""

    def __init__(self, handler: Callable, *, limits: Callable[[], HardLimits], metrics: Any = None, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.metrics = metrics
        #: open connections per client address
        self.per_client: dict[str, int] = {}
        self.refused_connections = 0
        self.header_timeouts = 0

    def _make_request(self, message, payload, protocol, writer, task) -> BaseRequest:  # noqa: ANN001 - aiohttp's
        return ProxyRequest(message, payload, protocol, writer, task, self._loop)

    def __call__(self) -> RequestHandler:
        limits = self.limits()
        kwargs = {**self._kwargs, **parser_limits(limits)}
        return LimitedConnection(self, limits, loop=self._loop, **kwargs)

    def count(self, status: int, label: str) -> None:
        """A refusal made before any request reached flow (parser errors, slowloris)."""
        if self.metrics is not None:
            self.metrics.count_request("-", "-", "refused", label)
            if status:
                self.metrics.count_response("-", status)


class LimitedConnection(RequestHandler):
    """One client connection: aiohttp's request handler plus the header timeout and per-client count."""

    __slots__ = ("_limits", "_client", "_refused", "_idle", "_head_deadline", "_head_timer", "_head_started", "certificate")

    def __init__(self, manager: Listener, limits: HardLimits, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._client: str | None = None
        self._refused = False
        #: between requests on a kept-alive connection: the next byte starts the head timer
        self._idle = False
        #: when the request head being waited for must be complete (loop time), or None when not waiting
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        #: the names the client's certificate answers to (mutual TLS), read once per connection; None: none shown
        self.certificate: tuple[str, ...] | None = None

    # ---- connection life ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager: Listener = self._manager  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) and peer else None
        if client is not None:
            count = manager.per_client.get(client, 0)
            if count >= self._limits.max_connections_per_client:
                # Closed at once, before reading anything: no request was made, so none is answered.
                self._refused = True
                self._force_close = True
                manager.refused_connections += 1
                manager.count(0, "too_many_connections")
                transport.close()
                return
            manager.per_client[client] = count + 1
            self._client = client
        self.certificate = tls.peer_names(transport)
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_deadline = None
        if self._refused:
            return
        client = self._client
        if client is not None:
            self._client = None
            manager: Listener | None = self._manager  # type: ignore[assignment]
            if manager is not None:
                left = manager.per_client.get(client, 1) - 1
                if left > 0:
                    manager.per_client[client] = left
                else:
                    manager.per_client.pop(client, None)
        super().connection_lost(exc)

    # ---- the head timer: one per connection, re-armed by moving its deadline ----

    def _await_head(self) -> None:
        self._head_deadline = self._loop.time() + self._limits.header_timeout_s
        self._head_started = False
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(self._head_deadline, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None or self._force_close or self.transport is None:
            return
        if self._loop.time() < deadline:  # re-armed since this was scheduled
            self._head_timer = self._loop.call_at(deadline, self._head_timeout)
            return
        manager: Listener = self._manager  # type: ignore[assignment]
        manager.header_timeouts += 1
        manager.count(408, "header_timeout")
        if self._head_started:  # a request was under way: say why it ends (a silent new connection just closes)
            timeout = self._limits.header_timeout_s
            reason = f"request headers not received within {timeout}s (limits.header_timeout_s)"
            body = error_body(408, RequestTimeout.etype, reason)
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=UTF-8\r\n"
                b"X-Elastic-Product: Elasticsearch\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        self.force_close()

    def data_received(self, data: bytes) -> None:
        if self._idle and data:
            self._idle = False  # the first byte of the next request on a kept-alive connection
            self._await_head()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._head_deadline = None  # a whole head (or a parse error) is in: the request is being served
        elif data and self._head_deadline is not None:
            self._head_started = True

    async def finish_response(self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None):
        result = await super().finish_response(request, resp, start_time)
        if not self._messages:
            self._idle = True  # idle keep-alive time is keepalive_timeout's; the next byte starts the head timer
        return result

    # ---- aiohttp's own errors, ES-shaped ----

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        refusal = self._refusal(status, exc, message)
        if refusal.status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.debug("refused a malformed request from %s: %s", request.remote, refusal.reason)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the error cannot be sent")
        manager: Listener | None = self._manager  # type: ignore[assignment]
        if manager is not None:
            manager.count(refusal.status, refusal.label)
        response = refusal.response()
        response.force_close()
        return response

    def _refusal(self, status: int, exc: BaseException | None, message: str | None) -> Refusal:
        if isinstance(exc, LineTooLong):
            if exc.args[1:2] == (self.max_line_size,):
                return UriTooLong(f"An HTTP line is larger than {self.max_line_size} bytes (limits.max_url_bytes)")
            return HeadersTooLarge(f"HTTP header is larger than {self._limits.max_header_bytes} bytes (limits.max_header_bytes)")
        if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            return HeadersTooLarge(f"the request has more than {self._limits.max_headers} headers (limits.max_headers)")
        if status == 504:
            return UpstreamFailure(504, "the request timed out")
        if status >= 500:
            return Refusal.internal()
        text = (getattr(exc, "message", None) or message or "malformed request").strip().splitlines()[0]
        return BadRequest(f"the request is not valid HTTP/1.1: {text[:200]}")
