"""bench/realcluster.py as an operator runs it: `start` prints its JSON line once green, `stop-node` and
`start-node` work from another process, and SIGTERM leaves no node process behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.processes import REPO
from tests.realclusters import http_json

pytestmark = pytest.mark.real_cluster


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting to be reaped is not a running node
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_the_command_starts_a_cluster_survives_a_node_restart_and_leaves_nothing_behind():
    script = str(REPO / "bench" / "realcluster.py")
    # a run directory of its own (the node user must be able to reach it: not under root's pytest tmp)
    run_root = Path("/var/tmp/sluicegate" if os.geteuid() == 0 else tempfile.gettempdir()) / f"cli-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SLUICEGATE_RUN_DIR": str(run_root)}
    start = subprocess.Popen([sys.executable, script, "start", "--flavor", "opensearch", "--nodes", "1", "--heap", "384m"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = start.stdout.readline()
        assert line, start.stderr.read()
        info = json.loads(line)
        assert info["flavor"] == "opensearch" and info["version"] == "2.19.6" and len(info["nodes"]) == 1
        (pid,) = info["pids"]
        status, health = http_json(info["nodes"][0] + "/_cluster/health")
        assert status == 200 and health["status"] == "green" and health["number_of_nodes"] == 1

        def node_command(*args):
            done = subprocess.run([sys.executable, script, *args, "--flavor", "opensearch", "--node", "0"],
                                  capture_output=True, text=True, env=env, timeout=300)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        assert node_command("stop-node")["pids"] == [None]
        assert not group_alive(pid) and http_json(info["nodes"][0] + "/")[0] == 0
        restarted = node_command("start-node")["pids"][0]
        assert restarted and restarted != pid and http_json(info["nodes"][0] + "/_cluster/health")[0] == 200
    finally:
        start.send_signal(signal.SIGTERM)
        code = start.wait(timeout=60)
    assert code == 0
    assert not group_alive(restarted)  # started by another process, stopped by the one that owns the cluster
    assert not Path(info["state"]).exists()  # its run directory is gone too
    shutil.rmtree(run_root, ignore_errors=True)
