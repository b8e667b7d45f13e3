"""NTPS figures: layer × k heat maps and per-layer curves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from perceptalign.plotting import subplots


def ntps_heatmap(results: Mapping[str, Any], keys: tuple[str, ...] = ("ntps", "ntps_orthonormal")) -> Figure:
    """Layer × k heat map for each NTPS variant in ``results`` (the `ntps.json` structure)."""
    layers = list(results["layers"])
    columns = results.get("fractions") or results["ks"]
    column_label = "fraction f of rank(V)" if results.get("fractions") else "k_V"
    fig, axes = subplots(1, len(keys), figsize=(5.2 * len(keys), 0.18 * len(layers) + 2.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        table = np.asarray(results[key], dtype=float)
        image = ax.imshow(table, aspect="auto", origin="lower", vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([f"{c:g}" for c in columns], rotation=90, fontsize=7)
        step = max(1, len(layers) // 16)
        ax.set_yticks(range(0, len(layers), step))
        ax.set_yticklabels([str(layers[i]) for i in range(0, len(layers), step)], fontsize=7)
        ax.set_xlabel(column_label)
        ax.set_ylabel("layer (0 = embeddings)")
        ax.set_title(key)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(
        f"NTPS — {results.get('model', '?')} on {results.get('dataset', '?')} ({results.get('split', '')})"
    )
    return fig
