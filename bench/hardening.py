"""The hardening scenarios of issue 17, each measured against the proxy as it is and, with
--before, against another checkout side by side (e.g. the main branch's worktree and venv).

Run: .venv/bin/python bench/hardening.py [--only slow,hung,gzip,bodies,sigterm,writes]
         [--before /work/main --before-python /work/main/.venv/bin/python]

  slow     64 connections ask for a ~5 MB search response each and read nothing; meanwhile another
           tenant sends 801 cheap searches (8 at a time): its refusals (429) and other failures.
  hung     one node of three hangs (accepts, answers nothing) under two good tenants' reads and
           writes: their 429s, 5xx, and the time from the hang until every request is fast again.
  gzip     another tenant's p50 alone, then while one tenant sends gzip bombs (100 KiB → 100 MiB).
  bodies   ten concurrent 95 MB _bulk bodies from one tenant: the proxy's peak RSS (VmHWM); then
           RSS after rounds of aborted 50 MB uploads, with and without MALLOC_ARENA_MAX=2.
  sigterm  SIGTERM with drain_timeout_s 5 while one client reads nothing: seconds to exit.
  writes   a node stopped under an auto-id write load, 5 runs: documents stored vs writes acknowledged.

Each proxy is started from its checkout's own code (cwd) and interpreter; configs use only keys
both builds know, except where a scenario names a new limit (then the old build runs without it).
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.processes import SimClusterProcess, free_port, http_get, make_config, wait_until  # noqa: E402


class Proxy:
    """`python -m proxy run` from a given checkout."""

    def __init__(self, repo: Path, python: str, config: dict, env: dict | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="sg-harden-"))
        self.config = config
        path = self.dir / "sluicegate.yaml"
        path.write_text(yaml.safe_dump(config))
        self.url = "http://" + config["listen"]
        self.admin = "http://" + config["admin_listen"]
        self.stderr = open(self.dir / "stderr", "wb")
        self.proc = subprocess.Popen([python, "-m", "proxy", "run", "--config", str(path)], cwd=repo,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr, env={**os.environ, **(env or {})})
        wait_until(lambda: self.proc.poll() is not None or http_get(self.admin + "/health")[0] == 200, 30, "proxy")

    def status(self, field: str) -> int:
        """A field of /proc/<pid>/status in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def plans(max_concurrent: int = 64, max_wait_ms: float = 2000) -> dict:
    bucket = {"rate": 1e6, "burst": 1e7}
    return {"standard": {"search": bucket, "read": bucket, "write": bucket, "admin": bucket,
                         "max_concurrent": max_concurrent, "max_queue": 256, "max_wait_ms": max_wait_ms}}


async def load(url: str, index: str, docs: int, doc_bytes: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{url}/{index}", json={}) as r:
            await r.read()
        lines = []
        for i in range(docs):
            lines += [json.dumps({"index": {"_index": index, "_id": str(i)}}), json.dumps({"n": i, "blob": "x" * doc_bytes})]
        async with session.post(f"{url}/_bulk?refresh=true", data=("\n".join(lines) + "\n").encode(),
                                headers={"Content-Type": "application/x-ndjson"}) as r:
            assert r.status == 200, await r.text()


async def cheap_searches(proxy: Proxy, tenant: str, count: int, concurrency: int) -> tuple[dict, list[float]]:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    todo = iter(range(count))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150)) as session:
        async def worker():
            for _ in todo:
                started = time.monotonic()
                try:
                    async with session.post(f"{proxy.url}/{tenant}-a/_search", json={"size": 1},
                                            headers={"Authorization": f"ApiKey {tenant}-key"}) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                latencies.append(time.monotonic() - started)
                statuses[status] = statuses.get(status, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, latencies


async def slow_socket(proxy: Proxy, request: bytes) -> socket.socket:
    host, port = proxy.config["listen"].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, request)
    return sock


def search_head(index: str, tenant: str, size: int) -> bytes:
    body = json.dumps({"size": size}).encode()
    return (f"POST /{index}/_search HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {tenant}-key\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# ---------------------------------------------------------------------------------------------------------
async def slow(repo: Path, python: str, new: bool) -> dict:
    cluster = SimClusterProcess(3)
    proxy = None
    sockets = []
    try:
        await load(cluster.url, "acme-big", 25, 200_000)  # ~5 MB per search of all
        await load(cluster.url, "globex-a", 3, 10)
        proxy = Proxy(repo, python, make_config(cluster.nodes, plans=plans(max_wait_ms=500), cost={"learn": False}))
        for _ in range(64):
            sockets.append(await slow_socket(proxy, search_head("acme-big", "acme", 25)))
        await asyncio.sleep(1.0)  # the slow searches are answered by the nodes meanwhile
        statuses, latencies = await cheap_searches(proxy, "globex", 801, 8)
        return {"other_tenant": statuses, "refused": statuses.get(429, 0), "of": 801,
                "p50_ms": round(statistics.median(latencies) * 1000, 1)}
    finally:
        for sock in sockets:
            sock.close()
        if proxy:
            proxy.stop()
        cluster.stop()


async def hung(repo: Path, python: str, new: bool) -> dict:
    cluster = SimClusterProcess(3)
    proxy = None
    try:
        for name in ("acme", "globex"):
            await load(cluster.url, f"{name}-a", 3, 10)
        config = make_config(cluster.nodes, plans=plans(), upstream={"health_interval_s": 2.0, "connect_timeout_s": 2.0})
        proxy = Proxy(repo, python, config)
        events: list[tuple[float, float, int, str]] = []  # (start, latency, status, kind)
        start = time.monotonic()
        stop_at = start + 40

        async def worker(session, name, i):
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                write = n % 5 == 0
                t = time.monotonic()
                try:
                    url = f"{proxy.url}/{name}-a/" + ("_doc" if write else "_search")
                    async with session.post(url, json={"n": n} if write else {"size": 1},
                                            headers={"Authorization": f"ApiKey {name}-key"}) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                events.append((t - start, time.monotonic() - t, status, "write" if write else "read"))
                await asyncio.sleep(0.02)

        async def hang():
            await asyncio.sleep(5)
            await asyncio.to_thread(cluster.hang_node, 1)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150)) as session:
            await asyncio.gather(hang(), *(worker(session, name, i) for name in ("acme", "globex") for i in range(8)))
        cluster.resume_node(1)
        after = [e for e in events if e[0] >= 5]
        bad = [e for e in after if e[1] > 1.0 or e[2] not in (200, 201)]
        counts: dict[str, int] = {}
        for _, _, status, kind in after:
            counts[f"{kind} {status}"] = counts.get(f"{kind} {status}", 0) + 1
        recovered = max((e[0] + e[1] for e in bad), default=5.0) - 5.0
        return {"after_hang": counts, "429s": sum(1 for e in after if e[2] == 429),
                "slowest_s": round(max(e[1] for e in after), 2), "recovered_after_s": round(recovered, 2)}
    finally:
        if proxy:
            proxy.stop()
        cluster.stop()


async def gzip_bombs(repo: Path, python: str, new: bool) -> dict:
    cluster = SimClusterProcess(3)
    proxy = None
    try:
        await load(cluster.url, "globex-a", 3, 10)
        await load(cluster.url, "acme-a", 3, 10)
        proxy = Proxy(repo, python, make_config(cluster.nodes, plans=plans()))
        _, base = await cheap_searches(proxy, "globex", 40, 1)
        bomb = gzip.compress(b" " * (100 << 20), 9)
        stop = asyncio.Event()
        sent = {"bombs": 0}

        async def attacker(session):
            while not stop.is_set():
                try:
                    async with session.post(f"{proxy.url}/acme-a/_search", data=bomb,
                                            headers={"Authorization": "ApiKey acme-key", "Content-Encoding": "gzip",
                                                     "Content-Type": "application/json"}) as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass
                sent["bombs"] += 1

        async with aiohttp.ClientSession() as session:
            attackers = [asyncio.create_task(attacker(session)) for _ in range(4)]
            await asyncio.sleep(1)
            _, during = await cheap_searches(proxy, "globex", 40, 1)
            stop.set()
            await asyncio.gather(*attackers)
        p50_base, p50_attack = statistics.median(base) * 1000, statistics.median(during) * 1000
        return {"bomb_bytes": len(bomb), "bombs_sent": sent["bombs"], "p50_baseline_ms": round(p50_base, 2),
                "p50_during_ms": round(p50_attack, 2), "ratio": round(p50_attack / p50_base, 2)}
    finally:
        if proxy:
            proxy.stop()
        cluster.stop()


async def bodies(repo: Path, python: str, new: bool) -> dict:
    cluster = SimClusterProcess(1, instant=True)
    out = {}
    try:
        ceiling = 256 << 20
        limits = {"max_buffered_bytes": ceiling} if new else {}
        pair = b'{"index":{"_index":"acme-a"}}\n{"pad":"' + b"x" * 4000 + b'"}\n'
        body = pair * (95_000_000 // len(pair))
        proxy = Proxy(repo, python, make_config(cluster.nodes, plans=plans(), limits=limits))
        try:
            statuses: dict[int, int] = {}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
                async def one():
                    try:
                        async with session.post(f"{proxy.url}/_bulk", data=body, headers={
                                "Authorization": "ApiKey acme-key", "Content-Type": "application/x-ndjson"}) as r:
                            await r.read()
                            status = r.status
                    except aiohttp.ClientError:
                        status = 0
                    statuses[status] = statuses.get(status, 0) + 1
                await asyncio.gather(*(one() for _ in range(10)))
            out["ten_95MB"] = {"statuses": statuses, "peak_rss_mb": round(proxy.status("VmHWM") / 2**20),
                               "max_buffered_mb": ceiling >> 20 if new else None}
        finally:
            proxy.stop()
        for label, env in (("default malloc", {}), ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"})):
            proxy = Proxy(repo, python, make_config(cluster.nodes, plans=plans()), env=env)
            try:
                rss = [round(proxy.status("VmRSS") / 2**20)]
                host, port = proxy.config["listen"].split(":")
                for _ in range(5):
                    async def abort_one():
                        reader, writer = await asyncio.open_connection(host, int(port))
                        try:
                            writer.write(b"POST /_bulk HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey acme-key\r\n"
                                         b"Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % len(body))
                            writer.write(body[: 50_000_000])
                            await writer.drain()
                            await asyncio.sleep(0.3)
                        except ConnectionError:
                            pass  # refused (429) before its body was read
                        writer.transport.abort()
                    await asyncio.gather(*(abort_one() for _ in range(8)))
                    await asyncio.sleep(1)
                    rss.append(round(proxy.status("VmRSS") / 2**20))
                out[f"abort rounds RSS MB ({label})"] = rss
            finally:
                proxy.stop()
        return out
    finally:
        cluster.stop()


async def sigterm(repo: Path, python: str, new: bool) -> dict:
    cluster = SimClusterProcess(1)
    try:
        await load(cluster.url, "acme-big", 25, 200_000)
        proxy = Proxy(repo, python, make_config(cluster.nodes, plans=plans(), drain_timeout_s=5))
        sock = await slow_socket(proxy, search_head("acme-big", "acme", 25))
        await asyncio.sleep(1.5)
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proxy.proc.wait, 200)
        finally:
            sock.close()
        elapsed = time.monotonic() - started
        proxy.stop()
        return {"drain_timeout_s": 5, "exit_after_s": round(elapsed, 2), "exit_code": code}
    finally:
        cluster.stop()


async def writes(repo: Path, python: str, new: bool) -> dict:
    runs = []
    for run in range(5):
        cluster = SimClusterProcess(3)
        proxy = None
        try:
            async with aiohttp.ClientSession() as session:
                async with session.put(f"{cluster.url}/acme-w", json={}) as r:
                    await r.read()
            proxy = Proxy(repo, python, make_config(cluster.nodes, plans=plans()))
            acked = 0
            statuses: dict[int, int] = {}
            stop_at = time.monotonic() + 4

            async def worker(session):
                nonlocal acked
                while time.monotonic() < stop_at:
                    try:
                        async with session.post(f"{proxy.url}/acme-w/_doc", json={"v": 1},
                                                headers={"Authorization": "ApiKey acme-key"}) as r:
                            await r.read()
                            status = r.status
                    except aiohttp.ClientError:
                        status = 0
                    statuses[status] = statuses.get(status, 0) + 1
                    acked += status == 201

            async def stop_node():
                await asyncio.sleep(1.5)
                await asyncio.to_thread(cluster.stop_node, 1 + run % 2)

            async with aiohttp.ClientSession() as session:
                await asyncio.gather(stop_node(), *(worker(session) for _ in range(16)))
                async with session.post(f"{cluster.url}/acme-w/_refresh") as r:
                    await r.read()
                async with session.get(f"{cluster.url}/acme-w/_count") as r:
                    stored = (await r.json())["count"]
            unknown = statuses.get(502, 0)
            runs.append({"acknowledged": acked, "stored": stored, "outcome_unknown_502": unknown,
                         "duplicates_at_least": max(0, stored - acked - unknown), "statuses": statuses})
        finally:
            if proxy:
                proxy.stop()
            cluster.stop()
    return {"runs": runs, "stored_beyond_sent": sum(r["duplicates_at_least"] for r in runs)}


async def writes_real(repo: Path, python: str, new: bool) -> dict:
    """The writes scenario on a real OpenSearch cluster of one's own (never a shared one: a node is killed):
    SLUICEGATE_OPENSEARCH_CLUSTER names its cluster.json. Node 1 or 2 is killed (-9) under the write load,
    then started again before the next run."""
    from bench.realcluster import RealCluster

    cluster = RealCluster.attach(os.environ["SLUICEGATE_OPENSEARCH_CLUSTER"])
    runs = []
    for run in range(int(os.environ.get("HARDEN_RUNS", "5"))):
        index = f"acme-dups-{os.getpid()}-{run}-{int(time.time())}"
        async with aiohttp.ClientSession() as session:
            async with session.put(f"{cluster.url}/{index}", json={"settings": {"number_of_shards": 3,
                                                                                "number_of_replicas": 1}}) as r:
                assert r.status == 200, await r.text()
        proxy = Proxy(repo, python, make_config(cluster.urls, plans=plans(),
                                                upstream={"health_interval_s": 0.5, "request_timeout_s": 30}))
        victim = 1 + run % 2
        acked = 0
        statuses: dict[int, int] = {}
        try:
            stop_at = time.monotonic() + 8

            async def worker(session):
                nonlocal acked
                while time.monotonic() < stop_at:
                    try:
                        async with session.post(f"{proxy.url}/{index}/_doc", json={"v": 1},
                                                headers={"Authorization": "ApiKey acme-key"}) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        status = 0
                    statuses[status] = statuses.get(status, 0) + 1
                    acked += status == 201

            async def kill():
                await asyncio.sleep(2)
                await asyncio.to_thread(cluster.stop_node, victim)

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                await asyncio.gather(kill(), *(worker(session) for _ in range(8)))
        finally:
            proxy.stop()
            await asyncio.to_thread(cluster.start_node, victim, 300, "yellow")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{cluster.url}/{index}/_refresh") as r:
                await r.read()
            async with session.get(f"{cluster.url}/{index}/_count") as r:
                stored = (await r.json())["count"]
        unknown = statuses.get(502, 0) + statuses.get(504, 0) + statuses.get(0, 0)
        runs.append({"acknowledged": acked, "stored": stored, "outcome_unknown": unknown,
                     "stored_beyond_acknowledged_and_unknown": max(0, stored - acked - unknown), "statuses": statuses})
    return {"runs": runs, "duplicates_at_least": sum(r["stored_beyond_acknowledged_and_unknown"] for r in runs)}


SCENARIOS = {"slow": slow, "hung": hung, "gzip": gzip_bombs, "bodies": bodies, "sigterm": sigterm, "writes": writes,
             "writes-real": writes_real}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--before", type=Path, help="another checkout to measure side by side (e.g. /work/main)")
    parser.add_argument("--before-python", default=None)
    args = parser.parse_args()
    builds = [("after", REPO, sys.executable, True)]
    if args.before:
        builds.insert(0, ("before", args.before, args.before_python or sys.executable, False))
    for name in args.only.split(","):
        for label, repo, python, new in builds:
            result = asyncio.run(SCENARIOS[name](repo, python, new))
            print(json.dumps({"scenario": name, "build": label, **result}), flush=True)


if __name__ == "__main__":
    main()
