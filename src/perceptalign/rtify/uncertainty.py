"""Uncertainty for RTify's comparison tables: bootstrap intervals, paired differences and a noise floor.

:func:`~perceptalign.rtify.metrics.fit_quality` gives one number per condition from one finite sample of
human trials and one simulation seed, so a gap of a few milliseconds of W1 between two methods cannot be
told apart from sampling noise. The pure functions here answer that question:

- :func:`bootstrap_fit_quality`: percentile intervals per condition, resampling trials *within* each
  condition (the human test trials, and the model trials too with ``resample="both"``);
- :func:`paired_difference`: the interval of metric(A) − metric(B) when both methods are scored against
  the *same* human resample, so the human sampling noise, common to both, cancels;
- :func:`noise_floor`: the distance between a resample of the human *train* trials and the human *test*
  trials, i.e. what a perfect model of the training data would still score;
- :func:`aggregate_seeds`: mean, sd and n over simulation seeds; :func:`markdown_table`: report cells.

Replicates are vectorised: trials are mapped once to their rank on the pooled grid of signed RTs (and to
their histogram bin), so the CDFs of many replicates are row-wise ``bincount`` + ``cumsum``, and W1 and KS
follow exactly as :func:`scipy.stats.wasserstein_distance` and :func:`scipy.stats.ks_2samp` compute them.

Undecided model trials are treated exactly as in ``fit_quality``: they are resampled with the decided
ones (so the number of decided trials varies between replicates), excluded from the conditional
statistics (accuracy, RT summaries, KS, W1), and count as missing mass in ``hist_mse`` and in
``no_decision_rate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.metrics import (
    OUTCOMES,
    QUANTILES,
    _check_qs,
    decided_mask,
    fit_quality,
    quantile_label,
    signed_rt,
)
from perceptalign.rtify.trials import conditions as table_conditions
from perceptalign.rtify.trials import normalise_conditions, validate_trials

#: Label of the row that averages a table over its conditions.
OVERALL = "mean over conditions"
DEFAULT_METRICS = ("wasserstein", "ks", "hist_mse", "accuracy_model", "accuracy_human")
#: Metrics for which a smaller value is a better fit (``abs_err_*`` metrics too).
LOWER_IS_BETTER = ("wasserstein", "ks", "hist_mse", "no_decision_rate")
_DISTANCES = ("wasserstein", "ks")
#: Upper bound on the elements of one replicate chunk's largest array (memory stays ~100 MB).
_CHUNK_ELEMENTS = 4_000_000
#: Replicates drawn from one random generator (see :func:`_draw`).
_BLOCK = 25

Resample = Literal["both", "human"]


# --------------------------------------------------------------------------------------------- checks


def _check_common(
    n_boot: int, level: float, seed: int, resample: str | None = None, *, what: str = "n_boot"
) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise PerceptAlignError(
            f"{what} (the number of resampling replicates) must be an integer >= 1, got {n_boot!r}; "
            "1000 is a good default for 95 % intervals."
        )
    if not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise PerceptAlignError(
            f"level (the interval's coverage) must lie strictly between 0 and 1, got "
            f"{level!r}; use e.g. 0.95 for a 95 % interval."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PerceptAlignError(f"seed must be a non-negative integer, got {seed!r}.")
    if resample is not None and resample not in ("both", "human"):
        raise PerceptAlignError(
            f"resample must be 'both' (resample human and model trials) or 'human' (keep the model "
            f"trials fixed), got {resample!r}."
        )


def available_metrics(qs: Sequence[float] = QUANTILES) -> list[str]:
    """Metric names the bootstrap understands: fit_quality's numeric columns plus ``abs_err_<stat>``.

    ``abs_err_<stat>`` is |stat_model − stat_human| (e.g. ``abs_err_accuracy``), a per-condition error
    for which "smaller is better" is meaningful, unlike ``accuracy_model`` itself.
    """
    stats = _side_stat_names(_check_qs(qs))
    sided = [f"{s}_{side}" for s in stats for side in ("model", "human")]
    return ["wasserstein", "ks", "hist_mse", "no_decision_rate", *sided, *(f"abs_err_{s}" for s in stats)]


def _side_stat_names(qs: Sequence[float]) -> list[str]:
    names = ["accuracy", "median_rt_correct", "median_rt_error", "mean_rt_correct", "mean_rt_error"]
    return names + [f"{quantile_label(q)}_{o}" for o in OUTCOMES for q in qs]


def _check_metrics(metrics: Sequence[str] | str, qs: Sequence[float], model_has_decided: bool) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(metrics))
    known = available_metrics(qs)
    unknown = [m for m in metrics if m not in known]
    if not metrics or unknown:
        raise PerceptAlignError(
            f"unknown metric(s) {unknown or metrics} (need at least one of: {', '.join(known)})."
        )
    if "no_decision_rate" in metrics and not model_has_decided:
        raise PerceptAlignError(
            "metric 'no_decision_rate' needs a 'decided' column in the model trials; drop the metric or "
            "add the column (False for trials that never crossed the threshold)."
        )
    return metrics


def _select_conditions(
    human: pd.DataFrame, models: Mapping[str, pd.DataFrame], wanted: Sequence[Any] | None
) -> list[Any]:
    """Compared conditions: the human ones (or ``wanted``); every model must have trials in each."""
    present = table_conditions(human)
    if wanted is None:
        chosen = present
    else:
        chosen = normalise_conditions(list(wanted))
        absent = [c for c in chosen if c not in present]
        if not chosen or absent:
            raise PerceptAlignError(
                f"human trials: condition(s) {absent or chosen} are empty (present: {present}); pass "
                "conditions= with conditions that have human trials, or None for all of them."
            )
    for name, model in models.items():
        have = set(model["condition"].unique().tolist())
        absent = [c for c in chosen if c not in have]
        if absent:
            raise PerceptAlignError(
                f"{name}: no trials for condition(s) {absent} that the human table has. Simulate those "
                "conditions too, or restrict the comparison with conditions=."
            )
    return chosen


# ------------------------------------------------------------------------------------ vectorised core


def _row_counts(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Counts per row of an (R, k) array of bin indices in [0, n_bins): shape (R, n_bins)."""
    rows = bins.shape[0]
    flat = (np.arange(rows, dtype=np.int64)[:, None] * n_bins + bins).ravel()
    return np.bincount(flat, minlength=rows * n_bins).reshape(rows, n_bins)


def _cdf_distances(
    rank_a: np.ndarray, rank_b: np.ndarray, n_grid: int, dx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """W1 and KS between rows of two (R, k) rank arrays on a grid of ``n_grid`` points.

    Rank ``n_grid`` marks a trial that is left out (undecided). Rows broadcast (a fixed sample has one).
    One weighted ``bincount`` (+1/n_a for a's draws, −1/n_b for b's) and a ``cumsum`` give F_a − F_b at
    every grid point, which is where scipy evaluates the two empirical CDFs too.
    """
    rows = max(len(rank_a), len(rank_b))
    rank_a = np.broadcast_to(rank_a, (rows, rank_a.shape[1]))
    rank_b = np.broadcast_to(rank_b, (rows, rank_b.shape[1]))
    n_a, n_b = (rank_a < n_grid).sum(axis=1), (rank_b < n_grid).sum(axis=1)
    width = n_grid + 1
    offset = np.arange(rows, dtype=np.int64)[:, None] * width
    flat = np.concatenate([(rank_a + offset).ravel(), (rank_b + offset).ravel()])
    weights = np.concatenate(
        [
            np.repeat(1.0 / np.maximum(n_a, 1), rank_a.shape[1]),
            np.repeat(-1.0 / np.maximum(n_b, 1), rank_b.shape[1]),
        ]
    )
    gap = np.cumsum(np.bincount(flat, weights, minlength=rows * width).reshape(rows, width), axis=1)
    np.abs(gap, out=gap)
    # Column n_grid holds the left-out draws; it and the last grid point get no width.
    w1 = gap @ np.concatenate([dx, [0.0, 0.0]])
    ks = gap[:, :n_grid].max(axis=1)
    empty = (n_a == 0) | (n_b == 0)
    return np.where(empty, np.nan, w1), np.where(empty, np.nan, ks)


def _as_index(idx: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if idx is None:
        return np.arange(n)[None, :]
    idx = np.asarray(idx)
    if idx.ndim == 1:
        idx = idx[None, :]
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise PerceptAlignError(f"{name} must be a 2-D integer array (replicates × draws), got {idx.shape}.")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise PerceptAlignError(f"{name} holds indices outside [0, {n}) (the sample has {n} values).")
    return idx


def resampled_distances(
    a: np.ndarray,
    b: np.ndarray,
    idx_a: np.ndarray | None = None,
    idx_b: np.ndarray | None = None,
    *,
    keep_a: np.ndarray | None = None,
    keep_b: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """W1 and KS between ``a[idx_a[r]]`` and ``b[idx_b[r]]`` for every replicate row r, vectorised.

    ``idx_*`` are (R, k) integer arrays (``None``: the sample itself, one row that broadcasts); values
    whose ``keep_*`` is False are drawn but left out (undecided trials). Returns two arrays of length R
    (NaN where a replicate keeps no value), equal to scipy's statistics on each replicate.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    keep_a = np.ones(len(a), bool) if keep_a is None else np.asarray(keep_a, dtype=bool)
    keep_b = np.ones(len(b), bool) if keep_b is None else np.asarray(keep_b, dtype=bool)
    if len(a) == 0 or len(b) == 0 or keep_a.shape != a.shape or keep_b.shape != b.shape:
        raise PerceptAlignError("resampled_distances needs two non-empty samples with matching keep masks.")
    idx_a, idx_b = _as_index(idx_a, len(a), "idx_a"), _as_index(idx_b, len(b), "idx_b")
    grid = np.unique(np.concatenate([a[keep_a], b[keep_b]]))
    rank_a = np.where(keep_a, np.searchsorted(grid, a), len(grid))
    rank_b = np.where(keep_b, np.searchsorted(grid, b), len(grid))
    rows = max(len(idx_a), len(idx_b))
    if len(idx_a) not in (1, rows) or len(idx_b) not in (1, rows):
        raise PerceptAlignError(f"idx_a and idx_b have {len(idx_a)} and {len(idx_b)} rows; use equal counts.")
    chunk = _chunk_rows(idx_a.shape[1] + idx_b.shape[1] + len(grid))
    w1, ks = np.empty(rows), np.empty(rows)
    for start in range(0, rows, chunk):
        part = slice(start, min(start + chunk, rows))
        ra = rank_a[idx_a if len(idx_a) == 1 else idx_a[part]]
        rb = rank_b[idx_b if len(idx_b) == 1 else idx_b[part]]
        w, k = _cdf_distances(ra, rb, len(grid), np.diff(grid))
        w1[part], ks[part] = (
            np.broadcast_to(w, (part.stop - start,)),
            np.broadcast_to(k, (part.stop - start,)),
        )
    return w1, ks


def _chunk_rows(width: int) -> int:
    """Replicates per chunk: a multiple of the random block size, within the memory budget."""
    return max(1, _CHUNK_ELEMENTS // max(width, 1) // _BLOCK) * _BLOCK


def _draw(entropy: Sequence[int], start: int, rows: int, n: int, size: int) -> np.ndarray:
    """Replicates ``start .. start + rows`` of an index stream (``size`` draws from ``range(n)`` each).

    Each block of :data:`_BLOCK` replicates has its own generator, so a replicate's draws do not depend
    on how replicates are chunked (chunks differ with the other tables' sizes). ``start`` is a multiple
    of the block size.
    """
    blocks = [
        np.random.default_rng([*entropy, b]).integers(0, n, size=(_BLOCK, size))
        for b in range(start // _BLOCK, (start + rows + _BLOCK - 1) // _BLOCK)
    ]
    return np.concatenate(blocks)[:rows]


@dataclass(frozen=True)
class _Sample:
    """One table's trials in one condition, pre-digested for vectorised replicate statistics."""

    rt: np.ndarray
    correct: np.ndarray
    summary: np.ndarray  # trials entering accuracy and RT summaries
    rank: np.ndarray  # rank of the signed RT on the pooled grid; len(grid) for trials left out
    hist_bin: np.ndarray  # histogram bin of the signed RT; n_bins for undecided / out-of-window trials

    @property
    def n(self) -> int:
        return len(self.rt)


def _prepare(table: pd.DataFrame, grid: np.ndarray, edges: np.ndarray, *, is_model: bool) -> _Sample:
    decided = decided_mask(table)
    signed = signed_rt(table)
    n_bins = len(edges) - 1
    in_window = decided & (signed >= edges[0]) & (signed <= edges[-1])
    bins = np.clip(np.searchsorted(edges, signed, side="right") - 1, 0, n_bins - 1)
    return _Sample(
        rt=table["rt_s"].to_numpy(dtype=float),
        correct=table["correct"].to_numpy(dtype=bool),
        # fit_quality summarises decided model trials but all human trials (humans always respond).
        summary=decided if is_model else np.ones(len(table), dtype=bool),
        rank=np.where(decided, np.searchsorted(grid, signed), len(grid)),
        hist_bin=np.where(in_window, bins, n_bins),
    )


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation written as numpy's quantile writes it (same rounding)."""
    diff = b - a
    out = a + diff * t
    return np.where(t >= 0.5, b - diff * (1 - t), out)


def _row_quantile(sorted_values: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(..., method="linear")`` of each row's first ``counts`` values (NaN-padded rows)."""
    virtual = counts * q + (1 + q * (1 - 1 - 1)) - 1
    below = np.floor(virtual)
    gamma = virtual - below
    last = np.maximum(counts - 1, 0)
    lo_i = np.clip(below, 0, last).astype(np.int64)
    hi_i = np.clip(below + 1, 0, last).astype(np.int64)
    a = np.take_along_axis(sorted_values, lo_i[:, None], axis=1)[:, 0]
    b = np.take_along_axis(sorted_values, hi_i[:, None], axis=1)[:, 0]
    return np.where(counts > 0, _lerp(a, b, gamma), np.nan)


class _SideStats:
    """Lazily computed accuracy / RT summaries of the replicates of one sample (rows of ``idx``)."""

    def __init__(self, sample: _Sample, idx: np.ndarray) -> None:
        self.sample, self.idx = sample, idx
        self.keep = sample.summary[idx]
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _outcome(self, outcome: str) -> tuple[np.ndarray, np.ndarray]:
        if outcome not in self._sorted:
            want = self.sample.correct[self.idx] == (outcome == "correct")
            values = np.where(self.keep & want, self.sample.rt[self.idx], np.nan)
            self._sorted[outcome] = (np.sort(values, axis=1), (self.keep & want).sum(axis=1))
        return self._sorted[outcome]

    def stat(self, name: str, quantile_of: Mapping[str, float]) -> np.ndarray:
        if name == "accuracy":
            n = self.keep.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(n > 0, (self.keep & self.sample.correct[self.idx]).sum(axis=1) / n, np.nan)
        head, outcome = name.rsplit("_", 1)
        values, counts = self._outcome(outcome)
        if head == "mean_rt":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(counts > 0, np.nansum(values, axis=1) / counts, np.nan)
        q = 0.5 if head == "median_rt" else quantile_of[head]
        return _row_quantile(values, counts, q)


def _replicate_metrics(
    model: _Sample,
    human: _Sample,
    idx_m: np.ndarray,
    idx_h: np.ndarray,
    metrics: Sequence[str],
    *,
    grid: np.ndarray,
    n_bins: int,
    qs: Sequence[float],
) -> dict[str, np.ndarray]:
    """Every requested metric for each replicate row (rows of a fixed, one-row index broadcast)."""
    rows = max(len(idx_m), len(idx_h))
    quantile_of = {quantile_label(q): q for q in qs}
    out: dict[str, np.ndarray] = {}
    if any(m in _DISTANCES for m in metrics):
        w1, ks = _cdf_distances(model.rank[idx_m], human.rank[idx_h], len(grid), np.diff(grid))
        out["wasserstein"], out["ks"] = w1, ks
    if "hist_mse" in metrics:
        hist_m = _row_counts(model.hist_bin[idx_m], n_bins + 1)[:, :n_bins] / float(idx_m.shape[1])
        hist_h = _row_counts(human.hist_bin[idx_h], n_bins + 1)[:, :n_bins] / float(idx_h.shape[1])
        out["hist_mse"] = np.mean((hist_m - hist_h) ** 2, axis=1)
    if "no_decision_rate" in metrics:
        out["no_decision_rate"] = 1.0 - (model.rank[idx_m] < len(grid)).sum(axis=1) / idx_m.shape[1]
    sides = {"model": _SideStats(model, idx_m), "human": _SideStats(human, idx_h)}
    for metric in metrics:
        if metric in out:
            continue
        if metric.startswith("abs_err_"):
            stat = metric.removeprefix("abs_err_")
            out[metric] = np.abs(
                sides["model"].stat(stat, quantile_of) - sides["human"].stat(stat, quantile_of)
            )
        else:
            stat, side = metric.rsplit("_", 1)
            out[metric] = sides[side].stat(stat, quantile_of)
    return {m: np.broadcast_to(out[m], (rows,)) for m in metrics}


def _point_estimates(table: pd.DataFrame, metrics: Sequence[str]) -> dict[Any, dict[str, float]]:
    """Per-condition values of ``metrics`` in a fit_quality table (``abs_err_*`` derived from it)."""
    out: dict[Any, dict[str, float]] = {}
    for _, row in table.iterrows():
        values = {}
        for metric in metrics:
            if metric.startswith("abs_err_"):
                stat = metric.removeprefix("abs_err_")
                values[metric] = abs(float(row[f"{stat}_model"]) - float(row[f"{stat}_human"]))
            else:
                values[metric] = float(row[metric])
        out[row["condition"]] = values
    return out


def _bootstrap(
    models: Mapping[str, pd.DataFrame],
    human: pd.DataFrame,
    metrics: Sequence[str] | str,
    *,
    n_boot: int,
    seed: int,
    resample: str,
    conditions: Sequence[Any] | None,
    paired: bool,
    n_bins: int,
    lo: float,
    hi: float,
    qs: Sequence[float],
) -> tuple[list[Any], list[str], dict[str, pd.DataFrame], dict[str, dict[str, np.ndarray]]]:
    """Replicates of ``metrics`` for each model: returns conditions, metrics, fit_quality tables and
    ``reps[model][metric]`` of shape (n_conditions, n_boot).

    Random streams are keyed by (seed, condition position in the human table, stream, block), so a
    condition's replicates do not depend on which other conditions are compared nor on chunking, the
    first model's replicates equal those of a standalone :func:`bootstrap_fit_quality`, and with
    ``paired`` every model sees the same human resample.
    """
    human = validate_trials(human, name="human trials")
    models = {name: validate_trials(m, name=name) for name, m in models.items()}
    qs = _check_qs(qs)
    metrics = _check_metrics(metrics, qs, all("decided" in m.columns for m in models.values()))
    chosen = _select_conditions(human, models, conditions)
    all_human_conditions = table_conditions(human)
    human = human[human["condition"].isin(chosen)].reset_index(drop=True)
    fits = {name: fit_quality(m, human, n_bins=n_bins, lo=lo, hi=hi, qs=qs) for name, m in models.items()}
    edges = np.linspace(lo, hi, n_bins + 1)
    reps = {name: {m: np.empty((len(chosen), n_boot)) for m in metrics} for name in models}
    for ci, cond in enumerate(chosen):
        key = all_human_conditions.index(cond)
        h_table = human[human["condition"] == cond]
        m_tables = {name: m[m["condition"] == cond] for name, m in models.items()}
        signed = [signed_rt(t[decided_mask(t)]) for t in (h_table, *m_tables.values())]
        grid = np.unique(np.concatenate(signed))
        h = _prepare(h_table, grid, edges, is_model=False)
        samples = {name: _prepare(t, grid, edges, is_model=True) for name, t in m_tables.items()}
        streams_h = {name: [seed, key, 0, 0 if paired else j] for j, name in enumerate(models)}
        streams_m = {name: [seed, key, 1 + j] for j, name in enumerate(models)}
        width = h.n + max(s.n for s in samples.values()) + len(grid) + n_bins
        chunk = _chunk_rows(width)
        for start in range(0, n_boot, chunk):
            rows = min(chunk, n_boot - start)
            shared = _draw(streams_h[next(iter(models))], start, rows, h.n, h.n) if paired else None
            for name, sample in samples.items():
                idx_h = shared if shared is not None else _draw(streams_h[name], start, rows, h.n, h.n)
                if resample == "both":
                    idx_m = _draw(streams_m[name], start, rows, sample.n, sample.n)
                else:
                    idx_m = np.arange(sample.n)[None, :]
                values = _replicate_metrics(sample, h, idx_m, idx_h, metrics, grid=grid, n_bins=n_bins, qs=qs)
                for metric, v in values.items():
                    reps[name][metric][ci, start : start + rows] = v
    return chosen, metrics, fits, reps


def _interval(values: np.ndarray, level: float) -> tuple[float, float, float, int, float]:
    """Percentile interval, bootstrap standard error, number of finite replicates and their mean."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return math.nan, math.nan, math.nan, 0, math.nan
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    se = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
    return float(lo), float(hi), se, len(finite), float(np.mean(finite))


def _summary(values: np.ndarray, estimate: float, level: float) -> dict[str, Any]:
    """Estimate, percentile interval, bootstrap se, bias (replicate mean − estimate), n_valid."""
    lo, hi, se, n_valid, mean = _interval(values, level)
    return {"estimate": estimate, "lo": lo, "hi": hi, "se": se, "bias": mean - estimate, "n_valid": n_valid}


def _condition_means(reps: np.ndarray) -> np.ndarray:
    """NaN-ignoring mean over conditions of each replicate (as summarize_fit averages conditions)."""
    finite = np.isfinite(reps)
    counts = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(finite, reps, 0.0).sum(axis=0) / counts, np.nan)


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if len(arr) else math.nan


# ---------------------------------------------------------------------------------------- public API


def bootstrap_fit_quality(
    model: pd.DataFrame,
    human: pd.DataFrame,
    *,
    metrics: Sequence[str] | str = DEFAULT_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    resample: Resample = "both",
    conditions: Sequence[Any] | None = None,
    overall: bool = True,
    n_bins: int = 500,
    lo: float = -2.5,
    hi: float = 2.5,
    qs: Sequence[float] = QUANTILES,
) -> pd.DataFrame:
    """Point estimates of fit_quality metrics with percentile bootstrap intervals, per condition.

    Trials are resampled with replacement within each condition: the human trials always, the model
    trials too with ``resample="both"`` (the default: a simulation is a finite sample as well); use
    ``"human"`` to treat the model table as fixed. The estimate is ``fit_quality`` on the full tables.
    Replicates where a metric is undefined (e.g. no error trials drawn) are left out of its interval;
    ``n_valid`` says how many remained. With ``overall`` a last row per metric, condition
    :data:`OVERALL`, bootstraps the NaN-ignoring mean over conditions. Distances are biased upwards
    (sampling noise only adds distance), most where the true distance is near the floor, and KS
    intervals under-cover (about 70 % for nominal 90 % with 300 trials per side and a true KS of 0.24,
    while W1 and accuracy covered 90 %): compare methods with :func:`paired_difference` and read small
    W1 / KS against :func:`noise_floor`.

    Returns a long table: ``condition``, ``metric``, ``estimate``, ``lo``, ``hi``, ``se`` (bootstrap
    standard deviation), ``bias`` (replicate mean − estimate: large for a distance near its floor, where
    the percentile interval can even exclude the estimate), ``n_valid``, ``n_human``, ``n_model``;
    ``attrs`` records level, n_boot, seed and resample.
    """
    _check_common(n_boot, level, seed, resample)
    chosen, metrics, fits, reps = _bootstrap(
        {"model trials": model},
        human,
        metrics,
        n_boot=n_boot,
        seed=seed,
        resample=resample,
        conditions=conditions,
        paired=True,
        n_bins=n_bins,
        lo=lo,
        hi=hi,
        qs=qs,
    )
    fit, rep = fits["model trials"], reps["model trials"]
    points = _point_estimates(fit, metrics)
    counts = fit.set_index("condition")[["n_human", "n_model"]]
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        for ci, cond in enumerate(chosen):
            rows.append(
                {"condition": cond, "metric": metric}
                | _summary(rep[metric][ci], points[cond][metric], level)
                | {"n_human": int(counts.loc[cond, "n_human"]), "n_model": int(counts.loc[cond, "n_model"])}
            )
        if overall:
            estimate = _nanmean([points[c][metric] for c in chosen])
            rows.append(
                {"condition": OVERALL, "metric": metric}
                | _summary(_condition_means(rep[metric]), estimate, level)
                | {"n_human": int(counts["n_human"].sum()), "n_model": int(counts["n_model"].sum())}
            )
    table = pd.DataFrame(rows)
    table.attrs.update(
        {"level": float(level), "n_boot": int(n_boot), "seed": int(seed), "resample": resample}
    )
    return table


def paired_difference(
    model_a: pd.DataFrame,
    model_b: pd.DataFrame,
    human: pd.DataFrame,
    metric: str = "wasserstein",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    resample: Resample = "both",
    better: Literal["lower", "higher"] | None = None,
    paired: bool = True,
    conditions: Sequence[Any] | None = None,
    overall: bool = True,
    n_bins: int = 500,
    lo: float = -2.5,
    hi: float = 2.5,
    qs: Sequence[float] = QUANTILES,
) -> pd.DataFrame:
    """Bootstrap interval of metric(A) − metric(B) per condition, both scored on the same human resample.

    Pairing matters: both methods are compared with one finite human sample, whose noise moves A's and
    B's distances together; resampling the humans once per replicate for both cancels that shared part,
    so the interval reflects only what distinguishes A from B. ``paired=False`` draws independent human
    resamples (for comparison only). ``p_a_better`` is the fraction of replicates in which A is better
    (ties count half); "better" is "lower" for distances, ``no_decision_rate`` and ``abs_err_*`` metrics,
    and must be given for any other metric. Model trials are resampled independently for A and B with
    ``resample="both"``.

    Returns ``condition``, ``metric``, ``estimate`` (A − B on the full tables), ``lo``, ``hi``, ``se``,
    ``bias``, ``n_valid``, ``p_a_better``, ``estimate_a``, ``estimate_b``, ``n_human``, ``n_model_a``,
    ``n_model_b`` (plus an :data:`OVERALL` row for the difference of condition means with ``overall``).
    """
    _check_common(n_boot, level, seed, resample)
    if not isinstance(metric, str):
        raise PerceptAlignError(f"paired_difference compares one metric (a string), got {metric!r}.")
    if better is None:
        if metric not in LOWER_IS_BETTER and not metric.startswith("abs_err_"):
            raise PerceptAlignError(
                f"for metric {metric!r} it is not obvious whether lower or higher is better; pass "
                f"better='lower' or better='higher' (or compare abs_err_* metrics, e.g. abs_err_accuracy)."
            )
        better = "lower"
    if better not in ("lower", "higher"):
        raise PerceptAlignError(f"better must be 'lower' or 'higher', got {better!r}.")
    chosen, _, fits, reps = _bootstrap(
        {"model_a": model_a, "model_b": model_b},
        human,
        metric,
        n_boot=n_boot,
        seed=seed,
        resample=resample,
        conditions=conditions,
        paired=paired,
        n_bins=n_bins,
        lo=lo,
        hi=hi,
        qs=qs,
    )
    point_a = _point_estimates(fits["model_a"], [metric])
    point_b = _point_estimates(fits["model_b"], [metric])
    fa, fb = fits["model_a"].set_index("condition"), fits["model_b"].set_index("condition")
    diffs = reps["model_a"][metric] - reps["model_b"][metric]
    sign = 1.0 if better == "lower" else -1.0

    def row(cond: Any, diff: np.ndarray, est_a: float, est_b: float, counts: tuple[int, int, int]) -> dict:
        finite = diff[np.isfinite(diff)]
        p_better = float(np.mean(sign * finite < 0) + 0.5 * np.mean(finite == 0)) if len(finite) else math.nan
        return {
            "condition": cond,
            "metric": metric,
            **_summary(diff, est_a - est_b, level),
            "p_a_better": p_better,
            "estimate_a": est_a,
            "estimate_b": est_b,
            "n_human": counts[0],
            "n_model_a": counts[1],
            "n_model_b": counts[2],
        }

    rows = [
        row(
            cond,
            diffs[ci],
            point_a[cond][metric],
            point_b[cond][metric],
            (int(fa.loc[cond, "n_human"]), int(fa.loc[cond, "n_model"]), int(fb.loc[cond, "n_model"])),
        )
        for ci, cond in enumerate(chosen)
    ]
    if overall:
        diff = _condition_means(reps["model_a"][metric]) - _condition_means(reps["model_b"][metric])
        est_a = _nanmean([point_a[c][metric] for c in chosen])
        est_b = _nanmean([point_b[c][metric] for c in chosen])
        counts = (int(fa["n_human"].sum()), int(fa["n_model"].sum()), int(fb["n_model"].sum()))
        rows.append(row(OVERALL, diff, est_a, est_b, counts))
    table = pd.DataFrame(rows)
    table.attrs.update(
        {
            "level": float(level),
            "n_boot": int(n_boot),
            "seed": int(seed),
            "resample": resample,
            "paired": bool(paired),
            "better": better,
        }
    )
    return table


def _model_counts(
    n_model: int | Mapping[Any, int] | pd.DataFrame | None, chosen: Sequence[Any], test: pd.DataFrame
) -> dict[Any, int]:
    if n_model is None:
        return {c: int((test["condition"] == c).sum()) for c in chosen}
    if isinstance(n_model, pd.DataFrame):
        model = validate_trials(n_model, required_conditions=chosen, name="n_model (model trials)")
        decided = model[decided_mask(model)]
        counts = {c: int((decided["condition"] == c).sum()) for c in chosen}
    elif isinstance(n_model, Mapping):
        keys = dict(zip(normalise_conditions(list(n_model)), n_model.values(), strict=True))
        absent = [c for c in chosen if c not in keys]
        if absent:
            raise PerceptAlignError(
                f"n_model gives no trial count for condition(s) {absent}; give one for every condition."
            )
        counts = {c: keys[c] for c in chosen}
    else:
        counts = dict.fromkeys(chosen, n_model)
    bad = {
        c: n
        for c, n in counts.items()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
    }
    if bad:
        raise PerceptAlignError(
            f"n_model must be a trial count >= 1 per condition; empty or invalid for {bad}. A model with no "
            "decided trials in a condition has no distance to floor: drop the condition or simulate more."
        )
    return {c: int(n) for c, n in counts.items()}


def noise_floor(
    human_train: pd.DataFrame,
    human_test: pd.DataFrame,
    *,
    n_model: int | Mapping[Any, int] | pd.DataFrame | None = None,
    n_rep: int = 200,
    seed: int = 0,
    level: float = 0.95,
    conditions: Sequence[Any] | None = None,
    overall: bool = True,
) -> pd.DataFrame:
    """W1 and KS that a perfect model of the training data would still show against the test trials.

    For every condition, ``n_model`` trials are drawn with replacement from the human *train* trials (a
    model that reproduces the training distribution exactly, simulated with ``n_model`` trials) and
    compared with the fixed human *test* trials, as the model's own trials are. The floor thus holds both
    sampling noises and any train/test shift. ``n_model`` is the model's number of *decided* trials per
    condition: an int, a mapping condition → count, or the model trials table itself; the default, the
    number of test trials of the condition, is the floor of a model simulated at the size of the human
    test set (it scales like sqrt(1/n_model + 1/n_test + 1/n_train)). Pass the model's counts when reporting a
    model, since its sampling noise, not the humans', is what differs between methods.

    Returns ``condition``, ``n_model``, ``n_train``, ``n_test`` and ``wasserstein_mean|lo|hi``,
    ``ks_mean|lo|hi`` (mean and central ``level`` interval over ``n_rep`` draws); with ``overall`` an
    :data:`OVERALL` row averages the draws over conditions.
    """
    _check_common(n_rep, level, seed, what="n_rep")
    train = validate_trials(human_train, name="human_train")
    test = validate_trials(human_test, name="human_test")
    chosen = _select_conditions(test, {"human_train": train}, conditions)
    counts = _model_counts(n_model, chosen, test)
    all_conditions = table_conditions(test)
    rows: list[dict[str, Any]] = []
    draws: dict[str, list[np.ndarray]] = {"wasserstein": [], "ks": []}
    for cond in chosen:
        tr = train[train["condition"] == cond]
        te = test[test["condition"] == cond]
        tr_signed, te_signed = signed_rt(tr), signed_rt(te)
        rng = np.random.default_rng([seed, all_conditions.index(cond), 2])
        idx = rng.integers(0, len(tr), size=(n_rep, counts[cond]))
        w1, ks = resampled_distances(
            tr_signed, te_signed, idx, None, keep_a=decided_mask(tr), keep_b=decided_mask(te)
        )
        row: dict[str, Any] = {
            "condition": cond,
            "n_model": counts[cond],
            "n_train": len(tr),
            "n_test": len(te),
        }
        for name, values in (("wasserstein", w1), ("ks", ks)):
            draws[name].append(values)
            lo_, hi_, _, _, _ = _interval(values, level)
            row.update({f"{name}_mean": _nanmean(values), f"{name}_lo": lo_, f"{name}_hi": hi_})
        rows.append(row)
    if overall:
        row = {
            "condition": OVERALL,
            "n_model": sum(counts.values()),
            "n_train": sum(r["n_train"] for r in rows),
            "n_test": sum(r["n_test"] for r in rows),
        }
        for name, values in draws.items():
            means = _condition_means(np.vstack(values))
            lo_, hi_, _, _, _ = _interval(means, level)
            row.update({f"{name}_mean": _nanmean(means), f"{name}_lo": lo_, f"{name}_hi": hi_})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update({"level": float(level), "n_rep": int(n_rep), "seed": int(seed)})
    return table


def aggregate_seeds(
    tables: Sequence[pd.DataFrame], by: str | Sequence[str] = "condition", *, overall: bool = True
) -> pd.DataFrame:
    """Mean, sd (ddof=1) and n over seeds of every numeric column, per ``by`` group.

    One table per simulation seed (e.g. ``fit_quality`` outputs). Columns ``<col>_mean``, ``<col>_sd``
    and ``<col>_n`` (seeds with a finite value), plus ``n_seeds``. With ``overall``, an :data:`OVERALL`
    row (in the first ``by`` column, per combination of the other ``by`` columns) first averages each
    seed over its conditions and then summarises those seed means, so its sd is the seed-to-seed sd of
    the condition mean, not an average of per-condition sds. Tables that already carry :data:`OVERALL`
    rows get no second one.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if isinstance(tables, pd.DataFrame) or len(tables) == 0:
        raise PerceptAlignError("aggregate_seeds needs a non-empty list of tables, one per seed.")
    frames = []
    for i, table in enumerate(tables):
        if not isinstance(table, pd.DataFrame) or len(table) == 0:
            raise PerceptAlignError(
                f"aggregate_seeds: table {i} is empty or not a DataFrame; pass one per seed."
            )
        missing = [k for k in keys if k not in table.columns]
        if missing:
            raise PerceptAlignError(
                f"aggregate_seeds: table {i} has no column(s) {missing} to group by (have "
                f"{list(table.columns)}); pass by= with columns every table has."
            )
        frames.append(table.assign(_seed=i))
    data = pd.concat(frames, ignore_index=True)
    numeric = [
        c for c in data.columns if c not in keys and c != "_seed" and pd.api.types.is_numeric_dtype(data[c])
    ]
    if not numeric:
        raise PerceptAlignError("aggregate_seeds: the tables have no numeric columns to aggregate.")
    data[numeric] = data[numeric].astype(float)

    def summarise(frame: pd.DataFrame, group: list[str]) -> pd.DataFrame:
        grouped = frame.groupby(group, sort=False, dropna=False)
        stats = grouped[numeric].agg(["mean", "std", "count"])
        stats.columns = [
            f"{c}_{'sd' if s == 'std' else 'n' if s == 'count' else s}" for c, s in stats.columns
        ]
        stats["n_seeds"] = grouped["_seed"].nunique()
        return stats.reset_index()

    result = summarise(data, keys)
    has_overall = (data[keys[0]].astype(str) == OVERALL).any()
    if overall and not has_overall:
        per_seed = data.groupby(["_seed", *keys[1:]], sort=False, dropna=False)[numeric].mean().reset_index()
        summary = (
            summarise(per_seed, keys[1:]) if len(keys) > 1 else summarise(per_seed.assign(_all=0), ["_all"])
        )
        summary = summary.drop(columns=["_all"], errors="ignore")
        summary.insert(0, keys[0], OVERALL)
        result = pd.concat([result, summary[result.columns]], ignore_index=True)
    return result


def _fmt(value: float, digits: int) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _label(cond: Any) -> str:
    return f"{cond:g}" if isinstance(cond, (float, int, np.floating, np.integer)) else str(cond)


def markdown_table(
    results: Mapping[str, pd.DataFrame],
    metric: str = "wasserstein",
    *,
    floor: pd.DataFrame | None = None,
    digits: int = 3,
    condition_header: str = "condition",
    floor_header: str = "noise floor",
) -> str:
    """A Markdown table with one row per condition and one "value [lo, hi]" column per method.

    ``results`` maps a method's name to its :func:`bootstrap_fit_quality` (or :func:`paired_difference`)
    table; ``floor``, a :func:`noise_floor` table, adds a "mean [lo, hi]" column for ``metric``, so a
    reader sees at once which gaps exceed sampling noise. Rows follow the first method's conditions.
    """
    if not results:
        raise PerceptAlignError("markdown_table needs at least one method's table in results.")
    cells: dict[str, dict[Any, str]] = {}
    order: list[Any] = []
    for name, table in results.items():
        need = {"condition", "metric", "estimate", "lo", "hi"}
        if not isinstance(table, pd.DataFrame) or not need <= set(table.columns):
            raise PerceptAlignError(
                f"markdown_table: results[{name!r}] is not a bootstrap_fit_quality / paired_difference table "
                f"(needs columns {sorted(need)})."
            )
        sub = table[table["metric"] == metric]
        if len(sub) == 0:
            raise PerceptAlignError(
                f"markdown_table: results[{name!r}] has no rows for metric {metric!r} (has "
                f"{sorted(table['metric'].unique())}); bootstrap that metric or pick another."
            )
        cells[name] = {
            r.condition: f"{_fmt(r.estimate, digits)} [{_fmt(r.lo, digits)}, {_fmt(r.hi, digits)}]"
            for r in sub.itertuples()
        }
        if not order:
            order = list(sub["condition"])
    floor_cells: dict[Any, str] = {}
    if floor is not None:
        cols = [f"{metric}_mean", f"{metric}_lo", f"{metric}_hi"]
        if not isinstance(floor, pd.DataFrame) or not {"condition", *cols} <= set(floor.columns):
            raise PerceptAlignError(
                f"markdown_table: floor has no columns {cols}; the noise floor covers wasserstein and ks "
                "only, so leave floor out for other metrics."
            )
        floor_cells = {
            r[
                "condition"
            ]: f"{_fmt(r[cols[0]], digits)} [{_fmt(r[cols[1]], digits)}, {_fmt(r[cols[2]], digits)}]"
            for _, r in floor.iterrows()
        }
    for name, by_cond in [*cells.items(), *([(floor_header, floor_cells)] if floor is not None else [])]:
        absent = [_label(c) for c in order if c not in by_cond]
        if absent:
            raise PerceptAlignError(
                f"markdown_table: {name!r} has no row for condition(s) {absent}; compute every method (and "
                "the floor) on the same conditions."
            )
    headers = [condition_header, *cells, *([floor_header] if floor is not None else [])]
    lines = [
        "| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for cond in order:
        row = [_label(cond), *(cells[name][cond] for name in cells)]
        if floor is not None:
            row.append(floor_cells[cond])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
