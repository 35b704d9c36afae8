#!/usr/bin/env python3
"""The cost model's truth table: Sluicegate's estimate beside what each query shape really costs a real cluster.

    python bench/accuracy.py [--flavor opensearch,elasticsearch] [--docs 300000] [--runs 10]
                             [--node-opensearch URL] [--node-elasticsearch URL] [--keep] [--no-write]

For each flavor it starts a real 3-node cluster (bench/realcluster.py; or uses the node given),
loads the corpus (bench/corpus.py: log-like and catalogue-like indices, 2 shards each, request
cache off), and runs every shape of the battery (proxy/battery.py) on each corpus index, plus the
_bulk shapes on a scratch index: one warm-up, then `--runs` measured runs, one request at a time.

- observed cost: `took` × shards searched, read from the first 512 bytes of the response exactly
  as the proxy's settle step reads it (proxy/cost_observed.py); the truth of a shape is the median;
- estimate: `CostModel(Weights())` (the shipped defaults, or `--config`'s) with the cluster's
  index sizes as the proxy polls them (`GET /_stats/docs`, filtered);
- learned: the shape's observations fed one by one through `LearnedCosts` with the config's
  defaults (alpha, max_rise), as the settle step does; its value after 1, 3 and 10 observations
  against the truth.

Prints and writes to bench/RESULTS.md (section `accuracy`): the per-shape table, the median
|log2(estimate / observed)|, the Spearman rank correlation, the share of shapes under-estimated
by more than 2× and 4×, and how far the learned cost is from the truth.
Elasticsearch 8.19's integ-test distribution has no painless: the script shapes run on OpenSearch only.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import corpus  # noqa: E402
from bench.report import Table, command_line, machine, machine_markdown, update_section  # noqa: E402
from proxy import battery  # noqa: E402
from proxy.calibrate import (  # noqa: E402
    Cluster,
    LoadCap,
    Measurement,
    Progress,
    cluster_info,
    delete_index,
    index_sizes,
    measure,
)
from proxy.calibrate_fit import error_summary, median  # noqa: E402
from proxy.config import CostConfig, load_config  # noqa: E402
from proxy.cost import CostModel, IndexSizes, LearnedCosts, Weights  # noqa: E402
from proxy.calibrate import fit, weights_yaml  # noqa: E402
from proxy.sample_docs import LOGS_MAPPING  # noqa: E402

SCRATCH = "corpus-bulk-scratch"
LEARNED_AFTER = (1, 3, 10)


@dataclass
class FlavorResult:
    flavor: str
    version: str
    scripts: bool
    docs: dict[str, int]
    rows: list[tuple[str, Measurement]]   # (label, measurement), measured shapes only
    failed: list[tuple[str, Measurement]]
    seconds: float
    requests: int
    cluster_ms: float
    sizes: IndexSizes

    def to_json(self) -> dict:
        def one(label: str, m: Measurement) -> dict:
            return {"label": label, "shape": m.name, "index": m.fields.index, "kind": _kind(m.fields),
                    "observed": m.observed, "estimates": m.estimates, "errors": m.errors[:2]}

        return {"flavor": self.flavor, "version": self.version, "scripts": self.scripts, "docs": self.docs,
                "seconds": self.seconds, "requests": self.requests, "cluster_ms": self.cluster_ms,
                "sizes": self.sizes.docs, "rows": [one(label, m) for label, m in self.rows + self.failed]}

    @classmethod
    def from_json(cls, data: dict) -> FlavorResult:
        shapes = {s.name: s for s in battery.SHAPES}
        rows, failed = [], []
        for row in data["rows"]:
            fields = battery.sample_fields(row["index"], row["kind"], scripts=data["scripts"])
            m = Measurement(shapes[row["shape"]], fields, list(row["estimates"]), list(row["observed"]),
                            errors=list(row["errors"]))
            (rows if m.observed else failed).append((row["label"], m))
        return cls(data["flavor"], data["version"], data["scripts"], data["docs"], rows, failed, data["seconds"],
                   data["requests"], data["cluster_ms"], IndexSizes(data["sizes"]))


def _kind(fields: battery.Fields) -> str:
    return "catalogue" if fields.text == "description" else "logs"


def reestimate(result: FlavorResult, weights: Weights) -> None:
    """Estimate every measured shape again with `weights` (the run-0 request of each, as calibrate fits)."""
    model = CostModel(weights)
    for _, m in result.rows:
        m.estimates = [battery.estimate(model, m.shape.build(m.fields, 0), result.sizes).cost]


def learned_after(observed: Sequence[float], count: int, config: CostConfig) -> list[float]:
    """The learned cost after `count` observations, fed in order as the proxy's settle step does, from
    every starting point of the run (the proxy may start learning a shape at any moment: a measure that
    began at the first round only would say more about how busy the machine was then than about learning)."""
    out: list[float] = []
    for start in range(0, len(observed) - count + 1):
        learned = LearnedCosts(16, config.learn_alpha, config.learn_max_rise)
        for value in observed[start:start + count]:
            current = learned.observe("tenant", 1, value)
        out.append(current)
    return out


def run_flavor(flavor: str, node: str | None, args: argparse.Namespace, weights: Weights) -> FlavorResult:
    cluster = None
    if node is None:
        from realcluster import RealCluster

        cluster = RealCluster(flavor, nodes=3, data_dir=args.data_dir / flavor if args.data_dir else None,
                              name=f"sg-accuracy-{flavor}")
        print(f"starting a 3-node {flavor} cluster ...", file=sys.stderr, flush=True)
        cluster.start(timeout=400)
        nodes = cluster.urls
    else:
        nodes = [node]
    try:
        corpus.ensure(nodes, args.docs, prefix=args.prefix, progress=lambda line: print(line, file=sys.stderr, flush=True))
        client = Cluster(nodes[0], timeout=300)
        info = cluster_info(client)
        client.json("DELETE", f"/{SCRATCH}", ok=(200, 404))
        client.json("PUT", f"/{SCRATCH}", {"settings": {"number_of_shards": 2, "number_of_replicas": 0},
                                           "mappings": LOGS_MAPPING})
        sizes = index_sizes(client)
        # a cluster started just now has cold JITs and caches: two more warm-up rounds than a running one
        warmup = args.warmup + (2 if cluster is not None else 0)
        model = CostModel(weights)
        cap = LoadCap(max_rps=args.max_rps, max_cluster_ms=math.inf)
        progress = Progress()
        started = time.monotonic()
        rows: list[tuple[str, Measurement]] = []
        failed: list[tuple[str, Measurement]] = []
        plans = [(f"{args.prefix}-{kind}", kind) for kind in ("logs", "catalogue")]
        for index, kind in plans:
            fields = battery.sample_fields(index, kind, scripts=info.scripts)
            chosen = battery.shapes(fields, only=args.only)
            print(f"{flavor} {info.version}: {len(chosen)} shapes on {index}", file=sys.stderr, flush=True)
            measured, stopped = measure(client, chosen, lambda s: fields, model, sizes, args.runs, warmup,
                                        cap, progress)
            for m in measured:
                (rows if m.observed else failed).append((f"{kind}: {m.name}", m))
            if stopped:
                print(f"stopped: {stopped}", file=sys.stderr)
        scratch = battery.sample_fields(SCRATCH)
        writes = [s for s in battery.shapes(scratch, writes=True, only=args.only) if s.write]
        measured, _ = measure(client, writes, lambda s: scratch, model, sizes, args.runs, warmup, cap, progress)
        for m in measured:
            (rows if m.observed else failed).append((f"writes: {m.name}", m))
        delete_index(client, SCRATCH)
        client.close()
        docs = {n: d for n, d in sizes.docs.items() if n.startswith(args.prefix) and n != SCRATCH}
        return FlavorResult(flavor, info.version, info.scripts, docs, rows, failed, time.monotonic() - started,
                            cap.requests, cap.spent, sizes)
    finally:
        if cluster is not None and not args.keep:
            cluster.stop()


def report(results: list[FlavorResult], config: CostConfig, args: argparse.Namespace) -> str:
    lines: list[str] = []
    summary = Table("Cost estimate accuracy", ["flavor", "shapes", "median |log2 est/obs|", "Spearman",
                                               "under-est. >2x", "under-est. >4x", "worst under-est.",
                                               *(f"learned / truth after {k} (within 1.3x)" for k in LEARNED_AFTER)])
    details: list[Table] = []
    for result in results:
        labels = [label for label, _ in result.rows]
        estimates = [m.estimate for _, m in result.rows]
        truth = [m.truth for _, m in result.rows]
        errors = error_summary(labels, estimates, truth)
        learned = {k: [] for k in LEARNED_AFTER}
        table = Table(f"{result.flavor} {result.version}: estimate vs observed (cost units = took ms x shards)",
                      ["shape", "estimate", "observed median", "ratio est/obs", "learned after 3 vs truth (median)", "runs"])
        for label, m in result.rows:
            for k in LEARNED_AFTER:
                learned[k] += [value / m.truth for value in learned_after(m.observed, k, config)]
            three = [value / m.truth for value in learned_after(m.observed, 3, config)]
            ratio = m.estimate / m.truth
            flag = " (under >4x)" if ratio < 0.25 else " (under >2x)" if ratio < 0.5 else ""
            table.add(label, f"{m.estimate:,.1f}", f"{m.truth:,.1f}", f"{ratio:.2f}{flag}",
                      f"{2 ** median([abs(math.log2(r)) for r in three]):.2f}x" if three else "-", len(m.observed))
        for label, m in result.failed:
            table.add(label, "-", "-", "did not run", "-", m.errors[0][:60] if m.errors else "")
        details.append(table)
        within = {k: (sum(1 for r in v if 1 / 1.3 <= r <= 1.3) / len(v) if v else math.nan) for k, v in learned.items()}
        med = {k: (median([abs(math.log2(r)) for r in v]) if v else math.nan) for k, v in learned.items()}
        summary.add(f"{result.flavor} {result.version}", errors.shapes, f"{errors.median_abs_log2:.2f}",
                    f"{errors.spearman:.2f}", f"{errors.under_2x:.0%}", f"{errors.under_4x:.0%}",
                    f"{errors.worst_under:.1f}x {errors.worst_under_shape}",
                    *(f"{2 ** med[k]:.2f}x ({within[k]:.0%})" for k in LEARNED_AFTER))
    summary.print()
    for table in details:
        table.print()
    lines.append("### Cost truth: the estimate against real clusters\n")
    lines.append(f"Command: `{command_line()}`\n")
    lines.append(machine_markdown(machine()) + "\n")
    for result in results:
        lines.append(f"- {result.flavor} {result.version}: 3 nodes, corpus "
                     + ", ".join(f"{n} {d:,} Lucene docs" for n, d in sorted(result.docs.items()))
                     + f" (2 shards each); {result.requests:,} requests, {result.cluster_ms:,.0f} cluster-ms, "
                     f"{result.seconds:.0f} s" + ("" if result.scripts else "; no painless: script shapes skipped"))
    lines.append("")
    lines.append(summary.markdown() + "\n")
    for table in details:
        lines.append(f"<details><summary>{table.title}</summary>\n\n{table.markdown()}\n\n</details>\n")
    return "\n".join(lines)


def fit_all(results: list[FlavorResult], weights: Weights, prior: float) -> str:
    """One set of weights for every flavor's measurements; the YAML block and each flavor's error after."""
    measured = [m for r in results for _, m in r.rows]
    owner = {id(m): r for r in results for _, m in r.rows}
    result = fit(measured, weights, lambda m: owner[id(m)].sizes, prior=prior)
    header = [f"bench/accuracy.py --fit: {', '.join(f'{r.flavor} {r.version}' for r in results)}, "
              f"{len(measured)} measured shapes"]
    lines = [weights_yaml(result, header)]
    for r in results:
        reestimate(r, result.after)
        labels = [label for label, _ in r.rows]
        errors = error_summary(labels, [m.estimate for _, m in r.rows], [m.truth for _, m in r.rows])
        lines.append(f"# {r.flavor} {r.version} after the fit: {errors.line()}")
    return "\n".join(lines)


def cross_validate(results: list[FlavorResult], weights: Weights, prior: float, folds: int = 5) -> str:
    """Held-out error: the shapes split into `folds` groups by name (a shape's logs, catalogue and both
    flavors' runs stay together); each group estimated with weights fitted on the others."""
    names = sorted({m.name for r in results for _, m in r.rows})
    group = {name: i % folds for i, name in enumerate(names)}
    owner = {id(m): r for r in results for _, m in r.rows}
    held: dict[int, float] = {}
    for k in range(folds):
        train = [m for r in results for _, m in r.rows if group[m.name] != k]
        result = fit(train, weights, lambda m: owner[id(m)].sizes, prior=prior)
        model = CostModel(result.after)
        for r in results:
            for _, m in r.rows:
                if group[m.name] == k:
                    held[id(m)] = battery.estimate(model, m.shape.build(m.fields, 0), r.sizes).cost
    lines = []
    for r in results:
        labels = [label for label, _ in r.rows]
        errors = error_summary(labels, [held[id(m)] for _, m in r.rows], [m.truth for _, m in r.rows])
        lines.append(f"# {r.flavor} {r.version}, {folds}-fold held out: {errors.line()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", default="opensearch,elasticsearch")
    parser.add_argument("--node-opensearch", help="use this running OpenSearch node instead of starting a cluster")
    parser.add_argument("--node-elasticsearch", help="use this running Elasticsearch node instead of starting a cluster")
    parser.add_argument("--docs", type=int, default=corpus.DEFAULT_DOCS, help="documents per corpus index")
    parser.add_argument("--prefix", default="corpus")
    parser.add_argument("--runs", type=int, default=10, help="measured runs per shape (default 10)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-rps", type=float, default=50.0)
    parser.add_argument("--only", action="append", help="only this shape (repeat)")
    parser.add_argument("--config", help="estimate with this config's cost.weights")
    parser.add_argument("--data-dir", type=Path, help="keep the clusters (and the corpus) here between runs")
    parser.add_argument("--keep", action="store_true", help="leave the clusters running")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite bench/RESULTS.md")
    parser.add_argument("--save", type=Path, help="keep the raw measurements in this JSON file")
    parser.add_argument("--load", type=Path, action="append",
                        help="report (and --fit) from saved measurements instead of running (repeat per file)")
    parser.add_argument("--fit", action="store_true",
                        help="fit the weights to every flavor's measurements together and print the cost.weights block")
    parser.add_argument("--prior", type=float, default=0.05)
    args = parser.parse_args(argv)
    config = load_config(args.config)[0].cost if args.config else CostConfig()
    results: list[FlavorResult] = []
    if args.load:
        for path in args.load:
            for data in json.loads(path.read_text()):
                result = FlavorResult.from_json(data)
                reestimate(result, config.weights)
                results.append(result)
    else:
        for flavor in [f for f in args.flavor.split(",") if f]:
            node = getattr(args, f"node_{flavor}")
            results.append(run_flavor(flavor, node, args, config.weights))
        if args.save:
            args.save.write_text(json.dumps([r.to_json() for r in results]))
    if args.fit:
        print(fit_all(results, config.weights, args.prior))
        print(cross_validate(results, config.weights, args.prior))
        return 0
    text = report(results, config, args)
    if not args.no_write and not args.only:
        update_section("accuracy", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
