"""Process wiring: uvloop, the proxy and admin listeners, reload on SIGHUP, drain on SIGTERM.

Nothing here decides admission; it builds the parts, hands them to `flow.Proxy`, and swaps the
config snapshot when the file changes.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path

import uvloop
from aiohttp import web

from . import credentials, tls
from .accesslog import AccessLog
from .admission import SHARE_FLOOR_REQUESTS, Admission
from .cockpit import Cockpit
from .clusterhealth import ClusterHealth
from .config import Config, ConfigError, config_warnings, load_config
from .cost import IndexSizes
from .flow import Proxy, Snapshot
from .limiter import Limiter, LocalLimiter
from .listener import Listener
from .metrics import Metrics
from .redis_limiter import RedisLimiter
from .shapes import ShapeBook
from .shared_costs import learned_costs
from .shared_gate import GateSharer
from .shared_shapes import ShapeSharer
from .runaway import Runaway
from .upstream import FORWARDED_HEADERS, Upstream

log = logging.getLogger("sluicegate")


#: config sections a reload cannot apply (sockets already bound, the Redis client already built); of
#: `listen_tls`, only turning TLS on or off and the client CA settings wait for a restart
RESTART_ONLY = ("listen", "admin_listen", "redis")


class ListenError(Exception):
    """A listener could not bind its address (in use, not permitted): one line for the operator."""


def load_checked(path: str | Path) -> tuple[Config, str, list[tuple[str, str]]]:
    """load_config, then what the config points at (TLS files, secrets): the config, its digest and
    every warning to log. Raises ConfigError listing every problem with its key path."""
    config, digest = load_config(path)
    errors, warnings = tls.preflight(config)
    if errors:
        raise ConfigError(errors)
    return config, digest, config_warnings(config) + warnings


class Worker:
    """One serving process: the proxy listener, the admin listener and the parts they share."""

    def __init__(
        self,
        config_path: str | Path,
        config: Config,
        digest: str,
        *,
        worker_index: int = 0,
        workers: int = 1,
        admin_socket: str | None = None,
    ):
        # TLS contexts and the cluster credentials first: built once per load, a ConfigError if they cannot be
        self.listener_tls = tls.ListenerTLS(config.listen_tls) if config.listen_tls is not None else None
        upstream_ssl = tls.upstream_context(config.upstream)
        authorization = credentials.authorization(config.upstream.auth)
        self.config_path = Path(config_path)
        self.worker_index = worker_index
        self.workers = workers
        self.admin_socket = admin_socket  # set under a supervisor: the admin API on a private unix socket
        self.metrics = Metrics()
        self.started_at = self.config_loaded_at = time.time()
        #: what a reload cannot change, as bound or built at start
        self.running = {name: getattr(config, name) for name in RESTART_ONLY}
        # This process's fraction of the concurrency limits: 1 / workers, or 1 / live instances with Redis.
        self.share = 1.0 / workers
        if config.redis is not None:
            self.limiter: Limiter = RedisLimiter(
                config.redis, metrics=self.metrics, share=self.share, on_membership_change=self._membership_changed
            )
        else:
            self.limiter = LocalLimiter(share=self.share)
        self.limiter.configure(config)
        # Learned costs: shared with the other instances through Redis when the limits are (else None).
        learned, self.cost_sharer = learned_costs(config, self.limiter, self.metrics)
        self.admission = Admission()
        self.admission.configure(config, share=self.share)
        self.upstream = Upstream(config.upstream, on_error=self._count_upstream_error,
                                 ssl_context=upstream_ssl, authorization=authorization)
        # the gate's capacity and pressure; the indices' sizes for the estimates
        self.cluster_health = ClusterHealth(
            self.upstream, self.admission, on_index_sizes=self._index_sizes,
            index_sizes_poll_s=config.cost.index_sizes_poll_s, on_queue_wait=self._queue_wait,
        )
        self.access_log = AccessLog(config.access_log)
        self.shapes = ShapeBook(config.shapes.window_s, config.shapes.top)
        # The shapes of the other instances, through Redis when the limits are shared (else None).
        self.shape_sharer = (
            ShapeSharer(self.shapes, self.limiter, config.shapes.publish_interval_s)
            if isinstance(self.limiter, RedisLimiter) else None
        )
        # The gate pooled with the other instances' through Redis (else each keeps its static share).
        self.gate_sharer = (
            GateSharer(self.admission.gate, self.limiter, self.admission.set_peers)
            if isinstance(self.limiter, RedisLimiter) and config.redis.share_gate else None
        )
        self.proxy = Proxy(
            Snapshot(config, 1, digest),
            limiter=self.limiter,
            learned=learned,
            admission=self.admission,
            upstream=self.upstream,
            metrics=self.metrics,
            access_log=self.access_log,
            shapes=self.shapes,
            runaway=Runaway(self.metrics),
        )
        self.cockpit = Cockpit(self)  # the status page's samples and reports
        self.metrics.set_config(1, digest)
        self._register_live_gauges()
        # the proxy listener: the request path's own protocol (proxy/listener.py); hard limits read per request
        self.listener = Listener(self.proxy.handle, limits=config.limits, metrics=self.metrics, forwarded=FORWARDED_HEADERS)
        self._proxy_server: asyncio.AbstractServer | None = None
        self._admin_runner: web.BaseRunner | None = None
        self.stopped = asyncio.Event()
        self._draining = False

    def _membership_changed(self, live: int) -> None:
        """Redis saw the number of live instances change: re-split the concurrency limits."""
        self.share = 1.0 / live
        self.admission.configure(self.proxy.snapshot.config, share=self.share)

    def _queue_wait(self, wait_ms: float) -> None:
        """The poller's search queue wait: learned costs take it out of what they learn (unless turned off)."""
        self.proxy.learned.queue_wait_ms = wait_ms if self.proxy.snapshot.config.cost.learn_service_time else 0.0

    def _index_sizes(self, sizes: IndexSizes | None) -> None:
        self.proxy.index_sizes = sizes  # one reference swap: a request estimates with one snapshot or the other

    def _count_upstream_error(self, node: str, kind: str) -> None:
        self.metrics.upstream_errors.labels(node, kind).inc()
        self.admission.upstream_error(kind)  # timeouts shrink the gate's limit

    def _register_live_gauges(self) -> None:
        """Levels read from the live objects at scrape time: nothing to update per request."""

        def bucket_levels():
            for name, view in self.proxy.snapshot.directory.tenants.items():
                for resource in view.plan.resources:
                    yield (name, resource), self.limiter.level(name, resource)

        def tenant_slots(field: str):
            return lambda: (((name,), float(getattr(slots, field))) for name, slots in self.admission.tenants.items())

        add = self.metrics.add_live_gauge
        add("sluicegate_bucket_level_cost_units", "Tokens left in each tenant's bucket (cost units; negative is debt)",
            ("tenant", "resource"), bucket_levels)
        add("sluicegate_tenant_inflight", "Requests of each tenant in flight upstream", ("tenant",), tenant_slots("inflight"))
        add("sluicegate_tenant_queued", "Requests of each tenant waiting for a slot", ("tenant",), tenant_slots("queued"))
        add("sluicegate_index_sizes_known", "Indices whose document count the last index size poll gave (0: none yet)",
            (), lambda: [((), float(len(self.proxy.index_sizes or ())))])
        add("sluicegate_search_queue_wait_ms", "Mean ms a search task waited in a node's search queue over the "
            "last poll (Little's law on the nodes' thread-pool stats); taken out of learned costs",
            (), lambda: [((), float(self.cluster_health.queue_wait_ms or 0.0))])
        add("sluicegate_buffered_request_bytes", "Bytes of request bodies held now, by tenant (limits.max_buffered_bytes "
            "bounds their sum)", ("tenant",),
            lambda: (((name,), float(size)) for name, size in list(self.proxy.held_bodies.by_tenant.items())))
        add("sluicegate_client_buffer_bytes", "Bytes of node responses held for each tenant's slow clients "
            "(limits.client_buffer_bytes_per_tenant bounds each)", ("tenant",),
            lambda: (((name,), float(size)) for name, size in list(self.proxy.client_buffers.items())))
        add("sluicegate_client_write_timeouts", "Connections closed because the client read nothing for "
            "limits.client_write_timeout_s", (), lambda: [((), float(self.listener.write_timeouts))])
        self.admission.register_gauges(add)

    # ---- life cycle ----
    async def start(self) -> None:
        config = self.proxy.snapshot.config
        await self.limiter.start()
        if self.cost_sharer is not None:
            await self.cost_sharer.start()
        if self.shape_sharer is not None:
            await self.shape_sharer.start()
        if self.gate_sharer is not None:
            await self.gate_sharer.start()
        await self.upstream.start()
        await self.cluster_health.start()
        await self.cockpit.start()
        self._configure_shedding(config)
        self.proxy.runaway.start()  # the sweep that cancels requests past their plan's limits
        # The listener's TLS context is passed once; a SIGHUP loads a new certificate into that same
        # context (tls.ListenerTLS.reload), so the server need not be re-created to rotate it.
        self._proxy_server = await _bind(asyncio.get_running_loop().create_server(
            self.listener, config.listen.host, config.listen.port, reuse_port=self.workers > 1 or None, backlog=2048,
            ssl=self.listener_tls.context if self.listener_tls is not None else None,
            # a client that never finishes its handshake is a slowloris too: the head timeout bounds it
            ssl_handshake_timeout=config.limits.header_timeout_s if self.listener_tls is not None else None,
        ), "listen", config.listen)
        from .admin import admin_app

        admin_runner = web.AppRunner(admin_app(self), handle_signals=False, access_log=None)
        await admin_runner.setup()
        self._admin_runner = admin_runner  # cleaned up by drain, even if its address cannot be bound
        if self.admin_socket:
            await web.UnixSite(admin_runner, self.admin_socket).start()
        else:
            await _bind(web.TCPSite(admin_runner, config.admin_listen.host, config.admin_listen.port).start(),
                        "admin_listen", config.admin_listen)
        log.info(
            "sluicegate worker %d listening on %s%s (admin %s), upstream %s",
            self.worker_index, config.listen, " (TLS)" if self.listener_tls is not None else "",
            self.admin_socket or config.admin_listen, ", ".join(config.upstream.nodes),
        )

    def _configure_shedding(self, config) -> None:
        """Overload shedding reads the gate's reason for its limit as the cluster's distress signal."""
        runaway = self.proxy.runaway
        runaway.shedding = config.shedding
        gate = self.admission.gate

        def distress(now: float) -> str | None:
            why = gate.reason(self.admission.clock())
            return why if why in runaway.shedding.signals else None

        runaway.distress = distress
        admission = self.admission
        runaway.hold_back = lambda tenant, seconds: admission.hold_back(tenant, admission.clock() + seconds,
                                                                        admission.clock())
        runaway.release = admission.release
        runaway.present = lambda: [name for name, slots in admission.tenants.items() if slots.active]
        runaway.share_floor = lambda: SHARE_FLOOR_REQUESTS * admission.gate.mean_cost  # admission's own floor
        runaway.weights = lambda: {name: view.plan.weight for name, view in self.proxy.snapshot.directory.tenants.items()}

    @property
    def running_listen(self):
        """The address the proxy port is bound to (a reload cannot move it)."""
        return self.running["listen"]

    @property
    def proxy_port(self) -> int:
        """The bound proxy port (useful when the config asked for port 0)."""
        assert self._proxy_server is not None
        return self._proxy_server.sockets[0].getsockname()[1]

    def reload(self) -> tuple[bool, str]:
        """Re-read the config file. A valid file is swapped in between requests; an invalid one changes
        nothing. Either way a file access log is reopened (logrotate sends SIGHUP after moving it)."""
        old = self.proxy.snapshot
        try:
            config, digest, warnings = load_checked(self.config_path)
            upstream_ssl = tls.upstream_context(config.upstream)
            authorization = credentials.authorization(config.upstream.auth)
            # The last step that can fail, and the only one that touches live state: it proves the new
            # certificate pair before loading it into the listener's context.
            tls_pending = (self.listener_tls.reload(config.listen_tls)
                           if self.listener_tls is not None and config.listen_tls is not None else [])
        except ConfigError as exc:
            self.access_log.reopen()
            self.metrics.config_reload_failures.inc()
            for path, message in exc.errors:
                log.error("config reload refused, keeping the running config: %s: %s", path or "<file>", message)
            return False, str(exc)
        snapshot = Snapshot(config, old.generation + 1, digest)
        # No await between these lines: no request can observe a half-applied config.
        self.limiter.configure(config)
        self.admission.configure(config, share=self.share)
        self.upstream.reconfigure(config.upstream, ssl_context=upstream_ssl, authorization=authorization)
        self.cluster_health.index_sizes_poll_s = config.cost.index_sizes_poll_s
        self.listener.limits = config.limits  # the HTTP layer's hard limits, from the next request on
        self.shapes.configure(config.shapes.window_s, config.shapes.top)
        self.shapes.forget_tenants(config.tenants)
        if self.shape_sharer is not None:
            self.shape_sharer.interval_s = config.shapes.publish_interval_s
        self.proxy.snapshot = snapshot
        self.proxy.runaway.shedding = config.shedding
        self.metrics.forget_tenants(set(config.tenants))
        self.metrics.set_config(snapshot.generation, digest)
        self.metrics.config_reloads.inc()
        self.config_loaded_at = time.time()
        log.info("config generation %d in force (%s)", snapshot.generation, digest)
        _warn(warnings)
        notes = [f"generation {snapshot.generation} ({digest}) in force"]
        log_problem = self.access_log.reconfigure(config.access_log)
        if log_problem:
            log.error("config: %s", log_problem)
            notes.append(log_problem)
        also = [f"{name} to change" for name in tls_pending]
        if (config.listen_tls is None) != (self.listener_tls is None):
            also.append(f"listen_tls to turn TLS {'off' if config.listen_tls is None else 'on'} on {self.running['listen']}")
        pending = restart_notice(self.running, config, also)
        if pending:
            log.warning("config: %s", pending)
            notes.append(pending)
        return True, "; ".join(notes)

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout_s), then close."""
        if self._draining:
            return
        self._draining = True
        timeout = self.proxy.snapshot.config.drain_timeout_s
        if self._proxy_server is not None:
            self._proxy_server.close()  # no new connections
        self.proxy.draining = True  # /ready says so
        self.listener.drain()  # idle keep-alive connections close now, busy ones after their response
        try:
            async with asyncio.timeout(timeout):
                await self.proxy.wait_idle()
        except TimeoutError:
            log.warning("drain timeout: %d requests still in flight after %.0fs", self.proxy.inflight, timeout)
        self.listener.close_all()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self.cockpit.close()
        await self.proxy.runaway.close()
        await self.cluster_health.close()
        await self.upstream.close()
        if self.gate_sharer is not None:
            await self.gate_sharer.close()
        if self.shape_sharer is not None:
            await self.shape_sharer.close()
        if self.cost_sharer is not None:
            await self.cost_sharer.close()
        await self.limiter.close()
        self.access_log.close()
        self.stopped.set()


def restart_notice(running: dict, config: Config, also: list[str] | tuple[str, ...] = ()) -> str | None:
    """A sentence naming what in `config` differs from the `running` values of the settings a reload
    cannot apply (RESTART_ONLY, and the listener's TLS settings named in `also`), or None when nothing does."""
    phrases = []
    for name in ("listen", "admin_listen"):
        if getattr(config, name) != running[name]:
            phrases.append(f"{name} to move from {running[name]} to {getattr(config, name)}")
    if config.redis != running["redis"]:
        if running["redis"] is None:
            phrases.append("the new redis section to take effect (limits stay in this process until then)")
        elif config.redis is None:
            phrases.append("removing the redis section to take effect (limits stay shared through Redis until then)")
        else:
            phrases.append("the changed redis section to take effect")
    phrases += also
    if not phrases:
        return None
    listed = phrases[0] if len(phrases) == 1 else ", for ".join(phrases[:-1]) + " and for " + phrases[-1]
    return f"a restart is needed for {listed}; the rest of the file is in force"


def _warn(warnings: list[tuple[str, str]]) -> None:
    for path, message in warnings:
        log.warning("config: %s: %s", path, message)


async def _bind(starting, key: str, address):
    """Await a listener's start (what it returns); an address that cannot be bound becomes a ListenError naming the key."""
    try:
        return await starting
    except OSError as exc:
        raise ListenError(f"cannot listen on {address} ({key}): {os.strerror(exc.errno) if exc.errno else exc}") from None


async def serve(config_path: str, worker_index: int = 0, workers: int = 1, admin_socket: str | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit code: 1, after one line per
    problem on stderr, when the config, a file it names or a listen address is not usable."""
    try:
        config, digest, warnings = load_checked(config_path)
        if worker_index == 0:
            _warn(warnings)
        worker = Worker(config_path, config, digest, worker_index=worker_index, workers=workers, admin_socket=admin_socket)
    except ConfigError as exc:
        for path, message in exc.errors:
            print(f"{path or '<file>'}: {message}", file=sys.stderr)
        return 1
    try:
        await worker.start()
    except ListenError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        await worker.drain()
        return 1
    settle_garbage_collector()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, worker.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.drain()))
    await worker.stopped.wait()
    return 0


def settle_garbage_collector() -> None:
    """Once started, move everything allocated so far (modules, config, pools: ~60,000 objects) out of
    the collector's sight, so a full collection walks only what requests left behind. A full collection
    of the start-up heap is a 25-40 ms pause, which the bench saw in the proxy's p99."""
    gc.collect()
    gc.freeze()


def run(config_path: str, workers: int = 1) -> int:
    """The `sluicegate run` entry point."""
    _log_setup()
    if workers <= 1:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(config_path))
    from .workers import supervise

    return supervise(config_path, workers)


def run_worker(config_path: str, index: int, workers: int, admin_socket: str) -> int:
    """One worker under the supervisor (`sluicegate _worker`, not for direct use)."""
    _log_setup(f"worker {index}")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config_path, index, workers, admin_socket))


def _log_setup(who: str = "") -> None:
    prefix = f"[{who}] " if who else ""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s: {prefix}%(message)s", stream=sys.stderr
    )
