"""Learned costs (proxy/cost_learned.py): the EWMA per (tenant, shape), its bounds, merges from other instances."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import CostConfig
from proxy.cost_learned import LearnedCosts



def test_ewma_arithmetic():
    learned = LearnedCosts(max_entries=16, alpha=0.25)
    assert learned.get("acme", 1) is None
    assert learned.observe("acme", 1, 100.0) == 100.0  # the first observation sets it
    assert learned.observe("acme", 1, 20.0) == pytest.approx(80.0)  # 100 + 0.25 × (20 - 100)
    assert learned.observe("acme", 1, 80.0) == pytest.approx(80.0)
    assert learned.get("acme", 1) == pytest.approx(80.0)
    assert learned.for_tenant("acme") == [(1, pytest.approx(80.0), 3)]


def test_alpha_one_follows_the_last_observation():
    learned = LearnedCosts(16, 1.0)
    learned.observe("t", 9, 5.0)
    assert learned.observe("t", 9, 7.0) == 7.0


def test_invalid_observations_are_ignored():
    learned = LearnedCosts(16, 0.5)
    assert learned.observe("t", 1, float("nan")) == 0.0
    assert learned.get("t", 1) is None
    learned.observe("t", 1, 10.0)
    for bad in (float("inf"), -1.0, float("nan")):
        assert learned.observe("t", 1, bad) == 10.0
    assert learned.for_tenant("t") == [(1, 10.0, 1)]


def test_bounded_lru_evicts_the_least_recently_used():
    learned = LearnedCosts(max_entries=3, alpha=0.5)
    for fingerprint in (1, 2, 3):
        learned.observe("t", fingerprint, float(fingerprint))
    assert learned.get("t", 1) == 1.0  # touch 1: now 2 is the oldest
    learned.observe("t", 4, 4.0)
    assert len(learned) == 3
    assert learned.get("t", 2) is None
    assert [fp for fp, _, _ in learned.for_tenant("t")] == [4, 1, 3]
    learned.observe("t", 3, 3.0)  # observing refreshes too
    learned.observe("t", 5, 5.0)
    assert learned.get("t", 1) is None and learned.get("t", 3) == 3.0


def test_tenants_are_isolated():
    learned = LearnedCosts(max_entries=100, alpha=0.5)
    learned.observe("acme", 42, 10.0)
    learned.observe("globex", 42, 1000.0)
    assert learned.get("acme", 42) == 10.0
    assert learned.get("globex", 42) == 1000.0
    assert learned.get("initech", 42) is None
    assert learned.for_tenant("acme") == [(42, 10.0, 1)]
    assert learned.for_tenant("initech") == []


def test_for_tenant_is_most_recent_first_and_limited():
    learned = LearnedCosts(max_entries=100, alpha=0.5)
    for fingerprint in range(30):
        learned.observe("acme", fingerprint, 1.0)
        learned.observe("globex", fingerprint, 2.0)
    assert [fp for fp, _, _ in learned.for_tenant("acme")] == list(range(29, 9, -1))
    assert len(learned.for_tenant("acme", limit=5)) == 5
    assert learned.for_tenant("acme", limit=0) == []


def test_learned_costs_refuse_nonsense_settings():
    with pytest.raises(ValueError):
        LearnedCosts(0, 0.5)
    with pytest.raises(ValueError):
        LearnedCosts(10, 0.0)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 20), st.floats(0, 1e6)), max_size=200),
       st.integers(1, 10))
def test_lru_never_exceeds_its_bound_and_ewma_stays_in_range(observations, bound):
    learned = LearnedCosts(bound, 0.3)
    seen: dict[tuple[str, int], list[float]] = {}
    for tenant, fingerprint, cost in observations:
        value = learned.observe(tenant, fingerprint, cost)
        seen.setdefault((tenant, fingerprint), []).append(cost)
        assert len(learned) <= bound
        assert value == learned.get(tenant, fingerprint)
    for (tenant, fingerprint), costs in seen.items():
        value = learned.get(tenant, fingerprint)
        if value is not None:
            assert min(costs) - 1e-6 <= value <= max(costs) + 1e-6


# ---- learned costs merged from other instances -------------------------------------------------


def test_merge_of_one_observation_is_observe():
    merged, observed = LearnedCosts(16, 0.3), LearnedCosts(16, 0.3)
    for cost in (100.0, 20.0, 55.5, 0.5):
        assert merged.merge("acme", 1, cost, 1) == pytest.approx(observed.observe("acme", 1, cost))
    assert merged.for_tenant("acme") == [(1, pytest.approx(observed.get("acme", 1)), 4)]


def test_merge_of_n_observations_is_n_observes_of_their_mean():
    merged, observed = LearnedCosts(16, 0.25), LearnedCosts(16, 0.25)
    merged.observe("acme", 1, 100.0)
    observed.observe("acme", 1, 100.0)
    for _ in range(3):
        observed.observe("acme", 1, 20.0)
    # 100 + (1 - 0.75^3) × (20 - 100) = 100 - 0.578125 × 80
    assert merged.merge("acme", 1, 20.0, 3) == pytest.approx(53.75)
    assert merged.get("acme", 1) == pytest.approx(observed.get("acme", 1))
    assert merged.for_tenant("acme") == [(1, pytest.approx(53.75), 4)]


def test_the_first_merge_sets_the_cost_and_counts_its_samples():
    learned = LearnedCosts(16, 0.3)
    assert learned.merge("acme", 7, 805.0, 12) == 805.0
    assert learned.get("acme", 7) == 805.0
    assert learned.for_tenant("acme") == [(7, 805.0, 12)]
    assert learned.get("globex", 7) is None  # still per tenant


def test_invalid_merges_are_ignored():
    learned = LearnedCosts(16, 0.5)
    for cost, count in ((float("nan"), 1), (float("inf"), 1), (-1.0, 1), (10.0, 0), (10.0, -3)):
        assert learned.merge("t", 1, cost, count) == 0.0
    assert learned.get("t", 1) is None
    learned.observe("t", 1, 10.0)
    for cost, count in ((float("nan"), 2), (-5.0, 2), (99.0, 0)):
        assert learned.merge("t", 1, cost, count) == 10.0
    assert learned.for_tenant("t") == [(1, 10.0, 1)]


def test_merge_refreshes_and_evicts_like_observe():
    learned = LearnedCosts(max_entries=3, alpha=0.5)
    for fingerprint in (1, 2, 3):
        learned.observe("t", fingerprint, 1.0)
    learned.merge("t", 1, 1.0, 5)  # refreshes 1: now 2 is the oldest
    learned.merge("t", 4, 4.0, 1)
    assert len(learned) == 3 and learned.get("t", 2) is None
    assert [fp for fp, _, _ in learned.for_tenant("t")] == [4, 1, 3]


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1e6), st.integers(1, 10**6)), max_size=100),
       st.floats(0.01, 1.0))
def test_merged_ewma_stays_within_what_was_merged(batches, alpha):
    learned = LearnedCosts(16, alpha)
    seen: dict[int, list[float]] = {}
    for fingerprint, cost, count in batches:
        value = learned.merge("t", fingerprint, cost, count)
        seen.setdefault(fingerprint, []).append(cost)
        assert math.isfinite(value) and value == learned.get("t", fingerprint)
    for fingerprint, costs in seen.items():
        assert min(costs) * (1 - 1e-9) - 1e-9 <= learned.get("t", fingerprint) <= max(costs) * (1 + 1e-9) + 1e-9



def test_a_shapes_cost_over_all_tenants_is_kept_apart_from_each_tenants_own():
    learned = LearnedCosts(max_entries=2, alpha=0.5)
    assert learned.shape(7) is None
    learned.observe("acme", 7, 100.0)
    learned.observe("globex", 7, 300.0)
    assert learned.shape(7) == pytest.approx(200.0)  # one EWMA over both tenants
    assert learned.get("initech", 7) is None  # a tenant's own cost never comes from another's
    assert learned.get("acme", 7) == 100.0 and learned.get("globex", 7) == 300.0
    learned.observe("acme", 7, float("nan"))
    assert learned.shape(7) == pytest.approx(200.0)
    learned.observe("acme", 8, 1.0)
    learned.observe("acme", 9, 1.0)  # bounded like the per-tenant entries: 7 is the oldest shape
    assert learned.shape(7) is None and learned.shape(9) == 1.0


def test_one_observation_raises_a_learned_cost_at_most_max_rise_times():
    learned = LearnedCosts(16, alpha=0.5, max_rise=4.0)
    assert learned.observe("acme", 1, 2.0) == 2.0  # the first observation sets it, however high
    # a saturated cluster: the cheap shape's took is mostly queue time
    assert learned.observe("acme", 1, 1_000.0) == pytest.approx(2.0 + 0.5 * (8.0 - 2.0))
    assert learned.shape(1) == pytest.approx(5.0)  # the cross-tenant EWMA is bounded the same way
    for _ in range(3):
        learned.observe("acme", 1, 1_000.0)
    assert learned.get("acme", 1) < 200  # four saturated observations: ~10x, not 1000x
    for _ in range(20):
        learned.observe("acme", 1, 1_000.0)
    assert learned.get("acme", 1) == pytest.approx(1_000.0, rel=0.01)  # a lasting rise is learned
    assert learned.observe("acme", 1, 1.0) < 600  # falls are never bounded
    tiny = LearnedCosts(16, alpha=1.0, max_rise=4.0)
    tiny.observe("t", 1, 0.0)
    assert tiny.observe("t", 1, 100.0) == 4.0  # from ~0 it may still rise, from one unit
    with pytest.raises(ValueError):
        LearnedCosts(16, 0.5, max_rise=0.5)
    assert CostConfig().learn_max_rise == 4.0


def test_merged_observations_teach_the_cross_tenant_shape_and_respect_max_rise():
    learned = LearnedCosts(16, 0.5, max_rise=4.0)
    learned.merge("acme", 7, 10.0, 3)  # another instance saw acme's shape 7 three times
    assert learned.shape(7) == 10.0 and learned.get("acme", 7) == 10.0
    learned.merge("acme", 7, 1000.0, 1)  # one observation may count as at most 4 × 10
    assert learned.get("acme", 7) == pytest.approx(10.0 + 0.5 * (40.0 - 10.0))
    assert learned.shape(7) == pytest.approx(25.0)
    assert learned.get("globex", 7) is None  # a tenant's bill never comes from another's


# ---- learning service time, not queue time ----

from proxy.cost_learned import SATURATED_WAIT_MS, WAIT_DOMINANCE, service_cost  # noqa: E402
from proxy.cost_observed import observed_cost  # noqa: E402


def search_head(took: int, shards: int, hits: bool = False) -> bytes:
    head = (b'{"took":%d,"timed_out":false,"_shards":{"total":%d,"successful":%d,"skipped":0,"failed":0},'
            % (took, shards, shards))
    return head + (b'"hits":{"total":{"value":3,"relation":"eq"},"max_score":1.0,"hits":[{"_index":"i"' if hits
                   else b'"hits":{"total":{"value":3,"relation":"eq"},"max_score":null,"hits":[]},"aggregations":{')


def test_service_cost_takes_the_queue_waits_out_of_a_search():
    observed = observed_cost(search_head(50, 2))
    assert observed == 100.0  # the bill: took × shards, unchanged
    assert observed.queue_passes == 1  # no hits fetched: the query phase queued, once
    assert service_cost(observed, 0.0) == (100.0, False)
    assert service_cost(observed, 10.0) == ((50 - 10) * 2, False)  # shard tasks waited in parallel: one wait
    fetched = observed_cost(search_head(50, 2, hits=True))
    assert fetched.queue_passes == 2  # the fetch phase queued again
    assert service_cost(fetched, 5.0) == ((50 - 2 * 5) * 2, False)
    assert service_cost(fetched, 10.0) == ((50 - 20) * 2, False)  # a busy node, not saturated: the wait out ...
    assert service_cost(fetched, 20.0) == (50.0, False)  # ... but never below half the observation
    saturated = observed_cost(search_head(300, 2, hits=True))
    assert service_cost(saturated, 100.0) == (600.0, True)  # saturated and mostly queue: only an upper bound
    assert service_cost(saturated, 40.0) == ((300 - 80) * 2, False)
    assert observed_cost(search_head(50, 1, hits=True)).queue_passes == 1  # one shard: query and fetch in one task
    assert service_cost(42.0, 30.0) == (42.0, False)  # no shards (_bulk, _msearch): as observed
    assert WAIT_DOMINANCE == 3.0 and SATURATED_WAIT_MS == 50.0


def test_a_saturated_clusters_queue_is_not_learned_as_a_cheap_shapes_cost():
    learned = LearnedCosts(16, alpha=0.3, max_rise=4.0)
    for _ in range(5):
        learned.observe("good", 1, observed_cost(search_head(2, 2)))  # unsaturated: 4 units
    assert learned.get("good", 1) == pytest.approx(4.0)
    learned.queue_wait_ms = 400.0  # another tenant saturates the search pools
    for took in (380, 420, 650, 790, 150, 1150, 410):  # a cheap search's took is now its wait in the queue
        learned.observe("good", 1, observed_cost(search_head(took, 2)))
    assert learned.get("good", 1) == pytest.approx(4.0)  # without the queue wait it would be ~1000
    assert learned.shape(1) == pytest.approx(4.0)
    # an expensive shape still learns its cost while the cluster queues
    learned.observe("storm", 2, observed_cost(search_head(2400, 2)))
    assert learned.get("storm", 2) == pytest.approx((2400 - 400) * 2)
    # an observation that is mostly queue still lowers what was learned (took × shards bounds it above)
    learned.observe("storm", 2, observed_cost(search_head(1000, 2)))
    assert learned.get("storm", 2) == pytest.approx(4000 + 0.3 * (2000 - 4000))
    # and never creates an entry: that shape keeps its estimate until the queue is gone
    assert learned.observe("good", 3, observed_cost(search_head(500, 2))) == 0.0
    assert learned.get("good", 3) is None
    learned.queue_wait_ms = 0.0
    assert learned.observe("good", 3, observed_cost(search_head(3, 2))) == 6.0


def test_a_shape_seen_only_in_a_saturated_cluster_counts_at_the_gate_as_its_upper_bound():
    """At a storm's onset every observation of a new expensive shape is mostly queue: it teaches no bill,
    but the gate's cross-tenant count for that shape is the lowest bound seen, not nothing (which left
    each tenant's first one counted at its estimate, 11x too low, and let it into the quiet tenants' room)."""
    learned = LearnedCosts(16, alpha=0.3, max_rise=4.0)
    learned.queue_wait_ms = 400.0
    assert learned.observe("storm1", 5, observed_cost(search_head(520, 2))) == 0.0
    assert learned.get("storm1", 5) is None and learned.shape(5) == 1040.0  # never a bill, but the gate's count
    learned.observe("storm2", 5, observed_cost(search_head(600, 2)))
    learned.observe("storm3", 5, observed_cost(search_head(500, 2)))
    assert learned.shape(5) == 1000.0  # the tightest bound
    learned.queue_wait_ms = 0.0
    learned.observe("storm4", 5, observed_cost(search_head(450, 2)))
    assert learned.shape(5) == 900.0 and learned.get("storm4", 5) == 900.0  # a clean observation replaces it
    learned.observe("storm4", 5, observed_cost(search_head(500, 2)))
    assert learned.shape(5) == pytest.approx(900 + 0.3 * 100)  # and from then on it is an EWMA as before


def test_without_the_queue_wait_saturation_is_learned_as_cost():
    """The control for the test above: the same observations, learned raw, end far above 2x."""
    learned = LearnedCosts(16, alpha=0.3, max_rise=4.0)
    for _ in range(5):
        learned.observe("good", 1, observed_cost(search_head(2, 2)))
    for took in (380, 420, 650, 790, 150, 1150, 410):
        learned.observe("good", 1, observed_cost(search_head(took, 2)))
    assert learned.get("good", 1) > 8 * 4.0
    assert CostConfig().learn_service_time is True
