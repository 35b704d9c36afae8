"""Overload shedding on a real cluster: a storm tenant plus the loss of a node, with and without shedding.

One real 3-node cluster (bench/realcluster.py) with small search pools; a `storm` tenant keeps slow
searches (a sloppy phrase over 3,000 documents of 300 words) in flight while a `good` tenant runs
quick term searches. Five seconds in, one node is killed (-9). The good tenant's latency from the
node loss on is compared between two proxies run one after the other on the same cluster: shedding off
(the default) and shedding on (`shedding.enabled: true`). The node is brought back between the runs.

    python bench/shedding.py [--flavor opensearch] [--seconds 20] [--data-dir /var/tmp/sluicegate/shed]

Writes its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import urllib3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench import report  # noqa: E402
from realcluster import RealCluster, http_json  # noqa: E402
from tests.processes import ProxyProcess, make_config, tenant  # noqa: E402

SLOW = {"size": 10, "query": {"match_phrase": {"msg": {"query": "a b c d a b c d a b c d d c b a", "slop": 5}}}}


def load(cluster: RealCluster, http: urllib3.PoolManager) -> None:
    for index, shards in (("storm-data", 3), ("good-data", 1)):
        http_json(f"{cluster.url}/{index}", "DELETE")
        status, body = http_json(f"{cluster.url}/{index}", "PUT",
                                 {"settings": {"number_of_shards": shards, "number_of_replicas": 1}})
        assert status == 200, body
    rng = random.Random(5)
    lines = []
    for i in range(3000):
        lines += (b'{"index":{}}', orjson.dumps({"msg": " ".join(rng.choice("abcd") for _ in range(300)), "n": i}))
    r = http.request("POST", f"{cluster.url}/storm-data/_bulk?refresh=true", body=b"\n".join(lines) + b"\n",
                     headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 200 and not orjson.loads(r.data)["errors"]
    lines = []
    for i in range(1000):
        lines += (b'{"index":{}}', orjson.dumps({"word": f"w{i % 50}", "n": i}))
    r = http.request("POST", f"{cluster.url}/good-data/_bulk?refresh=true", body=b"\n".join(lines) + b"\n",
                     headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 200 and not orjson.loads(r.data)["errors"]
    cluster.wait_green(3, 120)


def run(cluster: RealCluster, workdir: Path, shedding: bool, seconds: float, victim: int, backoff_s: float) -> dict:
    plan = {"search": {"rate": 1e6, "burst": 1e7}, "read": {"rate": 1e6, "burst": 1e7},
            "write": {"rate": 1e6, "burst": 1e7}, "admin": {"rate": 1000, "burst": 10000},
            "max_concurrent": 16, "max_queue": 256, "max_wait_ms": 30000}
    config = make_config(cluster.urls, tenants={"storm": tenant("storm"), "good": tenant("good")},
                         plans={"standard": plan}, admission={"health_poll_s": 0.5},
                         shedding={"enabled": shedding, "max_per_s": 4.0, "min_age_s": 0.3})
    proxy = ProxyProcess(config, workdir / ("on" if shedding else "off"))
    http = urllib3.PoolManager(maxsize=32, retries=False, timeout=urllib3.Timeout(connect=5, read=60))
    stop = threading.Event()
    lost_at: list[float] = []
    good: list[tuple[float, float, int]] = []  # (started, seconds, status)
    storm_statuses: list[int] = []

    def stormer() -> None:
        while not stop.is_set():
            r = http.request("POST", f"{proxy.url}/storm-data/_search?request_cache=false", body=orjson.dumps(SLOW),
                             headers={"Authorization": "ApiKey storm-key", "Content-Type": "application/json"})
            storm_statuses.append(r.status)
            if r.status == 503 and backoff_s:  # a client that backs off when told the cluster is busy
                time.sleep(backoff_s)

    def gooder(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body = orjson.dumps({"query": {"term": {"word": f"w{(i * 7 + n) % 50}"}}})
            started = time.monotonic()
            try:
                r = http.request("POST", f"{proxy.url}/good-data/_search?request_cache=false", body=body,
                                 headers={"Authorization": "ApiKey good-key", "Content-Type": "application/json"})
                status = r.status
            except urllib3.exceptions.HTTPError:
                status = 0
            good.append((started, time.monotonic() - started, status))
            time.sleep(0.05)

    threads = [threading.Thread(target=stormer) for _ in range(8)] + [threading.Thread(target=gooder, args=(i,))
                                                                     for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(5)
        lost_at.append(time.monotonic())
        cluster.stop_node(victim)
        time.sleep(seconds)
        shed = proxy.metric("sluicegate_cancelled_total", tenant="storm", reason="shed")
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
        proxy.stop()
    after = sorted(s for started, s, _ in good if started >= lost_at[0])
    before = sorted(s for started, s, _ in good if started < lost_at[0])
    failed = sum(1 for started, _, status in good if started >= lost_at[0] and status != 200)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    return {"shedding": shedding, "p50": pct(after, 0.5), "p99": pct(after, 0.99), "p99_before": pct(before, 0.99),
            "requests": len(after), "failed": failed, "shed": shed,
            "storm_answers": len(storm_statuses), "storm_503": storm_statuses.count(503)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", default="opensearch")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load after the node loss")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--storm-backoff-s", type=float, default=0.0,
                        help="seconds a storm client waits after a 503 before its next search (0: a closed loop)")
    args = parser.parse_args()
    cluster = RealCluster(args.flavor, nodes=3, search_threads=2, search_queue=100, heap="384m", data_dir=args.data_dir)
    http = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=5, read=120))
    cluster.start(timeout=600)
    try:
        load(cluster, http)
        results = []
        with tempfile.TemporaryDirectory(prefix="sg-shed-") as tmp:
            for shedding in (False, True):
                results.append(run(cluster, Path(tmp), shedding, args.seconds, victim=2, backoff_s=args.storm_backoff_s))
                cluster.start_node(2, timeout=600, status="yellow")
                cluster.wait_green(3, 300)
                print(results[-1], flush=True)
    finally:
        cluster.stop()
    off, on = results
    table = "\n".join([
        "| shedding | good p50 ms | good p99 ms | good p99 before the loss, ms | good requests | good failed | storm shed | storm answered |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {'on' if r['shedding'] else 'off'} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p99_before']:.0f} | "
          f"{r['requests']} | {r['failed']} | {r['shed']:.0f} | {r['storm_answers']} |" for r in results),
    ])
    text = (f"### Overload shedding: storm plus node loss ({args.flavor} {cluster.version}, 3 nodes, 2 search threads "
            f"each)\n\n`{report.command_line()}`\n\n8 storm clients keep slow searches in flight, 2 good clients run "
            f"term searches (storm clients wait {args.storm_backoff_s:g} s after a 503); one node is killed 5 s in; the good tenant's latency from then on, {args.seconds:.0f} s, "
            f"measured side by side in one run (shedding off, the node back, shedding on).\n\n{table}\n\n"
            f"Good-tenant p99 with shedding / without: **{on['p99'] / off['p99']:.2f}x**.\n")
    report.update_section("shedding", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
