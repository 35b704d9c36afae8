"""`sluicegate calibrate`: measure what the battery's shapes cost a real cluster and fit `cost.weights` to it.

    sluicegate calibrate --node URL [--index PATTERN | --sample-index] [--dry-run] [--max-rps N]
                         [--max-cluster-ms N] [--runs N]

With `--sample-index` it creates a scratch index of seeded sample documents (proxy/sample_docs.py),
runs the battery on it (writes included, into a second scratch index) and deletes both, whatever
happens. With `--index` it runs the read-only shapes against the largest index the pattern names,
with field roles discovered from its mapping and a sample of its documents. Each shape is run a few
times, one request at a time, with the request cache off; its observed cost is read from the
response exactly as the proxy's settle step reads it (`took` × shards searched) and its estimate is
made with the cluster's index sizes, as the proxy polls them. Then the weights are fitted
(proxy/calibrate_fit.py) and a `cost.weights` YAML block is printed with the error before and after.

The load it may put on the cluster is capped: requests per second (paced, one at a time) and a total
of observed cluster-milliseconds; at the cap it stops, fits what it measured, and says so.
The plain client here is synchronous (http.client): a command-line tool that sends one request at a
time needs no event loop.
"""
from __future__ import annotations

import base64
import http.client
import math
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import orjson

from . import battery
from .calibrate_fit import FITTABLE, ErrorSummary, Row, error_summary, fit_weights, linear_parts, median
from .clusterhealth import INDEX_DOCS_PATH, read_index_sizes
from .cost_estimate import CostModel, IndexSizes
from .cost_observed import observed_cost
from .cost_weights import Weights

#: how much of a response the proxy's settle step reads (proxy/flow.py HEAD_BYTES)
HEAD_BYTES = 512


class ClusterError(Exception):
    """The cluster could not be reached, or answered a set-up call with an error."""


class Cluster:
    """A plain HTTP/1.1 keep-alive client to one node: `http://[user:password@]host:port`.

    Not for the proxy's request path: for calibrate and the benches, which send one request at a time."""

    def __init__(self, url: str, timeout: float = 120.0, ca_file: str | None = None, insecure: bool = False,
                 api_key: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClusterError(f"--node {url!r} must look like http://host:9200 or https://user:password@host:9200")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or 9200}"
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port or 9200
        self.timeout = timeout
        self.headers: dict[str, str] = {}
        if parts.username is not None:
            raw = f"{parts.username}:{parts.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        if api_key:
            self.headers["Authorization"] = f"ApiKey {api_key}"
        self.context: ssl.SSLContext | None = None
        if self.scheme == "https":
            self.context = ssl.create_default_context(cafile=ca_file)
            if insecure:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.context is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self.context)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes = b"",
                content_type: str = "application/json") -> tuple[int, bytes]:
        """(status, body bytes) of one request; one retry on a fresh connection if a kept-alive one died."""
        headers = dict(self.headers)
        if body:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body or None, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt or isinstance(exc, TimeoutError):
                    raise ClusterError(f"{method} {self.url}{path}: {exc}") from exc
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, ok: Iterable[int] = (200, 201)) -> Any:
        """The decoded JSON answer of a set-up call; ClusterError if its status is not in `ok`."""
        data = orjson.dumps(body) if body is not None else b""
        status, raw = self.request(method, path, data)
        if status not in tuple(ok):
            raise ClusterError(f"{method} {path}: HTTP {status}: {raw[:300].decode('utf-8', 'replace')}")
        return orjson.loads(raw) if raw else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class ClusterInfo:
    flavor: str        # "opensearch" or "elasticsearch"
    version: str
    scripts: bool      # painless is installed (Elasticsearch's integ-test distribution has no scripting)


def cluster_info(cluster: Cluster) -> ClusterInfo:
    """Flavor, version and whether painless is installed, from the nodes info API (GET / is a module of
    its own in Elasticsearch 8, missing from distributions without it)."""
    nodes = cluster.json("GET", "/_nodes?filter_path=nodes.*.version,nodes.*.build_flavor,"
                                "nodes.*.modules.name,nodes.*.plugins.name") or {}
    listed = list((nodes.get("nodes") or {}).values())
    if not listed:
        raise ClusterError("GET /_nodes listed no node")
    first = listed[0]
    flavor = "elasticsearch" if "build_flavor" in first else "opensearch"  # OpenSearch dropped build_flavor
    names = {m.get("name") for node in listed for m in (node.get("modules") or []) + (node.get("plugins") or [])}
    return ClusterInfo(flavor, str(first.get("version", "?")), "lang-painless" in names)


def index_sizes(cluster: Cluster) -> IndexSizes:
    """Documents per index, polled exactly as the proxy polls them (proxy/clusterhealth.py)."""
    sizes = read_index_sizes(cluster.json("GET", INDEX_DOCS_PATH))
    return sizes if sizes is not None else IndexSizes({})


# ---- the load cap --------------------------------------------------------------------------------

class LoadCapReached(Exception):
    """The cap on cluster load was reached: stop measuring, keep what was measured."""


@dataclass
class LoadCap:
    """At most `max_rps` requests a second (paced) and `max_cluster_ms` observed cost units in all.

    `clock` and `sleep` are passed in so tests can run it without waiting."""

    max_rps: float = 5.0
    max_cluster_ms: float = 600_000.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    spent: float = 0.0
    requests: int = 0
    _next: float = 0.0

    def before(self) -> None:
        """Wait for this request's turn; LoadCapReached once the budget of cluster-ms is spent."""
        if self.spent >= self.max_cluster_ms:
            raise LoadCapReached(f"spent {self.spent:,.0f} of the {self.max_cluster_ms:,.0f} cluster-ms allowed "
                                 "(--max-cluster-ms)")
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + 1.0 / self.max_rps
        self.requests += 1

    def after(self, observed: float | None) -> None:
        if observed is not None:
            self.spent += observed


# ---- measuring -------------------------------------------------------------------------------------

@dataclass
class Measurement:
    """What one shape cost: its estimate per run and the observed cost per run (cost units)."""

    shape: battery.Shape
    fields: battery.Fields
    estimates: list[float] = field(default_factory=list)
    observed: list[float] = field(default_factory=list)
    fingerprint: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def estimate(self) -> float:
        return median(self.estimates)

    @property
    def truth(self) -> float:
        """What the shape costs (cost units): the observed median; for writes, the mean (Elasticsearch 8
        times _bulk with its cached clock, 200 ms a tick, so a small bulk's took is 0 or ~200: the mean of
        such readings is right on average, their median is one of the two)."""
        return sum(self.observed) / len(self.observed) if self.shape.write else median(self.observed)


def measure(cluster: Cluster, shapes: Sequence[battery.Shape], fields_for: Callable[[battery.Shape], battery.Fields],
            model: CostModel, sizes: IndexSizes, runs: int, warmup: int, cap: LoadCap,
            progress: Callable[[int, int, str, LoadCap], None] | None = None,
            first_run: int = 0) -> tuple[list[Measurement], str]:
    """Run every shape `warmup` + `runs` times, one request at a time, in rounds (each round runs each
    shape once, so a burst of load from elsewhere spreads over the shapes instead of landing on one).

    Returns the measurements (a shape whose requests fail keeps its errors and no observations) and
    why it stopped early ("" if it did not): at the load cap, or if the cluster stopped answering,
    it returns what it measured so far.
    """
    out = [Measurement(shape, fields_for(shape)) for shape in shapes]
    rounds = warmup + runs
    total = len(out) * rounds
    done = 0
    for round_ in range(rounds):
        for m in out:
            done += 1
            if len(m.errors) >= 2:
                continue  # a shape this cluster refuses: report it, do not hammer it
            if progress is not None:
                progress(done - 1, total, m.name, cap)
            run = first_run + round_
            request = m.shape.build(m.fields, run)
            estimate = battery.estimate(model, request, sizes)
            m.fingerprint = estimate.fingerprint
            try:
                cap.before()
            except LoadCapReached as exc:
                return [x for x in out if x.observed or x.errors], str(exc)
            try:
                status, body = cluster.request(request.method, request.path, request.body, request.content_type)
            except ClusterError as exc:
                return [x for x in out if x.observed or x.errors], f"the cluster stopped answering: {exc}"
            observed = observed_cost(body[:HEAD_BYTES]) if 200 <= status < 300 else None
            cap.after(observed)
            if status >= 300 or observed is None or b'"errors":true' in body[:HEAD_BYTES]:
                m.errors.append(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
                continue
            if round_ >= warmup:
                m.estimates.append(estimate.cost)
                m.observed.append(observed)
    if progress is not None:
        progress(total, total, "", cap)
    return out, ""


# ---- the fit ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    names: tuple[str, ...]
    before: Weights
    after: Weights
    error_before: ErrorSummary
    error_after: ErrorSummary
    estimates_after: tuple[float, ...]


#: how many times over an under-estimate's squared log error counts in the fit
UNDER_WEIGHT = 8.0


def fit(measurements: Sequence[Measurement], weights: Weights, sizes_for: Callable[[Measurement], IndexSizes],
        prior: float = 0.05, under_weight: float = UNDER_WEIGHT) -> Fit:
    """Fit the weights the measured shapes exercise; the error over those shapes before and after.

    _msearch shapes are measured but not fitted: the cluster reports one took for all its searches,
    run in parallel, so what is observed is not the thread time the estimate sums."""
    usable = [m for m in measurements if m.observed and not m.name.startswith("_msearch")]
    if not usable:
        raise ValueError("no shape was measured: nothing to fit")

    def estimator(m: Measurement) -> Callable[[Weights], float]:
        request, sizes = m.shape.build(m.fields, 0), sizes_for(m)
        return lambda w: battery.estimate(CostModel(w), request, sizes).cost

    estimators = [estimator(m) for m in usable]
    probe = [linear_parts(e, weights, FITTABLE) for e in estimators]
    names = tuple(n for j, n in enumerate(FITTABLE) if any(abs(parts[j]) > 1e-12 for parts, _ in probe))
    index = [FITTABLE.index(n) for n in names]
    values = weights.model_dump()
    start = [values[n] for n in names]
    rows = [Row(m.name, tuple(parts[j] for j in index), constant, m.truth)
            for m, (parts, constant) in zip(usable, probe)]
    fitted = fit_weights(rows, names, start, prior=prior, under_weight=under_weight)
    after = weights.model_copy(update={n: _round(v) for n, v in zip(names, fitted)})
    after = Weights.model_validate(after.model_dump())  # validate the bounds again
    labels = [m.name for m in usable]
    truth = [m.truth for m in usable]
    before_est = [m.estimate for m in usable]
    after_est = [e(after) for e in estimators]
    return Fit(names, weights, after, error_summary(labels, before_est, truth), error_summary(labels, after_est, truth),
               tuple(after_est))


def _round(value: float) -> float:
    """Three significant digits: the fit is not more precise than that."""
    if value <= 0:
        return 0.0
    digits = 2 - int(math.floor(math.log10(value)))
    return round(value, max(digits, 0)) if digits > 0 else float(round(value, digits))


def weights_yaml(fit_: Fit, header: Sequence[str]) -> str:
    """The `cost:` / `weights:` block to paste into the config, with the error before and after."""
    lines = [f"# {line}" for line in header]
    lines.append(f"# error before: {fit_.error_before.line()}")
    lines.append(f"# error after:  {fit_.error_after.line()}")
    lines.append("cost:")
    lines.append("  weights:")
    before = fit_.before.model_dump()
    for name in fit_.names:
        value = getattr(fit_.after, name)
        note = "" if value == before[name] else f"  # was {before[name]:g}"
        lines.append(f"    {name}: {value:g}{note}")
    return "\n".join(lines) + "\n"


# ---- the scratch sample index ---------------------------------------------------------------------

def create_sample_index(cluster: Cluster, name: str, docs: int, seed: int = 1, shards: int = 2,
                        kind: str = "logs", progress: Callable[[int, int], None] | None = None,
                        batch: int = 2_000) -> None:
    """Create `name` with the sample mapping and load `docs` seeded documents through _bulk, then refresh."""
    from . import sample_docs

    cluster.json("PUT", f"/{quote(name)}", {
        "settings": {"number_of_shards": shards, "number_of_replicas": 0, "refresh_interval": "-1",
                     "index.requests.cache.enable": False},
        "mappings": sample_docs.MAPPINGS[kind],
    })
    load_documents(cluster, name, kind, seed, 0, docs, docs, batch, progress)
    cluster.json("PUT", f"/{quote(name)}/_settings", {"index": {"refresh_interval": "1s"}})
    cluster.json("POST", f"/{quote(name)}/_refresh")


def load_documents(cluster: Cluster, name: str, kind: str, seed: int, start: int, count: int, total: int,
                   batch: int = 2_000, progress: Callable[[int, int], None] | None = None) -> None:
    """_bulk documents start .. start+count-1 of a seeded corpus of `total` into `name` (auto ids)."""
    from . import sample_docs

    action = orjson.dumps({"index": {"_index": name}})
    done = 0
    for offset in range(start, start + count, batch):
        n = min(batch, start + count - offset)
        body = b"".join(action + b"\n" + orjson.dumps(doc) + b"\n"
                        for doc in sample_docs.documents(kind, seed, offset, n, total))
        status, raw = cluster.request("POST", "/_bulk", body, "application/x-ndjson")
        if status != 200 or b'"errors":true' in raw[:200]:
            raise ClusterError(f"loading {name}: _bulk HTTP {status}: {raw[:300].decode('utf-8', 'replace')}")
        done += n
        if progress is not None:
            progress(done, count)


def delete_index(cluster: Cluster, name: str) -> None:
    cluster.json("DELETE", f"/{quote(name)}", ok=(200, 404))


# ---- discovery on an operator's index ----------------------------------------------------------------

def largest_index(cluster: Cluster, pattern: str) -> tuple[str, int]:
    """The largest open index (by primaries' documents) that `pattern` names, and its documents."""
    stats = cluster.json("GET", f"/{quote(pattern, safe=',*')}/_stats/docs?filter_path=indices.*.primaries.docs.count",
                         ok=(200,)) or {}
    counts = {n: e["primaries"]["docs"]["count"] for n, e in (stats.get("indices") or {}).items()}
    counts = {n: c for n, c in counts.items() if not n.startswith(".")} or counts
    if not counts:
        raise ClusterError(f"--index {pattern!r} names no open index")
    name = max(counts, key=lambda n: (counts[n], n))
    return name, counts[name]


def discover_fields(cluster: Cluster, index: str, scripts: bool, samples: int = 300) -> battery.Fields:
    mapping = cluster.json("GET", f"/{quote(index)}/_mapping") or {}
    properties = (next(iter(mapping.values()), {}) or {}).get("mappings") or {}
    hits = cluster.json("POST", f"/{quote(index)}/_search?request_cache=false", {
        "size": samples, "query": {"function_score": {"random_score": {"seed": 7, "field": "_seq_no"}}}})
    docs = [h.get("_source") or {} for h in ((hits or {}).get("hits") or {}).get("hits") or []]
    return battery.discover(index, properties, docs, scripts)


# ---- the command ------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (a line per shape when stderr is not a terminal)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, done: int, total: int, name: str, cap: LoadCap) -> None:
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "." * (width - filled)
        text = (f"[{bar}] {done}/{total} requests, {cap.spent:,.0f} cluster-ms" + (f"  {name[:60]}" if name else ""))
        if self.tty:
            self.stream.write("\r" + text.ljust(120)[:120] + ("\n" if done == total else ""))
            self.stream.flush()
        elif done == total or done % 25 == 0:  # a log, not a flood
            self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()


def add_arguments(parser: Any) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--index", help="run the read-only shapes against the largest index this pattern names")
    target.add_argument("--sample-index", action="store_true",
                        help="create a scratch index of sample documents, run every shape on it, delete it")
    parser.add_argument("--node", required=True, help="a node of the cluster: http(s)://[user:password@]host:port")
    parser.add_argument("--api-key", help="send 'Authorization: ApiKey <this>' (else the URL's user:password, if any)")
    parser.add_argument("--ca-file", help="CA bundle for an https node")
    parser.add_argument("--insecure", action="store_true", help="do not verify the node's TLS certificate")
    parser.add_argument("--config", help="start from this config's cost.weights (default: the shipped defaults)")
    parser.add_argument("--sample-docs", type=int, default=100_000,
                        help="documents in the scratch sample index (default 100,000 = reference_docs)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per shape (default 3), after one warm-up")
    parser.add_argument("--max-rps", type=float, default=5.0, help="at most this many requests a second (default 5)")
    parser.add_argument("--max-cluster-ms", type=float, default=600_000.0,
                        help="stop after the shapes have cost the cluster this many milliseconds of search threads "
                             "in all (default 600,000: ten thread-minutes)")
    parser.add_argument("--prior", type=float, default=0.05,
                        help="how strongly weights stay near their start (0: pure least squares)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run and its estimated cost; send nothing but read-only set-up calls")


def run(args: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The calibrate command; returns the exit status (0: weights printed, 1: nothing fitted, 2: set-up failed)."""
    progress = Progress(err)
    weights = Weights()
    if args.config:
        from .config import ConfigError, load_config

        try:
            weights = load_config(args.config)[0].cost.weights
        except ConfigError as exc:
            progress.note(f"calibrate: {args.config}: {exc}")
            return 2
    if args.runs < 1 or args.max_rps <= 0 or args.max_cluster_ms <= 0 or args.sample_docs < 1000:
        progress.note("calibrate: --runs must be >= 1, --max-rps and --max-cluster-ms > 0, --sample-docs >= 1000")
        return 2
    try:
        cluster = Cluster(args.node, api_key=args.api_key, ca_file=args.ca_file, insecure=args.insecure)
        info = cluster_info(cluster)
    except ClusterError as exc:
        progress.note(f"calibrate: cannot use the cluster: {exc}")
        return 2
    model = CostModel(weights)
    cap = LoadCap(args.max_rps, args.max_cluster_ms)
    created: list[str] = []
    started = time.monotonic()
    measurements: list[Measurement] = []
    stopped = ""
    setup_failed = False
    try:
        if args.sample_index:
            suffix = uuid.uuid4().hex[:8]
            name, scratch = f"sluicegate-calibrate-{suffix}", f"sluicegate-calibrate-{suffix}-bulk"
            reads, writes = battery.sample_fields(name, scripts=info.scripts), battery.sample_fields(scratch)
            chosen = battery.shapes(reads, writes=True)
            target = f"a scratch index {name} of {args.sample_docs:,} sample documents"
        else:
            name, docs = largest_index(cluster, args.index)
            reads = writes = discover_fields(cluster, name, info.scripts)
            chosen = battery.shapes(reads, writes=False)
            target = f"index {name} ({docs:,} Lucene documents), read-only"
        fields_for = (lambda s: writes if s.write else reads)
        requests = len(chosen) * (args.runs + 1)
        progress.note(f"calibrate: {info.flavor} {info.version} at {cluster.url}; {len(chosen)} shapes x "
                      f"{args.runs + 1} runs = {requests} requests against {target}"
                      + ("" if info.scripts else "; no painless on this cluster: script shapes skipped"))
        if args.dry_run:
            sizes = index_sizes(cluster)
            if args.sample_index:
                sizes = IndexSizes({**sizes.docs, name: args.sample_docs, scratch: 0})
            total = 0.0
            for shape in chosen:
                cost = battery.estimate(model, shape.build(fields_for(shape), 0), sizes).cost
                total += cost * (args.runs + 1)
                out.write(f"{cost:12.1f}  {shape.group:10s} {shape.name}\n")
            out.write(f"dry run: {requests} requests, estimated {total:,.0f} cluster-ms (cap "
                      f"{args.max_cluster_ms:,.0f}); at most {args.max_rps:g} requests/s; nothing was sent\n")
            return 0
        if args.sample_index:
            progress.note(f"calibrate: loading {args.sample_docs:,} sample documents into {name}")
            created.append(name)
            create_sample_index(cluster, name, args.sample_docs, progress=lambda d, t: None)
            created.append(scratch)
            cluster.json("PUT", f"/{scratch}", {"settings": {"number_of_shards": 2, "number_of_replicas": 0},
                                                "mappings": _logs_mapping()})
        sizes = index_sizes(cluster)
        # reads first, writes after: indexing's refreshes and merges would otherwise slow the reads around them
        reads_only = [s for s in chosen if not s.write]
        measurements, stopped = measure(cluster, reads_only, fields_for, model, sizes, args.runs, 1, cap, progress)
        writes_only = [s for s in chosen if s.write]
        if writes_only and not stopped:
            more, stopped = measure(cluster, writes_only, fields_for, model, sizes, args.runs, 1, cap, progress)
            measurements += more
    except ClusterError as exc:
        if not measurements:
            progress.note(f"calibrate: {exc}")
            setup_failed = True
        stopped = stopped or str(exc)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        for index in created:
            try:
                delete_index(cluster, index)
            except ClusterError as exc:
                progress.note(f"calibrate: could not delete the scratch index {index}: {exc}; delete it by hand")
        cluster.close()
    if setup_failed:
        return 2
    elapsed = time.monotonic() - started
    measured = [m for m in measurements if m.observed]
    failed = [m for m in measurements if not m.observed]
    for m in failed:
        progress.note(f"calibrate: shape {m.name!r} did not run: {m.errors[0] if m.errors else 'no observation'}")
    summary = (f"calibrate: {cap.requests} requests, {cap.spent:,.0f} cluster-ms in {elapsed:.0f} s; "
               f"{len(measured)} shapes measured" + (f"; scratch indices deleted" if created else ""))
    if stopped:
        summary += f"; stopped early: {stopped}"
    if not measured:
        progress.note(summary + "; nothing to fit")
        return 1
    result = fit(measured, weights, lambda m: sizes, prior=args.prior)
    header = [f"sluicegate calibrate: {info.flavor} {info.version}, {len(measured)} shapes x {args.runs} runs on "
              f"{'sample documents' if args.sample_index else args.index}"]
    out.write(weights_yaml(result, header))
    progress.note(summary)
    return 0


def _logs_mapping() -> dict:
    from .sample_docs import LOGS_MAPPING

    return LOGS_MAPPING
