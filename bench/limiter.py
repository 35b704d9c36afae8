"""Limiter hot path: decisions per second of the compiled token-bucket table, its pure-Python twin and
the `limits` library, side by side in one run, plus the memory of 100k configured buckets.

Run: .venv/bin/python bench/limiter.py [--n 1000000] [--repeats 5]

Two workloads, each a tight loop of decisions on one existing key:
  decision          `now` is passed in (how the proxy calls the table: one clock read per request
                    serves the whole decision); every decision admits and charges.
  decision + clock  each decision also reads the clock, as `limits` does inside `hit()`; a
                    1000-per-second budget, so most decisions in the loop are refusals for everyone.
Cython/twin is taken from the first, Cython/limits from the second (same work on both sides).
Figures are best-of-repeats on this machine and include the loop's own cost; compare them with
each other and with the targets, not across machines.

Each contender is one function returning its workloads, so another backend (Redis) is one more
function and one more entry in CONTENDERS.
"""
from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from itertools import repeat
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import _ratelimit, _ratelimit_py  # noqa: E402

KEY = "tenant-12345:search"
TARGET_NS = 100.0  # per decision on an existing key, compiled table
TARGET_VS_TWIN = 5.0
TARGET_VS_LIMITS = 20.0
TARGET_RSS_MB = 20.0  # MB (10^6 bytes) for RSS_KEYS configured buckets
RSS_KEYS = 100_000

#: a workload runs n decisions and returns the seconds they took
Workload = Callable[[int], float]


def _table(table_class) -> dict[str, Workload]:
    """try_acquire on an existing key of a TokenBucketTable (compiled or twin)."""

    def decision(n: int) -> float:
        table = table_class()
        table.configure(KEY, 1e9, 1e12, 0.0)  # deep enough that every decision in the loop admits
        try_acquire, key, now = table.try_acquire, KEY, 1.0
        started = time.perf_counter()
        for _ in repeat(None, n):
            try_acquire(key, 1.0, now)
        return time.perf_counter() - started

    def decision_and_clock(n: int) -> float:
        table = table_class()
        clock = time.monotonic
        table.configure(KEY, 1000.0, 1000.0, clock())
        try_acquire, key = table.try_acquire, KEY
        started = time.perf_counter()
        for _ in repeat(None, n):
            try_acquire(key, 1.0, clock())
        return time.perf_counter() - started

    return {"decision": decision, "decision + clock": decision_and_clock}


def cython_table() -> dict[str, Workload]:
    return _table(_ratelimit.TokenBucketTable)


def python_twin() -> dict[str, Workload]:
    return _table(_ratelimit_py.TokenBucketTable)


def limits_library() -> dict[str, Workload]:
    """`limits`: MemoryStorage + MovingWindowRateLimiter.hit(), 1000 per second on one key."""
    from limits import RateLimitItemPerSecond
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    def decision_and_clock(n: int) -> float:
        limiter = MovingWindowRateLimiter(MemoryStorage())
        item = RateLimitItemPerSecond(1000)
        hit = limiter.hit
        hit(item, "tenant-12345", "search")
        started = time.perf_counter()
        for _ in repeat(None, n):
            hit(item, "tenant-12345", "search")
        return time.perf_counter() - started

    return {"decision + clock": decision_and_clock}


def local_limiter() -> dict[str, Workload]:
    """The whole budget step of a request: LocalLimiter.acquire on the compiled table, admitted."""
    from proxy.config import hash_secret, parse_config
    from proxy.limiter import LocalLimiter

    config = parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": {"standard": {"search": {"rate": 1e9, "burst": 1e12}}},
        "tenants": {"tenant-12345": {"plan": "standard", "api_keys": [hash_secret("k")], "indices": ["t-*"]}},
    })

    def decision_and_clock(n: int) -> float:
        limiter = LocalLimiter()
        limiter.configure(config)
        acquire = limiter.acquire
        started = time.perf_counter()
        for _ in repeat(None, n):
            try:  # drive the coroutine by hand: an admission finishes without suspending
                acquire("tenant-12345", "search", 1.0).send(None)
            except StopIteration:
                pass
        return time.perf_counter() - started

    return {"decision + clock": decision_and_clock}


def empty_loop() -> dict[str, Workload]:
    """What the loop itself costs, to read the other rows against."""

    def loop(n: int) -> float:
        started = time.perf_counter()
        for _ in repeat(None, n):
            pass
        return time.perf_counter() - started

    return {"decision": loop, "decision + clock": loop}


CONTENDERS: list[tuple[str, Callable[[], dict[str, Workload]]]] = [
    ("Cython table", cython_table),
    ("Python twin", python_twin),
    ("limits moving window", limits_library),
    ("LocalLimiter.acquire", local_limiter),
    ("(empty loop)", empty_loop),
]
WORKLOADS = ["decision", "decision + clock"]


def best_ns(workload: Workload, n: int, repeats: int) -> float:
    """Best of `repeats` runs, in nanoseconds per decision."""
    workload(min(n, 10_000))  # warm up
    gc.collect()
    gc.disable()
    try:
        return min(workload(n) for _ in range(repeats)) / n * 1e9
    finally:
        gc.enable()


def vm_rss() -> int:
    """Resident set size of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _rss_child(impl: str, keys: int) -> None:
    """In a fresh process: RSS growth from configuring `keys` buckets named like "tenant-12345:search"."""
    table_class = {"c": _ratelimit, "py": _ratelimit_py}[impl].TokenBucketTable
    table_class().configure("warm-up:search", 1.0, 1.0, 0.0)
    gc.collect()
    before = vm_rss()
    table = table_class()
    for i in range(keys):
        table.configure(f"tenant-{i:05d}:search", 500.0, 5000.0, 0.0)
    gc.collect()
    print(vm_rss() - before, len(table))


def rss_growth(impl: str, keys: int) -> int:
    """Bytes of RSS growth for `keys` buckets, measured in a fresh interpreter so nothing is reused."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", impl, str(keys)], capture_output=True, text=True, check=True
    )
    grown, held = out.stdout.split()
    assert int(held) == keys
    return int(grown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="decisions per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure; the best is kept")
    parser.add_argument("--rss-child", nargs=2, metavar=("IMPL", "KEYS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child[0], int(args.rss_child[1]))
        return

    ns: dict[tuple[str, str], float] = {}
    for name, contender in CONTENDERS:
        for workload_name, workload in contender().items():
            ns[(name, workload_name)] = best_ns(workload, args.n, args.repeats)
    rss = {impl: rss_growth(impl, RSS_KEYS) for impl in ("c", "py")}

    c_ns = ns[("Cython table", "decision")]
    vs_twin = ns[("Python twin", "decision")] / c_ns
    vs_limits = ns[("limits moving window", "decision + clock")] / ns[("Cython table", "decision + clock")]
    c_mb = rss["c"] / 1e6
    report(ns, args, rss, c_ns, vs_twin, vs_limits, c_mb)


def report(ns, args, rss, c_ns, vs_twin, vs_limits, c_mb) -> None:
    def mark(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]MISSED[/]"

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text when the bench extras are not installed
        for (name, workload), value in ns.items():
            print(f"{name:34} {workload:18} {value:8.1f} ns  {1e9 / value:14,.0f} decisions/s")
        print(f"Cython/twin {vs_twin:.1f}x  Cython/limits {vs_limits:.1f}x  RSS {c_mb:.1f} MB")
        return

    table = Table(title=f"Limiter decisions on one existing key (best of {args.repeats} x {args.n:,})")
    table.add_column("contender", no_wrap=True)
    for workload in WORKLOADS:
        table.add_column(f"{workload}\nns", justify="right")
        table.add_column("\ndecisions/s", justify="right")
    for name, _ in CONTENDERS:
        row = [name]
        for workload in WORKLOADS:
            value = ns.get((name, workload))
            row += ["—", "—"] if value is None else [f"{value:.1f}", f"{1e9 / value:,.0f}"]
        table.add_row(*row)
    console = Console()
    console.print(table)

    ratios = Table(title="Targets")
    ratios.add_column("figure")
    ratios.add_column("measured", justify="right")
    ratios.add_column("target", justify="right")
    ratios.add_column("")
    ratios.add_row("Cython ns per decision", f"{c_ns:.1f} ns", f"≤ {TARGET_NS:.0f} ns", mark(c_ns <= TARGET_NS))
    ratios.add_row("Cython / twin (decision)", f"{vs_twin:.1f}x", f"≥ {TARGET_VS_TWIN:.0f}x", mark(vs_twin >= TARGET_VS_TWIN))
    ratios.add_row("Cython / limits, both reading the clock", f"{vs_limits:.1f}x", f"≥ {TARGET_VS_LIMITS:.0f}x",
                   mark(vs_limits >= TARGET_VS_LIMITS))
    call_vs_hit = ns[("limits moving window", "decision + clock")] / c_ns
    ratios.add_row("Cython try_acquire / limits hit()", f"{call_vs_hit:.1f}x", "", "")
    ratios.add_row(f"RSS for {RSS_KEYS:,} buckets, Cython", f"{c_mb:.1f} MB", f"≤ {TARGET_RSS_MB:.0f} MB",
                   mark(c_mb <= TARGET_RSS_MB))
    ratios.add_row(f"RSS for {RSS_KEYS:,} buckets, twin", f"{rss['py'] / 1e6:.1f} MB", "", "")
    console.print(ratios)


if __name__ == "__main__":
    main()
