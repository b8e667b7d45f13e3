"""Figures of the training jobs: loss/accuracy curves and NTPS before vs after fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from perceptalign.ntps.finetune.training import TrainResult


def training_figure(results: Sequence[TrainResult], title: str = "") -> Figure:
    """Training loss (per step, faint, and its running mean) and held-out accuracy vs step, per run."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, result in enumerate(results):
        color = f"C{i}"
        steps = np.arange(1, len(result.losses) + 1)
        ax_loss.plot(steps, result.losses, color=color, alpha=0.2, linewidth=0.6)
        window = max(1, len(result.losses) // 50)
        smooth = np.convolve(result.losses, np.ones(window) / window, mode="valid")
        ax_loss.plot(steps[window - 1 :], smooth, color=color, label=f"{result.name} (mean of {window})")
        hist = result.eval_history
        ax_acc.plot(
            [h["step"] for h in hist],
            [h["eval_accuracy"] for h in hist],
            "o-",
            color=color,
            label=f"{result.name}: {result.eval_accuracy:.3f}",
        )
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training cross-entropy")
    ax_loss.legend(fontsize=8)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("held-out accuracy")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ntps_change_figure(
    before: dict[str, Any], after: dict[str, Any], key: str = "ntps", label: str = ""
) -> Figure:
    """Layer × k heat maps of NTPS before and after training, and their difference."""
    columns = before.get("fractions") or before["ks"][0]
    layers = list(before["layers"])
    a = np.asarray(before[key], dtype=float)
    b = np.asarray(after[key], dtype=float)
    delta = b - a
    fig = Figure(figsize=(15, 0.18 * len(layers) + 2.6))
    axes = fig.subplots(1, 3)
    bound = max(1e-6, float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 1e-6)
    panels = [
        (a, "before", "viridis", 0.0, 1.0),
        (b, f"after {label}".strip(), "viridis", 0.0, 1.0),
        (delta, "after − before", "RdBu_r", -bound, bound),
    ]
    for ax, (table, title, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(table, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([f"{c:g}" for c in columns], rotation=90, fontsize=7)
        step = max(1, len(layers) // 16)
        ax.set_yticks(range(0, len(layers), step))
        ax.set_yticklabels([str(layers[i]) for i in range(0, len(layers), step)], fontsize=7)
        ax.set_xlabel("fraction f of rank(V)" if before.get("fractions") else "k_V")
        ax.set_ylabel("layer (0 = embeddings)")
        ax.set_title(f"{key}: {title}")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{before.get('model', '?')} on {before.get('dataset', '?')}")
    fig.tight_layout()
    return fig
