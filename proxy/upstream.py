"""The cluster side: a pool of upstream nodes, their health, and forwarding one request.

Nodes are used round-robin over pooled keep-alive connections. A node that refuses a connection
or fails its health check is skipped until it answers again. A request that never reached a node
is retried on the next one whatever its method (nothing was sent); one that failed after it was
sent is retried only when it is a read (search or get), which is safe to repeat.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import ClientResponse, hdrs

from .config import UpstreamConfig
from .errors import UpstreamFailure

log = logging.getLogger("sluicegate.upstream")

# Never forwarded in either direction (RFC 9110 §7.6.1), plus what the proxy sets itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Proxy-Connection",
    )
)
_REQUEST_DROP = HOP_BY_HOP | {"authorization", "host", "content-length", "expect", "x-forwarded-for", "x-forwarded-proto"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server"}


class Node:
    """One upstream node and what the pool knows of its health."""

    __slots__ = ("url", "down_until", "failures", "healthy", "inflight")

    def __init__(self, url: str):
        self.url = url
        self.down_until = 0.0
        self.failures = 0
        self.healthy = True
        self.inflight = 0

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.down_until


class Upstream:
    """Forwards requests to the cluster's nodes and watches their health."""

    def __init__(self, config: UpstreamConfig):
        self.config = config
        self.nodes = [Node(url) for url in config.nodes]
        self._auth = config.auth.header()
        self._next = 0
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.config.pool_per_node,
            keepalive_timeout=60,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass through exactly as the node sent them
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
            read_bufsize=2**16,
            max_line_size=65536,
            max_field_size=65536,
        )
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="upstream-health")

    async def close(self) -> None:
        if self._health_task:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._session:
            await self._session.close()

    def reconfigure(self, config: UpstreamConfig) -> None:
        """Adopt a reloaded upstream section; nodes that stay keep their health state."""
        known = {n.url: n for n in self.nodes}
        self.nodes = [known.get(url) or Node(url) for url in config.nodes]
        self.config = config
        self._auth = config.auth.header()

    @property
    def ready(self) -> bool:
        """True when at least one node is usable."""
        now = time.monotonic()
        return any(n.usable(now) for n in self.nodes)

    def forward_headers(self, incoming: Mapping[str, str], client_ip: str | None, scheme: str) -> dict[str, str]:
        """Request headers for the node: hop-by-hop and client credentials dropped, proxy auth and X-Forwarded-* set."""
        out = {k: v for k, v in incoming.items() if k.lower() not in _REQUEST_DROP}
        prior = incoming.get(hdrs.X_FORWARDED_FOR)
        if client_ip:
            out[hdrs.X_FORWARDED_FOR] = f"{prior}, {client_ip}" if prior else client_ip
        out[hdrs.X_FORWARDED_PROTO] = scheme
        if self._auth:
            out[hdrs.AUTHORIZATION] = self._auth
        return out

    async def send(
        self, method: str, path_qs: str, headers: dict[str, str], body: bytes | None, retry_after_send: bool
    ) -> tuple[Node, ClientResponse]:
        """Send one request; returns the node and its response with the body not yet read.

        Raises UpstreamFailure: 503 when no node is usable, 502 when nodes failed, 504 on timeout.
        The caller must release the response.
        """
        assert self._session is not None
        attempts = len(self.nodes)
        last_error = "no upstream node is available"
        status = 503
        for _ in range(attempts):
            node = self._pick()
            if node is None:
                break
            node.inflight += 1
            try:
                response = await self._session.request(
                    method,
                    node.url + path_qs,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=self.config.connect_timeout_s, sock_read=self.config.request_timeout_s
                    ),
                )
            except aiohttp.ClientConnectorError as exc:
                # Nothing reached the node: safe to try the next one for any method.
                self._mark_down(node, exc)
                last_error, status = f"node {node.url} refused the connection", 502
                continue
            except (aiohttp.ServerTimeoutError, asyncio.TimeoutError):
                raise UpstreamFailure(504, f"node {node.url} did not answer within {self.config.request_timeout_s}s") from None
            except (aiohttp.ClientError, OSError) as exc:
                self._mark_down(node, exc)
                last_error, status = f"node {node.url} failed: {type(exc).__name__}", 502
                if retry_after_send:
                    continue
                raise UpstreamFailure(502, last_error) from None
            finally:
                node.inflight -= 1
            node.failures = 0
            return node, response
        raise UpstreamFailure(status, last_error)

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
            log.warning("upstream node %s is down: %s", node.url, exc)

    async def check_health(self) -> None:
        """Probe every node once (GET /); a node that answers is usable again."""
        await asyncio.gather(*(self._probe(node) for node in self.nodes))

    async def _probe(self, node: Node) -> None:
        assert self._session is not None
        headers = {hdrs.AUTHORIZATION: self._auth} if self._auth else {}
        try:
            async with self._session.get(
                node.url + "/", headers=headers, timeout=aiohttp.ClientTimeout(total=self.config.connect_timeout_s)
            ) as resp:
                await resp.read()
                ok = resp.status < 500
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            ok = False
        if ok and not node.healthy:
            log.warning("upstream node %s is back", node.url)
        if ok:
            node.down_until = 0.0
            node.failures = 0
        elif node.healthy:
            log.warning("upstream node %s failed its health check", node.url)
        node.healthy = ok

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.check_health()


def response_headers(upstream: ClientResponse) -> list[tuple[str, str]]:
    """The node's response headers a client should see (multi-valued headers kept)."""
    return [(k, v) for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_DROP]
