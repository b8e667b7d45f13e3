"""Figures comparing human and model reaction times: signed-RT histograms, psychometric / chronometric
curves and quantile-probability plots.

Functions return :class:`matplotlib.figure.Figure` objects built without pyplot (no global state, no
display needed); :func:`save_figure` writes one atomically. Human data are drawn filled or as markers,
each model as a line, so any number of models stays readable against the same human reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.metrics import QUANTILES, decided_mask, quantile_label, rt_quantiles, signed_rt
from perceptalign.rtify.trials import conditions as table_conditions
from perceptalign.rtify.trials import normalise_conditions, validate_trials

HUMAN_COLOR = "0.35"


def _validated(human: pd.DataFrame, models: Mapping[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    if not isinstance(models, Mapping):
        raise PerceptAlignError("models must be a mapping {name: model trials table} (it may be empty).")
    human = validate_trials(human, name="human trials")
    return human, {str(name): validate_trials(df, name=f"model {name!r}") for name, df in models.items()}


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _condition_label(cond: Any) -> str:
    return f"{cond:g}" if isinstance(cond, float) else str(cond)


def signed_rt_histograms(
    human: pd.DataFrame,
    models: Mapping[str, pd.DataFrame],
    conditions: Sequence[Any] | None = None,
    *,
    n_bins: int = 100,
    lo: float = -2.5,
    hi: float = 2.5,
    ncols: int = 4,
) -> Figure:
    """One panel per condition: density of signed RTs (errors left of 0), human filled, models as lines.

    Densities are normalised by each table's number of trials in the condition, so undecided model trials
    and trials outside [lo, hi] show as missing area rather than inflating the rest.
    """
    human, models = _validated(human, models)
    conds = table_conditions(human) if conditions is None else normalise_conditions(conditions)
    if not conds:
        raise PerceptAlignError("no conditions to plot.")
    edges = np.linspace(lo, hi, n_bins + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    ncols = max(1, min(ncols, len(conds)))
    nrows = math.ceil(len(conds) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    colors = _colors(len(models))

    def density(df: pd.DataFrame) -> np.ndarray:
        values = signed_rt(df[decided_mask(df)])
        counts, _ = np.histogram(values, bins=edges)
        return counts / max(len(df), 1) / width

    for i, cond in enumerate(conds):
        ax = axes.flat[i]
        h = human[human["condition"] == cond]
        if len(h):
            ax.stairs(density(h), edges, fill=True, color=HUMAN_COLOR, alpha=0.45, label="human")
        for color, (name, df) in zip(colors, models.items(), strict=True):
            sub = df[df["condition"] == cond]
            if len(sub):
                ax.plot(centers, density(sub), color=color, lw=1.4, label=name)
        ax.axvline(0.0, color="k", lw=0.6)
        ax.set_xlim(lo, hi)
        ax.set_title(f"condition {_condition_label(cond)}", fontsize=9)
        if i % ncols == 0:
            ax.set_ylabel("density (1/s)")
        if i >= len(conds) - ncols:
            ax.set_xlabel("signed RT (s): error < 0 < correct")
    for ax in list(axes.flat[len(conds) :]):
        fig.delaxes(ax)
    axes.flat[0].legend(fontsize=7, frameon=False)
    return fig


def _per_condition_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and median correct / error RT per condition, decided trials only."""
    rows = []
    df = df[decided_mask(df)]
    for cond in table_conditions(df):
        sub = df[df["condition"] == cond]
        correct = sub["correct"].to_numpy(dtype=bool)
        rt = sub["rt_s"].to_numpy(dtype=float)
        rows.append(
            {
                "condition": cond,
                "accuracy": float(correct.mean()),
                "median_correct": float(np.median(rt[correct])) if correct.any() else math.nan,
                "median_error": float(np.median(rt[~correct])) if (~correct).any() else math.nan,
            }
        )
    # Explicit columns: a model with no decided trial yields an empty table that still plots (as nothing).
    return pd.DataFrame(rows, columns=["condition", "accuracy", "median_correct", "median_error"])


def _numeric_conditions(df: pd.DataFrame, who: str) -> None:
    if not pd.api.types.is_float_dtype(df["condition"]):
        raise PerceptAlignError(
            f"{who}: psychometric/chronometric curves need numeric conditions (e.g. coherence in %); "
            "use signed_rt_histograms for categorical conditions."
        )


def psychometric_chronometric(human: pd.DataFrame, models: Mapping[str, pd.DataFrame]) -> Figure:
    """Left: accuracy vs condition (log x when all conditions are > 0). Right: median RT vs condition,
    correct trials solid and error trials dashed. Humans as markers, models as lines."""
    human, models = _validated(human, models)
    _numeric_conditions(human, "human trials")
    for name, df in models.items():
        _numeric_conditions(df, f"model {name!r}")
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_acc, ax_rt = fig.subplots(1, 2)
    h = _per_condition_summary(human)
    ax_acc.plot(h["condition"], h["accuracy"], "o", color=HUMAN_COLOR, label="human")
    ax_rt.plot(h["condition"], h["median_correct"], "o", color=HUMAN_COLOR, label="human correct")
    ax_rt.plot(h["condition"], h["median_error"], "o", mfc="none", color=HUMAN_COLOR, label="human error")
    all_conditions = list(h["condition"])
    for color, (name, df) in zip(_colors(len(models)), models.items(), strict=True):
        m = _per_condition_summary(df)
        all_conditions += list(m["condition"])
        ax_acc.plot(m["condition"], m["accuracy"], "-", color=color, label=name)
        ax_rt.plot(m["condition"], m["median_correct"], "-", color=color, label=f"{name} correct")
        ax_rt.plot(m["condition"], m["median_error"], "--", color=color, label=f"{name} error")
    for ax in (ax_acc, ax_rt):
        if min(all_conditions) > 0:
            ax.set_xscale("log")
        ax.set_xlabel("condition (e.g. coherence %)")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0.0, 1.02)
    ax_acc.axhline(0.5, color="k", lw=0.5, ls=":")
    ax_rt.set_ylabel("median RT (s)")
    ax_acc.set_title("psychometric", fontsize=10)
    ax_rt.set_title("chronometric", fontsize=10)
    ax_acc.legend(fontsize=7, frameon=False)
    ax_rt.legend(fontsize=7, frameon=False)
    return fig


def _qp_points(df: pd.DataFrame, qs: Sequence[float]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """For each quantile level: (response probability, RT quantile) over all condition × outcome cells,
    ordered by probability (errors have p < .5 on the left, correct responses on the right)."""
    table = rt_quantiles(df, qs).dropna(subset=[quantile_label(q) for q in qs])
    table = table.sort_values("p")
    return {q: (table["p"].to_numpy(), table[quantile_label(q)].to_numpy()) for q in qs}


def quantile_probability_plot(
    human: pd.DataFrame, models: Mapping[str, pd.DataFrame], *, qs: Sequence[float] = QUANTILES
) -> Figure:
    """RT quantiles against response probability: each condition contributes its correct responses at
    p(correct) and its errors at 1 − p(correct). Humans as markers, each model as one line per quantile."""
    human, models = _validated(human, models)
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, (p, y) in enumerate(_qp_points(human, qs).values()):
        ax.plot(p, y, "o", ls="none", color=HUMAN_COLOR, ms=4, label="human" if k == 0 else None)
    for color, (name, df) in zip(_colors(len(models)), models.items(), strict=True):
        for k, (p, y) in enumerate(_qp_points(df, qs).values()):
            ax.plot(p, y, "-", marker=".", color=color, lw=1.0, label=name if k == 0 else None)
    ax.axvline(0.5, color="k", lw=0.5, ls=":")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("response probability (errors left, correct right)")
    ax.set_ylabel(f"RT quantiles {', '.join(f'{q:g}' for q in qs)} (s)")
    ax.set_title("quantile-probability plot", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return fig
