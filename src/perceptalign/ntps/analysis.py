"""Honest correlation analysis: correlations with permutation nulls and bootstrap intervals, and the
choice of (layer, configuration) made without selecting on the outcome.

The published NTPS correlations pick, per model, the (layer, k) that maximises the correlation with
probe accuracy over the same 12 datasets, then report that maximum. With n = 12 the best of ~20 pure
noise configurations already reaches a median Spearman of ~.55. Here every selection procedure is
declared up front (``fixed``, ``nested`` leave-one-dataset-out, ``best_in_sample`` flagged optimistic)
and every reported p-value can come from a permutation null that repeats the whole procedure.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from perceptalign.io import PerceptAlignError

FloatArray = NDArray[np.float64]
Method = Literal["spearman", "pearson"]
Direction = Literal["positive", "negative", "either"]
Mode = Literal["fixed", "nested", "best_in_sample"]

__all__ = [
    "CorrelationResult",
    "SelectionResult",
    "correlate",
    "correlation_by_config",
    "select_and_correlate",
]

_MODES = ("fixed", "nested", "best_in_sample")
_METHODS = ("spearman", "pearson")
_DIRECTIONS = ("positive", "negative", "either")
_CHUNK_ELEMENTS = 4_000_000  # bound on K × permutations held at once (~32 MB of float64)
_TIE_TOL = 1e-12  # permutation statistics equal to the observed one up to round-off count as ≥


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


def _permutations(rng: np.random.Generator, n: int, count: int) -> NDArray[np.int64]:
    return rng.permuted(np.tile(np.arange(n), (count, 1)), axis=1)


def _chunks(total: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [(a, min(a + step, total)) for a in range(0, total, step)]


def _perm_p(null: FloatArray, observed: float) -> float:
    """Permutation p-value with the +1 correction (Phipson & Smyth 2010); never exactly zero."""
    null = np.where(np.isnan(null), -np.inf, null)
    return float((1 + np.count_nonzero(null >= observed - _TIE_TOL)) / (1 + null.size))


# --------------------------------------------------------------------------------------------------
# correlate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelationResult:
    """Spearman and Pearson correlation with analytic p, two-sided permutation p and bootstrap 95% CI."""

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


def _vector(v: ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(v, dtype=np.float64) if not isinstance(v, pd.Series) else v.to_numpy(np.float64)
    if arr.ndim != 1:
        raise PerceptAlignError(f"{name} must be 1-D, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise PerceptAlignError(f"{name} contains NaN or infinite values; drop those entries first.")
    return arr


def correlate(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_permutations: int = 10000,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> CorrelationResult:
    """Spearman and Pearson correlation of paired samples, each with three kinds of uncertainty.

    Analytic p-values come from scipy; permutation p-values from a two-sided null of ``n_permutations``
    random pairings (valid at any n, exact under exchangeability); 95% intervals are bootstrap
    percentiles over ``n_bootstrap`` resamples of pairs (resamples with a constant side are skipped).
    ``n_permutations=0`` or ``n_bootstrap=0`` skips that part (NaN).
    """
    xv, yv = _vector(x, "x"), _vector(y, "y")
    if xv.shape != yv.shape:
        raise PerceptAlignError(f"x and y must have the same length, got {xv.size} and {yv.size}.")
    n = xv.size
    if n < 3:
        raise PerceptAlignError(f"a correlation needs at least 3 pairs, got {n}.")
    if np.ptp(xv) == 0 or np.ptp(yv) == 0:
        raise PerceptAlignError("x or y is constant, so its correlation is undefined; check the inputs.")
    if n_permutations < 0 or n_bootstrap < 0:
        raise PerceptAlignError("n_permutations and n_bootstrap must be >= 0.")
    rho, rho_p = scipy.stats.spearmanr(xv, yv)
    r, r_p = scipy.stats.pearsonr(xv, yv)
    rng = np.random.default_rng(seed)

    rx, ry = _ranks(xv), _ranks(yv)
    perm_rho, perm_r = np.nan, np.nan
    if n_permutations:
        null_rho, null_r = [], []
        for a, b in _chunks(n_permutations, n):
            idx = _permutations(rng, n, b - a)
            null_rho.append(np.abs(_corr_matrix(rx[None], ry[idx])[0]))
            null_r.append(np.abs(_corr_matrix(xv[None], yv[idx])[0]))
        perm_rho = _perm_p(np.concatenate(null_rho), abs(float(rho)))
        perm_r = _perm_p(np.concatenate(null_r), abs(float(r)))

    ci_rho: tuple[float, float] = (np.nan, np.nan)
    ci_r: tuple[float, float] = (np.nan, np.nan)
    if n_bootstrap:
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
        spearman_perm_p=perm_rho,
        pearson_perm_p=perm_r,
    )


def _percentile_ci(values: FloatArray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (np.nan, np.nan)
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return (float(lo), float(hi))


# --------------------------------------------------------------------------------------------------
# configuration selection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of one declared selection procedure.

    ``selected`` has one row per dataset: the (layer, config) whose score was used for it, that score,
    the target, and the correlation that justified the choice (on the other datasets for ``nested``,
    on all datasets for ``best_in_sample``, NaN for ``fixed``). ``correlation`` correlates the used
    scores with the targets; its permutation p-values treat the scores as given. ``selection_perm_p``
    instead repeats the whole procedure on every permutation of the targets (one-sided in the declared
    ``direction``, two-sided for ``either``): the p-value to report for ``nested`` and ``best_in_sample``.
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
    permutation null costs one K × P matrix product per fold and chunk.
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

    def __call__(self, T: FloatArray) -> tuple[FloatArray, NDArray[np.int64], FloatArray]:
        """For each row of T (P target vectors): the signed statistic (P,), the configuration used per
        dataset (P × n) and the criterion value that justified it (P × n; NaN for ``fixed``)."""
        P, n = T.shape
        if self.mode == "fixed":
            stat = self._criterion(self.full, T)[0]
            return stat, np.full((P, n), self.k_fixed, dtype=np.int64), np.full((P, n), np.nan)
        if self.mode == "best_in_sample":
            crit = self._criterion(self.full, T)
            best = np.argmax(crit, axis=0)
            value = crit[best, np.arange(P)]
            return value, np.repeat(best[:, None], n, axis=1), np.repeat(value[:, None], n, axis=1)
        # nested: the choice for dataset d sees only the other datasets' scores and targets
        choice = np.empty((P, n), dtype=np.int64)
        crit_used = np.empty((P, n))
        for d in range(n):
            crit = self._criterion(self.folds[d], T[:, np.arange(n) != d])
            choice[:, d] = np.argmax(crit, axis=0)
            crit_used[:, d] = crit[choice[:, d], np.arange(P)]
        oos = self.S[choice, np.arange(n)[None, :]]  # P × n out-of-sample scores
        corr = _corr_paired(_ranks(oos) if self.rank else oos, _ranks(T) if self.rank else T)
        stat = _signed(corr, self.direction)
        return np.where(np.isnan(stat), -np.inf, stat), choice, crit_used


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
) -> SelectionResult:
    """Choose the (layer, config) of a score by a declared procedure, then correlate it with the target.

    ``table``: long format, one row per (dataset, layer, config) with a ``score`` (e.g. NTPS at that
    layer and fraction). ``target``: a column of ``table`` constant within each dataset, or a mapping
    dataset → value (probe accuracy, LoRA gain, ...). ``method`` is the correlation used to select and
    test; ``direction`` the sign declared in advance ("negative" for LoRA gain: higher NTPS, smaller gain).

    Modes: ``fixed`` uses ``fixed_config`` = (layer, config), chosen a priori (``layer='last'`` = the
    deepest layer); ``nested`` chooses, for each held-out dataset, the configuration with the best
    criterion on the OTHER datasets and applies it to the held-out one; ``best_in_sample`` maximises the
    criterion on all datasets (the published practice, ``optimistic=True``).
    """
    if mode not in _MODES:
        raise PerceptAlignError(f"mode must be one of {_MODES}, got {mode!r}.")
    if method not in _METHODS:
        raise PerceptAlignError(f"method must be one of {_METHODS}, got {method!r}.")
    if direction not in _DIRECTIONS:
        raise PerceptAlignError(f"direction must be one of {_DIRECTIONS}, got {direction!r}.")
    if n_permutations < 1:
        raise PerceptAlignError("n_permutations must be >= 1 (the selection-aware null needs permutations).")
    grid = _grid(table, target, score_col)
    K, n = grid.scores.shape
    min_n = 4 if mode == "nested" else 3
    if n < min_n:
        raise PerceptAlignError(
            f"mode={mode!r} needs at least {min_n} datasets (each correlation needs 3 points), got {n}."
        )
    k_fixed = _resolve_fixed(grid, fixed_config) if mode == "fixed" else -1

    procedure = _Procedure(grid.scores, mode, k_fixed, method, direction)
    observed, choice, crit = procedure(grid.targets[None])
    rng = np.random.default_rng(seed)
    width = K * (n if mode == "nested" else 1) * n
    null_parts = []
    for a, b in _chunks(n_permutations, width):
        T = grid.targets[_permutations(rng, n, b - a)]
        null_parts.append(procedure(T)[0])
    null = np.concatenate(null_parts)

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
        },
        index=pd.Index(grid.datasets, name="dataset"),
    )
    correlation = correlate(
        used, grid.targets, n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed + 1
    )
    return SelectionResult(
        mode=mode,
        optimistic=mode == "best_in_sample",
        method=method,
        direction=direction,
        selected=selected,
        correlation=correlation,
        selection_perm_p=_perm_p(null, float(observed[0])),
        selection_null=null,
        n_configurations=K,
        n_permutations=n_permutations,
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
