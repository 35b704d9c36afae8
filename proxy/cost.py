"""What a request will cost the cluster, what it did cost, and what its shape has cost before.

One cost unit is one estimated millisecond of cluster search-thread time. The cost model has
three jobs, each in its own module; this one names what the rest of the proxy uses:

- estimate (before the request is sent): `CostModel`, `Estimate`, `IndexSizes` in
  `cost_estimate.py`, built from the `Weights` of `cost_weights.py`; the query clauses and
  aggregations it walks are priced in `cost_query.py` and `cost_aggs.py`;
- observation (after the response): `observed_cost` in `cost_observed.py`;
- learning: `LearnedCosts`, the EWMA per (tenant, query shape), in `cost_learned.py`.

Everything here is pure: no I/O, no clock.
"""
from __future__ import annotations

from .cost_estimate import CostModel, Estimate, IndexSizes
from .cost_learned import LearnedCosts
from .cost_observed import observed_cost
from .cost_query import INNER, LEADING, NO_WILDCARD, TRAILING, size_bucket, wildcard_position
from .cost_weights import DATA_SCALED, DICTIONARY_SCALED, Weights

__all__ = [
    "CostModel", "Estimate", "IndexSizes", "LearnedCosts", "observed_cost", "Weights", "DATA_SCALED",
    "DICTIONARY_SCALED", "size_bucket", "wildcard_position", "NO_WILDCARD", "TRAILING", "INNER", "LEADING",
]
