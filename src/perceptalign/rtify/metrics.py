"""Fit quality between a model's and humans' reaction-time distributions, condition by condition.

The published RTify papers report one number: the MSE between normalised signed-RT histograms. That
number depends on the bin width and hides *how* a fit fails, so :func:`fit_quality` reports it next to
the standard descriptions used in the decision-making literature: accuracy, RT quantiles of correct and
error trials (the raw material of quantile-probability plots), and two distribution distances on signed
RTs (Kolmogorov–Smirnov and Wasserstein-1).

Undecided model trials (``decided == False``: the accumulator never crossed its threshold within the
simulated window) are never silently dropped. Human tables contain responses only, so the
*conditional* statistics (accuracy, RT means / medians / quantiles, KS, W1) are computed over decided
trials, which is the comparable quantity; the ``no_decision_rate`` column reports how many were
excluded; and ``hist_mse`` normalises the model histogram by *all* trials, so undecided trials (and
trials outside [lo, hi]) appear as missing probability mass and make the published loss measure worse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.trials import conditions, validate_trials

QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)
OUTCOMES = ("correct", "error")


def quantile_label(q: float) -> str:
    """Column name for a quantile level: 0.1 → 'q10', 0.025 → 'q2.5'."""
    return f"q{round(q * 100, 6):g}"


def signed_rt(df: pd.DataFrame) -> np.ndarray:
    """Signed reaction times (+RT correct, −RT error) of a validated trials table."""
    rt = df["rt_s"].to_numpy(dtype=float)
    return np.where(df["correct"].to_numpy(dtype=bool), rt, -rt)


def decided_mask(df: pd.DataFrame) -> np.ndarray:
    """True for trials with a response; tables without a ``decided`` column are all decided."""
    if "decided" in df.columns:
        return df["decided"].to_numpy(dtype=bool)
    return np.ones(len(df), dtype=bool)


def signed_rt_histogram(
    values: np.ndarray, *, n_total: int | None = None, n_bins: int = 500, lo: float = -2.5, hi: float = 2.5
) -> np.ndarray:
    """Hard histogram of signed RTs on ``n_bins`` equal bins over [lo, hi], divided by ``n_total``.

    ``n_total`` defaults to ``len(values)``; passing the number of *all* trials makes out-of-window or
    undecided trials show up as missing mass instead of inflating the rest of the histogram.
    """
    values = np.asarray(values, dtype=float)
    total = len(values) if n_total is None else n_total
    counts, _ = np.histogram(values, bins=n_bins, range=(lo, hi))
    return counts / max(total, 1)


def _check_qs(qs: Sequence[float]) -> tuple[float, ...]:
    qs = tuple(float(q) for q in qs)
    if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
        raise PerceptAlignError(f"quantile levels must be a non-empty list of numbers in [0, 1], got {qs}.")
    return qs


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    if len(values) == 0:
        return np.full(len(qs), np.nan)
    return np.quantile(values, qs)


def rt_quantiles(df: pd.DataFrame, qs: Sequence[float] = QUANTILES) -> pd.DataFrame:
    """RT quantiles per condition and outcome (decided trials only; NaN where an outcome has no trials).

    Returns one row per (condition, outcome) with columns ``condition``, ``outcome`` ('correct' /
    'error'), ``n``, ``p`` (response probability of that outcome among decided trials in the
    condition) and one column per quantile level (see :func:`quantile_label`).
    """
    df = validate_trials(df)
    qs = _check_qs(qs)
    df = df[decided_mask(df)]
    rows: list[dict[str, Any]] = []
    for cond in conditions(df):
        sub = df[df["condition"] == cond]
        for outcome in OUTCOMES:
            want = outcome == "correct"
            rts = sub.loc[sub["correct"] == want, "rt_s"].to_numpy(dtype=float)
            row: dict[str, Any] = {
                "condition": cond,
                "outcome": outcome,
                "n": len(rts),
                "p": len(rts) / len(sub) if len(sub) else math.nan,
            }
            row.update(zip((quantile_label(q) for q in qs), _quantiles(rts, qs), strict=True))
            rows.append(row)
    return pd.DataFrame(rows)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if len(x) else math.nan


def _side_stats(df: pd.DataFrame, suffix: str, qs: Sequence[float]) -> dict[str, float]:
    """Accuracy and RT summaries of one table within one condition (decided trials only)."""
    correct = df["correct"].to_numpy(dtype=bool)
    rt = df["rt_s"].to_numpy(dtype=float)
    rt_c, rt_e = rt[correct], rt[~correct]
    out = {
        f"accuracy_{suffix}": float(correct.mean()) if len(correct) else math.nan,
        f"median_rt_correct_{suffix}": _median(rt_c),
        f"median_rt_error_{suffix}": _median(rt_e),
        f"mean_rt_correct_{suffix}": _mean(rt_c),
        f"mean_rt_error_{suffix}": _mean(rt_e),
    }
    for outcome, values in (("correct", rt_c), ("error", rt_e)):
        for q, v in zip(qs, _quantiles(values, qs), strict=True):
            out[f"{quantile_label(q)}_{outcome}_{suffix}"] = float(v)
    return out


def fit_quality(
    model: pd.DataFrame,
    human: pd.DataFrame,
    *,
    n_bins: int = 500,
    lo: float = -2.5,
    hi: float = 2.5,
    qs: Sequence[float] = QUANTILES,
) -> pd.DataFrame:
    """One row per human condition comparing a model trials table with a human one.

    Columns: ``condition``, ``n_model``, ``n_human``, accuracy / median / mean RT (correct and error) and
    RT quantiles for both tables (suffix ``_model`` / ``_human``), ``ks`` (two-sample KS statistic on
    signed RTs), ``wasserstein`` (W1 on signed RTs, seconds), ``hist_mse`` (MSE between hard
    ``n_bins``-bin histograms over [lo, hi], each normalised by its number of trials: the published loss
    measure) and, when the model table has a ``decided`` column, ``n_decided_model`` and
    ``no_decision_rate``. See the module docstring for how undecided trials enter each measure.
    Conditions present only in the model table are ignored; a human condition missing from the model
    table is an error.
    """
    if n_bins < 1 or not hi > lo:
        raise PerceptAlignError(f"need n_bins >= 1 and hi > lo, got n_bins={n_bins}, lo={lo}, hi={hi}.")
    qs = _check_qs(qs)
    human = validate_trials(human, name="human trials")
    human_conditions = conditions(human)
    model = validate_trials(model, required_conditions=human_conditions, name="model trials")
    has_decided = "decided" in model.columns
    rows = []
    for cond in human_conditions:
        h = human[human["condition"] == cond]
        m_all = model[model["condition"] == cond]
        m = m_all[decided_mask(m_all)]
        h_signed, m_signed = signed_rt(h[decided_mask(h)]), signed_rt(m)
        row: dict[str, Any] = {"condition": cond, "n_model": len(m_all), "n_human": len(h)}
        if has_decided:
            row["n_decided_model"] = len(m)
            row["no_decision_rate"] = 1.0 - len(m) / len(m_all)
        row.update(_side_stats(m, "model", qs))
        row.update(_side_stats(h, "human", qs))
        if len(m_signed):
            # The statistic does not depend on the p-value method; "asymp" avoids exact-p warnings on ties.
            row["ks"] = float(stats.ks_2samp(m_signed, h_signed, method="asymp").statistic)
            row["wasserstein"] = float(stats.wasserstein_distance(m_signed, h_signed))
        else:
            row["ks"] = row["wasserstein"] = math.nan
        hist_m = signed_rt_histogram(m_signed, n_total=len(m_all), n_bins=n_bins, lo=lo, hi=hi)
        hist_h = signed_rt_histogram(h_signed, n_total=len(h), n_bins=n_bins, lo=lo, hi=hi)
        row["hist_mse"] = float(np.mean((hist_m - hist_h) ** 2))
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_fit(table: pd.DataFrame) -> dict[str, Any]:
    """JSON-ready summary of a :func:`fit_quality` table: NaN-ignoring means over conditions.

    Also reports ``hist_mse_sum`` (the RTify loss sums the histogram MSE over conditions) and the number of
    conditions; NaN means (e.g. no error trials anywhere) become ``None``.
    """
    if not isinstance(table, pd.DataFrame) or "condition" not in table.columns or len(table) == 0:
        raise PerceptAlignError("summarize_fit expects the non-empty DataFrame returned by fit_quality().")
    summary: dict[str, Any] = {"n_conditions": len(table)}
    for column in table.columns:
        if column == "condition" or not pd.api.types.is_numeric_dtype(table[column]):
            continue
        values = table[column].to_numpy(dtype=float)
        finite = values[~np.isnan(values)]
        summary[f"mean_{column}"] = float(finite.mean()) if len(finite) else None
    if "hist_mse" in table.columns:
        summary["hist_mse_sum"] = float(np.nansum(table["hist_mse"].to_numpy(dtype=float)))
    return summary
