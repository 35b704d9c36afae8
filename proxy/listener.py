"""The proxy's HTTP listener: one `asyncio.Protocol` per client connection, parsing with httptools (llhttp).

The parser's callbacks fill a small `Request` (method, raw target, raw headers, body, peer) and the
listener hands each one to the application (`flow.Proxy.handle`), one at a time per connection:
pipelined requests wait in order behind the one being served, and reading pauses while they do.
The application answers through the request: `respond` writes a small response (head and body) in
one write; `begin` / `send` / `end` stream a large one, and `pause_writing` on a client that reads
slowly pauses the stream's source (the node's connection) until the client catches up.

The hard limits are enforced while the head is parsed, with the limits in force when each request
began: a target longer than `limits.max_url_bytes` is 414 `too_long_http_line_exception`; more
than `max_headers` headers, or more than `max_header_bytes` of them in all, is 431
`too_long_http_header_exception`; anything else malformed is 400 `parse_exception`, as ES answers.
A client must finish its request head within `limits.header_timeout_s` (from the moment the
connection opens, or from the first byte of the next request on a kept-alive one), or it is sent
a 408 and disconnected: the slowloris defence. Its body must arrive within `body_timeout_s` once
the application asks for it. An idle kept-alive connection is closed after `keepalive_timeout_s`.
Each connection has one timer for all three, re-armed by moving its deadline. A client that leaves
what is written to it unread (its socket full, no progress) for `client_write_timeout_s` is cut:
whatever it was sent, or is being streamed, it cannot hold the proxy's memory or a node's answer.
One client address holds at
most `limits.max_connections_per_client` connections at once; a connection beyond that is closed
as soon as it is accepted.

Transport-agnostic: TLS comes in through `loop.create_server(..., ssl=context)` unchanged. The one
thing the listener reads of it is, once per connection, the names of the client's certificate
(mutual TLS, `tls.peer_names`), which each request carries as `certificate` for tenant identification.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from email.utils import formatdate
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any, Protocol

import httptools

from . import tls
from .config import HardLimits
from .errors import BadRequest, HeadersTooLarge, Refusal, RequestTimeout, UriTooLong
from .upstream_http import HOP_BY_HOP

log = logging.getLogger("sluicegate.listener")

#: b"HTTP/1.1 200 OK\r\n" and the like, built once
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: statuses whose responses have no body (and no Content-Length)
_NO_BODY = frozenset((100, 101, 102, 103, 204, 304))
#: the request headers the listener reads by name (lower-case), and what it does with them
_AUTHORIZATION, _CONTENT_TYPE, _CONTENT_ENCODING, _HOST, _CONTENT_LENGTH, _EXPECT, _FORWARDED_FOR, _OPAQUE_ID = range(1, 9)
_NAMED = {
    b"authorization": _AUTHORIZATION, b"content-type": _CONTENT_TYPE, b"content-encoding": _CONTENT_ENCODING,
    b"host": _HOST, b"content-length": _CONTENT_LENGTH, b"expect": _EXPECT, b"x-forwarded-for": _FORWARDED_FOR,
    b"x-opaque-id": _OPAQUE_ID,
}
#: the methods' names as str, made once
_METHODS = {m: m.decode() for m in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH", b"OPTIONS")}
#: header names as clients send them → (the name in lower case, its _NAMED value or None): the same few names
#: come with every request; forgotten all at once past NAMES_SEEN
_NAMES_SEEN: dict[bytes, tuple] = {}
NAMES_SEEN = 512
#: the end of a response head: whether the connection stays open, as HTTP/1.1 and HTTP/1.0 say it
_KEEP_1_1, _KEEP_1_0, _CLOSE = b"\r\n", b"Connection: keep-alive\r\n\r\n", b"Connection: close\r\n\r\n"
#: the second the Date line below is for, and that line before each of the three ends (rebuilt once a second):
#: a proxy dates what it relays (RFC 9110 §6.6.1; the node's own Date is not relayed)
_date_second = -1
_date_ends = (_KEEP_1_1, _KEEP_1_0, _CLOSE)


def _dated_ends() -> tuple:
    """(keep-alive 1.1, keep-alive 1.0, close) head ends, each after this second's Date line."""
    global _date_second, _date_ends
    second = int(time.time())
    if second != _date_second:
        date = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode()
        _date_ends = (date + _KEEP_1_1, date + _KEEP_1_0, date + _CLOSE)
        _date_second = second
    return _date_ends
#: a response body up to this size is joined to its head and sent in one write (larger: one writev)
_JOIN_BYTES = 16 * 1024
#: the timer's jobs
_HEAD, _IDLE, _BODY = 1, 2, 3


class ClientGone(ConnectionError):
    """The client closed its connection before its response was written."""


class Source(Protocol):
    """What streams a response body (the node's response): the listener pauses it while the client reads slowly."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Request:
    """One request: what `flow` needs of it, and the way to answer it.

    `target` is the raw request target as sent (path and query, still percent-encoded); `headers`
    the raw (name, value) byte pairs in order. `body` is whole once `complete`; `read_body` waits for it.
    """

    __slots__ = (
        "method", "target", "version", "headers", "client", "scheme", "certificate", "authorization", "content_type",
        "content_encoding", "content_length", "forwarded_for", "opaque_id", "passed_fields", "expect_continue",
        "keep_alive",
        "complete", "body_size", "too_large", "refusal", "responded", "_chunks", "_conn", "_waiter", "_streaming",
        "_chunked",
    )

    def __init__(self, conn: ClientConnection):
        self._conn = conn
        self.method = ""
        self.target = ""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        #: the client's IP address, and "http" or "https"
        self.client: str | None = conn.client
        self.scheme = conn.scheme
        #: the names of the client's certificate (mutual TLS), or None
        self.certificate: tuple[str, ...] | None = conn.certificate
        self.authorization: str | None = None
        self.content_type: str | None = None
        self.content_encoding: str | None = None
        #: the Content-Length header's value; None for a chunked body or none at all
        self.content_length: int | None = None
        #: the X-Forwarded-For the client sent (several joined), or None
        self.forwarded_for: bytes | None = None
        #: the client's own X-Opaque-Id (the first), or None: see proxy/opaque.py
        self.opaque_id: bytes | None = None
        #: the header lines to pass on ("Name: value\r\n" each): those named in the listener's `forwarded`
        self.passed_fields = b""
        self.expect_continue = False
        self.keep_alive = True
        #: the whole message is in (head and body)
        self.complete = False
        #: body bytes received so far (counted past max_body_bytes, kept only up to it)
        self.body_size = 0
        self.too_large = False
        #: set instead of serving: the listener answers this itself (malformed HTTP, a head limit)
        self.refusal: Refusal | None = None
        self.responded = False
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._streaming = False
        self._chunked = False

    # ---- the body ----
    @property
    def body(self) -> bytes:
        """The body received so far (all of it once `complete`)."""
        chunks = self._chunks
        if len(chunks) == 1:
            return chunks[0]
        data = b"".join(chunks)
        self._chunks = [data] if data else []
        return data

    async def read_body(self, max_bytes: int, timeout_s: float) -> bytes:
        """The whole body, waiting for it at most `timeout_s` seconds (408 beyond); 413 past `max_bytes`.
        Sends `100 Continue` first if the client asked for it and has sent nothing yet."""
        conn = self._conn
        if self.expect_continue and not self.body_size:
            self.expect_continue = False
            conn.write(_CONTINUE)
        conn.arm_body_timer(timeout_s)
        try:
            while not self.complete and not self.too_large:
                if self.refusal is not None:
                    raise self.refusal
                self._waiter = conn.loop.create_future()
                await self._waiter
        finally:
            self._waiter = None
            conn.disarm_body_timer()
        if self.too_large or self.body_size > max_bytes:
            raise body_too_large(max_bytes)
        return self.body

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- the response ----
    def respond(self, status: int, fields: bytes, body: bytes = b"", length: int | None = None) -> None:
        """Answer in one write: the status line, `fields` (header lines, each ending in CRLF, without
        Content-Length or Connection), the framing headers, and `body` (none to a HEAD request). `length`
        is the Content-Length to state when it is not len(body): a HEAD response states the length a GET
        would get."""
        self.responded = True
        conn = self._conn
        transport = conn.transport
        if transport is None or transport.is_closing():  # nobody to answer: its end cancels the request's task
            return
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
        end = conn.head_end(self, False)
        if status in _NO_BODY:
            head = b"%s%s%s" % (line, fields, end)
            body = b""
        elif self.method == "HEAD":  # the length a GET would get, if known; never a body
            if length is None and not body:
                head = b"%s%s%s" % (line, fields, end)
            else:
                head = b"%s%sContent-Length: %d\r\n%s" % (line, fields, len(body) if length is None else length, end)
            body = b""
        else:
            size = len(body) if length is None else length
            if size <= _JOIN_BYTES:
                transport.write(b"%s%sContent-Length: %d\r\n%s%s" % (line, fields, size, end, body))
                conn.response_done(self)
                return
            head = b"%s%sContent-Length: %d\r\n%s" % (line, fields, size, end)
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        conn.response_done(self)

    def begin(self, status: int, fields: bytes, length: int | None, source: Source | None = None) -> None:
        """Start a streamed response: `length` bytes to follow through `send`, or chunked (close-delimited
        for an HTTP/1.0 client) when None. While the client reads slower than `source` produces, `source`
        is paused."""
        conn = self._conn
        head = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
        head += fields
        close_delimited = False
        if self.method == "HEAD" or status in (204, 304):
            if length is not None:
                head += b"Content-Length: %d\r\n" % length
        elif length is not None:
            head += b"Content-Length: %d\r\n" % length
        elif self.version == "1.1":
            head += b"Transfer-Encoding: chunked\r\n"
            self._chunked = True
        else:
            close_delimited = True
        head += conn.head_end(self, close_delimited)
        self._streaming = True
        conn.write(head)
        conn.stream_source = source
        if source is not None and conn.writing_paused:
            source.pause()

    def send(self, chunk: bytes) -> None:
        """One piece of a streamed body (nothing for a HEAD request). Raises ClientGone if the client left."""
        if not chunk or self.method == "HEAD":
            return
        conn = self._conn
        if self._chunked:
            conn.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            conn.write(chunk)

    @property
    def writing_paused(self) -> bool:
        """True while the client's socket buffer is full: `await drain()` before sending more."""
        return self._conn.writing_paused

    async def drain(self) -> None:
        """Wait until the client has read enough of what was sent. Raises ClientGone if it left."""
        await self._conn.drain()

    def end(self) -> None:
        """Finish a streamed response."""
        conn = self._conn
        if self._chunked and self.method != "HEAD":
            conn.write(b"0\r\n\r\n")
        conn.stream_source = None
        self.responded = True
        conn.response_done(self)

    def abort(self) -> None:
        """Cut the connection: a response that began cannot be finished (the client sees it short)."""
        self.responded = True
        self._conn.abort()

    @property
    def task(self) -> asyncio.Task | None:
        """The task serving this request (what cancelling it cancels)."""
        return self._conn._task

    @property
    def started(self) -> bool:
        """Some of the response is on its way: an error can no longer be sent instead of it."""
        return self._streaming or self.responded


def body_too_large(max_bytes: int) -> Refusal:
    from .errors import BodyTooLarge

    return BodyTooLarge(f"request body is over the limit of {max_bytes} bytes")


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the refusal is on the connection."""


App = Callable[[Request], Coroutine[Any, Any, None]]


class Listener:
    """The protocol factory for `loop.create_server`: its connections, their limits and counters."""

    def __init__(self, app: App, *, limits: HardLimits, metrics: Any = None, forwarded: frozenset[bytes] = frozenset()):
        #: called once per request, the coroutine run as the request's task; it answers through the request
        self.app = app
        #: the request headers (lower-case names) put in `Request.passed_fields`, and no others (never hop-by-hop)
        self.forwarded = forwarded - HOP_BY_HOP
        #: the hard limits in force: read when each request begins (a reload swaps in new ones)
        self.limits = limits
        self.metrics = metrics
        #: open connections per client address
        self.per_client: dict[str, int] = {}
        self.connections: set[ClientConnection] = set()
        self.refused_connections = 0
        self.header_timeouts = 0
        #: connections closed because the client read nothing for limits.client_write_timeout_s
        self.write_timeouts = 0
        #: set on SIGTERM: each connection closes after the response it is writing, idle ones at once
        self.draining = False

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def count(self, status: int, label: str) -> None:
        """A refusal made before any request reached the application (parser errors, slowloris)."""
        if self.metrics is not None:
            self.metrics.count_request("-", "-", "refused", label)
            if status:
                self.metrics.count_response("-", status)

    def drain(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()

    def close_all(self) -> None:
        """After the drain: close what is idle (what it has written is still sent), abort what is not."""
        for conn in list(self.connections):
            if conn.busy:
                conn.abort()
            else:
                conn.close_if_idle()


class ClientConnection:
    """One client connection: the parser, the requests in order, the timer, and the write side's flow
    control. An asyncio protocol (compiled to a C type from listener.pxd, so not a subclass of
    asyncio.Protocol)."""

    __slots__ = (
        "listener", "loop", "transport", "parser", "client", "scheme", "limits", "writing_paused", "stream_source",
        "_parsing", "_in_head", "_url", "_headers", "_max_headers", "_trailers", "_head_bytes", "_queue", "_current",
        "_task", "_parked", "_handoff", "_refusal", "_closing", "_stopped", "_counted", "_reading_paused", "_idle", "_head_started",
        "_drainer", "_timer", "_timer_at", "_deadline", "_timer_job", "_write_timer", "certificate",
        "_header_timeout", "_keepalive_timeout",
    )

    def __init__(self, listener: Listener):
        self.listener = listener
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: str | None = None
        self.scheme = "http"
        #: the names the client's certificate answers to (mutual TLS), read once per connection; None: none shown
        self.certificate: tuple[str, ...] | None = None
        self.limits: HardLimits = listener.limits
        #: what every request reads of the limits (the config's models are slow to read), with them
        self._header_timeout = self.limits.header_timeout_s
        self._keepalive_timeout = self.limits.keepalive_timeout_s
        self.writing_paused = False
        #: what the response being streamed reads from (paused while the client is slow)
        self.stream_source: Source | None = None
        self._parsing: Request | None = None  # the request whose message is being parsed
        self._in_head = False  # ... and its head is not complete yet
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []  # where on_header puts what it gets
        self._max_headers = self.limits.max_headers
        self._trailers: list[tuple[bytes, bytes]] = []  # a chunked body's trailer: counted, then dropped
        self._head_bytes = 0  # bytes received that certainly belong to the head being parsed
        self._queue: deque[Request] = deque()  # complete heads waiting behind the one being served
        self._current: Request | None = None
        #: the task serving this connection's requests in turn, and while it waits for the next one, what it awaits
        self._task: asyncio.Task | None = None
        self._parked: asyncio.Future[Request] | None = None
        self._handoff: Request | None = None  # the next request, let in while the task finished the one before
        self._refusal: Refusal | None = None
        self._closing = False  # no request after those already in: close once they are answered
        self._stopped = False  # nothing more is parsed (a refusal, an upgrade)
        self._counted = False  # counted in listener.per_client
        self._reading_paused = False
        self._idle = False  # between requests on a kept-alive connection
        self._head_started = False  # a byte of the awaited head has arrived
        self._drainer: asyncio.Future[None] | None = None
        # one timer per connection: the head, idle keep-alive or body deadline, re-armed by moving it
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline: float | None = None
        self._timer_job = 0
        #: while the client leaves what is written to it unread: closes the connection at client_write_timeout_s
        self._write_timer: asyncio.TimerHandle | None = None

    # ---- connection life ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        peer = transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) and peer else None
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
            # The handshake is done by now (TLS protocols are told of the connection after it).
            self.certificate = tls.peer_names(transport)
        if client is not None:
            count = listener.per_client.get(client, 0)
            if count >= self.limits.max_connections_per_client:
                # Closed at once, before reading anything: no request was made, so none is answered.
                self._closing = True
                listener.refused_connections += 1
                listener.count(0, "too_many_connections")
                transport.close()
                return
            listener.per_client[client] = count + 1
            self._counted = True
            self.client = client
        listener.connections.add(self)
        if listener.draining:
            self._closing = True
        self._arm(_HEAD, self._header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_write_timer()
        listener = self.listener
        listener.connections.discard(self)
        if self._counted:
            self._counted = False
            client = self.client
            left = listener.per_client.get(client, 1) - 1  # type: ignore[arg-type]
            if left > 0:
                listener.per_client[client] = left  # type: ignore[index]
            else:
                listener.per_client.pop(client, None)  # type: ignore[arg-type]
        self._closing = True
        self._queue.clear()
        self._handoff = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # the client went away: its request is abandoned (and the node's connection with it)
        drainer = self._drainer
        if drainer is not None and not drainer.done():
            drainer.set_exception(ClientGone("the client closed the connection"))
        self.stream_source = None

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._idle:
            self._idle = False  # the first byte of the next request on a kept-alive connection
            self._arm(_HEAD, self._header_timeout)
        in_head = self._parsing if self._in_head else None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request: answered as an ordinary one, then the connection closes.
            self._closing = self._stopped = True
        except httptools.HttpParserCallbackError:
            self._refuse(self._refusal or Refusal.internal())
        except httptools.HttpParserError as exc:
            text = (str(exc) or "malformed request").strip().splitlines()[0]
            self._refuse(BadRequest(f"the request is not valid HTTP/1.1: {text[:200]}"))
        else:
            if self._in_head:
                self._head_started = True
                if in_head is not None and self._parsing is in_head:
                    # Whole reads inside one head: bounds a header line that never ends (no callback sees it).
                    self._head_bytes += len(data)
                    limits = self.limits
                    if self._head_bytes > limits.max_url_bytes + limits.max_header_bytes + 16 * limits.max_headers + 1024:
                        self._refuse(HeadersTooLarge(
                            f"HTTP header is larger than {limits.max_header_bytes} bytes (limits.max_header_bytes)"))
        if self._current is None and self._queue:
            self._serve_next()
        if self._queue and not self._reading_paused:
            self._reading_paused = True  # a request waits behind the one being served: read no further for now
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        return None  # the client is gone (or half-closed): close, which cancels what it asked for

    # ---- parser callbacks (httptools) ----
    def on_message_begin(self) -> None:
        limits = self.listener.limits  # per request: a reload applies from the next request on
        if limits is not self.limits:
            self.limits = limits
            self._header_timeout = limits.header_timeout_s
            self._keepalive_timeout = limits.keepalive_timeout_s
        request = self._parsing = Request(self)
        self._headers = request.headers
        self._max_headers = limits.max_headers
        self._in_head = True
        self._url = b""
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        url = self._url = self._url + url
        if len(url) > self.limits.max_url_bytes:
            limit = self.limits.max_url_bytes
            self._refusal = UriTooLong(f"An HTTP line is larger than {limit} bytes (limits.max_url_bytes)")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        if len(headers) > self._max_headers:  # the rest is checked once the head is in
            self._refusal = HeadersTooLarge(
                f"the request has more than {self._max_headers} headers (limits.max_headers)")
            raise _Refused

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._refusal = BadRequest(f"the request is not valid HTTP/1.1: HTTP/{version} is not supported")
            raise _Refused
        # One pass over the headers: their size, the ones read by name, and the lines to pass on.
        forwarded = self.listener.forwarded
        size = 0
        has_host = False
        passed: list[bytes] = []
        seen = _NAMES_SEEN
        for name, value in request.headers:
            size += len(name) + len(value) + 4  # "name: value\r\n"
            known = seen.get(name)
            if known is None:
                lname = name.lower()
                known = (lname, _NAMED.get(lname))
                if len(name) <= 64:
                    if len(seen) >= NAMES_SEEN:
                        seen.clear()
                    seen[name] = known
            lname, named = known
            if named is not None:
                if named == _HOST:
                    has_host = True
                elif named == _AUTHORIZATION:
                    if request.authorization is None:
                        request.authorization = value.decode("utf-8", "surrogateescape")
                elif named == _CONTENT_TYPE:
                    if request.content_type is None:
                        request.content_type = value.decode("utf-8", "surrogateescape")
                elif named == _CONTENT_LENGTH:
                    request.content_length = int(value)  # llhttp checked it is digits
                elif named == _CONTENT_ENCODING:
                    if request.content_encoding is None:
                        request.content_encoding = value.decode("utf-8", "surrogateescape")
                elif named == _EXPECT:
                    request.expect_continue = value.lower() == b"100-continue" and version == "1.1"
                elif named == _FORWARDED_FOR:
                    prior = request.forwarded_for
                    request.forwarded_for = value if prior is None else prior + b", " + value
                elif named == _OPAQUE_ID:
                    if request.opaque_id is None:
                        request.opaque_id = value
            if lname in forwarded:
                passed += (name, b": ", value, b"\r\n")
        limits = self.limits
        if size > limits.max_header_bytes:
            self._refusal = HeadersTooLarge(
                f"HTTP header is larger than {limits.max_header_bytes} bytes (limits.max_header_bytes)")
            raise _Refused
        if not has_host and version == "1.1":
            self._refusal = BadRequest("the request is not valid HTTP/1.1: it has no Host header")
            raise _Refused
        request.passed_fields = b"".join(passed)
        request.version = version
        method = parser.get_method()
        request.method = _METHODS.get(method) or method.decode("ascii")
        request.target = self._url.decode("utf-8", "surrogateescape")
        request.keep_alive = parser.should_keep_alive()
        trailers = self._headers = self._trailers
        trailers.clear()
        self._in_head = False
        self._head_started = False
        if self._timer_job == _HEAD:
            self._disarm()
        self._queue.append(request)

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.body_size += len(body)
        if request.body_size > self.limits.max_body_bytes:
            if not request.too_large:
                request.too_large = True
                request._chunks = []  # read on (the stream stays in step), kept no longer
                request._wake()
            return
        request._chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        request.complete = True
        self._parsing = None
        request._wake()

    # ---- serving, in order ----
    def _serve_next(self) -> None:
        request = self._queue.popleft()
        self._current = request
        if request.refusal is not None:
            self._answer_refusal(request)
            return
        parked = self._parked
        self._parked = None
        if parked is not None and not parked.done():  # the connection's task waits for its next request
            parked.set_result(request)
        elif self._task is None or parked is not None:  # none yet (or the one waiting was cancelled: it is ending)
            self._task = self.loop.create_task(self._serve(request))
        else:  # the task is finishing the request before (whose response let this one in): this one is next
            self._handoff = request

    async def _serve(self, request: Request) -> None:
        """Run the application for `request`, then for each request after it on this connection: one task per
        connection, not per request (a keep-alive client's requests do not each pay for one). If the
        application fails and leaves a request unanswered (a bug), the client gets a 500, or the connection
        ends if a response had begun: never a hang. Ends when the connection does (its task is cancelled)."""
        app = self.listener.app
        try:
            while True:
                try:
                    await app(request)
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    log.exception("unexpected error serving %s %s", request.method, request.target[:200])
                if not request.responded and not self.gone:
                    if request.started:
                        self.abort()  # a response had begun: it can be neither finished nor replaced
                    else:
                        refusal = Refusal.internal()
                        request.respond(refusal.status, refusal.fields(), refusal.body())
                request = self._handoff
                if request is not None:
                    self._handoff = None
                else:
                    parked = self._parked = self.loop.create_future()
                    request = await parked
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                self._parked = self._handoff = None

    def response_done(self, request: Request) -> None:
        """The response to `request` is written: close, or go on with the next request."""
        if self._current is request:
            self._current = None
        if not request.keep_alive:
            self._close()
        elif self._queue:
            self._serve_next()
        elif self._closing:
            self._close()
        else:
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            if self._in_head:
                self._arm(_HEAD, self._header_timeout)  # a head that came in meanwhile: its clock starts now
            else:
                self._idle = True
                self._arm(_IDLE, self._keepalive_timeout)

    def head_end(self, request: Request, close_delimited: bool) -> bytes:
        """The end of a response head: the Date, whether the connection stays open after it (decided here,
        noted on `request`) and the Connection header that says so, then the blank line."""
        ends = _dated_ends()
        if (request.keep_alive and request.complete and not close_delimited and not request.too_large
                and not (self._closing and not self._queue) and not self.listener.draining):
            return ends[0] if request.version == "1.1" else ends[1]
        request.keep_alive = False
        return ends[2]

    # ---- refusals the listener makes itself ----
    def _refuse(self, refusal: Refusal) -> None:
        """Stop parsing; answer `refusal` in turn, after the requests before it, and close."""
        self._refusal = None
        self._closing = self._stopped = True
        self._in_head = False
        if self._timer_job == _HEAD:
            self._disarm()
        request = self._parsing or Request(self)
        self._parsing = None
        request.refusal = refusal
        request._wake()  # a body being read ends here
        if request not in self._queue and request is not self._current:
            self._queue.append(request)
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _answer_refusal(self, request: Request) -> None:
        refusal = request.refusal
        assert refusal is not None
        if refusal.status >= 500:
            log.error("error parsing a request from %s: %s", self.client, refusal.reason)
        else:
            log.debug("refused a malformed request from %s: %s", self.client, refusal.reason)
        self.listener.count(refusal.status, refusal.label)
        request.keep_alive = False
        request.respond(refusal.status, refusal.fields(), refusal.body())

    # ---- the timer ----
    def _arm(self, job: int, seconds: float) -> None:
        now = self.loop.time()
        deadline = now + seconds
        self._deadline = deadline
        self._timer_job = job
        timer = self._timer
        if timer is None or deadline < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._schedule(now, deadline)

    def _schedule(self, now: float, deadline: float) -> None:
        # Never later than a head deadline armed from now on, so that arming one (every request on a
        # kept-alive connection) only moves the deadline: the timer is scheduled anew at most once a tick.
        tick = now + self._header_timeout
        at = self._timer_at = deadline if deadline < tick else tick
        self._timer = self.loop.call_at(at, self._on_timer)

    def _disarm(self) -> None:
        self._deadline = None
        self._timer_job = 0

    def arm_body_timer(self, seconds: float) -> None:
        self._arm(_BODY, seconds)

    def disarm_body_timer(self) -> None:
        if self._timer_job == _BODY:
            self._disarm()

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport is None:
            return
        now = self.loop.time()
        if now < deadline:  # moved on since this was scheduled
            self._schedule(now, deadline)
            return
        job = self._timer_job
        self._disarm()
        if job == _IDLE:
            if self._current is None and not self._queue and not self._in_head:
                self._close()
        elif job == _BODY:
            request = self._current
            if request is not None and not request.complete:
                timeout = self.limits.body_timeout_s
                request.refusal = RequestTimeout(f"request body not received within {timeout}s (limits.body_timeout_s)")
                request._wake()
        elif job == _HEAD:
            self._head_timeout()

    def _head_timeout(self) -> None:
        if self._current is not None or self._queue:
            return  # a request is being answered; the head behind it is timed once it is
        listener = self.listener
        listener.header_timeouts += 1
        listener.count(408, "header_timeout")
        self._closing = True
        if self._head_started or self._in_head:  # a request was under way: say why it ends
            timeout = self.limits.header_timeout_s
            refusal = RequestTimeout(f"request headers not received within {timeout}s (limits.header_timeout_s)")
            request = Request(self)
            request.keep_alive = False
            self._current = request
            request.respond(refusal.status, refusal.fields(), refusal.body())
        else:  # a silent new connection just closes
            self._close()

    # ---- writing ----
    @property
    def gone(self) -> bool:
        """The connection is closed or closing: nothing more can be written."""
        transport = self.transport
        return transport is None or transport.is_closing()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client closed the connection")
        transport.write(data)

    def writelines(self, parts) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client closed the connection")
        transport.writelines(parts)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._start_write_timer()
        source = self.stream_source
        if source is not None:
            source.pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._stop_write_timer()
        drainer = self._drainer
        if drainer is not None:
            self._drainer = None
            if not drainer.done():
                drainer.set_result(None)
        source = self.stream_source
        if source is not None:
            source.resume()

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ClientGone("the client closed the connection")
        if not self.writing_paused:
            return
        drainer = self._drainer
        if drainer is None:
            drainer = self._drainer = self.loop.create_future()
        await drainer

    def _start_write_timer(self) -> None:
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.client_write_timeout_s, self._write_timed_out)

    def _stop_write_timer(self) -> None:
        timer = self._write_timer
        if timer is not None:
            self._write_timer = None
            timer.cancel()

    def _write_timed_out(self) -> None:
        """The client read nothing of what was written to it for client_write_timeout_s: it holds the proxy's
        memory (and, streaming, a node's response) for nothing. Cut it; its request ends as cancelled."""
        self._write_timer = None
        log.info("closing the connection from %s: it read nothing for %ss (limits.client_write_timeout_s)",
                 self.client, self.limits.client_write_timeout_s)
        listener = self.listener
        listener.write_timeouts += 1
        listener.count(0, "client_write_timeout")
        self.abort()

    # ---- closing ----
    def _close(self) -> None:
        self._closing = True
        self._disarm()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()  # what is buffered is still sent ...
            if transport.get_write_buffer_size():
                self._start_write_timer()  # ... to a client that reads it within client_write_timeout_s

    @property
    def busy(self) -> bool:
        """A request is being answered, or waits its turn."""
        return self._current is not None or bool(self._queue)

    def close_if_idle(self) -> None:
        """Draining: close now unless a request is being answered or waits (those close after their response)."""
        self._closing = True
        if self._current is None and not self._queue:
            self._close()

    def abort(self) -> None:
        self._closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()
