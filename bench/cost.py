"""Cost-model hot path: µs per estimate + fingerprint, beside the ≤ 30 µs target for a typical search.

Run: .venv/bin/python bench/cost.py  (prints one line per body; the figures are best-of-repeats on
this machine, so compare them with each other and with the target, not across machines).
"""
from __future__ import annotations

import sys
import timeit
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.config import HardLimits  # noqa: E402
from proxy.cost import CostModel, Weights  # noqa: E402
from proxy.esapi import decode_body, parse_call  # noqa: E402

TARGET_US = 30.0

#: a typical dashboard search, about 1 KB: bool of match/term/range, a terms agg with a sub-agg, size 20, a sort
TYPICAL = {
    "size": 20,
    "query": {
        "bool": {
            "must": [
                {"match": {"message": {"query": "connection reset by peer", "operator": "and"}}},
                {"match_phrase": {"service.name": "checkout"}},
            ],
            "filter": [
                {"term": {"event.dataset": "nginx.access"}},
                {"terms": {"http.response.status_code": [500, 502, 503, 504]}},
                {"range": {"@timestamp": {"gte": "now-15m", "lte": "now", "format": "strict_date_optional_time"}}},
            ],
            "must_not": [{"term": {"user_agent.name": "HealthChecker"}}],
        }
    },
    "sort": [{"@timestamp": {"order": "desc"}}, "_score"],
    "_source": ["@timestamp", "message", "service.name", "http.response.status_code", "url.path"],
    "aggs": {
        "by_host": {
            "terms": {"field": "host.name", "size": 10},
            "aggs": {"latency": {"percentiles": {"field": "event.duration", "percents": [50, 95, 99]}}},
        },
        "over_time": {"date_histogram": {"field": "@timestamp", "fixed_interval": "30s"}},
    },
    "highlight": {"fields": {"message": {}}},
    "track_total_hits": 10000,
}


def msearch_body(n: int) -> bytes:
    lines = []
    for i in range(n):
        lines.append(orjson.dumps({"index": f"logs-2024.01.{i % 28 + 1:02d}"}))
        lines.append(orjson.dumps(TYPICAL))
    return b"\n".join(lines) + b"\n"


def bulk_body(n: int) -> bytes:
    doc = orjson.dumps({"@timestamp": "2024-01-01T00:00:00Z", "message": "x" * 120, "status": 200, "bytes": 5120})
    lines = []
    for i in range(n):
        lines.append(orjson.dumps({"index": {"_index": "logs-2024.01.01", "_id": str(i)}}))
        lines.append(doc)
    return b"\n".join(lines) + b"\n"


def measure(label: str, method: str, path: str, raw: bytes, content_type: str, target: float | None) -> None:
    limits = HardLimits()
    model = CostModel(Weights())
    call = parse_call(method, path)
    body = decode_body(call, raw, content_type, None, limits)
    estimate = model.estimate(call, body)
    timer = timeit.Timer(lambda: model.estimate(call, body))
    number, _ = timer.autorange()
    per_call = min(timer.repeat(repeat=7, number=number)) / number * 1e6
    parse = timeit.Timer(lambda: decode_body(parse_call(method, path), raw, content_type, None, limits))
    pnumber, _ = parse.autorange()
    parse_us = min(parse.repeat(repeat=5, number=pnumber)) / pnumber * 1e6
    verdict = "" if target is None else f"  target ≤ {target:.0f} µs  {'OK' if per_call <= target else 'OVER'}"
    print(f"{label:<34} {len(raw):>8} B  estimate+fingerprint {per_call:8.1f} µs{verdict}"
          f"   (parse_call+decode_body {parse_us:8.1f} µs; cost {estimate.cost:.1f})")


def main() -> None:
    typical = orjson.dumps(TYPICAL)
    measure("typical search (1 KB)", "POST", "/logs-2024.01.01/_search", typical, "application/json", TARGET_US)
    measure("match_all search", "GET", "/logs/_search", b'{"query":{"match_all":{}}}', "application/json", None)
    measure("msearch of 20 typical searches", "POST", "/_msearch", msearch_body(20), "application/x-ndjson", None)
    measure("bulk of 1000 index actions", "POST", "/_bulk", bulk_body(1000), "application/x-ndjson", None)


if __name__ == "__main__":
    main()
