"""Where a proxy's CPU goes under wrk, by function, from `perf` (native and Cython frames alike).

Run: .venv/bin/python bench/perf_profile.py [--mode sluicegate-1] [--seconds 6] [--limit 60]

Starts the overhead bench's static backend and one of its modes (bench/overhead.py MODES: sluicegate-1,
protocol-raw, nginx-1, ...), loads it with wrk (-t1 -c32, the overhead bench's search request), records the
proxy with `perf record --call-graph dwarf` and prints the functions by inclusive share of its CPU. The
py-spy `--native` profile of bench/overhead.py attributes most Cython time to libc; perf's DWARF unwinding
does not. Needs `perf` (Debian: linux-perf) and root, or kernel.perf_event_paranoid ≤ 1. Console output only.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import overhead  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "perf-profile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="sluicegate-1", help="one of: " + ", ".join(m.name for m in overhead.MODES))
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--limit", type=int, default=60, help="functions to print")
    args = parser.parse_args()
    for tool in ("perf", "wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    mode = next((m for m in overhead.MODES if m.name == args.mode), None)
    if mode is None:
        sys.exit(f"unknown mode {args.mode}")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    script = OUT / "search.lua"
    script.write_text(overhead.WRK_SCRIPT)
    with contextlib.ExitStack() as stack:
        port = overhead.free_port()
        backend = overhead.Nginx(OUT / "backend", overhead.backend_block(port), [port], 1)
        stack.callback(backend.stop)
        url, pid = mode.start(stack, f"http://127.0.0.1:{port}", OUT)
        if not pid:
            sys.exit(f"mode {args.mode} has no process of its own to profile")
        url += "/acme-logs/_search"
        overhead.run_wrk(url, 2, script)  # warm-up
        wrk = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{args.seconds + 2}s", "-s", str(script), url],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # wrk connected and running
        data = OUT / "perf.data"
        subprocess.run(["perf", "record", "-F", "499", "--call-graph", "dwarf,32768", "-o", str(data), "-p", str(pid),
                        "--", "sleep", str(args.seconds)], capture_output=True, check=True)
        rate = next((line.split()[-1] for line in wrk.communicate()[0].splitlines() if "Requests/sec" in line), "?")
    report = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "sym", "--stdio", "-g", "none"],
                            capture_output=True, text=True).stdout
    rows = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
    print(f"{args.mode}: {rate} requests/s while recorded (DWARF unwinding slows the proxy; shares, not times, are "
          f"the figure); functions by inclusive share of the proxy's CPU (children, self):")
    print("\n".join(rows[: args.limit]))


if __name__ == "__main__":
    main()
