"""A lean HTTP/1.1 client for the upstream side: keep-alive connections on asyncio Protocols.

Why not aiohttp's ClientSession: measured side by side on this project's bench, its per-request
machinery (request objects, URL parsing, tracing, timers) costs about three times the proxy's
own server side; a pass-through proxy on it reaches 0.16x nginx, on this client 0.39x. This
client does only what forwarding to Elasticsearch needs: write one request, parse the response
head, hand the body over as it arrives (Content-Length, chunked, or until close), and pause
reading when the client downstream is slower than the node (bounded memory).
"""
from __future__ import annotations

import asyncio
import select
import ssl as ssl_module
from collections import deque

#: stop reading from the node while this much body is buffered for a slow client
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18
#: the longest response head accepted from a node. OpenSearch 2.x adds a `TASK_RESOURCE_USAGE` header
#: (~225 bytes) per search phase of every batch of a by-query call or scroll: a delete_by_query of 30,000
#: docs in batches of 100 answers with a 134 KB head, one of a million docs at the default batch size ~450 KB.
MAX_HEAD = 1 << 20
#: headers that describe one hop, never relayed as they are (RFC 9110 §7.6.1), plus the framing and
#: the node's own Date and Server: whoever relays a response frames it, and speaks for itself
HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-connection",
))
#: X-Opaque-Id too: the node echoes the tenant-prefixed one, the client gets its own back (proxy/opaque.py)
NOT_RELAYED = HOP_BY_HOP | {b"content-length", b"date", b"server", b"x-opaque-id"}
_NOT_RELAYED = NOT_RELAYED  # what _parse_head reads (a C-typed frozenset when compiled)


# What a response header line means to _parse_head: relayed as it is (the content encoding noted), or read
# for the framing (Content-Length, Transfer-Encoding, Connection) and not relayed.
_RELAYED, _ENCODING, _LENGTH, _CHUNKED, _CONNECTION, _OTHER = range(6)
#: header lines already read → ((name, value), kind, meaning); forgotten all at once past HEADER_LINES
_HEADER_LINES: dict[bytes, tuple] = {}
HEADER_LINES = 1024


def _header_line(line: bytes) -> tuple:
    """Read one response header line (raises ValueError for a Content-Length that is not a number), and
    remember it if it is short."""
    name, _, value = line.partition(b":")
    value = value.strip()
    lname = name.lower()
    meaning = None
    if lname not in _NOT_RELAYED:
        kind = _RELAYED
        if lname == b"content-encoding":
            kind, meaning = _ENCODING, value.decode("latin-1")
    elif lname == b"content-length":
        kind, meaning = _LENGTH, int(value)
    elif lname == b"transfer-encoding":
        kind, meaning = _CHUNKED, b"chunked" in value.lower()
    elif lname == b"connection":
        token = value.lower()
        kind, meaning = _CONNECTION, False if b"close" in token else True if b"keep-alive" in token else None
    else:
        kind = _OTHER
    parsed = ((name, value), kind, meaning)
    if len(line) <= 256:
        if len(_HEADER_LINES) >= HEADER_LINES:
            _HEADER_LINES.clear()
        _HEADER_LINES[line] = parsed
    return parsed


class UpstreamProtocolError(Exception):
    """The node sent something that is not HTTP/1.1 or closed the connection mid-response."""


class ConnectionLostEarly(UpstreamProtocolError):
    """The connection closed before any byte of the response. The request may have been read and acted on:
    only a request that is safe to repeat may be sent again."""


class NodeStoppedAnswering(UpstreamProtocolError):
    """The node failed its health check while this request waited for its response head: a read goes to
    another node, anything else is answered as of unknown outcome (the node may yet act on it)."""


class Overdue(UpstreamProtocolError):
    """A read that waited for its response head far longer than its cost implies: it goes to another node
    (the hedge), and this connection, whose state is now unknown, is closed."""


class RequestNotSent(ConnectionError):
    """No byte of the request was written: the connection had closed before it. Any method may go elsewhere."""


class HeadTimeout(Exception):
    """The node accepted the request but sent no response head in time."""


class UpstreamResponse:
    """A node's response: the parsed head, and the body as it arrives."""

    __slots__ = (
        "status", "raw_headers", "relayed", "content_length", "keep_alive", "_conn", "_chunks", "_buffered",
        "_waiter", "complete", "_error", "_released", "read_timeout", "content_encoding", "_held", "high_water",
    )

    def __init__(self, conn: NodeConnection, status: int, raw_headers: list[tuple[bytes, bytes]],
                 content_length: int | None, keep_alive: bool, relayed: bytes = b""):
        self.status = status
        #: the header (name, value) byte pairs as the node sent them
        self.raw_headers = raw_headers
        #: the header lines a proxy relays to its client as they are (NOT_RELAYED left out), each ending in CRLF
        self.relayed = relayed
        self.content_length = content_length
        self.keep_alive = keep_alive
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self._error: BaseException | None = None
        self._released = False
        self.read_timeout: float | None = None
        #: the Content-Encoding header's value (None without one), noted while the head was parsed
        self.content_encoding: str | None = None
        self._held = False  # paused by whoever relays it (its client reads slowly)
        #: body bytes buffered (not yet taken) beyond which the node's connection is not read
        self.high_water = HIGH_WATER

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The headers as text (decoded as Latin-1, as HTTP/1.1 header bytes are)."""
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]

    def header(self, name: str) -> str | None:
        lname = name.lower().encode("latin-1")
        for key, value in self.raw_headers:
            if key.lower() == lname:
                return value.decode("latin-1")
        return None

    @property
    def connection(self) -> NodeConnection:
        """The connection to the node this response is read from."""
        return self._conn

    @property
    def node(self) -> object:
        """Whatever owns the pool this response came through (`upstream.Node`), or None."""
        return self._conn.pool.owner

    # ---- fed by the protocol ----
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.high_water:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self.complete:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        try:
            async with asyncio.timeout(self.read_timeout):
                await self._waiter
        except TimeoutError:
            raise UpstreamProtocolError(f"{self._conn.pool.label} sent nothing for {self.read_timeout}s mid-response") from None

    # ---- used by the proxy ----
    async def read(self) -> bytes:
        """The whole body (callers use this only for small, length-known responses)."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self.read_now()

    def read_now(self) -> bytes:
        """The whole body of a `complete` response, without waiting (most small ones come with their head)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return data

    async def iter_chunks(self):
        """Body pieces as they arrive, with back-pressure on the node."""
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < LOW_WATER and not self._held:
                    self._conn.resume()
                yield chunk
            elif self.complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    def pause(self) -> None:
        """Stop reading from the node until `resume` (the client downstream reads slowly)."""
        self._held = True
        self._conn.pause()

    def resume(self) -> None:
        self._held = False
        if self._buffered < LOW_WATER:
            self._conn.resume()

    @property
    def reading_paused(self) -> bool:
        """True while the node's connection is not being read."""
        return self._conn._paused

    @property
    def buffered(self) -> int:
        """Body bytes received from the node and not yet taken, in bytes."""
        return self._buffered

    def release(self) -> None:
        """Return the connection to its node's pool if the response was read to the end, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if self.complete and self.keep_alive and self._error is None and not conn.closed:
            conn.idle()
        else:
            conn.close()


class NodeConnection:
    """One keep-alive connection to a node, carrying one request at a time: an asyncio protocol
    (compiled to a C type from upstream_http.pxd, so not a subclass of asyncio.Protocol)."""

    def __init__(self, pool: ConnectionPool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0
        self._buf = bytearray()
        self._head_waiter: asyncio.Future[UpstreamResponse] | None = None
        #: one head timer per connection, re-armed by moving its deadline (loop time; None: not waiting)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_deadline: float | None = None
        self._response: UpstreamResponse | None = None
        self._head_request = False
        self._received_any = False
        # body framing of the current response
        self._remaining: int | None = None  # Content-Length bytes still to come
        self._chunked = False
        self._chunk_left = 0  # bytes left in the current chunk, then its CRLF
        self._chunk_state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailers
        self._paused = False
        #: a poll set holding this plain connection's descriptor, for _closed_by_node; None under TLS
        self._peek: select.poll | None = None
        #: loop time after which a read still waiting for its head is overdue (0: never; see send)
        self.hedge_at = 0.0

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        # Not under TLS, where bytes pending on an idle connection (a session ticket) prove nothing.
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            peek = self._peek = select.poll()
            peek.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)

    def connection_lost(self, exc: Exception | None) -> None:
        self._peek = None
        self.closed = True
        self._stop_head_timer()
        self.pool.forget(self)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            cls = UpstreamProtocolError if self._received_any else ConnectionLostEarly
            error = cls(f"connection to {self.pool.label} closed before the response head" + (f": {exc}" if exc else ""))
            error.__cause__ = exc  # a TLS alert (say, the node wanted a client certificate) says why
            waiter.set_exception(error)
        response = self._response
        if response is not None and not response.complete:
            if self._remaining is None and not self._chunked:
                response._finish()  # close-delimited body: the close is its end
            else:
                response._fail(UpstreamProtocolError(f"{self.pool.label} closed the connection mid-response"))

    def data_received(self, data: bytes) -> None:
        self._received_any = True
        if self._response is None:
            buf = self._buf
            if buf:  # the head came in pieces: its end can only be where the new bytes are
                start = len(buf) - 3 if len(buf) > 3 else 0
                buf += data
                end = buf.find(b"\r\n\r\n", start)
            else:
                end = data.find(b"\r\n\r\n")
                if end < 0 or end > MAX_HEAD:
                    buf += data
            if end < 0 or end > MAX_HEAD:  # the limit holds however the head was split into reads
                if len(buf) > MAX_HEAD:
                    self._protocol_error(f"response head larger than {MAX_HEAD} bytes")
                return
            if buf:
                data = bytes(buf)
                buf.clear()
            head = data[:end]
            rest = data[end + 4:]
            try:
                response = self._parse_head(head)
            except (ValueError, IndexError):
                self._protocol_error("malformed response head")
                return
            if response is None:  # an interim 1xx response: the real head follows
                if rest:
                    self.data_received(rest)
                return
            self._response = response
            waiter = self._head_waiter
            self._head_waiter = None
            self._head_deadline = None  # the timer, when it fires, finds nothing to time out
            if waiter is not None and not waiter.done():
                waiter.set_result(response)
            if response.complete:
                return
            if rest:
                self._body(rest)
        else:
            self._body(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes a close-delimited body

    def abandon(self, exc: BaseException) -> bool:
        """If a request on this connection waits for its response head, fail it with `exc` and close. True if so."""
        waiter = self._head_waiter
        if waiter is None or waiter.done():
            return False
        self._head_waiter = None
        waiter.set_exception(exc)
        self.close()
        return True

    # ---- framing ----
    def _parse_head(self, head: bytes) -> UpstreamResponse | None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1."):
            raise ValueError(status_line)
        status = int(status_line[9:12])
        if 100 <= status < 200:
            return None
        headers: list[tuple[bytes, bytes]] = []
        relayed = []
        length: int | None = None
        chunked = False
        encoding: str | None = None
        keep_alive = status_line[5:8] == b"1.1"
        known = _HEADER_LINES
        for line in lines[1:]:
            # A node sends the same header lines again and again: each is read once (_header_line).
            parsed = known.get(line)
            if parsed is None:
                parsed = _header_line(line)
            pair, kind, meaning = parsed
            if kind == _RELAYED:
                relayed.append(line)
            elif kind == _ENCODING:
                relayed.append(line)
                if encoding is None:  # the first, as header() finds it
                    encoding = meaning
            elif kind == _LENGTH:
                length = meaning
            elif kind == _CHUNKED:
                chunked = meaning
            elif kind == _CONNECTION:
                if meaning is not None:
                    keep_alive = meaning
            headers.append(pair)
        relayed.append(b"")
        response = UpstreamResponse(self, status, headers, length, keep_alive, b"\r\n".join(relayed))
        response.content_encoding = encoding
        if self._head_request or status in (204, 304):
            response.content_length = length if self._head_request else 0
            response._finish()
        elif chunked:
            self._chunked = True
            response.content_length = None
        elif length is not None:
            self._remaining = length
            if length == 0:
                response._finish()
        else:
            response.keep_alive = False  # body runs until the node closes
        return response

    def _body(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        if self._chunked:
            self._dechunk(data)
        elif self._remaining is not None:
            if len(data) >= self._remaining:
                taken = self._remaining
                self._remaining = 0
                if taken:
                    response._feed(data[:taken] if taken < len(data) else data)
                response._finish()
            else:
                self._remaining -= len(data)
                response._feed(data)
        else:
            response._feed(data)

    def _dechunk(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        buf = self._buf
        buf += data
        pos = 0
        while pos < len(buf):
            state = self._chunk_state
            if state == 1:  # chunk data
                take = min(self._chunk_left, len(buf) - pos)
                response._feed(bytes(buf[pos:pos + take]))
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_state = 2
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if state == 0:  # size line (extensions after ';' ignored)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    del buf[:pos]
                    self._protocol_error("malformed chunk size")
                    return
                if size == 0:
                    self._chunk_state = 3
                else:
                    self._chunk_left = size
                    self._chunk_state = 1
            elif state == 2:  # CRLF closing a chunk
                self._chunk_state = 0
            else:  # trailers until an empty line
                if not line:
                    del buf[:pos]
                    self._chunked = False
                    self._chunk_state = 0
                    response._finish()
                    return
        del buf[:pos]

    def _protocol_error(self, what: str) -> None:
        exc = UpstreamProtocolError(f"{self.pool.label}: {what}")
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self._response is not None:
            self._response._fail(exc)
        self.close()

    # ---- flow control and pool ----
    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def idle(self) -> None:
        self._response = None
        self._remaining = None
        self._received_any = False
        self.resume()
        self.pool.put_back(self)

    def _stop_head_timer(self) -> None:
        self._head_deadline = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None:
            return  # the head came in time (and no request waits now)
        if self.loop.time() < deadline:  # a later request moved the deadline since this was scheduled
            self._head_timer = self.loop.call_at(deadline, self._head_timed_out)
            return
        self._head_deadline = None
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(HeadTimeout())
        self.close()

    def _closed_by_node(self) -> bool:
        """An idle keep-alive connection the node has closed (its FIN is in, the loop has not seen it yet): one
        zero-timeout poll proves that the request about to be sent would not be carried. Readable while idle
        means EOF, a reset or bytes nobody asked for: not reusable. The poll set holds only the number, and
        is asked only while this connection is open, so it never looks at a descriptor reused by another."""
        peek = self._peek
        return peek is not None and bool(peek.poll(0))

    def close(self) -> None:
        self._stop_head_timer()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.pool.forget(self)

    def send(self, head: bytes, body: bytes | None, is_head: bool, timeout: float,
             hedge_after: float = 0.0, peek: bool = True) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves to the response once its head has arrived,
        or fails with HeadTimeout after `timeout` seconds (no timeout context, and no timer per request:
        the connection's timer is re-armed by moving its deadline). With `hedge_after` (seconds; reads
        only), `ConnectionPool.abandon_overdue` may fail it with Overdue once that has passed. `peek`: first
        prove a reused connection still open (a write must never go out on one the node closed); a read that
        may go again on a fresh connection skips it (a system call saved on every request)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing() or (peek and self.uses and self._closed_by_node()):
            self.close()
            raise RequestNotSent(f"connection to {self.pool.label} closed before the request was written")
        self.uses += 1
        self._head_request = is_head
        self._received_any = False
        waiter = self._head_waiter = self.loop.create_future()
        now = self.loop.time()
        self.hedge_at = now + hedge_after if hedge_after else 0.0
        self._head_deadline = now + timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_deadline, self._head_timed_out)
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return waiter


class ConnectionPool:
    """Keep-alive connections to one node. Idle ones are reused most-recent first (warm).

    With `ssl` (an https:// node) each connection is TLS, verified against `server_hostname`; the
    handshake counts in the connect timeout, and a kept-alive connection pays it only once."""

    def __init__(self, host: str, port: int, max_idle: int, loop: asyncio.AbstractEventLoop | None = None,
                 owner: object = None, ssl: ssl_module.SSLContext | None = None, server_hostname: str | None = None):
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        #: what the connections' responses name as their `node`
        self.owner = owner
        self.max_idle = max_idle
        self.loop = loop or asyncio.get_event_loop()
        self.ssl = ssl
        self.server_hostname = (server_hostname or host) if ssl is not None else None
        self._idle: deque[NodeConnection] = deque()
        self.open = 0
        #: every open connection, idle or busy (what abandon_waiting looks through)
        self.conns: set[NodeConnection] = set()

    async def connect(self, timeout: float) -> NodeConnection:
        async with asyncio.timeout(timeout):
            _, conn = await self.loop.create_connection(
                lambda: NodeConnection(self), self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
            )
        self.open += 1
        if not conn.closed:  # type: ignore[attr-defined]
            self.conns.add(conn)  # type: ignore[arg-type]
        return conn  # type: ignore[return-value]

    def take_idle(self) -> NodeConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def put_back(self, conn: NodeConnection) -> None:
        if len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    def forget(self, conn: NodeConnection) -> None:
        self.conns.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def abandon_overdue(self, now: float) -> int:
        """Fail every read still waiting for its head past its hedge time (loop time `now`) with Overdue;
        how many there were."""
        overdue = 0
        for conn in list(self.conns):
            if conn.hedge_at and now >= conn.hedge_at:
                overdue += conn.abandon(Overdue(f"node {self.label} sent no response head within the read's hedge time"))
        return overdue

    def abandon_waiting(self, exc: BaseException) -> int:
        """Fail every request waiting for a response head from this node with `exc` (closing its connection);
        how many there were."""
        return sum(1 for conn in list(self.conns) if conn.abandon(exc))

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def request_head(method: str, target: str, host: str | bytes, fields: bytes | dict[str, str] | list[tuple[str, str]],
                 body_length: int) -> bytes:
    """Serialise a request line and headers: `fields` are header lines (each ending in CRLF) or (name, value)
    pairs. Content-Length is always explicit (no chunked upload)."""
    if not isinstance(fields, bytes):
        items = fields.items() if isinstance(fields, dict) else fields
        fields = "".join(f"{name}: {value}\r\n" for name, value in items).encode("utf-8", "surrogateescape")
    if isinstance(host, str):
        host = host.encode("latin-1")
    # Text came off the wire as UTF-8 with surrogateescape: this gives back the same bytes.
    verb = _METHOD_BYTES.get(method) or method.encode("utf-8", "surrogateescape")
    path = target.encode("utf-8", "surrogateescape")
    if body_length or method in ("POST", "PUT", "PATCH"):
        return b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n" % (verb, path, host, fields, body_length)
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (verb, path, host, fields)


#: the methods' names as bytes, made once
_METHOD_BYTES = {m: m.encode() for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")}
