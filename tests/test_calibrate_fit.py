"""The fit and the accuracy figures (proxy/calibrate_fit.py): NNLS, Spearman, error summaries, the log-cost fit."""
from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.calibrate_fit import (
    FITTABLE,
    Row,
    error_summary,
    fit_weights,
    linear_parts,
    median,
    nnls,
    ranks,
    spearman,
)
from proxy.cost_weights import Weights


def _objective(rows, targets, x):
    return sum((sum(a * v for a, v in zip(row, x)) - t) ** 2 for row, t in zip(rows, targets))


def _brute_nnls(rows, targets):
    """The exact NNLS of a small system: least squares on every support set, the best feasible one."""
    n = len(rows[0])
    best, best_x = math.inf, [0.0] * n
    for k in range(n + 1):
        for support in itertools.combinations(range(n), k):
            x = [0.0] * n
            if support:
                # normal equations on the support (Gauss-Jordan; the systems here are tiny)
                g = [[sum(r[i] * r[j] for r in rows) for j in support] for i in support]
                b = [sum(r[i] * t for r, t in zip(rows, targets)) for i in support]
                m = len(support)
                aug = [g[i] + [b[i]] for i in range(m)]
                singular = False
                for c in range(m):
                    p = max(range(c, m), key=lambda r: abs(aug[r][c]))
                    if abs(aug[p][c]) < 1e-12:
                        singular = True
                        break
                    aug[c], aug[p] = aug[p], aug[c]
                    for r in range(m):
                        if r != c:
                            f = aug[r][c] / aug[c][c]
                            aug[r] = [a - f * b_ for a, b_ in zip(aug[r], aug[c])]
                if singular:
                    continue
                sol = [aug[i][m] / aug[i][i] for i in range(m)]
                if any(v < -1e-9 for v in sol):
                    continue
                for i, v in zip(support, sol):
                    x[i] = max(v, 0.0)
            value = _objective(rows, targets, x)
            if value < best:
                best, best_x = value, x
    return best, best_x


@settings(max_examples=60)
@given(st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=8), st.randoms(use_true_random=False))
def test_nnls_finds_the_exact_optimum_of_small_systems(n, extra, rng):
    rows = [[rng.uniform(-2, 3) for _ in range(n)] for _ in range(n + extra)]
    targets = [rng.uniform(-5, 5) for _ in rows]
    x = nnls(rows, targets)
    assert all(v >= 0 for v in x)
    best, _ = _brute_nnls(rows, targets)
    assert _objective(rows, targets, x) <= best + 1e-6 * (1 + best)


def test_nnls_keeps_a_column_nobody_uses_where_it_started():
    assert nnls([[1.0, 0.0], [2.0, 0.0]], [1.0, 2.0], start=[5.0, 3.0]) == pytest.approx([1.0, 3.0])


def test_ranks_and_spearman_by_hand():
    assert ranks([10, 30, 20, 20]) == [1.0, 4.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # scipy.stats.spearmanr
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1], [1, 2]))
    assert median([3, 1, 2]) == 2 and median([4, 1, 2, 3]) == 2.5


def test_error_summary_counts_under_estimates_and_names_the_worst():
    summary = error_summary(["a", "b", "c", "d"], [1.0, 10.0, 10.0, 100.0], [1.0, 30.0, 50.0, 50.0])
    assert summary.median_abs_log2 == pytest.approx((math.log2(3) + 1) / 2)
    assert summary.under_2x == 0.5 and summary.under_4x == 0.25
    assert summary.worst_under == pytest.approx(5.0) and summary.worst_under_shape == "c"
    assert "Spearman" in summary.line()
    exact = error_summary(["a"], [2.0], [1.0])
    assert exact.worst_under_shape == "" and exact.under_2x == 0.0


def test_linear_parts_reads_the_partial_costs_of_a_linear_estimate():
    weights = Weights()
    estimate = lambda w: 3.0 * w.search + 0.5 * w.wildcard_leading + 7.0  # noqa: E731
    parts, constant = linear_parts(estimate, weights, ("search", "wildcard_leading", "regexp"))
    assert parts == pytest.approx([3.0, 0.5, 0.0]) and constant == pytest.approx(7.0)


def test_fittable_weights_are_additive_cost_units():
    assert "wildcard_leading" in FITTABLE and "search" in FITTABLE
    assert not {"index_wildcard", "reference_docs", "term_dictionary_exponent", "min_cost", "max_buckets"} & set(FITTABLE)


def test_the_log_fit_recovers_known_weights_from_noisy_costs():
    rng = random.Random(5)
    truth = [4.0, 0.25, 60.0]
    start = [1.0, 1.0, 1.0]
    rows = []
    for i in range(80):
        parts = tuple(float(rng.choice([0, 1, 2, 8])) for _ in truth)
        cost = sum(a * t for a, t in zip(parts, truth)) + 0.5
        rows.append(Row(str(i), parts, 0.5, cost * 2 ** rng.gauss(0, 0.15)))
    fitted = fit_weights(rows, ["a", "b", "c"], start, prior=0.0)
    for got, want in zip(fitted, truth):
        assert got == pytest.approx(want, rel=0.15)


def test_the_prior_and_the_floor_hold_weights_the_rows_do_not_see():
    rows = [Row("x", (1.0, 0.0), 0.0, 8.0), Row("y", (2.0, 0.0), 0.0, 16.0)]
    fitted = fit_weights(rows, ["seen", "unseen"], [1.0, 3.0], prior=0.05)
    assert fitted[0] == pytest.approx(8.0, rel=0.1) and fitted[1] == pytest.approx(3.0)
    # rows that would drive a weight to zero stop at the floor
    rows = [Row("z", (1.0, 1.0), 0.0, 1.0)] * 5 + [Row("w", (1.0, 0.0), 0.0, 1.0)] * 5
    fitted = fit_weights(rows, ["a", "b"], [1.0, 1.0], prior=0.0, floor=0.02)
    assert fitted[1] == pytest.approx(0.02, rel=0.01)
