"""Honest correlation analysis: permutation tests (exact where every permutation can be enumerated),
bootstrap intervals that repeat whatever was selected, Holm's multiplicity correction, and the choice
of (layer, configuration) made without selecting on the outcome.

The published NTPS correlations pick, per model, the (layer, k) that maximises the correlation with
probe accuracy over the same 12 datasets, then report that maximum. With n = 12 the best of ~20 pure
noise configurations already reaches a median Spearman of ~.55. Here every selection procedure is
declared up front (``fixed``, ``nested`` leave-one-dataset-out, ``best_in_sample`` flagged optimistic)
and every reported p-value can come from a permutation null that repeats the whole procedure.

Building blocks for other studies: :func:`permutation_test` (within-group permutations, exact
enumeration up to :data:`EXACT_PERMUTATION_LIMIT`), :func:`cluster_bootstrap_ci`, :func:`holm` and
:func:`simulated_power`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from perceptalign.io import PerceptAlignError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Method = Literal["spearman", "pearson"]
Direction = Literal["positive", "negative", "either"]
Alternative = Literal["greater", "less", "two-sided"]
Mode = Literal["fixed", "nested", "best_in_sample"]

__all__ = [
    "EXACT_PERMUTATION_LIMIT",
    "MAX_UNDEFINED_BOOTSTRAP_FRACTION",
    "CorrelationResult",
    "PermutationResult",
    "SelectionResult",
    "cluster_bootstrap_ci",
    "correlate",
    "correlation_by_config",
    "holm",
    "permutation_test",
    "select_and_correlate",
    "simulated_power",
]

#: Enumerate every permutation (instead of drawing them at random) when there are at most this many:
#: 8! = 40,320, so every ungrouped test with n ≤ 8 (the per-model NTPS correlations) is exact.
EXACT_PERMUTATION_LIMIT = 40_320
#: A bootstrap whose statistic is undefined (a constant side) in more than this share of resamples is
#: refused: skipping them would report an interval conditional on an unrepresentative subset.
MAX_UNDEFINED_BOOTSTRAP_FRACTION = 0.1

_MODES = ("fixed", "nested", "best_in_sample")
_METHODS = ("spearman", "pearson")
_DIRECTIONS = ("positive", "negative", "either")
_ALTERNATIVES = ("greater", "less", "two-sided")
_ALTERNATIVE_OF = {"positive": "greater", "negative": "less", "either": "two-sided"}
_CHUNK_ELEMENTS = 4_000_000  # bound on K × permutations held at once (~32 MB of float64)
_TIE_TOL = 1e-12  # statistics equal up to round-off count as equal (permutation ties, tied configs)
_NESTED_MIN_DISTINCT = 4  # leave-one-out needs ≥ 3 distinct datasets in every fold
_LEVEL = 0.95


# --------------------------------------------------------------------------------------------------
# vectorised row-wise correlation
# --------------------------------------------------------------------------------------------------


def _standardize_rows(A: FloatArray) -> FloatArray:
    """Rows centered and scaled to unit norm; constant rows become NaN (their correlation is undefined)."""
    C = A - A.mean(axis=-1, keepdims=True)
    norm = np.sqrt(np.sum(C * C, axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, C / np.where(norm > 0, norm, 1.0), np.nan)


def _corr_matrix(A: FloatArray, B: FloatArray) -> FloatArray:
    """Pearson correlation of every row of A (K × n) with every row of B (P × n): K × P."""
    return np.clip(_standardize_rows(A) @ _standardize_rows(B).T, -1.0, 1.0)


def _corr_paired(A: FloatArray, B: FloatArray) -> FloatArray:
    """Pearson correlation of row i of A with row i of B (both P × n)."""
    return np.clip(np.sum(_standardize_rows(A) * _standardize_rows(B), axis=-1), -1.0, 1.0)


def _ranks(A: FloatArray) -> FloatArray:
    """Average ranks along the last axis (ties share their mean rank, as in Spearman's ρ)."""
    return scipy.stats.rankdata(A, axis=-1).astype(np.float64)


def _rank_kernel(A: FloatArray) -> FloatArray:
    """K[..., i, j] = [a_i < a_j] + ½[a_i = a_j], so that W @ K + ½ are the average ranks of the sample in
    which element i appears W_i times (W = 1: the ordinary average ranks)."""
    less = A[..., :, None] < A[..., None, :]
    equal = A[..., :, None] == A[..., None, :]
    return less + 0.5 * equal


def _weighted_corr(A: FloatArray, B: FloatArray, W: FloatArray) -> FloatArray:
    """Pearson correlation along the last axis with frequency weights W (a resample with repeats is the
    original rows weighted by their counts); NaN where a side is constant on the rows with W > 0."""
    A, B, W = np.broadcast_arrays(A, B, W)
    total = W.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ca = A - (W * A).sum(axis=-1, keepdims=True) / total
        cb = B - (W * B).sum(axis=-1, keepdims=True) / total
        r = (W * ca * cb).sum(-1) / np.sqrt((W * ca * ca).sum(-1) * (W * cb * cb).sum(-1))
    present = W > 0
    constant = np.zeros(r.shape, dtype=bool)
    for M in (A, B):  # exact test on the values, not on a round-off-prone variance
        constant |= np.where(present, M, -np.inf).max(-1) == np.where(present, M, np.inf).min(-1)
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def _weighted_corr_many(A: FloatArray, b: FloatArray, w: FloatArray) -> FloatArray:
    """Weighted correlation of every row of A[p] (P × K × n, or 1 × K × n shared) with b[p] (P × n) under
    weights w[p] (P × n): P × K, from batched weighted moment sums (one matrix product each). NaN where
    a side is constant on the weighted rows (variance ≤ 1e-10 of the second moment: exact zeros for
    ranks, round-off for real values, which the callers centre and scale first)."""
    wb = w * b
    total = w.sum(-1)[:, None]
    sa = (A @ w[:, :, None])[..., 0]
    saa = ((A * A) @ w[:, :, None])[..., 0]
    sab = (A @ wb[:, :, None])[..., 0]
    sb = wb.sum(-1)[:, None]
    sbb = (wb * b).sum(-1)[:, None]
    va = saa - sa * sa / total
    vb = sbb - sb * sb / total
    defined = (va > 1e-10 * saa) & (vb > 1e-10 * sbb)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (sab - sa * sb / total) / np.sqrt(np.where(defined, va * vb, 1.0))
    return np.where(defined, np.clip(r, -1.0, 1.0), np.nan)


def _chunks(total: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [(a, min(a + step, total)) for a in range(0, total, step)]


def _percentile_ci(values: FloatArray, level: float = _LEVEL) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (np.nan, np.nan)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return (float(lo), float(hi))


# --------------------------------------------------------------------------------------------------
# permutations: exact enumeration or Monte Carlo, optionally within groups
# --------------------------------------------------------------------------------------------------


def _blocks(groups: ArrayLike | None, n: int) -> list[IntArray]:
    """Row indices of each group (one block of all rows without groups): permutations stay inside."""
    if groups is None:
        return [np.arange(n)]
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.size != n:
        raise PerceptAlignError(
            f"groups must give one label per row ({n}), got shape {labels.shape}; pass e.g. the parent "
            "corpus of each task."
        )
    if pd.isna(labels).any():
        raise PerceptAlignError("groups contains missing labels; give every row a group.")
    codes, _ = pd.factorize(labels)
    return [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1)]


def _count_permutations(blocks: list[IntArray], limit: int) -> int | None:
    """∏ n_g! (the distinct within-group permutations) when it is ≤ limit, else None."""
    total = 1
    for block in blocks:
        for k in range(2, len(block) + 1):
            total *= k
            if total > limit:
                return None
    return total


@functools.lru_cache(maxsize=16)
def _permutation_table(m: int) -> IntArray:
    """All m! permutations of range(m), identity first (itertools order)."""
    return np.array(list(itertools.permutations(range(m))), dtype=np.int64).reshape(-1, m)


def _enumerated(blocks: list[IntArray], n: int, start: int, stop: int) -> IntArray:
    """Rows start..stop-1 of the Cartesian product of every block's permutations (row 0 = identity)."""
    rows = np.arange(start, stop)
    out = np.tile(np.arange(n), (rows.size, 1))
    stride = 1
    for block in blocks:
        if len(block) < 2:
            continue
        table = _permutation_table(len(block))
        out[:, block] = block[table[(rows // stride) % len(table)]]
        stride *= len(table)
    return out


def _random_permutations(rng: np.random.Generator, blocks: list[IntArray], n: int, count: int) -> IntArray:
    out = np.tile(np.arange(n), (count, 1))
    for block in blocks:
        if len(block) > 1:
            out[:, block] = block[rng.permuted(np.tile(np.arange(len(block)), (count, 1)), axis=1)]
    return out


def _permutation_plan(blocks: list[IntArray], n_permutations: int, exact_limit: int) -> tuple[int, bool]:
    total = _count_permutations(blocks, exact_limit)
    return (total, True) if total is not None else (n_permutations, False)


def _permutation_batches(
    blocks: list[IntArray], n: int, count: int, exact: bool, rng: np.random.Generator, width: int
) -> Iterator[IntArray]:
    """Index arrays (rows = permutations) covering all `count` permutations in memory-bounded chunks."""
    for a, b in _chunks(count, width):
        yield _enumerated(blocks, n, a, b) if exact else _random_permutations(rng, blocks, n, b - a)


def _p_from_null(null: FloatArray, observed: Any, alternative: str, exact: bool) -> Any:
    """Permutation p along the last axis. Exact: the share of all permutations (the identity, i.e. the
    observed pairing, among them) at least as extreme, so never below 1/n!. Monte Carlo: the +1
    correction (Phipson & Smyth 2010), the observed statistic counted in its own null; never zero."""
    obs = np.asarray(observed, dtype=np.float64)[..., None]
    if alternative == "greater":
        hits = null >= obs - _TIE_TOL
    elif alternative == "less":
        hits = null <= obs + _TIE_TOL
    else:
        hits = np.abs(null) >= np.abs(obs) - _TIE_TOL
    count = np.count_nonzero(hits, axis=-1)
    size = null.shape[-1]
    return count / size if exact else (1 + count) / (1 + size)


@dataclass(frozen=True)
class PermutationResult:
    """A permutation test of association. ``exact``: every (within-group) permutation was enumerated
    and ``n_permutations`` is their number; otherwise that many were drawn at random."""

    statistic: float
    p: float
    n: int
    exact: bool
    n_permutations: int


def _vector(v: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(v, dtype=np.float64) if not isinstance(v, pd.Series) else v.to_numpy(np.float64)
    if arr.ndim != 1:
        raise PerceptAlignError(f"{name} must be 1-D, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise PerceptAlignError(f"{name} contains NaN or infinite values; drop those entries first.")
    return arr


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    xv, yv = _vector(x, "x"), _vector(y, "y")
    if xv.shape != yv.shape:
        raise PerceptAlignError(f"x and y must have the same length, got {xv.size} and {yv.size}.")
    if xv.size < 3:
        raise PerceptAlignError(f"a correlation needs at least 3 pairs, got {xv.size}.")
    if np.ptp(xv) == 0 or np.ptp(yv) == 0:
        raise PerceptAlignError("x or y is constant, so its correlation is undefined; check the inputs.")
    return xv, yv


def _check_choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise PerceptAlignError(f"{name} must be one of {allowed}, got {value!r}.")


def _standardized(v: FloatArray, statistic: str) -> FloatArray:
    """Unit-norm centered values (average ranks for Spearman): the statistic is then a dot product, and
    permuting y permutes its ranks, so enumeration and Monte Carlo compute exactly the same statistic."""
    return _standardize_rows(_ranks(v) if statistic == "spearman" else v)


def permutation_test(
    x: ArrayLike,
    y: ArrayLike,
    *,
    statistic: Method = "spearman",
    groups: ArrayLike | None = None,
    alternative: Alternative = "greater",
    n_permutations: int = 10_000,
    exact_limit: int = EXACT_PERMUTATION_LIMIT,
    seed: int = 0,
) -> PermutationResult:
    """Permutation test of the correlation of x and y, permuting y relative to x.

    With ``groups`` (one label per row, e.g. each task's parent corpus) y is permuted only WITHIN
    groups: the null is "no association inside groups", valid when groups differ in level. All
    ∏ n_g! within-group permutations are enumerated when that number is ≤ ``exact_limit`` (p = share at
    least as extreme, ≥ 1/∏ n_g!); otherwise ``n_permutations`` are drawn with the +1 correction.
    ``statistic``: "spearman" (Pearson of average ranks, ties included) or "pearson".
    """
    _check_choice(statistic, _METHODS, "statistic")
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    if n_permutations < 1 or exact_limit < 1:
        raise PerceptAlignError("n_permutations and exact_limit must be >= 1.")
    xv, yv = _pair(x, y)
    n = xv.size
    blocks = _blocks(groups, n)
    a, b = _standardized(xv, statistic), _standardized(yv, statistic)
    observed = float(np.clip(a @ b, -1.0, 1.0))
    count, exact = _permutation_plan(blocks, n_permutations, exact_limit)
    rng = np.random.default_rng(seed)
    null = np.concatenate(
        [np.clip(b[idx] @ a, -1.0, 1.0) for idx in _permutation_batches(blocks, n, count, exact, rng, n)]
    )
    return PermutationResult(
        statistic=observed,
        p=float(_p_from_null(null, observed, alternative, exact)),
        n=n,
        exact=exact,
        n_permutations=count,
    )


# --------------------------------------------------------------------------------------------------
# multiplicity, cluster bootstrap, power
# --------------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in input order: the i-th smallest p times (m − i + 1), made
    monotone by a running maximum and capped at 1. Controls the family-wise error rate under any
    dependence between the tests (they share datasets here), uniformly more powerful than Bonferroni."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise PerceptAlignError(f"pvalues must be 1-D, got shape {p.shape}.")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise PerceptAlignError(
            "pvalues must be finite numbers in [0, 1]; leave tests that were not computed out of the family."
        )
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _weighted_statistic(x: FloatArray, y: FloatArray, W: FloatArray, statistic: str) -> FloatArray:
    """The statistic on each resample given as row weights W (P × n): Spearman = Pearson of the average
    ranks of the expanded sample, computed from W without expanding it."""
    if statistic == "spearman":
        return _weighted_corr(W @ _rank_kernel(x) + 0.5, W @ _rank_kernel(y) + 0.5, W)
    return _weighted_corr(x[None, :], y[None, :], W)


def cluster_bootstrap_ci(
    x: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    *,
    statistic: Method = "spearman",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the correlation, resampling whole groups (clusters) with
    replacement and pooling their rows, so that rows of one group are never treated as independent.

    Resamples in which x or y is constant (e.g. one group drawn every time) have no correlation: they
    are skipped and counted; more than ``MAX_UNDEFINED_BOOTSTRAP_FRACTION`` of them is an error (too few
    groups for a cluster bootstrap).
    """
    _check_choice(statistic, _METHODS, "statistic")
    if n_boot < 1:
        raise PerceptAlignError(f"n_boot must be >= 1, got {n_boot}.")
    if not 0 < level < 1:
        raise PerceptAlignError(f"level must lie in (0, 1), e.g. 0.95; got {level}.")
    xv, yv = _pair(x, y)
    if groups is None:
        raise PerceptAlignError("groups is required: one cluster label per row.")
    blocks = _blocks(groups, xv.size)
    G = len(blocks)
    if G < 2:
        raise PerceptAlignError(
            f"a cluster bootstrap needs at least 2 groups, got {G}; with one group there is nothing to "
            "resample (use a row bootstrap, or report no interval)."
        )
    membership = np.zeros((G, xv.size))
    for g, block in enumerate(blocks):
        membership[g, block] = 1.0
    rng = np.random.default_rng(seed)
    values = []
    for a, b in _chunks(n_boot, xv.size + G):
        draws = rng.integers(0, G, size=(b - a, G)) + G * np.arange(b - a)[:, None]
        counts = np.bincount(draws.ravel(), minlength=(b - a) * G).reshape(b - a, G).astype(np.float64)
        values.append(_weighted_statistic(xv, yv, counts @ membership, statistic))
    boot = np.concatenate(values)
    undefined = int(np.count_nonzero(~np.isfinite(boot)))
    if undefined > MAX_UNDEFINED_BOOTSTRAP_FRACTION * n_boot:
        raise PerceptAlignError(
            f"{undefined} of {n_boot} cluster-bootstrap resamples had a constant x or y (correlation "
            f"undefined), more than {MAX_UNDEFINED_BOOTSTRAP_FRACTION:.0%}: {G} groups are too few for "
            "a cluster bootstrap; report no interval or collect more groups."
        )
    return _percentile_ci(boot, level)


def simulated_power(
    n: int,
    *,
    rho: float,
    groups: ArrayLike | None = None,
    alpha: float = 0.05,
    statistic: Method = "spearman",
    alternative: Alternative = "greater",
    n_sim: int = 1000,
    n_permutations: int = 500,
    seed: int = 0,
    within_group_correlation: float = 0.0,
) -> float:
    """Monte-Carlo power of :func:`permutation_test` (same statistic, same within-group permutations,
    exact enumeration under the same rule) at true correlation ``rho``, for n rows with ``groups``.

    Each simulated data set draws standard bivariate normal pairs (e_x, e_y) with correlation ``rho``
    and one shared effect u_g ~ N(0, 1) per group, then x = √c·u_g + √(1−c)·e_x and
    y = √c·u_g + √(1−c)·e_y with c = ``within_group_correlation`` (the intra-class correlation of x
    and of y). The same u_g enters x and y: a group-level confounder, the reason to permute within
    groups; ``rho`` is the within-group correlation the test is meant to detect. No asymptotic
    shortcut is used: every simulated test is a full permutation test, vectorised over simulations.
    The Monte-Carlo standard error of the result is √(power(1 − power)/n_sim).
    """
    _check_choice(statistic, _METHODS, "statistic")
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    if int(n) != n or n < 3:
        raise PerceptAlignError(f"n must be an integer >= 3, got {n}.")
    n = int(n)
    if not -1 <= rho <= 1:
        raise PerceptAlignError(f"rho must lie in [-1, 1], got {rho}.")
    if not 0 < alpha < 1:
        raise PerceptAlignError(f"alpha must lie in (0, 1), got {alpha}.")
    if n_sim < 1 or n_permutations < 1:
        raise PerceptAlignError("n_sim and n_permutations must be >= 1.")
    if not 0 <= within_group_correlation < 1:
        raise PerceptAlignError(
            f"within_group_correlation must lie in [0, 1), got {within_group_correlation}."
        )
    if within_group_correlation > 0 and groups is None:
        raise PerceptAlignError(
            "within_group_correlation > 0 needs groups (the rows that share a group effect)."
        )
    blocks = _blocks(groups, n)
    codes = np.empty(n, dtype=np.int64)
    for g, block in enumerate(blocks):
        codes[block] = g
    count, exact = _permutation_plan(blocks, n_permutations, EXACT_PERMUTATION_LIMIT)
    rng = np.random.default_rng(seed)
    table = _enumerated(blocks, n, 0, count) if exact else None
    c = within_group_correlation
    rejected = 0
    for a, b in _chunks(n_sim, count * n):
        sims = b - a
        shared = rng.standard_normal((sims, len(blocks)))[:, codes]
        e_x, e_other = rng.standard_normal((2, sims, n))
        e_y = rho * e_x + math.sqrt(max(0.0, 1 - rho * rho)) * e_other
        x = math.sqrt(c) * shared + math.sqrt(1 - c) * e_x
        y = math.sqrt(c) * shared + math.sqrt(1 - c) * e_y
        sx, sy = _standardized(x, statistic), _standardized(y, statistic)
        observed = np.sum(sx * sy, axis=-1)
        if exact:
            idx = np.broadcast_to(table, (sims, *table.shape))
        else:
            idx = _random_permutations(rng, blocks, n, sims * count).reshape(sims, count, n)
        permuted = np.take_along_axis(sy[:, None, :], idx, axis=-1)
        null = np.einsum("spn,sn->sp", permuted, sx)
        p = _p_from_null(null, observed, alternative, exact)
        rejected += int(np.count_nonzero(p <= alpha))
    return rejected / n_sim


# --------------------------------------------------------------------------------------------------
# correlate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelationResult:
    """Spearman and Pearson correlation with analytic p, two-sided permutation p and bootstrap 95% CI.

    The analytic p-values (scipy's t approximation) are 0 at ρ = ±1 and unreliable at small n; the
    permutation p-values are exact (enumerated) up to ``EXACT_PERMUTATION_LIMIT`` permutations."""

    n: int
    spearman: float
    spearman_p: float
    pearson: float
    pearson_p: float
    spearman_ci: tuple[float, float]
    pearson_ci: tuple[float, float]
    spearman_perm_p: float
    pearson_perm_p: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def correlate(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_permutations: int = 10000,
    n_bootstrap: int = 2000,
    seed: int = 0,
    exact_limit: int = EXACT_PERMUTATION_LIMIT,
) -> CorrelationResult:
    """Spearman and Pearson correlation of paired samples, each with three kinds of uncertainty.

    Analytic p-values come from scipy; permutation p-values are two-sided (:func:`permutation_test`:
    exact enumeration when n! ≤ ``exact_limit``, else ``n_permutations`` random pairings); 95%
    intervals are bootstrap percentiles over ``n_bootstrap`` resamples of pairs (resamples with a
    constant side are skipped). The pairs are taken as given: if x was SELECTED using y, neither the
    permutation p nor the interval accounts for it (use :func:`select_and_correlate`).
    ``n_permutations=0`` or ``n_bootstrap=0`` skips that part (NaN).
    """
    xv, yv = _pair(x, y)
    n = xv.size
    if n_permutations < 0 or n_bootstrap < 0:
        raise PerceptAlignError("n_permutations and n_bootstrap must be >= 0.")
    rho, rho_p = scipy.stats.spearmanr(xv, yv)
    r, r_p = scipy.stats.pearsonr(xv, yv)

    perm_rho, perm_r = np.nan, np.nan
    if n_permutations:
        kw = {"alternative": "two-sided", "n_permutations": n_permutations, "exact_limit": exact_limit}
        perm_rho = permutation_test(xv, yv, statistic="spearman", seed=seed, **kw).p  # type: ignore[arg-type]
        perm_r = permutation_test(xv, yv, statistic="pearson", seed=seed, **kw).p  # type: ignore[arg-type]

    ci_rho: tuple[float, float] = (np.nan, np.nan)
    ci_r: tuple[float, float] = (np.nan, np.nan)
    if n_bootstrap:
        rng = np.random.default_rng([seed, 1])
        boot_rho, boot_r = [], []
        for a, b in _chunks(n_bootstrap, n):
            idx = rng.integers(0, n, size=(b - a, n))
            xb, yb = xv[idx], yv[idx]
            boot_r.append(_corr_paired(xb, yb))
            boot_rho.append(_corr_paired(_ranks(xb), _ranks(yb)))
        ci_rho = _percentile_ci(np.concatenate(boot_rho))
        ci_r = _percentile_ci(np.concatenate(boot_r))
    return CorrelationResult(
        n=n,
        spearman=float(rho),
        spearman_p=float(rho_p),
        pearson=float(r),
        pearson_p=float(r_p),
        spearman_ci=ci_rho,
        pearson_ci=ci_r,
        spearman_perm_p=float(perm_rho),
        pearson_perm_p=float(perm_r),
    )


# --------------------------------------------------------------------------------------------------
# configuration selection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of one declared selection procedure.

    ``selected`` has one row per dataset: the (layer, config) whose score was used for it, that score,
    the target, the correlation that justified the choice (on the other datasets for ``nested``, on all
    datasets for ``best_in_sample``, NaN for ``fixed``) and ``n_tied``, how many configurations tied for
    the best criterion (ties are broken uniformly at random, seeded). ``correlation`` correlates the
    used scores with the targets as if they had not been selected; its bootstrap intervals are only
    filled for ``fixed``. ``naive_perm_p`` is the one-sided (declared direction) permutation p of those
    pairs, taking the choice as given. ``selection_perm_p`` repeats the whole procedure on every
    permutation of the targets (all n! of them when ``exact``): the p-value to report for ``nested``
    and ``best_in_sample``. ``interval`` is the 95% interval of the ``method`` correlation described by
    ``interval_kind``: a pairs bootstrap for ``fixed``, a selection-aware bootstrap (the nested
    selection redone in every resample) for ``nested``, none (NaN) for ``best_in_sample``.
    """

    mode: str
    optimistic: bool
    method: str
    direction: str
    selected: pd.DataFrame
    correlation: CorrelationResult
    selection_perm_p: float
    selection_null: FloatArray
    n_configurations: int
    n_permutations: int
    exact: bool = False
    naive_perm_p: float = np.nan
    interval: tuple[float, float] = (np.nan, np.nan)
    interval_kind: str = ""
    n_bootstrap_skipped: int = 0

    @property
    def statistic(self) -> float:
        """The selection criterion of the used scores vs targets (signed by ``direction``)."""
        value = getattr(self.correlation, self.method)
        return _signed(np.array(value), self.direction).item()


def _signed(C: FloatArray, direction: str) -> FloatArray:
    if direction == "positive":
        return C
    if direction == "negative":
        return -C
    return np.abs(C)


def _tie_break(crit: FloatArray, rng: np.random.Generator, axis: int) -> tuple[IntArray, IntArray]:
    """Argmax along ``axis`` with ties (equal up to round-off) broken uniformly at random: ``np.argmax``
    would always take the first, i.e. the lowest layer and fraction. Returns (choice, number tied)."""
    best = np.max(crit, axis=axis, keepdims=True)
    tied = crit >= best - _TIE_TOL
    keys = np.where(tied, rng.random(crit.shape), -1.0)
    return np.argmax(keys, axis=axis), np.count_nonzero(tied, axis=axis)


@dataclass(frozen=True)
class _Grid:
    """Scores as a (configuration × dataset) matrix with the per-dataset targets."""

    configs: list[tuple[Hashable, Hashable]]
    datasets: list[Hashable]
    scores: FloatArray
    targets: FloatArray


def _grid(
    table: pd.DataFrame,
    target: str | Mapping[Hashable, float] | pd.Series,
    score_col: str,
) -> _Grid:
    if not isinstance(table, pd.DataFrame):
        raise PerceptAlignError(
            "table must be a pandas DataFrame with columns dataset, layer, config, score."
        )
    needed = ["dataset", "layer", "config", score_col]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise PerceptAlignError(
            f"table is missing columns {missing}; "
            f"it needs one row per (dataset, layer, config) with {needed}."
        )
    if table.duplicated(["dataset", "layer", "config"]).any():
        dup = table.loc[table.duplicated(["dataset", "layer", "config"], keep=False), needed[:3]]
        raise PerceptAlignError(
            f"table has {len(dup)} rows with a repeated (dataset, layer, config), e.g. "
            f"{tuple(dup.iloc[0])}; aggregate repeats (e.g. mean over seeds) before selecting."
        )
    scores = pd.to_numeric(table[score_col], errors="coerce")
    if not np.all(np.isfinite(scores.to_numpy(np.float64))):
        raise PerceptAlignError(f"column {score_col!r} has NaN, infinite or non-numeric values; drop them.")
    datasets = list(pd.unique(table["dataset"]))

    if isinstance(target, str):
        if target not in table.columns:
            raise PerceptAlignError(
                f"target column {target!r} not in table; pass a column name or a mapping dataset → value."
            )
        per = table.groupby("dataset", sort=False)[target]
        if (per.nunique(dropna=False) > 1).any():
            bad = per.nunique(dropna=False)
            raise PerceptAlignError(
                f"target column {target!r} varies within datasets {list(bad[bad > 1].index)}; "
                "the target must be one value per dataset."
            )
        target_map = per.first()
    else:
        target_map = pd.Series(dict(target)) if not isinstance(target, pd.Series) else target
    absent = [d for d in datasets if d not in target_map.index]
    if absent:
        raise PerceptAlignError(f"no target value for datasets {absent}; provide one for every dataset.")
    values = pd.Series([target_map[d] for d in datasets])
    targets = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    if not np.all(np.isfinite(targets)):
        raise PerceptAlignError("targets must be finite numbers for every dataset.")
    if np.ptp(targets) == 0:
        raise PerceptAlignError("the target is identical for all datasets, so no correlation is defined.")

    wide = table.assign(_score=scores).pivot(index=["layer", "config"], columns="dataset", values="_score")
    wide = wide.sort_index()[datasets]
    incomplete = wide.isna().any(axis=1)
    if incomplete.any():
        first = wide.index[incomplete][0]
        raise PerceptAlignError(
            f"{int(incomplete.sum())} (layer, config) pairs lack a score for some dataset, e.g. {first}; "
            "every configuration must be scored on every dataset (filter the table to complete ones)."
        )
    return _Grid(
        configs=[tuple(ix) for ix in wide.index],  # type: ignore[misc]
        datasets=datasets,
        scores=wide.to_numpy(np.float64),
        targets=targets,
    )


class _Procedure:
    """One selection procedure on fixed scores S (K × n), applied to many target vectors at once.

    The standardized (ranked, for Spearman) score rows of every fold are computed once, so the
    permutation null costs one K × P matrix product per fold and chunk. Ties for the best criterion
    are broken uniformly at random by ``rng``, in the observed data and in every permutation alike.
    """

    def __init__(self, S: FloatArray, mode: str, k_fixed: int, method: str, direction: str) -> None:
        self.S, self.mode, self.k_fixed, self.direction = S, mode, k_fixed, direction
        self.rank = method == "spearman"
        n = S.shape[1]
        prep = (lambda A: _standardize_rows(_ranks(A))) if self.rank else _standardize_rows
        if mode == "fixed":
            self.full = prep(S[k_fixed][None])
        elif mode == "best_in_sample":
            self.full = prep(S)
        else:
            self.folds = [prep(S[:, np.arange(n) != d]) for d in range(n)]

    def _criterion(self, Sz: FloatArray, T: FloatArray) -> FloatArray:
        Tz = _standardize_rows(_ranks(T) if self.rank else T)
        crit = _signed(np.clip(Sz @ Tz.T, -1.0, 1.0), self.direction)
        return np.where(np.isnan(crit), -np.inf, crit)

    def __call__(
        self, T: FloatArray, rng: np.random.Generator, *, need_choice: bool = True
    ) -> tuple[FloatArray, IntArray, FloatArray, IntArray]:
        """For each row of T (P target vectors): the signed statistic (P,), the configuration used per
        dataset (P × n), the criterion value that justified it (P × n; NaN for ``fixed``) and the number
        of configurations tied for it (P × n). ``need_choice=False``: best-in-sample skips the tie-break
        (its statistic, the maximum, does not depend on which tied configuration is named)."""
        P, n = T.shape
        if self.mode == "fixed":
            stat = self._criterion(self.full, T)[0]
            ones = np.ones((P, n), dtype=np.int64)
            return stat, ones * self.k_fixed, np.full((P, n), np.nan), ones
        if self.mode == "best_in_sample":
            crit = self._criterion(self.full, T)
            value = crit.max(axis=0)
            if not need_choice:
                return value, np.zeros((P, n), dtype=np.int64), np.zeros((P, n)), np.ones((P, n), np.int64)
            best, tied = _tie_break(crit, rng, axis=0)
            return (
                value,
                np.repeat(best[:, None], n, axis=1),
                np.repeat(value[:, None], n, axis=1),
                np.repeat(tied[:, None], n, axis=1),
            )
        # nested: the choice for dataset d sees only the other datasets' scores and targets
        choice = np.empty((P, n), dtype=np.int64)
        crit_used = np.empty((P, n))
        n_tied = np.empty((P, n), dtype=np.int64)
        for d in range(n):
            crit = self._criterion(self.folds[d], T[:, np.arange(n) != d])
            choice[:, d], n_tied[:, d] = _tie_break(crit, rng, axis=0)
            crit_used[:, d] = crit[choice[:, d], np.arange(P)]
        oos = self.S[choice, np.arange(n)[None, :]]  # P × n out-of-sample scores
        corr = _corr_paired(_ranks(oos) if self.rank else oos, _ranks(T) if self.rank else T)
        stat = _signed(corr, self.direction)
        return np.where(np.isnan(stat), -np.inf, stat), choice, crit_used, n_tied


def _nested_resamples(n: int, count: int, rng: np.random.Generator) -> tuple[FloatArray, int]:
    """Bootstrap weights (count × n: how often each dataset is drawn) of resamples with at least
    ``_NESTED_MIN_DISTINCT`` distinct datasets, drawn by rejection (the bootstrap distribution
    conditional on the nested procedure being defined); also the number rejected."""
    kept: list[FloatArray] = []
    have, rejected = 0, 0
    for _ in range(1000):
        draws = rng.integers(0, n, size=(count, n)) + n * np.arange(count)[:, None]
        W = np.bincount(draws.ravel(), minlength=count * n).reshape(count, n).astype(np.float64)
        ok = np.count_nonzero(W, axis=1) >= _NESTED_MIN_DISTINCT
        rejected += int(np.count_nonzero(~ok))
        kept.append(W[ok])
        have += int(ok.sum())
        if have >= count:
            break
    return np.concatenate(kept)[:count], rejected


def _nested_bootstrap(
    S: FloatArray, T: FloatArray, method: str, direction: str, n_boot: int, rng: np.random.Generator
) -> tuple[FloatArray, int]:
    """The nested (leave-one-dataset-out) correlation recomputed on bootstrap resamples of datasets, the
    selection redone inside each: for every dataset present, the configuration is chosen on the
    resample's OTHER datasets (all its copies held out, so a repeat cannot leak it into its own fold).
    Returns the resampled correlations (NaN where undefined) and the resamples rejected for having
    fewer than 4 distinct datasets."""
    K, n = S.shape
    rank = method == "spearman"
    W_all, rejected = _nested_resamples(n, n_boot, rng)
    kernel_S = _rank_kernel(S).transpose(1, 0, 2).reshape(n, K * n) if rank else None
    kernel_T = _rank_kernel(T) if rank else None
    scale = S.std(-1, keepdims=True)
    Sz = (S - S.mean(-1, keepdims=True)) / np.where(scale > 0, scale, 1.0)  # affine: same correlations
    Tz = (T - T.mean()) / T.std()
    out = []
    for a, b in _chunks(len(W_all), K * n):
        W = W_all[a:b]
        P = len(W)
        choice = np.zeros((P, n), dtype=np.int64)
        valid = np.ones(P, dtype=bool)
        for d in range(n):
            present = W[:, d] > 0
            if not present.any():
                continue
            Wd = W[present].copy()
            Wd[:, d] = 0.0
            if rank:
                RS = (Wd @ kernel_S).reshape(-1, K, n) + 0.5
                RT = Wd @ kernel_T + 0.5
            else:
                RS, RT = Sz[None], np.broadcast_to(Tz, Wd.shape)
            crit = _signed(_weighted_corr_many(RS, RT, Wd), direction)
            crit = np.where(np.isnan(crit), -np.inf, crit)
            choice[present, d] = _tie_break(crit, rng, axis=1)[0]
            valid[present] &= np.isfinite(crit.max(axis=1))
        oos = S[choice, np.arange(n)[None, :]]
        if rank:
            R_oos = np.einsum("pi,pij->pj", W, _rank_kernel(oos)) + 0.5
            r = _weighted_corr(R_oos, W @ kernel_T + 0.5, W)
        else:
            r = _weighted_corr(oos, T[None, :], W)
        out.append(np.where(valid, r, np.nan))
    return np.concatenate(out), rejected


def _resolve_fixed(grid: _Grid, fixed_config: Any) -> int:
    if fixed_config is None:
        raise PerceptAlignError(
            "mode='fixed' needs fixed_config=(layer, config) chosen before looking at the targets, "
            "e.g. ('last', 0.5)."
        )
    if isinstance(fixed_config, Mapping):
        layer, config = fixed_config.get("layer"), fixed_config.get("config")
    else:
        try:
            layer, config = fixed_config
        except (TypeError, ValueError):
            raise PerceptAlignError(
                "fixed_config must be (layer, config) or {'layer': ..., 'config': ...}, "
                f"got {fixed_config!r}."
            ) from None
    if isinstance(layer, str) and layer == "last":
        layer = max(c[0] for c in grid.configs)
    for k, (lay, cfg) in enumerate(grid.configs):
        if lay == layer and (cfg == config or (_isnum(cfg) and _isnum(config) and np.isclose(cfg, config))):
            return k
    raise PerceptAlignError(
        f"fixed_config ({layer!r}, {config!r}) is not in the table; available layers "
        f"{sorted({c[0] for c in grid.configs})} and configs {sorted({c[1] for c in grid.configs}, key=str)}."
    )


def _isnum(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def select_and_correlate(
    table: pd.DataFrame,
    target: str | Mapping[Hashable, float] | pd.Series,
    mode: Mode,
    fixed_config: Any = None,
    *,
    method: Method = "spearman",
    direction: Direction = "positive",
    score_col: str = "score",
    n_permutations: int = 10000,
    n_bootstrap: int = 2000,
    seed: int = 0,
    exact_limit: int = EXACT_PERMUTATION_LIMIT,
) -> SelectionResult:
    """Choose the (layer, config) of a score by a declared procedure, then correlate it with the target.

    ``table``: long format, one row per (dataset, layer, config) with a ``score`` (e.g. NTPS at that
    layer and fraction). ``target``: a column of ``table`` constant within each dataset, or a mapping
    dataset → value (probe accuracy, LoRA gain, ...). ``method`` is the correlation used to select and
    test; ``direction`` the sign declared in advance ("negative" for LoRA gain: higher NTPS, smaller gain).

    Modes: ``fixed`` uses ``fixed_config`` = (layer, config), chosen a priori (``layer='last'`` = the
    deepest layer); ``nested`` chooses, for each held-out dataset, the configuration with the best
    criterion on the OTHER datasets and applies it to the held-out one; ``best_in_sample`` maximises the
    criterion on all datasets (the published practice, ``optimistic=True``). Configurations tied for the
    best criterion are chosen between uniformly at random (seeded), never by their order in the table.

    The selection-aware null enumerates all n! target permutations when n! ≤ ``exact_limit`` (n ≤ 8 by
    default), else draws ``n_permutations``. Intervals: see :class:`SelectionResult` — a bootstrap that
    keeps the selected configuration fixed would hide the selection (best-in-sample at ρ = 1 would show
    [1, 1]), so best-in-sample gets none and nested redoes its selection in every resample.
    """
    if mode not in _MODES:
        raise PerceptAlignError(f"mode must be one of {_MODES}, got {mode!r}.")
    if method not in _METHODS:
        raise PerceptAlignError(f"method must be one of {_METHODS}, got {method!r}.")
    if direction not in _DIRECTIONS:
        raise PerceptAlignError(f"direction must be one of {_DIRECTIONS}, got {direction!r}.")
    if n_permutations < 1:
        raise PerceptAlignError("n_permutations must be >= 1 (the selection-aware null needs permutations).")
    if n_bootstrap < 0:
        raise PerceptAlignError(f"n_bootstrap must be >= 0, got {n_bootstrap}.")
    grid = _grid(table, target, score_col)
    K, n = grid.scores.shape
    min_n = _NESTED_MIN_DISTINCT if mode == "nested" else 3
    if n < min_n:
        raise PerceptAlignError(
            f"mode={mode!r} needs at least {min_n} datasets (each correlation needs 3 points), got {n}."
        )
    k_fixed = _resolve_fixed(grid, fixed_config) if mode == "fixed" else -1

    procedure = _Procedure(grid.scores, mode, k_fixed, method, direction)
    tie_rng = np.random.default_rng([seed, 2])
    observed, choice, crit, n_tied = procedure(grid.targets[None], tie_rng)
    blocks = [np.arange(n)]
    count, exact = _permutation_plan(blocks, n_permutations, exact_limit)
    width = K * (n if mode == "nested" else 1) * n
    null = np.concatenate(
        [
            procedure(grid.targets[idx], tie_rng, need_choice=False)[0]
            for idx in _permutation_batches(blocks, n, count, exact, np.random.default_rng(seed), width)
        ]
    )
    if exact:
        # Row 0 is the identity: the observed data themselves (their own tie-breaks included).
        null[0] = observed[0]

    chosen = choice[0]
    used = grid.scores[chosen, np.arange(n)]
    if np.ptp(used) == 0:
        raise PerceptAlignError(
            "the selected scores are identical on every dataset, so their correlation is undefined; "
            "check that the score column varies across datasets."
        )
    selected = pd.DataFrame(
        {
            "layer": [grid.configs[k][0] for k in chosen],
            "config": [grid.configs[k][1] for k in chosen],
            "score": used,
            "target": grid.targets,
            "selection_correlation": crit[0],
            "n_tied": n_tied[0],
        },
        index=pd.Index(grid.datasets, name="dataset"),
    )
    correlation = correlate(
        used,
        grid.targets,
        n_permutations=n_permutations,
        n_bootstrap=n_bootstrap if mode == "fixed" else 0,
        seed=seed + 1,
        exact_limit=exact_limit,
    )
    naive = permutation_test(
        used,
        grid.targets,
        statistic=method,
        alternative=_ALTERNATIVE_OF[direction],  # type: ignore[arg-type]
        n_permutations=n_permutations,
        exact_limit=exact_limit,
        seed=seed + 1,
    )
    interval: tuple[float, float] = (np.nan, np.nan)
    skipped = 0
    if mode == "best_in_sample":
        kind = (
            "none: the in-sample maximum over configurations is biased upward and a bootstrap of a "
            "maximum is not a valid interval; read the selection-aware p"
        )
    elif n_bootstrap == 0:
        kind = "none: no bootstrap requested"
    elif mode == "fixed":
        interval = getattr(correlation, f"{method}_ci")
        kind = "percentile bootstrap over datasets (the configuration was fixed a priori)"
    else:
        boot, skipped = _nested_bootstrap(
            grid.scores, grid.targets, method, direction, n_bootstrap, np.random.default_rng([seed, 3])
        )
        undefined = int(np.count_nonzero(~np.isfinite(boot)))
        kind = (
            "selection-aware percentile bootstrap: datasets resampled, the leave-one-dataset-out "
            f"selection redone in each resample ({skipped} resamples with < {_NESTED_MIN_DISTINCT} "
            "distinct datasets redrawn"
        )
        if undefined > MAX_UNDEFINED_BOOTSTRAP_FRACTION * n_bootstrap:
            kind = f"none: the nested correlation was undefined in {undefined} of {n_bootstrap} resamples"
        else:
            interval = _percentile_ci(boot)
            kind += f", {undefined} undefined skipped)"
    return SelectionResult(
        mode=mode,
        optimistic=mode == "best_in_sample",
        method=method,
        direction=direction,
        selected=selected,
        correlation=correlation,
        selection_perm_p=float(_p_from_null(null, float(observed[0]), "greater", exact)),
        selection_null=null,
        n_configurations=K,
        n_permutations=count,
        exact=exact,
        naive_perm_p=naive.p,
        interval=interval,
        interval_kind=kind,
        n_bootstrap_skipped=skipped,
    )


def correlation_by_config(
    table: pd.DataFrame,
    target: str | Mapping[Hashable, float] | pd.Series,
    *,
    method: Method = "spearman",
    score_col: str = "score",
) -> pd.DataFrame:
    """In-sample correlation of every (layer, config) with the target: descriptive only (heat maps);
    reading the best cell off this table is ``best_in_sample`` selection."""
    if method not in _METHODS:
        raise PerceptAlignError(f"method must be one of {_METHODS}, got {method!r}.")
    grid = _grid(table, target, score_col)
    S, t = grid.scores, grid.targets[None]
    if method == "spearman":
        S, t = _ranks(S), _ranks(t)
    corr = _corr_matrix(S, t)[:, 0]
    return pd.DataFrame(
        {"layer": [c[0] for c in grid.configs], "config": [c[1] for c in grid.configs], method: corr}
    )
