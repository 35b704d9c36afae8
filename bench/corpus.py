#!/usr/bin/env python3
"""A realistic corpus in a real cluster: seeded log-like and catalogue-like indices, loaded through _bulk.

    python bench/corpus.py --node http://127.0.0.1:9200 [--docs 300000] [--kinds logs,catalogue]
                           [--prefix corpus] [--shards 2] [--seed 1] [--force]

The documents are proxy/sample_docs.py's (the ones `sluicegate calibrate --sample-index` loads, at
scale): a Zipf-vocabulary message, high-cardinality user and session ids, 30 days of timestamps,
numeric fields, keyword tags and a nested field; products with nested variants. Each index has 2
shards and no replica, `index.requests.cache.enable: false` (the benches measure work, not the
request cache), and is force-merged to one segment per shard once loaded (no merges run under a
bench, and every run sees the same layout).

Loaded indices are kept: each carries a marker in its mapping's `_meta` (kind, seed, documents,
corpus version) set once its load completed. `ensure` checks the marker and the document count and
loads only what is missing or different, so a cluster that is kept between runs is loaded once.

Importable: `ensure(node, docs=..., kinds=..., prefix=...)` returns the index names and their
documents; `CorpusIndex` describes one index (`bench/storm.py` loads its own tenant indices this way).
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import sample_docs  # noqa: E402
from proxy.calibrate import Cluster, ClusterError  # noqa: E402

#: bump when the documents or mappings change: indices with another version are reloaded
CORPUS_VERSION = 2
DEFAULT_DOCS = 300_000
BULK_DOCS = 2_000


@dataclass(frozen=True)
class CorpusIndex:
    """One index of the corpus: its name, kind of documents (`logs`, `catalogue`), size and seed."""

    name: str
    kind: str
    docs: int
    seed: int = 1
    shards: int = 2
    replicas: int = 0

    @property
    def marker(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "docs": self.docs, "version": CORPUS_VERSION}


def default_indices(docs: int = DEFAULT_DOCS, kinds: Sequence[str] = sample_docs.KINDS, prefix: str = "corpus",
                    seed: int = 1, shards: int = 2) -> list[CorpusIndex]:
    return [CorpusIndex(f"{prefix}-{kind}", kind, docs, seed, shards) for kind in kinds]


def is_loaded(cluster: Cluster, index: CorpusIndex) -> bool:
    """The index exists, its marker says it is this corpus, completely loaded, and it holds its documents."""
    status, raw = cluster.request("GET", f"/{index.name}/_mapping")
    if status != 200:
        return False
    mapping = next(iter(orjson.loads(raw).values()), {}).get("mappings") or {}
    meta = (mapping.get("_meta") or {}).get("sluicegate_corpus")
    if meta != {**index.marker, "complete": True}:
        return False
    cluster.json("POST", f"/{index.name}/_refresh")
    count = cluster.json("GET", f"/{index.name}/_count")["count"]
    return count == index.docs


def load(nodes: Sequence[str], index: CorpusIndex, senders: int = 2,
         progress: Callable[[str], None] | None = None) -> float:
    """(Re)create `index` and load its documents through _bulk from `senders` threads; seconds taken."""
    started = time.monotonic()
    admin = Cluster(nodes[0])
    try:
        admin.json("DELETE", f"/{index.name}", ok=(200, 404))
        mapping = {**sample_docs.MAPPINGS[index.kind], "_meta": {"sluicegate_corpus": index.marker}}
        admin.json("PUT", f"/{index.name}", {
            "settings": {"number_of_shards": index.shards, "number_of_replicas": 0, "refresh_interval": "-1",
                         "index.requests.cache.enable": False, "index.translog.durability": "async"},
            "mappings": mapping,
        })
        bodies: queue.Queue[bytes | None] = queue.Queue(maxsize=senders * 2)
        failures: list[str] = []

        def send(node: str) -> None:
            client = Cluster(node, timeout=300)
            try:
                while (body := bodies.get()) is not None:
                    if failures:
                        continue
                    try:
                        status, raw = client.request("POST", "/_bulk", body, "application/x-ndjson")
                    except ClusterError as exc:
                        failures.append(str(exc))
                        continue
                    if status != 200 or b'"errors":true' in raw[:100]:
                        failures.append(f"_bulk HTTP {status}: {raw[:300].decode('utf-8', 'replace')}")
            finally:
                client.close()

        threads = [threading.Thread(target=send, args=(nodes[i % len(nodes)],), daemon=True) for i in range(senders)]
        for t in threads:
            t.start()
        action = orjson.dumps({"index": {"_index": index.name}}) + b"\n"
        last = time.monotonic()
        for start in range(0, index.docs, BULK_DOCS):
            n = min(BULK_DOCS, index.docs - start)
            docs = sample_docs.documents(index.kind, index.seed, start, n, index.docs)
            bodies.put(b"".join(action + orjson.dumps(doc) + b"\n" for doc in docs))
            if failures:
                break
            if progress is not None and time.monotonic() - last > 5:
                last = time.monotonic()
                progress(f"{index.name}: {start + n:,}/{index.docs:,} documents, {last - started:.0f} s")
        for _ in threads:
            bodies.put(None)
        for t in threads:
            t.join()
        if failures:
            raise ClusterError(f"loading {index.name}: {failures[0]}")
        admin.json("PUT", f"/{index.name}/_settings", {"index": {"refresh_interval": "1s",
                                                                   "translog.durability": "request"}})
        admin.json("POST", f"/{index.name}/_refresh")
        # one segment per shard: no merges running under the benches, and the same layout on every run
        admin.json("POST", f"/{index.name}/_forcemerge?max_num_segments=1")
        admin.json("POST", f"/{index.name}/_refresh")
        count = admin.json("GET", f"/{index.name}/_count")["count"]
        if count != index.docs:
            raise ClusterError(f"loading {index.name}: {count} documents after the load, expected {index.docs}")
        admin.json("PUT", f"/{index.name}/_mapping", {"_meta": {"sluicegate_corpus": {**index.marker, "complete": True}}})
    finally:
        admin.close()
    return time.monotonic() - started


def ensure(nodes: str | Sequence[str], docs: int = DEFAULT_DOCS, kinds: Sequence[str] = sample_docs.KINDS,
           prefix: str = "corpus", seed: int = 1, shards: int = 2, force: bool = False,
           indices: Sequence[CorpusIndex] | None = None,
           progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Make sure the corpus is in the cluster (loading only what is missing or different, or all of it
    with `force`); {index name: documents}."""
    nodes = [nodes] if isinstance(nodes, str) else list(nodes)
    wanted = list(indices) if indices is not None else default_indices(docs, kinds, prefix, seed, shards)
    check = Cluster(nodes[0])
    try:
        for index in wanted:
            if not force and is_loaded(check, index):
                if progress is not None:
                    progress(f"{index.name}: already loaded ({index.docs:,} documents)")
                continue
            seconds = load(nodes, index, progress=progress)
            if progress is not None:
                progress(f"{index.name}: loaded {index.docs:,} documents in {seconds:.0f} s "
                         f"({index.docs / max(seconds, 1e-9):,.0f}/s)")
    finally:
        check.close()
    return {index.name: index.docs for index in wanted}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", action="append", required=True, help="a node URL (repeat for several)")
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help=f"documents per index (default {DEFAULT_DOCS:,})")
    parser.add_argument("--kinds", default=",".join(sample_docs.KINDS), help="logs, catalogue or both (comma list)")
    parser.add_argument("--prefix", default="corpus", help="index names are <prefix>-<kind>")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="reload even if the indices are there")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    started = time.monotonic()
    try:
        loaded = ensure(args.node, args.docs, kinds, args.prefix, args.seed, args.shards, args.force,
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    except ClusterError as exc:
        print(f"corpus: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"indices": loaded, "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
