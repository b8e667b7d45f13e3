"""Figures of the study report (docs/ntps.md), as base64 PNGs for the self-contained HTML page.

Every figure is drawn from the study's stored rows only; nothing here loads a model. Fig 2/3 plot ranks
over datasets (NTPS vs probe accuracy / −MSE / LoRA gain) with Spearman in the title; plus NTPS
before/after LoRA, layer × fraction heat maps, the in-sample correlation per configuration (descriptive:
its maximum IS best-in-sample selection) and NTPS next to probe accuracy across layers. Fig 1 of
docs/ntps.md (single words projected on the top U and V directions) is NOT drawn: it needs the model's
features of a word list, which a study does not store, and embedding the words here would load every
model while the report is drawn. The report says so in its figure notes (``FIG1_NOTE``).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.figure import Figure

from perceptalign.ntps.jobs.report_grid import dataset_label, score_grid
from perceptalign.ntps.store import NO_LAYER
from perceptalign.plotting import subplots

FIG1_NOTE = (
    "Fig 1 (single words on the top U vs V directions) is not drawn: it needs the model's features of a "
    "word list, which the study does not store, and the report reads stored results only (it never loads a "
    "model)."
)


def _label(name: str) -> str:
    return dataset_label(name)


def _ranks(values: list[float]) -> np.ndarray:
    return scipy.stats.rankdata(values)


def _spearman_text(x: list[float], y: list[float]) -> str:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return f"Spearman undefined (n = {len(x)})"
    rho, p = scipy.stats.spearmanr(x, y)
    return f"Spearman ρ = {rho:+.2f} (p = {p:.2g}, n = {len(x)})"


def rank_figure(ntps: dict[str, float], targets: dict[str, dict[str, float]], title: str) -> Figure:
    """rank(NTPS) vs rank(target) over datasets, one panel per target (Fig 2 / Fig 3)."""
    fig, axes = subplots(1, len(targets), figsize=(5.2 * len(targets), 4.4), squeeze=False)
    for ax, (name, values) in zip(axes[0], targets.items(), strict=True):
        common = [d for d in ntps if d in values]
        x = [ntps[d] for d in common]
        y = [values[d] for d in common]
        if common:
            rx, ry = _ranks(x), _ranks(y)
            ax.scatter(rx, ry, color="C0")
            for d, a, b in zip(common, rx, ry, strict=True):
                ax.annotate(_label(d), (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.plot([1, len(common)], [1, len(common)], color="C7", lw=0.8, ls=":")
        ax.set_xlabel("rank of NTPS (fixed configuration)")
        ax.set_ylabel(f"rank of {name}")
        ax.set_title(f"{name}\n{_spearman_text(x, y)}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def before_after_figure(change: dict[str, dict[str, float]], gains: dict[str, float], title: str) -> Figure:
    """NTPS before vs after LoRA per dataset (colour = LoRA gain)."""
    fig, ax = subplots(figsize=(5, 4.4))
    names = list(change)
    before = [change[d]["before"] for d in names]
    after = [change[d]["after"] for d in names]
    colours = [gains.get(d, np.nan) for d in names]
    points = ax.scatter(before, after, c=colours, cmap="coolwarm")
    for d, a, b in zip(names, before, after, strict=True):
        ax.annotate(_label(d), (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo, hi = min(before + after), max(before + after)
    ax.plot([lo, hi], [lo, hi], color="C7", lw=0.8, ls=":")
    fig.colorbar(points, ax=ax, label="LoRA gain")
    ax.set_xlabel("NTPS before LoRA")
    ax.set_ylabel("NTPS after LoRA (merged)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def heatmaps_figure(grid: pd.DataFrame, title: str) -> Figure:
    """Layer × fraction NTPS heat map per dataset."""
    datasets = list(pd.unique(grid["dataset"]))
    cols = min(4, len(datasets))
    rows = int(np.ceil(len(datasets) / cols))
    fig, axes = subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    fig.subplots_adjust(hspace=0.6, wspace=0.35)
    for ax in axes.ravel()[len(datasets) :]:
        ax.axis("off")
    for ax, d in zip(axes.ravel(), datasets, strict=False):
        wide = grid[grid["dataset"] == d].pivot(index="layer", columns="config", values="score").sort_index()
        image = ax.imshow(wide.to_numpy(float), aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
        ax.set_title(_label(d), fontsize=8)
        ax.set_xticks(range(len(wide.columns)))
        ax.set_xticklabels([f"{c:g}" for c in wide.columns], rotation=90, fontsize=6)
        step = max(1, len(wide.index) // 8)
        ax.set_yticks(range(0, len(wide.index), step))
        ax.set_yticklabels([str(v) for v in wide.index[::step]], fontsize=6)
        ax.set_xlabel("f", fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02)
    fig.suptitle(title, fontsize=10)
    return fig


def correlation_heatmap(grid: pd.DataFrame, target: dict[str, float], title: str) -> Figure | None:
    """In-sample Spearman of every (layer, f) with the target: descriptive only."""
    from perceptalign.ntps.analysis import correlation_by_config

    sub = grid[grid["dataset"].isin(list(target))]
    if sub["dataset"].nunique() < 3:
        return None
    corr = correlation_by_config(sub, {d: target[d] for d in pd.unique(sub["dataset"])}, method="spearman")
    wide = corr.pivot(index="layer", columns="config", values="spearman").sort_index()
    fig, ax = subplots(figsize=(6, 4.4))
    image = ax.imshow(wide.to_numpy(float), aspect="auto", origin="lower", vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(wide.columns)))
    ax.set_xticklabels([f"{c:g}" for c in wide.columns], rotation=90, fontsize=7)
    step = max(1, len(wide.index) // 10)
    ax.set_yticks(range(0, len(wide.index), step))
    ax.set_yticklabels([str(v) for v in wide.index[::step]], fontsize=7)
    ax.set_xlabel("fraction f of rank(V)")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label="in-sample Spearman ρ")
    ax.set_title(title + "\n(descriptive: reading off its maximum is best-in-sample selection)", fontsize=8)
    fig.tight_layout()
    return fig


def layers_figure(grid: pd.DataFrame, probe: pd.DataFrame, fraction: float, title: str) -> Figure:
    """NTPS at f and held-out probe accuracy across layers, one line per dataset."""
    fig, axes = subplots(1, 2, figsize=(11, 4), sharex=True)
    at = grid[np.isclose(grid["config"].astype(float), fraction)]
    for i, d in enumerate(pd.unique(grid["dataset"])):
        colour = f"C{i % 10}"
        rows = at[at["dataset"] == d].sort_values("layer")
        axes[0].plot(rows["layer"], rows["score"], "o-", ms=3, color=colour, label=_label(d))
        acc = probe[probe["dataset"] == d].sort_values("layer")
        if not acc.empty:
            axes[1].plot(acc["layer"], acc["value"], "s-", ms=3, color=colour, label=_label(d))
    axes[0].set_ylabel(f"NTPS (f = {fraction:g})")
    axes[1].set_ylabel("held-out probe accuracy")
    for ax in axes:
        ax.set_xlabel("layer (0 = embeddings)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------


def all_figures(
    table: pd.DataFrame, report: dict[str, Any], config: Any, status: Callable[[str], None]
) -> dict[str, dict[str, str]]:
    """model → {title: base64 PNG}, from the stored rows in ``table`` and the numbers in ``report``
    only. What is not drawn is noted in ``report["figure_notes"]``."""
    out: dict[str, dict[str, str]] = {}
    notes: list[str] = report.setdefault("figure_notes", [])
    if FIG1_NOTE not in notes:
        notes.append(FIG1_NOTE)
    for model, analysis in report["models"].items():
        figs: dict[str, str] = {}
        out[model] = figs
        if "skipped" in analysis:
            continue
        status(f"figures of {model}")
        fixed = analysis["fixed_config"]
        ntps = analysis["ntps_at_fixed"]
        targets = analysis["targets"]
        short = {"probe_accuracy": "held-out probe accuracy", "neg_mse": "−MSE (held out)"}
        probe_targets = {short[k]: v for k, v in targets.items() if k in short}
        if probe_targets:
            figs["Fig 2 — rank(NTPS) vs rank(probe accuracy / −MSE)"] = figure_to_base64(
                rank_figure(
                    ntps, probe_targets, f"{model}: NTPS at layer {fixed['layer']}, f = {fixed['fraction']}"
                )
            )
        if "lora_gain" in targets:
            figs["Fig 3 — rank(NTPS) vs rank(LoRA gain)"] = figure_to_base64(
                rank_figure(ntps, {"LoRA gain": targets["lora_gain"]}, f"{model}: declared sign negative")
            )
        if analysis.get("lora_ntps"):
            figs["NTPS before / after LoRA"] = figure_to_base64(
                before_after_figure(
                    analysis["lora_ntps"],
                    targets.get("lora_gain", {}),
                    f"{model}: layer {fixed['layer']}, f = {fixed['fraction']}",
                )
            )
        grid = score_grid(table, model, "ntps", config.score_metric)
        figs["NTPS layer × fraction heat maps"] = figure_to_base64(
            heatmaps_figure(grid, f"{model}: {config.score_metric}")
        )
        if "probe_accuracy" in targets:
            heat = correlation_heatmap(grid, targets["probe_accuracy"], f"{model}: ρ(NTPS, probe accuracy)")
            if heat is not None:
                figs["In-sample correlation per configuration"] = figure_to_base64(heat)
        probe = table[
            (table["model"] == model)
            & (table["method"] == "probe")
            & (table["metric"] == "accuracy")
            & (table["layer"] != NO_LAYER)
        ]
        figs["NTPS and probe accuracy across layers"] = figure_to_base64(
            layers_figure(grid, probe, fixed["fraction"], model)
        )
    return out


__all__ = [
    "FIG1_NOTE",
    "all_figures",
    "before_after_figure",
    "correlation_heatmap",
    "heatmaps_figure",
    "layers_figure",
    "rank_figure",
]


def figure_to_base64(fig: Any) -> str:
    """PNG of a matplotlib figure as base64."""
    buffer = io.BytesIO()
    # No bbox_inches="tight": it draws every figure twice; the figure functions lay themselves out.
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
