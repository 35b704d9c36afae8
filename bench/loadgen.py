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
plan gives the phase boundaries in it. Each role prints one JSON line of counters per second.

The HTTP client is the proxy's own lean HTTP/1.1 client (proxy/upstream_http.py): aiohttp's
ClientSession would cost the load generator several times the CPU per request on this 2-core box.
Each tenant is its own application with its own keep-alive connections; with several targets
(Sluicegate instances behind a load balancer) its requests alternate between them.
"""
from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.upstream_http import ConnectionLostEarly, ConnectionPool, request_head  # noqa: E402

#: statuses elasticsearch-py retries at once, and how often
RETRY_ON = frozenset((429, 502, 503, 504))
MAX_RETRIES = 3

# Cheap searches: a few ms of cluster time on 1M docs (term lookups, a match, a filtered bool).
CHEAP = [
    {"size": 10, "query": {"term": {"service": "checkout"}}},
    {"size": 10, "query": {"match": {"message": "connection reset"}}},
    {"size": 20, "query": {"bool": {"must": [{"match": {"message": "error"}}],
                                    "filter": [{"term": {"service": "api"}},
                                               {"range": {"@timestamp": {"gte": "now-15m"}}}]}}},
    {"size": 5, "query": {"term": {"user.id": "u-1042"}}},
]

# Expensive searches: hundreds of ms to over a second of cluster time each on 1M docs.
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
    """One tenant's application: keep-alive connections to each target, requests alternating between them."""

    def __init__(self, targets: list[str], api_key: str, timeout_s: float, ssl_context=None):
        self.hosts = [urlsplit(t).netloc for t in targets]
        # https:// targets need `ssl_context` (an ssl.SSLContext that trusts their certificate)
        self.pools = [ConnectionPool(urlsplit(t).hostname, urlsplit(t).port, max_idle=1024,
                                     ssl=ssl_context if t.startswith("https:") else None) for t in targets]
        self.headers = [("Authorization", f"ApiKey {api_key}"), ("Content-Type", "application/json")]
        self.timeout_s = timeout_s
        self.busy: set = set()  # connections with a request in flight
        self._turn = 0

    def prepare(self, path: str, body: dict) -> Request:
        raw = orjson.dumps(body)
        return Request([request_head("POST", path, host, self.headers, len(raw)) for host in self.hosts], raw)

    async def send(self, request: Request) -> tuple[int, str | None]:
        """(status, who refused it, or None for a 2xx) of one request; raises OSError/TimeoutError on failure."""
        turn = self._turn
        self._turn = (turn + 1) % len(self.pools)
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
                    await response.read()
                finally:
                    response.release()
            finally:
                self.busy.discard(conn)
            status = response.status
            return status, (None if 200 <= status < 300 else refused_by(response))

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


class Progress:
    """Counters printed as one JSON line per second for the orchestrator's progress bars."""

    def __init__(self) -> None:
        self.counts = {"sent": 0, "ok": 0, "failed": 0}

    async def report(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            sys.stdout.write(orjson.dumps(self.counts).decode() + "\n")
            sys.stdout.flush()


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


async def one(client: Client, request: Request, tenant: int, scheduled: float, rec: Recorder, progress: Progress) -> None:
    sent = now()
    progress.counts["sent"] += 1
    try:
        status, cause = await asyncio.wait_for(client.send(request), client.timeout_s)
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


async def sleep_until(t: float) -> None:
    delay = t - now()
    if delay > 0:
        await asyncio.sleep(delay)


async def steady_tenant(client: Client, requests: list[Request], tenant: int, rate: float, start: float, end: float,
                        rng: random.Random, rec: Recorder, progress: Progress, tasks: set) -> None:
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        request = requests[rng.randrange(len(requests))]
        await sleep_until(t)
        task = asyncio.ensure_future(one(client, request, tenant, t, rec, progress))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def bursty_tenant(client: Client, requests: list[Request], tenant: int, burst: int, every_s: float,
                        start: float, end: float, rng: random.Random, rec: Recorder, progress: Progress,
                        tasks: set) -> None:
    t = start + rng.uniform(0, every_s)
    while t < end:
        chosen = [requests[rng.randrange(len(requests))] for _ in range(burst)]
        await sleep_until(t)
        for request in chosen:
            task = asyncio.ensure_future(one(client, request, tenant, t, rec, progress))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        t += every_s * rng.uniform(0.8, 1.2)


async def run_good(plan: dict) -> dict:
    good = plan["good"]
    start, end = plan["start"], plan["end"]
    targets = plan["targets"]
    rec, progress, tasks = Recorder(), Progress(), set()
    names: list[str] = []
    clients: list[Client] = []
    runners = []
    for position, spec in enumerate(good["steady"] + [good["bursty"]]):
        client = Client(targets, spec["key"], good["timeout_s"])
        clients.append(client)
        names.append(spec["name"])
        requests = [client.prepare(f"/{spec['name']}-logs/_search", body) for body in CHEAP]
        rng = random.Random(f"{plan['seed']}/{spec['name']}")
        if "rate" in spec:
            runners.append(steady_tenant(client, requests, position, spec["rate"], start, end, rng, rec, progress, tasks))
        else:
            runners.append(bursty_tenant(client, requests, position, spec["burst"], spec["every_s"], start, end, rng,
                                         rec, progress, tasks))
    reporter = asyncio.ensure_future(progress.report())
    await asyncio.gather(*runners)
    if tasks:  # the last arrivals finish (or time out) before the role ends
        await asyncio.wait(list(tasks))
    reporter.cancel()
    for client in clients:
        client.close()
    return {"tenants": names, "bursty": len(names) - 1, "tenant": rec.tenant, "scheduled": rec.scheduled,
            "latency": rec.latency, "status": rec.status, "lag": rec.lag, "cause": rec.cause}


# ---------------------------------------------------------------------------------------------
# storm: closed-loop workers retrying at once
# ---------------------------------------------------------------------------------------------


def tenant_counts() -> dict:
    return {"attempts": 0, "ok": 0, "rejected": 0, "failed_calls": 0, "errors": 0, "reasons": {}}


async def storm_worker(client: Client, requests: list[Request], offset: int, end: float, counts: dict,
                       progress: Progress) -> None:
    position = offset
    while now() < end:
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


async def run_storm(plan: dict) -> dict:
    storm = plan["storm"]
    targets = plan["targets"]
    progress = Progress()
    per_tenant: dict[str, dict] = {}
    clients, workers = [], []
    await sleep_until(storm["start"])
    for spec in storm["tenants"]:
        client = Client(targets, spec["key"], storm["timeout_s"])
        clients.append(client)
        requests = [client.prepare(f"/{spec['name']}-logs/_search", body) for body in EXPENSIVE]
        counts = per_tenant[spec["name"]] = tenant_counts()
        for w in range(storm["workers"]):
            workers.append(asyncio.ensure_future(storm_worker(client, requests, w, storm["end"], counts, progress)))
    reporter = asyncio.ensure_future(progress.report())
    await sleep_until(storm["end"])
    # The storm stops at once: in-flight requests are abandoned and their connections closed.
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    for client in clients:
        client.close()
    reporter.cancel()
    await sleep_until(plan["end"])  # stay alive (idle) to the end, so the bench can read this process's CPU time
    return {"tenants": per_tenant}


async def main(role: str, plan_path: str, out_path: str) -> None:
    plan = orjson.loads(Path(plan_path).read_bytes())
    result = await (run_good(plan) if role == "good" else run_storm(plan))
    Path(out_path).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    import uvloop

    if len(sys.argv) != 4 or sys.argv[1] not in ("good", "storm"):
        sys.exit(__doc__)
    uvloop.run(main(*sys.argv[1:]))
