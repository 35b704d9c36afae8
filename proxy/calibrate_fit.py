"""Fitting the cost weights to measured costs, and how far an estimate is from the truth.

Pure arithmetic on plain lists (no numpy: the package does not depend on it, and the systems are
small: a few dozen weights, a few hundred measured shapes).

- `error_summary`: median |log2(estimate / observed)|, Spearman rank correlation, the share of shapes
  under-estimated by more than 2× and 4×, and the worst under-estimate.
- `linear_parts`: an estimate is linear in each additive weight (the multipliers held fixed), so for
  a request `estimate(w) = a · w + c`; the partial costs `a` are read by nudging one weight at a time.
- `fit_weights`: non-negative least squares on log cost (Gauss-Newton steps, each an NNLS solved by
  projected coordinate descent), pulled gently towards the starting weights (in log space too) so
  that weights the battery barely sees stay where they were.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .cost_weights import Weights

#: weights the fit may change: additive cost units that a search or a bulk pays; not the multipliers,
#: counts, bounds or the index-size model (those are not linear in the estimate)
FITTABLE = tuple(
    name for name, spec in Weights.model_fields.items()
    if (spec.description or "").startswith("cost units") and name not in ("min_cost", "max_cost", "deep_nesting")
)


@dataclass(frozen=True)
class ErrorSummary:
    """How far estimates are from observed costs, over a set of shapes."""

    shapes: int
    median_abs_log2: float     # median |log2(estimate / observed)|: 1.0 means a typical error of 2×
    spearman: float            # rank correlation of estimates and observed costs (1.0: same order)
    under_2x: float            # share of shapes whose estimate is below half the observed cost
    under_4x: float            # share below a quarter
    worst_under: float         # the largest observed / estimate (1.0 or less: nothing under-estimated)
    worst_under_shape: str

    def line(self) -> str:
        return (f"median |log2 ratio| {self.median_abs_log2:.2f}, Spearman {self.spearman:.2f}, "
                f"under-estimated >2x {self.under_2x:.0%}, >4x {self.under_4x:.0%}, "
                f"worst under-estimate {self.worst_under:.1f}x ({self.worst_under_shape or '-'})")


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return math.nan
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties averaged)."""
    if len(xs) != len(ys) or len(xs) < 2:
        return math.nan
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan


def error_summary(names: Sequence[str], estimates: Sequence[float], observed: Sequence[float]) -> ErrorSummary:
    """The accuracy of `estimates` against `observed` (cost units, both > 0), shape by shape."""
    logs = [math.log2(e / o) for e, o in zip(estimates, observed)]
    n = len(logs)
    under = [o / e for e, o in zip(estimates, observed)]
    worst = max(range(n), key=lambda i: under[i]) if n else -1
    return ErrorSummary(
        shapes=n,
        median_abs_log2=median([abs(x) for x in logs]),
        spearman=spearman(estimates, observed),
        under_2x=sum(1 for u in under if u > 2.0) / n if n else math.nan,
        under_4x=sum(1 for u in under if u > 4.0) / n if n else math.nan,
        worst_under=under[worst] if n else math.nan,
        worst_under_shape=names[worst] if n and under[worst] > 1.0 else "",
    )


# ---- the estimate as a linear function of the weights ---------------------------------------------

def linear_parts(
    estimate: Callable[[Weights], float], weights: Weights, names: Sequence[str]
) -> tuple[list[float], float]:
    """(a, c) with estimate(w) = Σ a[j]·w[names[j]] + c around `weights`, by nudging each weight.

    Exact where the estimate is linear in the weight (every additive weight, with the multipliers
    fixed), except where a clamp (min_cost, max_cost) binds."""
    base = estimate(weights)
    values = weights.model_dump()
    parts = []
    for name in names:
        step = max(abs(values[name]), 1e-3)
        nudged = weights.model_copy(update={name: values[name] + step})
        parts.append((estimate(nudged) - base) / step)
    constant = base - sum(a * values[n] for a, n in zip(parts, names))
    return parts, constant


# ---- non-negative least squares -------------------------------------------------------------------

def nnls(rows: Sequence[Sequence[float]], targets: Sequence[float], start: Sequence[float] | None = None,
         sweeps: int = 20_000, tolerance: float = 1e-12) -> list[float]:
    """argmin ||R·x − t||² subject to x ≥ 0, by projected coordinate descent on the normal equations.

    Converges for any R (the objective is convex); a column of zeros keeps its starting value."""
    n = len(rows[0]) if rows else 0
    gram = [[0.0] * n for _ in range(n)]
    rhs = [0.0] * n
    for row, t in zip(rows, targets):
        nonzero = [(j, v) for j, v in enumerate(row) if v]
        for j, v in nonzero:
            rhs[j] += v * t
            line = gram[j]
            for k, u in nonzero:
                line[k] += v * u
    x = [max(0.0, v) for v in start] if start is not None else [0.0] * n
    # gradient g = G·x − b kept up to date as coordinates move
    grad = [sum(gram[j][k] * x[k] for k in range(n)) - rhs[j] for j in range(n)]
    scale = max((abs(v) for v in rhs), default=1.0) or 1.0
    for _ in range(sweeps):
        biggest = 0.0
        for j in range(n):
            d = gram[j][j]
            if d <= 0.0:
                continue
            new = x[j] - grad[j] / d
            if new < 0.0:
                new = 0.0
            delta = new - x[j]
            if delta:
                x[j] = new
                column = gram[j]
                for k in range(n):
                    grad[k] += column[k] * delta
                biggest = max(biggest, abs(delta) * d)
        if biggest <= tolerance * scale:
            break
    return x


@dataclass(frozen=True)
class Row:
    """One measured shape for the fit: its partial costs per fitted weight, the rest, and the truth."""

    name: str
    parts: tuple[float, ...]   # ∂ estimate / ∂ weight, for each fitted weight
    constant: float            # what the weights not being fitted contribute
    observed: float            # the observed cost (cost units), > 0


def fit_weights(rows: Sequence[Row], names: Sequence[str], start: Sequence[float], prior: float = 0.05,
                floor: float = 0.02, steps: int = 40, under_weight: float = 1.0) -> list[float]:
    """The non-negative weights (in `names` order) that minimise Σ (log estimate − log observed)²,
    plus `prior` × Σ log(w / start)² to keep weights the rows hardly see near where they started.

    `under_weight` > 1 counts the squared error of an under-estimate that many times over (an
    under-estimate is what lets a storm through; an over-estimate only throttles early). Each weight
    stays at least `floor` × its start: a weight the battery drives to zero would make shapes outside
    the battery free. Gauss-Newton: linearise log(a·w + c) around the current w, solve that NNLS, and
    take the largest step (of 1, 1/2, 1/4 ...) that lowers the objective."""
    lows = [floor * s for s in start]
    w = list(start)

    def objective(x: Sequence[float]) -> float:
        total = 0.0
        for row in rows:
            e = sum(a * v for a, v in zip(row.parts, x)) + row.constant
            r = math.log(max(e, 1e-9)) - math.log(row.observed)
            total += r * r * (under_weight if r < 0 else 1.0)
        return total + prior * sum(math.log(max(v, 1e-12) / s) ** 2 for v, s in zip(x, start) if s > 0)

    current = objective(w)
    for _ in range(steps):
        system: list[list[float]] = []
        targets: list[float] = []
        for row in rows:
            e = max(sum(a * v for a, v in zip(row.parts, w)) + row.constant, 1e-9)
            # log e(w') ≈ log e(w) + a·(w' − w)/e; unknowns are w' − lows (non-negative)
            residual = math.log(row.observed) - math.log(e)
            root = math.sqrt(under_weight) if residual > 0 else 1.0  # under-estimated now: count it more
            scaled = [root * a / e for a in row.parts]
            system.append(scaled)
            targets.append(root * residual + sum(s * (v - low) for s, v, low in zip(scaled, w, lows)))
        for j, s in enumerate(start):
            if s > 0:  # log w' ≈ log w + (w' − w)/w, pulled towards log start
                line = [0.0] * len(w)
                line[j] = math.sqrt(prior) / w[j]
                system.append(line)
                targets.append(math.sqrt(prior) * (math.log(s / w[j]) + 1.0 - lows[j] / w[j]))
        solved = nnls(system, targets, [v - low for v, low in zip(w, lows)])
        proposal = [v + low for v, low in zip(solved, lows)]
        step, improved = 1.0, False
        while step >= 1 / 64:
            trial = [v + step * (p - v) for v, p in zip(w, proposal)]
            value = objective(trial)
            if value < current - 1e-12:
                w, current, improved = trial, value, True
                break
            step /= 2
        if not improved:
            break
    return w
