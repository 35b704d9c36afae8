"""The cluster side: a pool of upstream nodes, their health, and forwarding one request.

Nodes are used round-robin over pooled keep-alive connections (proxy/upstream_http.py). A node
that refuses a connection or fails its health check is skipped until it answers again.

A write is never sent twice. A request is sent again, to the next node, whatever its method, only
when no connection provably carried it: the connect failed (refused, timed out), or the pooled
connection had closed before any byte of the request was written. Once a byte was written, a
connection that fails before the response head may have delivered the request: a read (search,
get) is sent again, being safe to repeat; anything else is answered with a 502 that says its
outcome is unknown.

https:// nodes are reached with one SSL context per config load (proxy/tls.py), which every
call here uses: requests, health checks and the cluster polls of `get_json`. A node whose TLS
handshake fails is down like one that refuses connections, and the log line says what to fix.
A 401 from the cluster is about the proxy's own credentials (the client's are never forwarded):
it is logged once with a hint, and the client gets a 502 that says so rather than a 401 that
would tell it its own key is wrong.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from time import monotonic
from urllib.parse import urlsplit

import cython
import orjson

from . import credentials, tls
from .config import UpstreamConfig
from .errors import UpstreamFailure
from .upstream_http import (
    HOP_BY_HOP,
    ConnectionLostEarly,
    ConnectionPool,
    HeadTimeout,
    NodeConnection,
    NodeStoppedAnswering,
    Overdue,
    RequestNotSent,
    UpstreamProtocolError,
    UpstreamResponse,
    request_head,
)

log = logging.getLogger("sluicegate.upstream")

#: how often reads waiting for their response head are checked against their hedge time, seconds
HEDGE_TICK_S = 0.25
#: forward_fields' remembered header endings, forgotten all at once past this many (clients × their X-Forwarded-For)
FORWARD_TAILS = 1024
#: a read is re-sent to another node once it has waited HEDGE_MIN_S + HEDGE_FACTOR × its expected time
HEDGE_MIN_S = 2.0
HEDGE_FACTOR = 10.0


def hedge_after(cost: float, threads_per_request: float) -> float:
    """Seconds a read (`cost` in cost units, thread-milliseconds, spread over `threads_per_request` threads)
    may wait for its response head before it is re-sent elsewhere: far past what it should take, so a slow
    node's long search is not sent twice, while a stuck node's cheap one is. Past request_timeout_s: never."""
    return HEDGE_MIN_S + HEDGE_FACTOR * cost / (1000.0 * max(1.0, threads_per_request))

#: The client request headers forwarded to the nodes (lower-case names), and no others: what describes the
#: body, content negotiation, the request's id and its trace context. An allow-list, not a deny-list: a node
#: trusts headers from the proxy it would never take from a tenant (es-security-runas-user, X-Found-Cluster,
#: Cookie, Forwarded, Authorization); none of those, nor any header not named here, gets through. The one
#: place the forwarded set is decided (docs/SECURITY.md lists it); the proxy adds Host, Content-Length,
#: X-Forwarded-For/-Proto, its own Authorization and X-Opaque-Id (the client's, with the tenant in front:
#: proxy/opaque.py) itself.
FORWARDED_HEADERS = frozenset((
    b"content-type", b"content-encoding", b"content-language",
    b"accept", b"accept-encoding", b"accept-language", b"accept-charset",
    b"traceparent", b"tracestate",
    b"user-agent", b"x-elastic-client-meta",  # what client sent it: ES's deprecation log names it
))


class Node:
    """One upstream node, its connection pool, and what the proxy knows of its health."""

    __slots__ = ("url", "host_header", "pool", "down_until", "failures", "healthy")

    def __init__(self, url: str, max_idle: int, ssl_context: ssl.SSLContext | None = None, server_name: str | None = None):
        parts = urlsplit(url)
        https = parts.scheme == "https"
        if https and ssl_context is None:
            raise ValueError(f"{url} is an https:// node: it needs an SSL context")
        host = parts.hostname or "127.0.0.1"
        self.url = url
        self.host_header = parts.netloc.encode("latin-1")
        self.pool = ConnectionPool(host, parts.port or (443 if https else 80), max_idle, owner=self,
                                   ssl=ssl_context if https else None, server_hostname=server_name or host)
        self.down_until = 0.0
        self.failures = 0
        self.healthy = True

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.down_until


#: keyword default meaning "derive it from the config"
_FROM_CONFIG: object = object()


class Upstream:
    """Forwards requests to the cluster's nodes and watches their health.

    `ssl_context` (https:// nodes) and `authorization` (the proxy's own credentials) are built once per
    config load by the caller (proxy/tls.py, proxy/credentials.py); left out, they are built from `config`."""

    def __init__(self, config: UpstreamConfig, on_error=None, *, ssl_context=_FROM_CONFIG, authorization=_FROM_CONFIG):
        self.config = config
        self._timeout = config.request_timeout_s  # read on every request (the config's models are slow to read)
        #: called as on_error(node_url, kind) for every failure: "unreachable", "timeout", "protocol"
        self.on_error = on_error or (lambda node, kind: None)
        self.nodes: list[Node] = []
        self._ssl: ssl.SSLContext | None = tls.upstream_context(config) if ssl_context is _FROM_CONFIG else ssl_context  # type: ignore[assignment]
        self._auth: str | None = credentials.authorization(config.auth) if authorization is _FROM_CONFIG else authorization  # type: ignore[assignment]
        self._auth_field = _auth_field(self._auth)
        #: (client address, its X-Forwarded-For, scheme) → the header lines forward_fields adds after the client's
        self._tails: dict[tuple, bytes] = {}
        #: the cluster answered 401 (or 403 to a poll) and nothing has succeeded since: logged once per streak
        self._auth_refused = False
        self._poll_forbidden = False
        self._next = 0
        self._health_task: asyncio.Task | None = None
        self._hedge_task: asyncio.Task | None = None
        #: reads re-sent to another node because the first waited past their hedge time
        self.hedged = 0

    def _node(self, url: str, config: UpstreamConfig) -> Node:
        host = urlsplit(url).hostname or "127.0.0.1"
        return Node(url, config.pool_per_node, self._ssl, tls.server_hostname(config, host))

    async def start(self) -> None:
        self.nodes = [self._node(url, self.config) for url in self.config.nodes]
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="upstream-health")
        self._hedge_task = asyncio.create_task(self._hedge_loop(), name="upstream-hedge")

    async def close(self) -> None:
        for task in (self._health_task, self._hedge_task):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for node in self.nodes:
            node.pool.close()

    def reconfigure(self, config: UpstreamConfig, *, ssl_context=_FROM_CONFIG, authorization=_FROM_CONFIG) -> None:
        """Adopt a reloaded upstream section; nodes that stay keep their pools and health state. New
        connections use the new SSL context; if the TLS settings changed, idle connections made under
        the old ones are closed."""
        self._ssl = tls.upstream_context(config) if ssl_context is _FROM_CONFIG else ssl_context  # type: ignore[assignment]
        auth = credentials.authorization(config.auth) if authorization is _FROM_CONFIG else authorization
        known = {n.url: n for n in self.nodes}
        for url, node in known.items():
            if url not in config.nodes:
                node.pool.close()
        tls_changed = config.tls != self.config.tls
        for url, node in known.items():
            if node.pool.ssl is not None:
                node.pool.ssl = self._ssl
                node.pool.server_hostname = tls.server_hostname(config, node.pool.host)
                if tls_changed:
                    node.pool.close()
        self.nodes = [known.get(url) or self._node(url, config) for url in config.nodes]
        self.config = config
        self._timeout = config.request_timeout_s
        if auth != self._auth:
            self._auth_refused = self._poll_forbidden = False  # new credentials: a refusal of them is news
        self._auth = auth  # type: ignore[assignment]
        self._auth_field = _auth_field(self._auth)
        self._tails = {}

    @property
    def ready(self) -> bool:
        """True when at least one node is usable."""
        now = time.monotonic()
        return any(n.usable(now) for n in self.nodes)

    def unreachable_addresses(self) -> set[str]:
        """The "host:port" of nodes that are not usable now (failed health check, or refused a connection)."""
        now = time.monotonic()
        return {node.pool.label for node in self.nodes if not node.usable(now)}

    def forward_fields(self, passed: bytes, forwarded_for: bytes | None, client_ip: str | None, scheme: str) -> bytes:
        """The request's header lines for the node: `passed`, the client's own lines to pass on (see
        `passed_fields`), then X-Forwarded-For (the client's `forwarded_for`, then its address),
        X-Forwarded-Proto and the proxy's own Authorization."""
        key = (client_ip, forwarded_for, scheme)
        tail = self._tails.get(key)  # a keep-alive client's requests all end the same
        if tail is None:
            tail = self._tail(forwarded_for, client_ip, scheme)
            if len(self._tails) >= FORWARD_TAILS:
                self._tails.clear()
            self._tails[key] = tail
        return passed + tail

    def _tail(self, forwarded_for: bytes | None, client_ip: str | None, scheme: str) -> bytes:
        proto = b"https" if scheme == "https" else b"http"
        if not client_ip:
            forwarded = b"X-Forwarded-For: %s\r\n" % forwarded_for if forwarded_for else b""
            return b"%sX-Forwarded-Proto: %s\r\n%s" % (forwarded, proto, self._auth_field)
        ip = client_ip.encode("latin-1")
        if forwarded_for:
            ip = b"%s, %s" % (forwarded_for, ip)
        return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n%s" % (ip, proto, self._auth_field)

    @cython.locals(node=Node, conn=NodeConnection, response=UpstreamResponse, pool=ConnectionPool)  # C types, compiled
    async def send(
        self, method: str, target: str, fields: bytes, body: bytes | None, retry_after_send: bool,
        hedge_after_s: float = 0.0, trace=None,
    ) -> UpstreamResponse:
        """Send one request (`fields`: its header lines, see forward_fields); the response once its head
        has arrived, body not yet read (`response.node` is the node that answered). A read
        (`retry_after_send`) with `hedge_after_s` still waiting for its head after that many seconds is
        re-sent to another node (see hedge_after). `trace.sent_to`, if given, is set to each node's URL as
        the request is sent to it (for /inflight).

        Raises UpstreamFailure: 503 when no node is usable, 502 when nodes failed, 504 on timeout.
        The caller must `release()` the response.
        """
        last_error, status = "no upstream node is available", 503
        body_length = len(body) if body else 0
        is_head = method == "HEAD"
        timeout = self._timeout
        stale_retry = retry_after_send  # a read may go again over a fresh connection when a pooled one was stale
        attempts = max(1, len(self.nodes))
        avoid = None  # the node a read was overdue on
        while attempts:
            attempts -= 1
            node = self._pick()
            if node is not None and node is avoid:
                node = self._pick()
            if node is None:
                break
            head = request_head(method, target, node.host_header, fields, body_length)
            if trace is not None:
                trace.sent_to = node.url
            pool = node.pool
            conn = pool.take_idle()
            reused = conn is not None
            try:
                if conn is None:
                    conn = await pool.connect(self.config.connect_timeout_s)
                # a read found on a closed pooled connection goes again on a fresh one: no peek needed
                response = await conn.send(head, body, is_head, timeout,  # type: ignore[union-attr]
                                           hedge_after_s if retry_after_send else 0.0, not stale_retry)
                if response.status == 401:
                    response.release()
                    self._credentials_refused(node)
                    raise UpstreamFailure(502, "the cluster refused the proxy's own credentials (upstream.auth); "
                                               "the proxy's log says more")
            except HeadTimeout:
                conn.close()  # type: ignore[union-attr]
                self.on_error(node.url, "timeout")
                raise UpstreamFailure(504, f"node {node.url} did not answer within {timeout}s") from None
            except RequestNotSent:
                if reused:
                    attempts += 1  # a pooled connection found closed: nothing was written, nothing is lost
                continue
            except OSError as exc:
                # The connect failed (refused, timed out): nothing reached the node, any method may go elsewhere.
                self._mark_down(node, exc)
                self.on_error(node.url, "unreachable")
                last_error, status = f"node {node.url} is unreachable ({_describe(exc)})", 502
                continue
            except UpstreamProtocolError as exc:
                conn.close()  # type: ignore[union-attr]
                if isinstance(exc, Overdue):  # far past its expected time: the next node gets it (a read), once
                    self.hedged += 1
                    hedge_after_s = 0.0  # a cost misjudged is not a stuck node: the re-sent read waits its time
                    attempts += 1
                    avoid = node
                    continue
                if reused and stale_retry and isinstance(exc, ConnectionLostEarly):
                    # A keep-alive connection the node had closed; a read goes again on a fresh one.
                    stale_retry = False
                    attempts += 1
                    continue
                self.on_error(node.url, "protocol")
                last_error, status = f"node {node.url} failed: {exc}", 502
                if retry_after_send and self.config.retry_reads:
                    self._mark_down(node, exc)
                    continue
                raise UpstreamFailure(502, f"{last_error}; the request was sent, so its outcome is unknown: it was not "
                                           f"sent again (it may not be safe to repeat)") from None
            except BaseException:
                if conn is not None:
                    conn.close()  # the client went away mid-exchange: this connection's state is unknown
                raise
            if node.failures:
                node.failures = 0
            response.read_timeout = timeout
            return response
        raise UpstreamFailure(status, last_error)

    async def _exchange(self, node: Node, head: bytes, body: bytes | None, is_head: bool,
                        fresh: bool = False) -> UpstreamResponse:
        """Send on a warm idle connection to `node` if there is one (unless `fresh`), else on a new one;
        the response once its head has arrived."""
        pool = node.pool
        reused = None if fresh else pool.take_idle()
        conn = reused or await pool.connect(self.config.connect_timeout_s)
        while True:
            try:
                response = await conn.send(head, body, is_head, self.config.request_timeout_s)
            except BaseException as exc:
                conn.close()  # timed out, failed, or the client went away: this connection's state is unknown
                if conn is reused and isinstance(exc, (ConnectionLostEarly, RequestNotSent)):
                    # The node had closed this idle connection; nothing was processed: use a fresh one.
                    conn = await pool.connect(self.config.connect_timeout_s)
                    continue
                raise
            response.read_timeout = self.config.request_timeout_s
            return response

    def _pick(self) -> Node | None:
        now = monotonic()
        nodes = self.nodes
        n = len(nodes)
        for i in range(n):
            node = nodes[(self._next + i) % n]
            if node.usable(now):
                self._next = (self._next + i + 1) % n
                return node
        return None

    def _mark_down(self, node: Node, exc: BaseException) -> None:
        node.failures += 1
        node.down_until = time.monotonic() + self.config.node_cooldown_s
        if node.failures == 1:
            log.warning("upstream node %s is down: %s", node.url, self._explain(exc))

    def _explain(self, exc: BaseException) -> str:
        """The failure, and for a TLS one what to do about it (one log line)."""
        hint = tls.explain_failure(exc, self.config)
        return f"{_describe(exc)} — {hint}" if hint else _describe(exc)

    def _credentials_refused(self, node: Node) -> None:
        """A 401 from the cluster: logged once until something succeeds again, never per request."""
        if self._auth_refused:
            return
        self._auth_refused = True
        if self._auth is None:
            hint = "the cluster requires authentication: give the proxy credentials in upstream.auth"
        else:
            hint = (f"check upstream.auth ({self.config.auth.scheme} credentials): the user, key or token may be wrong, "
                    "expired or revoked; after fixing the file or variable, reload (SIGHUP)")
        log.error("the cluster refused Sluicegate's own credentials (401 from %s): %s. Clients get 502 until then.",
                  node.url, hint)

    def _credentials_accepted(self) -> None:
        if self._auth_refused:
            self._auth_refused = False
            log.warning("the cluster accepts Sluicegate's credentials again")

    async def get_json(self, path: str, timeout: float | None = None) -> dict | None:
        """GET `path` from a usable node with the proxy's credentials; the decoded JSON object of a 2xx
        answer, or None (no node answered within `timeout` seconds, an error status, not a JSON object).
        Tries each node once; it marks no node down (that is for the request path and health checks)."""
        for _ in range(max(1, len(self.nodes))):
            node = self._pick()
            if node is None:
                return None
            head = request_head("GET", path, node.host_header, self._auth_field, 0)
            try:
                async with asyncio.timeout(timeout or self.config.connect_timeout_s):
                    response = await self._exchange(node, head, None, False)
                    try:
                        data = await response.read()
                    finally:
                        response.release()
            except (OSError, TimeoutError, HeadTimeout, UpstreamProtocolError):
                continue
            if response.status == 401:
                self._credentials_refused(node)
                return None
            if response.status == 403:
                if not self._poll_forbidden:
                    self._poll_forbidden = True
                    log.error("the cluster forbids Sluicegate's user to read %s (403): give it the `monitor` cluster "
                              "privilege, or the gate cannot size itself to the cluster", path.partition("?")[0])
                return None
            if not 200 <= response.status < 300:
                return None
            self._credentials_accepted()
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
        return None

    async def check_health(self) -> None:
        """Probe every node once (GET /); a node that answers is usable again."""
        await asyncio.gather(*(self._probe(node) for node in self.nodes))

    async def _probe(self, node: Node) -> None:
        head = request_head("GET", "/", node.host_header, self._auth_field, 0)
        ok = False
        why = ""
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                response = await self._exchange(node, head, None, False)
                try:
                    await response.read()
                    ok = response.status < 500
                    why = f"HTTP {response.status}"
                finally:
                    response.release()
            if response.status == 401:
                self._credentials_refused(node)  # the node is up; the proxy's credentials are not accepted
        except TimeoutError:
            why = f"no answer within {self.config.connect_timeout_s}s"
        except (OSError, HeadTimeout, UpstreamProtocolError) as exc:
            why = self._explain(exc)
        if ok:
            if not node.healthy or node.down_until:
                log.warning("upstream node %s is back", node.url)
            node.down_until = 0.0
            node.failures = 0
        else:
            if node.healthy:
                log.warning("upstream node %s failed its health check: %s", node.url, why)
            # A node that does not answer its health check (hung, stopped, partitioned) will not answer what
            # waits on it either: reads go elsewhere now, writes learn their outcome is unknown, and none of
            # them holds the gate until request_timeout_s, which stays for genuinely long requests.
            abandoned = node.pool.abandon_waiting(NodeStoppedAnswering(
                f"node {node.url} stopped answering (it failed its health check) before the response head"))
            if abandoned:
                log.warning("upstream node %s: %d requests waiting on it re-sent or answered", node.url, abandoned)
        node.healthy = ok

    async def _hedge_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HEDGE_TICK_S)
            now = loop.time()
            for node in self.nodes:
                if node.pool.abandon_overdue(now):
                    log.info("upstream node %s: reads past their hedge time re-sent to another node", node.url)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.check_health()


def passed_fields(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()) -> bytes:
    """The client's header lines to pass on to the node, from its raw (name, value) pairs: those named in
    FORWARDED_HEADERS but not in `drop` (lower-case names). The listener builds the same without `drop`
    (`Request.passed_fields`); this is for a request that must leave out more."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in FORWARDED_HEADERS and lname not in drop:
            out += (name, b": ", value, b"\r\n")
    return b"".join(out)


def _auth_field(value: str | None) -> bytes:
    """The proxy's own Authorization header line for the nodes (empty without one)."""
    return b"Authorization: %s\r\n" % value.encode("latin-1") if value else b""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
