"""Load for bench/storm.py: tenants sending searches the way real applications do, timed client-side.

    python bench/loadgen.py good  PLAN.json OUT.json
    python bench/loadgen.py storm PLAN.json OUT.json

One role per process (uvloop), so the storm's busy loops never delay the good tenants' timers:
  good   each steady tenant sends cheap searches as open-loop Poisson arrivals; the dashboard
         tenant fires `burst` parallel cheap searches every `every_s` seconds. Arrival schedules
         are seeded, so every mode of a run sees the same arrivals. Every request is recorded:
         tenant, scheduled time, latency from the *scheduled* time (so a late send counts against
         the target, no coordinated omission), status, and how late it was sent (the loop's lag).
  storm  `workers` closed-loop workers per storming tenant send expensive searches back to back;
         a 429/502/503/504 is retried at once, up to 3 times, as elasticsearch-py does by default
         (retry_on_status=(429, 502, 503, 504), max_retries=3, no back-off); after that the worker
         moves on to its next query. Counted per tenant: attempts, 2xx, 429s by reason, failures.

Times are `time.monotonic()` seconds, which is one clock for every process on the machine; the
plan gives the phase boundaries in it, and the orchestrator may end them early (on a real cluster a
phase ends when a node has rejoined, not at a time known in advance): SIGUSR1 ends the role's load
now — the good role then waits for its requests in flight, writes OUT.json and exits; the storm
role abandons its requests, writes OUT.json, and stays idle (so its CPU time can still be read)
until SIGUSR2 or the plan's end. Each role prints one JSON line of counters per second.

What each tenant sends comes from the plan: `requests[tenant]` is a list of [path, body] pairs
(JSON text), cycled through; the orchestrator builds them for the cluster at hand (the simulator's
bodies, or bench/storm's shapes from proxy/battery.py for a real corpus).

Clients fail over as the official ones do when given several nodes: a connection that cannot be
made, or is lost before a response arrives, is retried on the next target (up to 3 times), and a
target that refused a connection is skipped for 1 s, doubling per failure up to 30 s
(elasticsearch-py's dead-node back-off). A good tenant's request that needed a failover is counted.
A 2xx search answer with failed shards (a partial result) is an error to a good tenant.

The HTTP client is the proxy's own lean HTTP/1.1 client (proxy/upstream_http.py): aiohttp's
ClientSession would cost the load generator several times the CPU per request on this 2-core box.
Each tenant is its own application with its own keep-alive connections; with several targets
(the cluster's nodes, or Sluicegate instances behind a load balancer) its requests alternate
between them.
"""
from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.upstream_http import (  # noqa: E402
    ConnectionLostEarly, ConnectionPool, UpstreamProtocolError, request_head,
)

#: statuses elasticsearch-py retries at once, and how often
RETRY_ON = frozenset((429, 502, 503, 504))
MAX_RETRIES = 3
#: a target that refused a connection is skipped this long (s), doubling per failure up to DEAD_MAX_S
DEAD_BACKOFF_S, DEAD_MAX_S = 1.0, 30.0

# The simulator's searches (bench/storm.py --cluster sim). Cheap: a few ms of cluster time on 1M docs.
CHEAP = [
    {"size": 10, "query": {"term": {"service": "checkout"}}},
    {"size": 10, "query": {"match": {"message": "connection reset"}}},
    {"size": 20, "query": {"bool": {"must": [{"match": {"message": "error"}}],
                                    "filter": [{"term": {"service": "api"}},
                                               {"range": {"@timestamp": {"gte": "now-15m"}}}]}}},
    {"size": 5, "query": {"term": {"user.id": "u-1042"}}},
]

# Expensive: hundreds of ms to over a second of cluster time each on 1M docs.
EXPENSIVE = [
    # leading-wildcard query_string: walks the whole term dictionary
    {"query": {"query_string": {"query": "*rror* OR *imeout*", "default_field": "message"}}},
    # a 10,000-bucket terms aggregation with a percentiles sub-aggregation
    {"size": 0, "aggs": {"by_user": {"terms": {"field": "user.id", "size": 10000},
                                     "aggs": {"bytes": {"percentiles": {"field": "bytes"}}}}}},
    # deep pagination sorted on a field
    {"from": 9000, "size": 1000, "query": {"match_all": {}}, "sort": [{"@timestamp": "desc"}]},
    # a script scoring every document
    {"query": {"script_score": {"query": {"match_all": {}},
                                "script": {"source": "doc['bytes'].value * params.f", "params": {"f": 2}}}}},
]


def now() -> float:
    return time.monotonic()


class Request:
    """One prepared request: its bytes for every target, built once."""

    __slots__ = ("heads", "body")

    def __init__(self, heads: list[bytes], body: bytes):
        self.heads = heads
        self.body = body


class Client:
    """One tenant's application: keep-alive connections to each target, requests alternating between
    the targets that are not marked dead."""

    def __init__(self, targets: list[str], api_key: str, timeout_s: float, ssl_context=None):
        self.hosts = [urlsplit(t).netloc for t in targets]
        # https:// targets need `ssl_context` (an ssl.SSLContext that trusts their certificate)
        self.pools = [ConnectionPool(urlsplit(t).hostname, urlsplit(t).port, max_idle=1024,
                                     ssl=ssl_context if t.startswith("https:") else None) for t in targets]
        self.headers = [("Authorization", f"ApiKey {api_key}"), ("Content-Type", "application/json")]
        self.timeout_s = timeout_s
        self.busy: set = set()  # connections with a request in flight
        self.dead_until = [0.0] * len(targets)
        self.failures = [0] * len(targets)
        self._turn = 0

    def prepare(self, path: str, body: dict | bytes) -> Request:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return Request([request_head("POST", path, host, self.headers, len(raw)) for host in self.hosts], raw)

    async def send(self, request: Request) -> tuple[int, str | None]:
        """(status, who refused it, or None for a 2xx) of one request; raises OSError/TimeoutError on failure."""
        status, cause, _, _ = await self.exchange(request)
        return status, cause

    async def exchange(self, request: Request, want_body: bool = False) -> tuple[int, str | None, int, bytes]:
        """(status, who refused it or None, failovers, body if `want_body`) of one request, failing over to
        the next target on a connection error. Raises TimeoutError, or the last connection error."""
        failovers = 0
        while True:
            turn = self._choose()
            try:
                response, body = await self._once(turn, request, want_body)
            except TimeoutError:
                raise
            except (OSError, UpstreamProtocolError):
                self._dead(turn)
                if failovers >= MAX_RETRIES:
                    raise
                failovers += 1
                continue
            self.failures[turn] = 0
            status = response.status
            return status, (None if 200 <= status < 300 else refused_by(response)), failovers, body

    def _choose(self) -> int:
        n = len(self.pools)
        if n == 1:
            return 0
        t = now()
        for i in range(n):
            turn = (self._turn + i) % n
            if self.dead_until[turn] <= t:
                self._turn = (turn + 1) % n
                return turn
        turn = self._turn  # every target is marked dead: try the next anyway, as the clients do
        self._turn = (turn + 1) % n
        return turn

    def _dead(self, turn: int) -> None:
        self.failures[turn] += 1
        self.dead_until[turn] = now() + min(DEAD_MAX_S, DEAD_BACKOFF_S * 2 ** (self.failures[turn] - 1))

    async def _once(self, turn: int, request: Request, want_body: bool):
        pool = self.pools[turn]
        head = request.heads[turn]
        timeout = self.timeout_s
        while True:
            conn = pool.take_idle()
            fresh = conn is None
            if fresh:
                conn = await pool.connect(timeout)
            self.busy.add(conn)
            try:
                try:
                    response = await conn.send(head, request.body, False, timeout)
                except ConnectionLostEarly:
                    conn.close()
                    if fresh:
                        raise
                    continue  # a stale keep-alive connection: any client retries that on a fresh one
                except BaseException:
                    conn.close()
                    raise
                response.read_timeout = timeout
                try:
                    body = await response.read()
                finally:
                    response.release()
            finally:
                self.busy.discard(conn)
            return response, body if want_body else b""

    def close(self) -> None:
        """Close every connection, idle or busy: the requests in flight are abandoned."""
        for conn in list(self.busy):
            conn.close()
        for pool in self.pools:
            pool.close()


def refused_by(response) -> str:
    """Who refused, for a 429: Sluicegate names its reason; nginx's own page is HTML; the cluster's is ES JSON."""
    if response.status != 429:
        return f"HTTP {response.status}"
    reason = response.header("X-Sluicegate-Reason")
    if reason:
        return f"sluicegate {reason}"
    content_type = response.header("Content-Type") or ""
    return "nginx limit" if content_type.startswith("text/html") else "cluster rejected"


def failed_shards(body: bytes) -> int:
    """Shards a 2xx search answer says failed (0 when it says nothing or is not JSON)."""
    try:
        shards = orjson.loads(body).get("_shards") or {}
        return int(shards.get("failed") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


class Progress:
    """Counters printed as one JSON line per second for the orchestrator's progress bars."""

    def __init__(self) -> None:
        self.counts = {"sent": 0, "ok": 0, "failed": 0}

    async def report(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            sys.stdout.write(orjson.dumps(self.counts).decode() + "\n")
            sys.stdout.flush()


class Stop:
    """When the role's load ends: the plan's time, or at once on SIGUSR1."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.event = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.now)

    def now(self) -> None:
        self.at = min(self.at, now())
        self.event.set()

    async def wait(self) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), max(0.0, self.at - now()))
        except (TimeoutError, asyncio.TimeoutError):
            pass


def prepared(client: Client, pairs: list) -> list[Request]:
    return [client.prepare(path, body.encode()) for path, body in pairs]


# ---------------------------------------------------------------------------------------------
# good: open-loop steady tenants and the bursty dashboard
# ---------------------------------------------------------------------------------------------


class Recorder:
    """Columns of every good-tenant request."""

    def __init__(self) -> None:
        self.tenant: list[int] = []
        self.scheduled: list[float] = []
        self.latency: list[float] = []
        self.status: list[int] = []
        self.lag: list[float] = []
        self.cause: list[tuple[int, str]] = []  # (record number, who refused) of every error
        self.failovers: list[tuple[int, int]] = []  # (record number, failovers) of requests that needed one


async def one(client: Client, request: Request, tenant: int, scheduled: float, rec: Recorder, progress: Progress) -> None:
    sent = now()
    progress.counts["sent"] += 1
    failovers = 0
    try:
        status, cause, failovers, body = await asyncio.wait_for(client.exchange(request, True), client.timeout_s)
        if cause is None and failed_shards(body):
            status, cause = 0, "partial result (shards failed)"
    except (TimeoutError, asyncio.TimeoutError):
        status, cause = 0, "timeout"
    except Exception:  # noqa: BLE001 - refused, reset: to the tenant, an error like any other
        status, cause = 0, "connection failed"
    done = now()
    if 200 <= status < 300:
        progress.counts["ok"] += 1
    else:
        progress.counts["failed"] += 1
    rec.tenant.append(tenant)
    rec.scheduled.append(scheduled)
    rec.latency.append(done - scheduled)
    rec.status.append(status)
    rec.lag.append(sent - scheduled)
    if cause is not None:
        rec.cause.append((len(rec.status) - 1, cause))
    if failovers:
        rec.failovers.append((len(rec.status) - 1, failovers))


async def sleep_until(t: float) -> None:
    delay = t - now()
    if delay > 0:
        await asyncio.sleep(delay)


async def steady_tenant(client: Client, requests: list[Request], tenant: int, rate: float, start: float, stop: Stop,
                        rng: random.Random, rec: Recorder, progress: Progress, tasks: set) -> None:
    t = start
    while True:
        t += rng.expovariate(rate)
        request = requests[rng.randrange(len(requests))]
        await sleep_until(min(t, stop.at))
        if t >= stop.at:
            return
        task = asyncio.ensure_future(one(client, request, tenant, t, rec, progress))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def bursty_tenant(client: Client, requests: list[Request], tenant: int, burst: int, every_s: float,
                        start: float, stop: Stop, rng: random.Random, rec: Recorder, progress: Progress,
                        tasks: set) -> None:
    t = start + rng.uniform(0, every_s)
    while True:
        chosen = [requests[rng.randrange(len(requests))] for _ in range(burst)]
        await sleep_until(min(t, stop.at))
        if t >= stop.at:
            return
        for request in chosen:
            task = asyncio.ensure_future(one(client, request, tenant, t, rec, progress))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        t += every_s * rng.uniform(0.8, 1.2)


async def run_good(plan: dict) -> dict:
    good = plan["good"]
    start = plan["start"]
    stop = Stop(plan["end"])
    targets = plan["targets"]
    rec, progress, tasks = Recorder(), Progress(), set()
    names: list[str] = []
    clients: list[Client] = []
    runners = []
    for position, spec in enumerate(good["steady"] + [good["bursty"]]):
        client = Client(targets, spec["key"], good["timeout_s"])
        clients.append(client)
        names.append(spec["name"])
        requests = prepared(client, plan["requests"][spec["name"]])
        rng = random.Random(f"{plan['seed']}/{spec['name']}")
        if "rate" in spec:
            runners.append(steady_tenant(client, requests, position, spec["rate"], start, stop, rng, rec, progress, tasks))
        else:
            runners.append(bursty_tenant(client, requests, position, spec["burst"], spec["every_s"], start, stop, rng,
                                         rec, progress, tasks))
    reporter = asyncio.ensure_future(progress.report())
    await asyncio.gather(*runners)
    if tasks:  # the last arrivals finish (or time out) before the role ends
        await asyncio.wait(list(tasks))
    reporter.cancel()
    for client in clients:
        client.close()
    return {"tenants": names, "bursty": len(names) - 1, "tenant": rec.tenant, "scheduled": rec.scheduled,
            "latency": rec.latency, "status": rec.status, "lag": rec.lag, "cause": rec.cause,
            "failovers": rec.failovers, "stopped": stop.at}


# ---------------------------------------------------------------------------------------------
# storm: closed-loop workers retrying at once
# ---------------------------------------------------------------------------------------------


def tenant_counts() -> dict:
    return {"attempts": 0, "ok": 0, "rejected": 0, "failed_calls": 0, "errors": 0, "reasons": {}}


async def storm_worker(client: Client, requests: list[Request], offset: int, stop: Stop, counts: dict,
                       progress: Progress) -> None:
    position = offset
    while now() < stop.at:
        request = requests[position % len(requests)]
        position += 1
        for _ in range(1 + MAX_RETRIES):
            counts["attempts"] += 1
            progress.counts["sent"] += 1
            try:
                status, cause = await client.send(request)
            except Exception:  # noqa: BLE001 - refused, reset, timed out
                status, cause = 0, "connection failed or timeout"
                counts["errors"] += 1
            if 200 <= status < 300:
                counts["ok"] += 1
                progress.counts["ok"] += 1
                break
            counts["rejected"] += status == 429
            counts["reasons"][cause] = counts["reasons"].get(cause, 0) + 1
            if status not in RETRY_ON and status != 0:  # connection errors are retried too
                break
        else:
            status = -1
        if not 200 <= status < 300:
            counts["failed_calls"] += 1
            progress.counts["failed"] += 1


async def run_storm(plan: dict, out_path: str) -> None:
    storm = plan["storm"]
    targets = plan["targets"]
    progress = Progress()
    stop = Stop(storm["end"])
    per_tenant: dict[str, dict] = {}
    clients, workers = [], []
    await sleep_until(storm["start"])
    started = now()
    for spec in storm["tenants"]:
        client = Client(targets, spec["key"], storm["timeout_s"])
        clients.append(client)
        requests = prepared(client, plan["requests"][spec["name"]])
        counts = per_tenant[spec["name"]] = tenant_counts()
        for w in range(storm["workers"]):
            workers.append(asyncio.ensure_future(storm_worker(client, requests, w, stop, counts, progress)))
    reporter = asyncio.ensure_future(progress.report())
    await stop.wait()
    # The storm stops at once: in-flight requests are abandoned and their connections closed.
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    for client in clients:
        client.close()
    reporter.cancel()
    Path(out_path).write_bytes(orjson.dumps({"tenants": per_tenant, "started": started, "stopped": now()}))
    # stay alive (idle) to the end, so the bench can read this process's CPU time
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, done.set)
    try:
        await asyncio.wait_for(done.wait(), max(0.0, plan["end"] - now()))
    except (TimeoutError, asyncio.TimeoutError):
        pass


async def main(role: str, plan_path: str, out_path: str) -> None:
    plan = orjson.loads(Path(plan_path).read_bytes())
    if role == "good":
        Path(out_path).write_bytes(orjson.dumps(await run_good(plan)))
    else:
        await run_storm(plan, out_path)


if __name__ == "__main__":
    import uvloop

    if len(sys.argv) != 4 or sys.argv[1] not in ("good", "storm"):
        sys.exit(__doc__)
    uvloop.run(main(*sys.argv[1:]))
