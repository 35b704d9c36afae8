"""Which build of the proxy the tests run: compiled (the default) or its pure-Python twin.

Several proxy modules are plain Python that setup.py compiles with Cython (C types from the
`.pxd` beside each). The tests run against the compiled modules, as the product runs; with
SLUICEGATE_PURE=1 they run against the `.py` sources instead, the oracle the compiled build must
agree with (`make test` runs the unit suites both ways). A compiled module older than its sources
stops the run: it would test code that is no longer there.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

PROXY = Path(__file__).resolve().parent.parent / "proxy"
PURE = os.environ.get("SLUICEGATE_PURE", "") not in ("", "0")


def compiled_modules() -> dict[str, Path]:
    """Module name (e.g. "listener") → its compiled extension, for every proxy module compiled from a .py."""
    out = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for ext in PROXY.glob(f"*{suffix}"):
            name = ext.name[: -len(suffix)]
            if (PROXY / f"{name}.py").exists():
                out[name] = ext
    return out


def stale_modules() -> list[str]:
    """Compiled modules older than their .py or .pxd: run `make build`."""
    stale = []
    for name, ext in compiled_modules().items():
        sources = [PROXY / f"{name}.py", PROXY / f"{name}.pxd"]
        if any(src.exists() and src.stat().st_mtime > ext.stat().st_mtime for src in sources):
            stale.append(name)
    return sorted(stale)


class _SourcesOnly:
    """A meta path finder that loads proxy.<module> from its .py even where a compiled one sits beside it."""

    def find_spec(self, fullname: str, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != "proxy" or not name or "." in name:
            return None
        source = PROXY / f"{name}.py"
        if not source.exists():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def install() -> None:
    """Called from conftest before any proxy module is imported."""
    if PURE:
        sys.meta_path.insert(0, _SourcesOnly())
