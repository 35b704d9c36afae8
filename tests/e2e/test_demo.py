"""`make demo` / `sluicegate demo`: installs only the package, starts clean, prints no warnings of ours."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.processes import free_port, http_get, wait_until

REPO = Path(__file__).resolve().parents[2]


def test_make_demo_installs_the_package_without_test_or_bench_extras(tmp_path):
    venv = tmp_path / "venv"
    plan = subprocess.run(["make", "-n", "demo", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs == [f"{venv}/bin/python -m pip install -qq -e ."], plan
    assert f"{venv}/bin/sluicegate demo" in plan


def test_the_demo_starts_and_prints_no_warnings(tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    cluster_port = free_port()
    config["listen"] = f"127.0.0.1:{free_port()}"
    config["admin_listen"] = f"127.0.0.1:{free_port()}"
    config["upstream"]["nodes"] = [f"http://127.0.0.1:{cluster_port}"]  # one simulated node on a free port
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "proxy", "demo", "--config", str(path)], cwd=REPO,
                                stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "default"})
        try:
            admin = "http://" + config["admin_listen"]
            wait_until(lambda: demo.poll() is not None or http_get(admin + "/ready")[0] == 200, 30, "demo ready")
            assert demo.poll() is None, out.read_text()
            assert http_get(admin + "/")[0] == 200  # the status page it advertises
        finally:
            demo.send_signal(signal.SIGTERM)
            demo.wait(timeout=15)
    text = out.read_text()
    assert "Sluicegate demo" in text and "listening on" in text
    assert not re.search(r"warn", text, re.IGNORECASE), text  # ours, and Python's (PYTHONWARNINGS=default)
