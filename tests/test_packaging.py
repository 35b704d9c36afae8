"""The Dockerfile lints clean, and its build stage makes a wheel that works (no Docker engine here)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _build_stage_wheel_command() -> list[str]:
    """The `pip wheel` RUN line of the Dockerfile's build stage, as an argument list."""
    stage = DOCKERFILE.read_text().split("FROM ")[1]  # the first stage
    match = re.search(r"^RUN (pip wheel .*)$", stage, re.MULTILINE)
    assert match, "the build stage must build the wheel with pip wheel"
    return match.group(1).split()


@pytest.mark.slow
def test_build_stage_command_makes_a_working_wheel(tmp_path):
    args = _build_stage_wheel_command()
    wheels = tmp_path / "wheels"
    # Same command, run here: /wheels becomes a temp dir and '.' the checkout. Dependencies are
    # published wheels already, so only our own package is built (--no-deps keeps it offline-fast).
    command = [sys.executable, "-m"] + [str(wheels) if a == "/wheels" else str(REPO) if a == "." else a for a in args]
    command.insert(command.index("wheel") + 1, "--no-deps")
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path, timeout=600)
    built = list(wheels.glob("sluicegate-*.whl"))
    assert len(built) == 1 and "linux" in built[0].name  # platform wheel: the Cython core is compiled in
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(built[0])],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run(
        [sys.executable, "-c", "import proxy, proxy._ratelimit as r; print(proxy.__file__); print(r.__file__); "
         "t = r.TokenBucketTable(); t.configure('k', 1.0, 5.0, 0.0); print(t.try_acquire('k', 2.0, 0.0))"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )
    package_file, core_file, decision = probe.stdout.split()
    assert package_file.startswith(str(site)) and core_file.startswith(str(site)) and core_file.endswith(".so")
    assert float(decision) == 0.0
    compiled = subprocess.run(  # the request path's modules are compiled in the wheel too
        [sys.executable, "-c", "import proxy.listener, proxy.flow, proxy.admission, proxy.upstream_http as u; "
         "print(all(m.__file__.endswith('.so') for m in (proxy.listener, proxy.flow, proxy.admission, u)))"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )
    assert compiled.stdout.strip() == "True", compiled.stdout
    check = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(REPO / "config" / "docker.yaml")],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    shipped = {p.name for p in (site / "proxy" / "lua").glob("*.lua")}
    assert shipped == {p.name for p in (REPO / "proxy" / "lua").glob("*.lua")}  # the Redis scripts ship as package data
    page = {p.name for p in (site / "proxy" / "static").iterdir() if p.suffix in (".html", ".css", ".js")}
    assert page == {"index.html", "cockpit.css", "cockpit.js"}  # the status page ships too
    assert (site / "proxy" / "sluicegate.schema.json").read_bytes() == (REPO / "proxy" / "sluicegate.schema.json").read_bytes()
    schema = subprocess.run([sys.executable, "-m", "proxy", "schema"], capture_output=True, env=env, cwd=tmp_path,
                            check=True)
    assert schema.stdout == (site / "proxy" / "sluicegate.schema.json").read_bytes()


def test_the_tests_run_the_build_they_say():
    """Compiled modules are the ones imported (SLUICEGATE_PURE=1: the .py twins), and are not stale."""
    import importlib

    from tests import builds

    compiled = builds.compiled_modules()
    assert {"listener", "upstream_http", "admission", "flow"} <= set(compiled)
    assert builds.stale_modules() == []
    for name in compiled:
        module = importlib.import_module(f"proxy.{name}")
        assert module.__file__.endswith(".py" if builds.PURE else str(compiled[name].name)), module.__file__
