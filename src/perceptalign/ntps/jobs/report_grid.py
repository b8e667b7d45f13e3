"""The study's results table reshaped for the report: one metric of one model as a complete grid of
(dataset, layer, config) scores, and dataset display names. Shared by the report and its figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: The config value of a metric that has no configuration (e.g. a probe accuracy).
NO_CONFIG = "-"


def dataset_label(name: str) -> str:
    """Short display name: a file path shows as its stem."""
    path = Path(name)
    return path.stem if path.suffix in {".csv", ".tsv", ".jsonl", ".parquet", ".json"} else name


def score_grid(table: pd.DataFrame, model: str, method: str, metric: str) -> pd.DataFrame:
    """Long (dataset, layer, config, score) rows of one metric; config ``"-"`` when it has none.

    Configurations not scored on every dataset, and NaN values, are dropped (the selection procedures need
    a complete grid).
    """
    rows = table[(table["model"] == model) & (table["method"] == method) & (table["metric"] == metric)]
    rows = rows[np.isfinite(rows["value"].to_numpy(float))]
    if rows.empty:
        return pd.DataFrame(columns=["dataset", "layer", "config", "score"])
    config = rows["config"].map(lambda c: NO_CONFIG if not np.isfinite(c) else float(c))
    grid = pd.DataFrame(
        {
            "dataset": rows["dataset"].to_numpy(),
            "layer": rows["layer"].to_numpy(int),
            "config": config.to_numpy(),
            "score": rows["value"].to_numpy(float),
        }
    )
    n_datasets = grid["dataset"].nunique()
    counts = grid.groupby(["layer", "config"])["dataset"].transform("nunique")
    return grid[counts == n_datasets].reset_index(drop=True)


__all__ = ["NO_CONFIG", "dataset_label", "score_grid"]
