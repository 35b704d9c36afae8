"""Overload shedding on a real cluster: a storm tenant plus the loss of a node, with and without shedding.

One real 3-node cluster (bench/realcluster.py) with small search pools (2 threads a node: capacity 6,000
cost units a second). A `good` tenant runs quick term searches (2 clients, 50 ms between searches); after a
warm-up, a `storm` tenant's 8 closed-loop clients keep slow searches (a sloppy phrase over 3,000 documents of
300 words) in flight. Both clients act as elasticsearch-py does: a 429/502/503/504 is retried at once, up to 3
times (elastic-transport's default; it ignores Retry-After); an application whose request still failed then
waits what the last answer's Retry-After said before its next search. The storm runs alone with the good
tenant for a while (its costs learned, the "before" figures), then one node is killed (-9) and the good
tenant's latency from the node loss on is compared between two proxies run one after the other on the same
cluster: shedding off (the default) and shedding on. The node is brought back between the runs. Both tenants
have the same plan: search budgets of 1.5x the cluster's capacity each (3x in all), max_concurrent 8.

    python bench/shedding.py [--flavor opensearch] [--seconds 20] [--data-dir /var/tmp/sluicegate/shed]

Writes its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
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


#: what elasticsearch-py retries at once, and how often (elastic-transport's defaults)
RETRY_ON = frozenset((429, 502, 503, 504))
RETRIES = 3
#: search threads of the bench cluster (3 nodes x 2), and so its capacity in cost units (thread-ms) a second
CAPACITY_PER_S = 6 * 1000.0


class Client:
    """One application thread behind elasticsearch-py: immediate retries, then the last Retry-After."""

    def __init__(self, http: urllib3.PoolManager, url: str, key: str):
        self.http, self.url = http, url
        self.headers = {"Authorization": f"ApiKey {key}", "Content-Type": "application/json"}
        self.costs: list[str] = []  # X-Sluicegate-Cost of each answered search, in order

    def search(self, path: str, body: bytes) -> tuple[int, float]:
        """The final status (0: no answer) and how long to wait before the next search (seconds)."""
        for attempt in range(RETRIES + 1):
            try:
                r = self.http.request("POST", f"{self.url}{path}", body=body, headers=self.headers)
            except urllib3.exceptions.HTTPError:
                return 0, 0.5
            if r.status not in RETRY_ON or attempt == RETRIES:
                break
        retry_after = r.headers.get("Retry-After")
        if r.status == 200:
            self.costs.append(r.headers.get("X-Sluicegate-Cost", ""))
        return r.status, float(retry_after) if r.status in RETRY_ON and retry_after else 0.0


def run(cluster: RealCluster, workdir: Path, shedding: bool, seconds: float, warm_s: float, storm_s: float,
        victim: int) -> dict:
    bucket = {"rate": 1.5 * CAPACITY_PER_S, "burst": 3 * CAPACITY_PER_S}
    plan = {"search": bucket, "read": bucket, "write": bucket, "admin": {"rate": 1000, "burst": 10000},
            "max_concurrent": 8, "max_queue": 64, "max_wait_ms": 5000}
    config = make_config(cluster.urls, tenants={"storm": tenant("storm"), "good": tenant("good")},
                         plans={"standard": plan}, admission={"health_poll_s": 0.5},
                         shedding={"enabled": shedding, "max_per_s": 4.0, "min_age_s": 0.3, "cooldown_s": 5.0})
    proxy = ProxyProcess(config, workdir / ("on" if shedding else "off"))
    http = urllib3.PoolManager(maxsize=32, retries=False, timeout=urllib3.Timeout(connect=5, read=60))
    stop, storming = threading.Event(), threading.Event()
    good: list[tuple[float, float, int]] = []  # (started, seconds, final status)
    storm: list[tuple[float, int]] = []  # (answered at, final status)

    storm_costs: list[str] = []

    def stormer() -> None:
        client = Client(http, proxy.url, "storm-key")
        client.costs = storm_costs  # shared: the order the storm's searches were answered in
        storming.wait()
        while not stop.is_set():
            status, wait = client.search("/storm-data/_search?request_cache=false", orjson.dumps(SLOW))
            storm.append((time.monotonic(), status))
            if wait:
                stop.wait(wait)

    def gooder(i: int) -> None:
        client = Client(http, proxy.url, "good-key")
        n = 0
        while not stop.is_set():
            n += 1
            body = orjson.dumps({"query": {"term": {"word": f"w{(i * 7 + n) % 50}"}}})
            started = time.monotonic()
            status, wait = client.search("/good-data/_search?request_cache=false", body)
            good.append((started, time.monotonic() - started, status))
            stop.wait(max(0.05, wait))

    reasons: list[tuple[float, str]] = []  # (when, the gate's reason for its limit): the distress signal

    def watcher() -> None:
        while not stop.is_set():
            try:
                reasons.append((time.monotonic(), proxy.tenants()["gate"]["reason"]))
            except Exception:  # a slow admin answer under load: a gap in the record, not a failed run
                pass
            stop.wait(0.25)

    threads = [threading.Thread(target=stormer) for _ in range(8)]
    threads += [threading.Thread(target=gooder, args=(i,)) for i in range(2)] + [threading.Thread(target=watcher)]
    load = [os.getloadavg()[0]]
    try:
        for thread in threads:
            thread.start()
        time.sleep(warm_s)  # the good tenant alone: connections, caches and its costs warm
        storm_at = time.monotonic()
        storming.set()
        time.sleep(storm_s)
        lost_at = time.monotonic()
        load.append(os.getloadavg()[0])
        shed_before = proxy.metric("sluicegate_cancelled_total", tenant="storm", reason="shed")
        held_before = proxy.metric("sluicegate_requests_total", tenant="storm", decision="throttled", reason="shed")
        cluster.stop_node(victim)
        time.sleep(seconds)
        load.append(os.getloadavg()[0])
        shed = proxy.metric("sluicegate_cancelled_total", tenant="storm", reason="shed")
        held = proxy.metric("sluicegate_requests_total", tenant="storm", decision="throttled", reason="shed")
    finally:
        stop.set()
        storming.set()
        for thread in threads:
            thread.join(90)
        proxy.stop()
    # "before": the storm's steady state (its first seconds left out: the gate still learning its cost)
    start = sorted(s for started, s, _ in good if storm_at <= started < storm_at + storm_s / 2)
    before = sorted(s for started, s, _ in good if storm_at + storm_s / 2 <= started < lost_at)
    after = sorted(s for started, s, _ in good if started >= lost_at)
    failed = sum(1 for started, _, status in good if started >= lost_at and status != 200)
    storm_after = [status for at, status in storm if at >= lost_at]
    storm_before = [status for at, status in storm if at < lost_at]
    signals = ("data_nodes", "search_rejections", "upstream_errors", "latency")  # SheddingConfig's default signals
    after_reasons = [why for at, why in reasons if at >= lost_at]
    before_reasons = [why for at, why in reasons if storm_at <= at < lost_at]
    distress = (sum(why in signals for why in before_reasons) / max(1, len(before_reasons)),
                sum(why in signals for why in after_reasons) / max(1, len(after_reasons)))

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    return {"shedding": shedding, "p50": pct(after, 0.5), "p99": pct(after, 0.99), "p50_before": pct(before, 0.5),
            "p99_before": pct(before, 0.99), "p99_start": pct(start, 0.99), "requests": len(after), "failed": failed,
            "shed_before": shed_before or 0.0, "shed": (shed or 0.0) - (shed_before or 0.0),
            "held_before": held_before or 0.0, "held": (held or 0.0) - (held_before or 0.0),
            "storm_ok_before": storm_before.count(200), "storm_ok": storm_after.count(200),
            "storm_refused": len(storm_after) - storm_after.count(200), "load": load, "distress": distress,
            "storm_cost_first": storm_costs[0] if storm_costs else "",
            "storm_cost_last": storm_costs[-1] if storm_costs else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", default="opensearch")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load after the node loss")
    parser.add_argument("--warm-s", type=float, default=3.0, help="seconds of the good tenant alone first")
    parser.add_argument("--storm-s", type=float, default=12.0, help="seconds of storm before the node loss")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    facts = report.machine()
    cluster = RealCluster(args.flavor, nodes=3, search_threads=2, search_queue=100, heap="384m", data_dir=args.data_dir)
    http = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=5, read=120))
    cluster.start(timeout=600)
    try:
        load(cluster, http)
        results = []
        with tempfile.TemporaryDirectory(prefix="sg-shed-") as tmp:
            logs = Path(args.data_dir) / "proxies" if args.data_dir else Path(tmp)  # kept with the cluster's data
            for shedding in (False, True):
                results.append(run(cluster, logs, shedding, args.seconds, args.warm_s, args.storm_s, victim=2))
                cluster.start_node(2, timeout=600, status="yellow")
                cluster.wait_green(3, 300)
                print(results[-1], flush=True)
    finally:
        cluster.stop()
    off, on = results
    table = "\n".join([
        "| shedding | good p50 ms | good p99 ms | good p50 / p99 before the loss, ms | good p99 in the storm's first "
        "half, ms | good requests | good failed | storm shed (before / after the loss) | storm held back, 429 shed "
        "(before / after) | storm searches done (before / after) | storm refused after | gate in distress, share of "
        "the time (storm before the loss / after) | load (storm, loss, end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {'on' if r['shedding'] else 'off'} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p50_before']:.0f} / "
          f"{r['p99_before']:.0f} | {r['p99_start']:.0f} | {r['requests']} | {r['failed']} | {r['shed_before']:.0f} / "
          f"{r['shed']:.0f} | {r['held_before']:.0f} / {r['held']:.0f} | {r['storm_ok_before']} / {r['storm_ok']} | "
          f"{r['storm_refused']} | {r['distress'][0]:.0%} / {r['distress'][1]:.0%} | "
          f"{' '.join(f'{x:.1f}' for x in r['load'])} |" for r in results),
    ])
    text = (f"### Overload shedding: storm plus node loss ({args.flavor} {cluster.version}, 3 nodes, 2 search threads "
            f"each)\n\n`{report.command_line()}`\n\n{report.machine_markdown(facts)}\n\n"
            f"2 good clients run term searches (50 ms apart) alone for {args.warm_s:g} s, then 8 storm clients keep "
            f"slow searches in flight for {args.storm_s:g} s (\"before\": its second half), then one node is killed; "
            f"the good tenant's latency from then on, {args.seconds:.0f} s. Clients retry 429/502/503/504 at once up "
            f"to 3 times (as elasticsearch-py), then wait the last Retry-After. Both plans: search budget "
            f"{1.5 * CAPACITY_PER_S:,.0f}/s (3x the cluster's capacity in all), max_concurrent 8. Shedding off, the "
            f"node back, shedding on (`max_per_s: 4`, `cooldown_s: 5`), side by side in one run.\n\n{table}\n\n"
            f"Good-tenant p99 after the loss with shedding / without: **{on['p99'] / off['p99']:.2f}x** "
            f"(p50: {on['p50'] / off['p50']:.2f}x).\n\nWhat the proxy charged the storm's slow search "
            f"(`X-Sluicegate-Cost`), its first answer and its last, per run: "
            + "; ".join(f"shedding {'on' if r['shedding'] else 'off'}: `{r['storm_cost_first']}` then "
                        f"`{r['storm_cost_last']}`" for r in results) + ".\n")
    report.update_section("shedding", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
