"""Seeded, realistic documents: what `sluicegate calibrate --sample-index` loads and `bench/corpus.py` loads at scale.

Two kinds, each with its mapping:

- `logs`: a message drawn from a Zipf vocabulary, high-cardinality user and session ids, a URL
  with an id in it, timestamps over 30 days (in ingest order, as logs arrive), numeric fields
  (status, latency, bytes), keyword tags, and a nested list of events;
- `catalogue`: a product with a title and description from the same vocabulary, a unique SKU,
  brand and category keywords, prices and stock, a creation time over 30 days (any order), tags,
  and nested variants.

Deterministic: document `i` of a (kind, seed) is the same on every machine and every run, and any
chunk can be made without the ones before it (`documents(kind, seed, start, count)`). Times are
fixed (`START_MS`, 30 days from 2025-01-01 UTC), never "now", so a loaded index means the same
thing tomorrow. No I/O here.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

#: 2025-01-01T00:00:00Z in epoch milliseconds; every document's time is within 30 days of it
START_MS = 1_735_689_600_000
SPAN_MS = 30 * 86_400_000
#: documents of one chunk share one seeded generator; a chunk can be made on its own
CHUNK = 1_000

KINDS = ("logs", "catalogue")

_SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
VOCABULARY_SIZE = 40_000
ZIPF_EXPONENT = 1.05
SERVICES = ["checkout", "cart", "search", "auth", "payments", "inventory", "shipping", "profile", "gateway",
            "recommendations", "reviews", "notifications", "billing", "catalog", "orders", "pricing", "media",
            "analytics", "sessions", "ads", "email", "fraud", "ledger", "export"]
LEVELS = ["INFO", "DEBUG", "WARN", "ERROR"]
_LEVEL_WEIGHTS = list(accumulate([70, 18, 9, 3]))
RESOURCES = ["orders", "items", "users", "carts", "payments", "sessions", "products", "invoices", "reviews", "images"]
TAGS = [f"tag-{name}" for name in ("prod", "canary", "eu", "us", "apac", "beta", "mobile", "web", "api", "batch",
                                    "retry", "slow", "cached", "internal", "partner", "legacy", "v1", "v2", "v3",
                                    "blue", "green", "gold", "silver", "bronze", "red", "ios", "android", "edge",
                                    "k8s", "vm", "spot", "reserved", "a", "b", "c", "d", "e", "f", "g", "h")]
EVENTS = [f"{verb}_{noun}" for verb in ("db", "cache", "http", "queue", "auth", "render")
          for noun in ("read", "write", "call", "wait", "miss")]
BRANDS = 400
COLORS = ["black", "white", "red", "blue", "green", "grey", "navy", "beige", "brown", "pink", "orange", "yellow",
          "purple", "teal", "olive", "silver"]
SIZES = ["xs", "s", "m", "l", "xl", "xxl", "one-size", "kids"]
USERS = 200_000


def _vocabulary() -> tuple[list[str], list[float]]:
    """VOCABULARY_SIZE distinct pseudo-words and their cumulative Zipf weights (rank r has weight 1 / r**s)."""
    rng = random.Random(1729)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCABULARY_SIZE:
        n = 1 + min(int(rng.expovariate(0.7)), 4)
        word = "".join(rng.choice(_SYLLABLES) for _ in range(n))
        if word not in seen:
            seen.add(word)
            words.append(word)
    words.sort(key=len)  # short words are the common ones, as in any language
    return words, list(accumulate(1.0 / (rank**ZIPF_EXPONENT) for rank in range(1, len(words) + 1)))


WORDS, _WORD_WEIGHTS = _vocabulary()
_SERVICE_WEIGHTS = list(accumulate(1.0 / r for r in range(1, len(SERVICES) + 1)))
_BRAND_WEIGHTS = list(accumulate(1.0 / r for r in range(1, BRANDS + 1)))


def word_at_rank(rank: int) -> str:
    """The vocabulary's word of this frequency rank (0 is the most frequent)."""
    return WORDS[rank % len(WORDS)]


LOGS_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "@timestamp": {"type": "date"},
        "message": {"type": "text"},
        "level": {"type": "keyword"},
        "service": {"type": "keyword"},
        "host": {"type": "keyword"},
        "user_id": {"type": "keyword"},
        "session_id": {"type": "keyword"},
        "url": {"type": "keyword"},
        "status": {"type": "integer"},
        "latency_ms": {"type": "long"},
        "bytes": {"type": "long"},
        "tags": {"type": "keyword"},
        "events": {"type": "nested", "properties": {"name": {"type": "keyword"}, "duration_ms": {"type": "long"}}},
    },
}

CATALOGUE_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "sku": {"type": "keyword"},
        "title": {"type": "text", "fields": {"raw": {"type": "keyword"}}},
        "description": {"type": "text"},
        "brand": {"type": "keyword"},
        "category": {"type": "keyword"},
        "price": {"type": "double"},
        "stock": {"type": "integer"},
        "rating": {"type": "float"},
        "created": {"type": "date"},
        "tags": {"type": "keyword"},
        "variants": {"type": "nested", "properties": {
            "color": {"type": "keyword"}, "size": {"type": "keyword"}, "price": {"type": "double"},
            "stock": {"type": "integer"}}},
    },
}

MAPPINGS = {"logs": LOGS_MAPPING, "catalogue": CATALOGUE_MAPPING}


def documents(kind: str, seed: int, start: int, count: int, total: int | None = None) -> Iterator[dict]:
    """Documents start .. start + count - 1 of a corpus of `total` (default start + count) of this kind.

    `total` spreads the logs' timestamps over 30 days in document order; the same (kind, seed, total)
    always gives the same documents."""
    if kind not in MAPPINGS:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    total = start + count if total is None else total
    make = _log if kind == "logs" else _product
    end = start + count
    first = start - start % CHUNK
    for chunk_start in range(first, end, CHUNK):
        rng = random.Random(f"{seed}:{kind}:{chunk_start}")
        for i in range(chunk_start, min(chunk_start + CHUNK, end)):
            doc = make(rng, i, total)  # every document draws from rng, so skipped ones keep the rest in step
            if i >= start:
                yield doc


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, cum_weights=_WORD_WEIGHTS, k=n))


def _log(rng: random.Random, i: int, total: int) -> dict:
    service = rng.choices(SERVICES, cum_weights=_SERVICE_WEIGHTS)[0]
    level = rng.choices(LEVELS, cum_weights=_LEVEL_WEIGHTS)[0]
    roll = rng.random()
    status = 200 if roll < 0.84 else 201 if roll < 0.9 else 404 if roll < 0.95 else 429 if roll < 0.97 else 500
    latency = int(math.exp(rng.gauss(3.2, 1.1)))  # log-normal, median ~25 ms
    user = int(USERS * rng.random() ** 2.5)  # a few heavy users, a long tail
    resource = RESOURCES[rng.randrange(len(RESOURCES))]
    doc = {
        "@timestamp": START_MS + SPAN_MS * i // max(total, 1) + rng.randrange(-60_000, 60_000),
        "message": f"{level.lower()} {service} {_words(rng, rng.randint(6, 18))} {resource} {rng.randrange(100_000)}",
        "level": level,
        "service": service,
        "host": f"host-{rng.randrange(120):03d}",
        "user_id": f"u{user:06d}",
        "session_id": f"{rng.getrandbits(64):016x}",
        "url": f"/api/v2/{service}/{resource}/{rng.randrange(1_000_000)}",
        "status": status,
        "latency_ms": latency,
        "bytes": int(rng.expovariate(1 / 4000.0)),
        "tags": rng.sample(TAGS, rng.randint(1, 3)),
    }
    if rng.random() < 0.8:
        doc["events"] = [{"name": EVENTS[rng.randrange(len(EVENTS))], "duration_ms": rng.randrange(500)}
                         for _ in range(rng.randint(1, 3))]
    return doc


def _product(rng: random.Random, i: int, total: int) -> dict:
    brand = rng.choices(range(BRANDS), cum_weights=_BRAND_WEIGHTS)[0]
    price = round(math.exp(rng.gauss(3.5, 1.0)), 2)
    return {
        "sku": f"SKU-{i:08d}-{rng.randrange(10_000):04d}",
        "title": _words(rng, rng.randint(3, 7)),
        "description": _words(rng, rng.randint(20, 60)),
        "brand": f"brand-{brand:03d}",
        "category": f"c{rng.randrange(12)}/c{rng.randrange(8)}/c{rng.randrange(10)}",
        "price": price,
        "stock": rng.randrange(1000),
        "rating": round(1 + 4 * rng.random() ** 0.5, 1),
        "created": START_MS + rng.randrange(SPAN_MS),
        "tags": rng.sample(TAGS, rng.randint(1, 5)),
        "variants": [{"color": COLORS[rng.randrange(len(COLORS))], "size": SIZES[rng.randrange(len(SIZES))],
                      "price": round(price * (0.8 + 0.4 * rng.random()), 2), "stock": rng.randrange(200)}
                     for _ in range(rng.randint(1, 4))],
    }
