"""Real OpenSearch and Elasticsearch clusters for the `real_cluster` tests (bench/realcluster.py).

Starting a 3-node cluster takes 30-90 s of JVM start-up on this machine, so the session starts
each cluster it will need in a background thread as soon as the tests are collected (see
`tests/conftest.py`), while the fast tests run; a fixture then waits for it. One cluster per
flavor and kind serves the whole session, and every test uses indices of its own.

`SLUICEGATE_OPENSEARCH_CLUSTER` / `SLUICEGATE_ELASTICSEARCH_CLUSTER` may name the state file of a
cluster that `python bench/realcluster.py start` is already running (its JSON line's `state`):
the tests then use that cluster and leave it running — the quick loop while developing.

A cluster that cannot start (no JDK, no Maven, no distribution) fails its tests: `make test`
installs all three, so a skip would only hide a broken set-up.
"""
from __future__ import annotations

import os
import sys
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from realcluster import ClusterError, RealCluster, http_json  # noqa: E402

__all__ = ["ClusterError", "RealCluster", "http_json", "KINDS", "ClusterPool", "unique_index"]

#: the clusters tests can ask for: (flavor, kind) → RealCluster keyword arguments
KINDS: dict[tuple[str, str], dict] = {
    # the drop-in matrix, observed costs, node loss: three nodes, as in production
    ("opensearch", "three"): {"nodes": 3},
    ("elasticsearch", "three"): {"nodes": 3},
    # cluster rejections: one node with a search pool of 1 thread and a queue of 1
    ("opensearch", "tiny-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1, "heap": "384m"},
    ("elasticsearch", "tiny-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1, "heap": "384m"},
    # a saturated search pool that queues instead of rejecting: one thread, a long queue
    ("opensearch", "queued-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1000, "heap": "384m"},
    ("elasticsearch", "queued-pool"): {"nodes": 1, "search_threads": 1, "search_queue": 1000, "heap": "384m"},
}


def unique_index(prefix: str) -> str:
    """An index name no other test (or earlier run on a shared cluster) uses; `prefix` is the tenant's."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class ClusterPool:
    """Starts clusters in background threads on demand, hands them out, stops them at the end."""

    def __init__(self):
        self._futures: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()

    def prefetch(self, key: tuple[str, str]) -> None:
        """Start cluster `key` in the background if nobody has yet."""
        with self._lock:
            if key in self._futures:
                return
            future: Future = Future()
            self._futures[key] = future
        threading.Thread(target=self._start, args=(key, future), name=f"cluster-{key[0]}-{key[1]}", daemon=True).start()

    def get(self, key: tuple[str, str], timeout: float = 600.0) -> RealCluster:
        """Cluster `key`, started (or attached to) and green; raises ClusterError if it could not start."""
        self.prefetch(key)
        return self._futures[key].result(timeout)

    def _start(self, key: tuple[str, str], future: Future) -> None:
        flavor, kind = key
        try:
            external = os.environ.get(f"SLUICEGATE_{flavor.upper()}_CLUSTER") if kind == "three" else None
            if external:
                cluster = RealCluster.attach(external)
                cluster.external = True  # type: ignore[attr-defined]
            else:
                cluster = RealCluster(flavor, name=f"sg-test-{flavor}-{kind}-{os.getpid()}", **KINDS[key])
                cluster.start(timeout=300)
            future.set_result(cluster)
        except BaseException as exc:  # noqa: BLE001 - handed to the fixture that waits for it
            future.set_exception(exc if isinstance(exc, Exception) else ClusterError(repr(exc)))

    def close(self) -> None:
        for future in self._futures.values():
            try:
                cluster = future.result(timeout=600)
            except Exception:  # noqa: BLE001 - a cluster that never started has nothing to stop
                continue
            if not getattr(cluster, "external", False):
                cluster.stop()
