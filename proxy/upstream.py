"""The cluster side: a pool of upstream nodes, their health, and forwarding one request.

Nodes are used round-robin over pooled keep-alive connections (proxy/upstream_http.py). A node
that refuses a connection or fails its health check is skipped until it answers again. A request
that never reached a node is retried on the next one whatever its method (nothing was sent), as
is one whose reused keep-alive connection turned out to be closed before any response byte; one
that failed after it was sent is retried only when it is a read, which is safe to repeat.

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
from urllib.parse import urlsplit

import orjson

from . import credentials, tls
from .config import UpstreamConfig
from .errors import UpstreamFailure
from .upstream_http import (
    HOP_BY_HOP,
    ConnectionLostEarly,
    ConnectionPool,
    HeadTimeout,
    UpstreamProtocolError,
    UpstreamResponse,
    request_head,
)

log = logging.getLogger("sluicegate.upstream")

#: client request headers never forwarded: hop-by-hop ones, the client's credentials, what the proxy sets itself
REQUEST_DROP = HOP_BY_HOP | {
    b"authorization", b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
}


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
        #: called as on_error(node_url, kind) for every failure: "unreachable", "timeout", "protocol"
        self.on_error = on_error or (lambda node, kind: None)
        self.nodes: list[Node] = []
        self._ssl: ssl.SSLContext | None = tls.upstream_context(config) if ssl_context is _FROM_CONFIG else ssl_context  # type: ignore[assignment]
        self._auth: str | None = credentials.authorization(config.auth) if authorization is _FROM_CONFIG else authorization  # type: ignore[assignment]
        self._auth_field = _auth_field(self._auth)
        #: the cluster answered 401 (or 403 to a poll) and nothing has succeeded since: logged once per streak
        self._auth_refused = False
        self._poll_forbidden = False
        self._next = 0
        self._health_task: asyncio.Task | None = None

    def _node(self, url: str, config: UpstreamConfig) -> Node:
        host = urlsplit(url).hostname or "127.0.0.1"
        return Node(url, config.pool_per_node, self._ssl, tls.server_hostname(config, host))

    async def start(self) -> None:
        self.nodes = [self._node(url, self.config) for url in self.config.nodes]
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="upstream-health")

    async def close(self) -> None:
        if self._health_task:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
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
        if auth != self._auth:
            self._auth_refused = self._poll_forbidden = False  # new credentials: a refusal of them is news
        self._auth = auth  # type: ignore[assignment]
        self._auth_field = _auth_field(self._auth)

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
        proto = b"https" if scheme == "https" else b"http"
        if not client_ip:
            forwarded = b"X-Forwarded-For: %s\r\n" % forwarded_for if forwarded_for else b""
            return b"%s%sX-Forwarded-Proto: %s\r\n%s" % (passed, forwarded, proto, self._auth_field)
        ip = client_ip.encode("latin-1")
        if forwarded_for:
            ip = b"%s, %s" % (forwarded_for, ip)
        return b"%sX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n%s" % (passed, ip, proto, self._auth_field)

    async def send(
        self, method: str, target: str, fields: bytes, body: bytes | None, retry_after_send: bool
    ) -> UpstreamResponse:
        """Send one request (`fields`: its header lines, see forward_fields); the response once its head
        has arrived, body not yet read (`response.node` is the node that answered).

        Raises UpstreamFailure: 503 when no node is usable, 502 when nodes failed, 504 on timeout.
        The caller must `release()` the response.
        """
        last_error, status = "no upstream node is available", 503
        body_length = len(body) if body else 0
        is_head = method == "HEAD"
        timeout = self.config.request_timeout_s
        for _ in range(max(1, len(self.nodes))):
            node = self._pick()
            if node is None:
                break
            head = request_head(method, target, node.host_header, fields, body_length)
            conn = node.pool.take_idle()
            try:
                if conn is None:
                    response = await self._exchange(node, head, body, is_head)
                else:  # the usual case: a warm idle connection, no further coroutine
                    try:
                        response = await conn.send(head, body, is_head, timeout)
                    except BaseException as exc:
                        conn.close()  # timed out, failed, or the client went away: its state is unknown
                        if not isinstance(exc, ConnectionLostEarly):
                            raise
                        # The node had closed this idle connection; nothing was processed: use a fresh one.
                        response = await self._exchange(node, head, body, is_head, fresh=True)
                if response.status == 401:
                    response.release()
                    self._credentials_refused(node)
                    raise UpstreamFailure(502, "the cluster refused the proxy's own credentials (upstream.auth); "
                                               "the proxy's log says more")
            except HeadTimeout:
                self.on_error(node.url, "timeout")
                raise UpstreamFailure(504, f"node {node.url} did not answer within {timeout}s") from None
            except (OSError, ConnectionLostEarly) as exc:
                # Nothing reached the node (refused, or the connect timed out): any method may go elsewhere.
                self._mark_down(node, exc)
                self.on_error(node.url, "unreachable")
                last_error, status = f"node {node.url} is unreachable ({_describe(exc)})", 502
                continue
            except UpstreamProtocolError as exc:
                self.on_error(node.url, "protocol")
                last_error, status = f"node {node.url} failed: {exc}", 502
                if retry_after_send and self.config.retry_reads:
                    self._mark_down(node, exc)
                    continue
                raise UpstreamFailure(502, last_error) from None
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
                if conn is reused and isinstance(exc, ConnectionLostEarly):
                    # The node had closed this idle connection; nothing was processed: use a fresh one.
                    conn = await pool.connect(self.config.connect_timeout_s)
                    continue
                raise
            response.read_timeout = self.config.request_timeout_s
            return response

    def _pick(self) -> Node | None:
        now = time.monotonic()
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
        elif node.healthy:
            log.warning("upstream node %s failed its health check: %s", node.url, why)
        node.healthy = ok

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.check_health()


def passed_fields(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()) -> bytes:
    """The client's header lines to pass on to the node, from its raw (name, value) pairs: all but
    REQUEST_DROP and `drop` (lower-case names). The listener builds the same with REQUEST_DROP alone
    (`Request.passed_fields`); this is for a request that must leave out more."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname not in REQUEST_DROP and lname not in drop:
            out += (name, b": ", value, b"\r\n")
    return b"".join(out)


def _auth_field(value: str | None) -> bytes:
    """The proxy's own Authorization header line for the nodes (empty without one)."""
    return b"Authorization: %s\r\n" % value.encode("latin-1") if value else b""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
