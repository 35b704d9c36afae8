"""Proxy throughput with limits shared through Redis against local limits, side by side in one run.

Run: .venv/bin/python bench/redis_mode.py [--seconds 10] [--rounds 2]

The same Sluicegate (1 worker) is started three times in front of the same instant backend (nginx
answering a static ES-shaped search response, as in bench/overhead.py):
  local        no `redis` section: buckets in this process (the Cython table)
  redis        `redis.url` set (a redis-server started here on a free port), default lease
               settings (lease = min(lease_fraction x burst, rate x lease_horizon_s))
  redis-lease1ms  the same with lease_horizon_s 0.001: leases 100x smaller, so Redis is called
               about 100x more often; shows what the lease buys
and each is driven by wrk -t1 -c32 -dNs POSTing a small search with `Authorization: ApiKey ...`.
The plan is generous enough that nothing is throttled (the search bucket refills at 100,000 cost
units/s; the load is well under that) yet the leases are realistic: 10,000 units by default.
Modes run in turn, in alternating order each round (ABC CBA ...); each mode's best round is
kept. Printed: requests/s, p50/p99, Redis script calls per 1,000 requests, and each mode's ratio
to local (target: redis >= 0.9x local).
"""
from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.nginx import Nginx  # noqa: E402
from bench.overhead import API_KEY, WRK_SCRIPT, backend_block, run_wrk  # noqa: E402
from tests.processes import ProxyProcess, RedisServer, free_port, http_get, make_config, tenant, wait_until  # noqa: E402

TARGET = 0.9
RATE = 100_000.0  # search cost units per second: far above what wrk can make one worker spend
BURST = 100_000.0


def config(backend: str, redis_settings: dict | None) -> dict:
    bucket = {"rate": RATE, "burst": BURST}
    plan = {"search": bucket, "read": bucket, "write": bucket, "admin": bucket,
            "max_concurrent": 4096, "max_queue": 4096, "max_wait_ms": 2000}
    extra = {"redis": redis_settings} if redis_settings else {}
    return make_config([backend], tenants={"acme": tenant("acme", API_KEY)}, plans={"standard": plan},
                       access_log={"path": None}, **extra)


def metric(admin: str, name: str) -> float:
    text = http_get(admin + "/metrics")[1].decode()
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? ([\d.e+-]+)$", text, re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, order alternating (default 2)")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sg-redis-bench-") as tmp:
        workdir = Path(tmp)
        backend_port = free_port()
        nginx = Nginx(workdir / "backend", backend_block(backend_port), [backend_port], workers=1)
        stack.callback(nginx.stop)
        backend = f"http://127.0.0.1:{backend_port}"
        store = RedisServer(workdir / "redis")
        stack.callback(store.stop)
        modes = {
            "local": None,
            "redis": {"url": store.url},
            "redis-lease1ms": {"url": store.url, "key_prefix": "sg1ms", "lease_horizon_s": 0.001},
        }
        proxies = {}
        for name, redis_settings in modes.items():
            proxy = ProxyProcess(config(backend, redis_settings), workdir / name)
            stack.callback(proxy.stop)
            wait_until(lambda p=proxy: http_get(p.admin + "/ready")[0] == 200, what=f"{name} /ready")
            if redis_settings:
                wait_until(lambda p=proxy: metric(p.admin, "sluicegate_redis_up") == 1, what=f"{name} on Redis")
            proxies[name] = proxy
        script = workdir / "search.lua"
        script.write_text(WRK_SCRIPT)

        for proxy in proxies.values():  # warm up: connections, learned costs, leases
            run_wrk(proxy.url, 2, script)
        best: dict[str, dict] = {}
        order = list(proxies)
        started = time.monotonic()
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                proxy = proxies[name]
                calls_before = metric(proxy.admin, "sluicegate_redis_calls_total")
                run = run_wrk(proxy.url, args.seconds, script, pid=proxy.proc.pid)
                run["calls_per_1k"] = (metric(proxy.admin, "sluicegate_redis_calls_total") - calls_before) \
                    / max(run["requests"], 1) * 1000
                print(f"  round {round_ + 1} {name:15} {run['rps']:9,.0f} req/s  "
                      f"non-2xx {run['non2xx']}  errors {run['socket_errors']}", flush=True)
                if name not in best or run["rps"] > best[name]["rps"]:
                    best[name] = run
        elapsed = time.monotonic() - started
        for name, proxy in proxies.items():
            if modes[name] and metric(proxy.admin, "sluicegate_redis_fallbacks_total"):
                print(f"warning: {name} fell back to local limits during the run", file=sys.stderr)

    local = best["local"]["rps"]
    print(f"\nSluicegate 1 worker, wrk -t1 -c32 -d{args.seconds}s, best of {args.rounds} "
          f"({elapsed:.0f}s), nginx static backend")
    print(f"{'mode':16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'Redis calls/1k req':>19} {'vs local':>9}")
    for name, run in best.items():
        p50 = (run["p50"] or 0) * 1000
        p99 = (run["p99"] or 0) * 1000
        print(f"{name:16} {run['rps']:9,.0f} {p50:8.2f} {p99:8.2f} {run['calls_per_1k']:19.2f} "
              f"{run['rps'] / local:8.2f}x")
    ratio = best["redis"]["rps"] / local
    verdict = "meets" if ratio >= TARGET else "MISSES"
    print(f"\nredis / local = {ratio:.2f}x ({verdict} the target of >= {TARGET}x)")


if __name__ == "__main__":
    main()
