"""`sluicegate calibrate` (proxy/calibrate.py) against the simulated cluster: what it creates, deletes,
refuses and prints. The real-cluster figures are bench/accuracy.py's; here, the command's contract."""
from __future__ import annotations

import argparse
import io
import subprocess
import sys

import pytest
import yaml

from proxy import battery
from proxy.calibrate import (
    Cluster,
    LoadCap,
    add_arguments,
    create_sample_index,
    delete_index,
    run,
)
from proxy.config import CostConfig
from tests.processes import REPO


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def indices(url: str) -> dict[str, int]:
    cluster = Cluster(url)
    try:
        stats = cluster.json("GET", "/_stats/docs?filter_path=indices.*.primaries.docs.count") or {}
    finally:
        cluster.close()
    return {n: e["primaries"]["docs"]["count"] for n, e in (stats.get("indices") or {}).items()}


def calibrate(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(parse(*argv), out, err)
    return status, out.getvalue(), err.getvalue()


def test_sample_index_run_prints_a_weights_block_that_validates_and_deletes_its_scratch_indices(shared_cluster):
    before = set(indices(shared_cluster.url))
    status, out, err = calibrate("--node", shared_cluster.url, "--sample-index", "--sample-docs", "2000",
                                 "--runs", "1", "--max-rps", "1000")
    assert status == 0, err
    assert "# error before: median |log2 ratio|" in out and "# error after:  median |log2 ratio|" in out
    block = yaml.safe_load(out)
    cost = CostConfig.model_validate(block["cost"])  # ready to paste into the config
    assert len(block["cost"]["weights"]) >= 20 and cost.weights.search > 0
    assert "scratch indices deleted" in err and "shapes measured" in err
    assert set(indices(shared_cluster.url)) == before  # nothing left behind


def test_dry_run_sends_nothing_but_reads_and_lists_the_plan():
    from tests.processes import SimClusterProcess

    cluster = SimClusterProcess(nodes=1)
    try:
        before = indices(cluster.url)
        result = subprocess.run([sys.executable, "-m", "proxy", "calibrate", "--node", cluster.url, "--sample-index",
                                 "--dry-run"], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "nothing was sent" in result.stdout and "leading wildcard on a text field" in result.stdout
        assert indices(cluster.url) == before
    finally:
        cluster.stop()


def test_the_load_cap_stops_early_says_so_and_still_cleans_up(shared_cluster):
    before = set(indices(shared_cluster.url))
    status, out, err = calibrate("--node", shared_cluster.url, "--sample-index", "--sample-docs", "1000",
                                 "--runs", "1", "--max-rps", "1000", "--max-cluster-ms", "40")
    assert "stopped early" in err and "--max-cluster-ms" in err
    assert status in (0, 1)
    assert set(indices(shared_cluster.url)) == before


def test_named_index_run_is_read_only(shared_cluster):
    cluster = Cluster(shared_cluster.url)
    name = "calib-readonly-000001"
    try:
        create_sample_index(cluster, name, 1500, seed=3, kind="logs")
        before = indices(shared_cluster.url)
        status, out, err = calibrate("--node", shared_cluster.url, "--index", "calib-readonly-*", "--runs", "1",
                                     "--max-rps", "1000")
        assert status == 0, err
        assert f"index {name} (1,500 Lucene documents), read-only" in err
        assert "_bulk" not in out
        assert indices(shared_cluster.url) == before  # no index made, no document written
    finally:
        delete_index(cluster, name)
        cluster.close()


def test_clear_errors_for_what_cannot_run(shared_cluster):
    status, _, err = calibrate("--node", "http://127.0.0.1:9", "--sample-index")
    assert status == 2 and "cannot use the cluster" in err
    status, _, err = calibrate("--node", "ftp://x", "--sample-index")
    assert status == 2 and "must look like http://host:9200" in err
    status, _, err = calibrate("--node", shared_cluster.url, "--index", "no-such-index-*")
    assert status == 2 and "names no open index" in err
    status, _, err = calibrate("--node", shared_cluster.url, "--sample-index", "--runs", "0")
    assert status == 2 and "--runs" in err


def test_load_cap_paces_requests_and_counts_cluster_ms():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    cap = LoadCap(max_rps=4.0, max_cluster_ms=100.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        cap.before()
        cap.after(30.0)
    assert slept == pytest.approx([0.25, 0.25])
    cap.before()
    cap.after(30.0)
    assert cap.spent == 120.0 and cap.requests == 4
    with pytest.raises(Exception, match="max-cluster-ms"):
        cap.before()


def test_every_read_shape_runs_on_the_simulated_cluster(shared_cluster):
    """The battery's requests are valid Elasticsearch requests (the simulator parses them like ES)."""
    cluster = Cluster(shared_cluster.url)
    name = "calib-valid-000001"
    try:
        create_sample_index(cluster, name, 500, kind="logs")
        fields = battery.sample_fields(name, scripts=False)
        for shape in battery.shapes(fields):
            request = shape.build(fields, 1)
            status, body = cluster.request(request.method, request.path, request.body, request.content_type)
            assert status == 200, (shape.name, body[:300])
    finally:
        delete_index(cluster, name)
        cluster.close()
