"""What a request did cost the cluster, read from the first bytes of its response.

A search's observed cost is `took` × shards searched. It comes back as an `Observed`: a float (the
cost units, what the bill is settled on) that also keeps the took and the shards, so that learning
can take the time its shard tasks waited in the nodes' search queues out of it (proxy/cost_learned.py).

Pure: takes bytes, returns cost units. No I/O, no clock.
"""
from __future__ import annotations

import re

# The top-level keys of a response head, one token at a time: strings (skipped whole) and brackets.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_COLON_INT = re.compile(rb"\s*:\s*(-?[0-9]+)(?=[\s,}\]])")
_SHARD_FIELD = re.compile(rb'"(total|skipped|failed)"\s*:\s*([0-9]+)(?=[\s,}])')


class Observed(float):
    """An observed search cost (cost units) that remembers what it is made of: `took_ms` × `shards`, and
    how many times its shard tasks queued for a search thread: `queue_passes`, 2 when hits were fetched
    from several shards (the query phase, then the fetch phase), else 1."""

    __slots__ = ("took_ms", "shards", "queue_passes")


def _search_cost(took: int, shards: int, no_hits: bool) -> Observed:
    ms = _took_ms(took)
    cost = Observed(ms * shards)
    cost.took_ms = ms
    cost.shards = shards
    # one shard answers query and fetch in one task; no hits (size 0, aggregations only) means no fetch phase
    cost.queue_passes = 1 if shards == 1 or no_hits else 2
    return cost


_NO_HITS = b'"hits":[]'

#: search response prefixes (up to the end of _shards) already read → the cost each meant with hits and
#: without (one object when the search ran on one shard); forgotten all at once past SEEN_HEADS. An Observed
#: is never changed once made.
SEEN_HEADS = 4096
#: how far into a response head its top-level _shards may begin to take the fast path (else: the full scan)
SHARDS_WITHIN = 160
_seen: dict[bytes, tuple[Observed, Observed]] = {}


def observed_cost(head: bytes) -> float | None:
    """Observed cost units from the first bytes of an ES JSON response: took_ms × max(1, shards searched).

    Shards searched is _shards.total - skipped - failed when the top-level _shards object appears
    in `head` (a shard the node rejected under load did no work: real clusters answer 200 with the
    rejected shards as failures), and the result is then an `Observed`; without it (bulk, msearch)
    the cost is took alone.
    None when the head has no complete top-level "took" (count, errors, truncated heads). A took of
    0 means under 1 ms: 0.5.
    """
    shards_at = head.find(b'"_shards":{', 0, SHARDS_WITHIN)
    if shards_at > 0:
        end = head.find(b"}", shards_at) + 1
        if end:
            # Most searches answer with a took and shard counts seen before: the same prefix (up to the end of
            # _shards), the same cost, without parsing it again.
            prefix = head[:end]
            known = _seen.get(prefix)
            if known is None:
                fast = _SEARCH_HEAD.match(head)
                if fast is not None:  # how Elasticsearch begins every search response: one match, no scan
                    took, total, skipped, failed = fast.groups()
                    shards = max(1, int(total) - int(skipped) - int(failed))
                    with_hits = _search_cost(int(took), shards, False)
                    known = (with_hits, with_hits if shards == 1 else _search_cost(int(took), shards, True))
                    if fast.end() == end:  # the match read the prefix and nothing else (no shard failures)
                        if len(_seen) >= SEEN_HEADS:
                            _seen.clear()
                        _seen[prefix] = known
            if known is not None:
                with_hits, without = known
                if with_hits is without or head.find(_NO_HITS, end) < 0:  # (one shard: no fetch phase either way)
                    return with_hits
                return without
    try:
        return _observed(head)
    except Exception:  # a cost reading must never break a response
        return None


_SEARCH_HEAD = re.compile(
    rb'\{"took":(\d{1,12}),"timed_out":(?:true|false),(?:"terminated_early":(?:true|false),)?'
    rb'(?:"num_reduce_phases":\d+,)?"_shards":\{"total":(\d{1,9}),"successful":\d+,"skipped":(\d{1,9}),'
    rb'"failed":(\d{1,9})[,}]'
)


def _observed(head: bytes) -> float | None:
    took: int | None = None
    depth = 0
    for match in _TOKEN.finditer(head):
        token = match.group()
        first = token[0]
        if first == 0x7B or first == 0x5B:  # { [
            depth += 1
        elif first == 0x7D or first == 0x5D:  # } ]
            depth -= 1
        elif depth == 1 and token == b'"took"':
            number = _COLON_INT.match(head, match.end())
            if number is None:
                return None
            took = int(number.group(1))
        elif depth == 1 and token == b'"_shards"' and took is not None:
            end = head.find(b"}", match.end())
            if end < 0:
                break  # cut inside _shards: fall back to took alone
            fields = dict(_SHARD_FIELD.findall(head, match.end(), end))
            total = int(fields.get(b"total", b"1"))
            skipped = int(fields.get(b"skipped", b"0"))
            failed = int(fields.get(b"failed", b"0"))
            return _search_cost(took, max(1, total - skipped - failed), _NO_HITS in head.replace(b" ", b""))
    return None if took is None else _took_ms(took)


def _took_ms(took: int) -> float:
    return 0.5 if took <= 0 else float(took)

