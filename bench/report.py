"""What the benches print and keep: the machine they ran on, tables (rich on the console, Markdown
in bench/RESULTS.md), CPU time of the processes under test, and RESULTS.md's generated sections.

Each bench owns one section of RESULTS.md, between `<!-- BEGIN name -->` and `<!-- END name -->`;
rerunning the bench replaces only its own section, so the hand-written analysis around it stays.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
FIGURES = REPO / "bench" / "results"
_TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, str]:
    """The facts a reader needs to judge the figures, read when the bench starts."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "model": model,
        "load average at start (1/5/15 min)": " ".join(load),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]).split(" [")[0],
        "commit": _version(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"]),
    }


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].replace("nginx version: ", "") if text else "unknown"


def command_line() -> str:
    """How this bench was invoked, relative to the repository."""
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    script = os.path.relpath(sys.argv[0], REPO)
    return " ".join([exe, script, *(shlex.quote(a) for a in sys.argv[1:])])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its live descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
        child = int(entry.name)
        stats[child] = fields
        children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
        todo.extend(children.get(current, []))
    return total / _TICKS


class Table:
    """Columns and rows, rendered as a rich table and as Markdown."""

    def __init__(self, title: str, columns: list[str], right: set[int] | None = None):
        self.title = title
        self.columns = columns
        self.right = right if right is not None else set(range(1, len(columns)))
        self.rows: list[list[str]] = []
        self.sections: list[int] = []  # row indices after which a rule is drawn

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def rule(self) -> None:
        self.sections.append(len(self.rows))

    def print(self) -> None:
        try:
            from rich.console import Console
            from rich.table import Table as RichTable
        except ImportError:
            print(self.markdown())
            return
        table = RichTable(title=self.title, show_lines=False)
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="right" if i in self.right else "left")
        for i, row in enumerate(self.rows):
            table.add_row(*row, end_section=(i + 1) in self.sections)
        Console(width=max(200, len(self.columns) * 16)).print(table)

    def markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

        align = ["---:" if i in self.right else "---" for i in range(len(self.columns))]
        return "\n".join([line(self.columns), "| " + " | ".join(align) + " |", *(line(r) for r in self.rows)])


def machine_markdown(facts: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


def update_section(name: str, text: str, script: str | None = None) -> None:
    """Replace RESULTS.md's generated section `name` (appended if it is not there yet); `script` is the
    bench that writes it (bench/<name>.py unless told)."""
    script = script or f"bench/{name}.py"
    begin, end = f"<!-- BEGIN {name} (generated by {script}; do not edit by hand) -->", f"<!-- END {name} -->"
    current = RESULTS.read_text() if RESULTS.exists() else "# Bench results\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    start = current.find(f"<!-- BEGIN {name} ")
    stop = current.find(end)
    if start >= 0 and stop > start:
        current = current[:start] + block + current[stop + len(end):]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current)
