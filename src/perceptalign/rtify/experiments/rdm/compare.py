"""Comparing fits: per-coherence tables, a summary and a one-line verdict (`perceptalign rtify compare`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, read_json
from perceptalign.rtify.experiments.rdm.config import METHOD_LABELS

_ROW_KEYS = frozenset(
    {
        "condition",
        "accuracy_human",
        "median_rt_correct_human",
        "accuracy_model",
        "median_rt_correct_model",
        "wasserstein",
    }
)


def _load_fit(path: Path) -> dict[str, Any]:
    path = Path(path)
    file = path / "fit.json" if path.is_dir() else path
    if not file.is_file():
        raise PerceptAlignError(f"{path}: no fit.json found; pass a directory written by `rtify fit`.")
    try:
        report = read_json(file)
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PerceptAlignError(
            f"{file} cannot be read as JSON ({exc}); it is not a fit.json written by `perceptalign rtify "
            "fit` (rerun the fit to rewrite it)."
        ) from exc
    if not isinstance(report, Mapping) or "rtify" not in report or "model" not in report:
        raise PerceptAlignError(f"{file} is not a fit.json written by `perceptalign rtify fit`.")
    entries = [report["rtify"], *dict(report.get("baselines") or {}).values()]
    for entry in entries:
        rows = entry.get("per_condition") if isinstance(entry, Mapping) else None
        if not isinstance(rows, list) or not all(
            isinstance(r, Mapping) and set(r) >= _ROW_KEYS for r in rows
        ):
            raise PerceptAlignError(
                f"{file} is incomplete: a method lacks per-condition results "
                f"({', '.join(sorted(_ROW_KEYS))}); rerun the fit to rewrite it."
            )
    return dict(report)


def compare_fits(paths: Sequence[Path]) -> tuple[dict[float, pd.DataFrame], pd.DataFrame, dict[str, Any]]:
    """Per-coherence tables (human + every method: accuracy, median correct RT, W1), a per-method summary
    (mean W1 and mean |Δaccuracy| over conditions), and the best method by mean W1.

    Methods come from each fit's RTify model and its baselines; a baseline present in several fits is
    taken from the first one that has it (they are fitted identically).
    """
    if not paths:
        raise PerceptAlignError("compare needs at least one fit directory.")
    methods: dict[str, list[dict[str, Any]]] = {}
    human: dict[float, dict[str, float]] = {}
    for path in paths:
        report = _load_fit(path)
        entries = [(report["model"], report["rtify"]), *report.get("baselines", {}).items()]
        for name, entry in entries:
            if name in methods:
                continue
            methods[name] = entry["per_condition"]
            for row in entry["per_condition"]:
                human.setdefault(
                    float(row["condition"]),
                    {
                        "accuracy": row["accuracy_human"],
                        "median_rt_correct": row["median_rt_correct_human"],
                        "wasserstein": 0.0,
                    },
                )
    tables: dict[float, pd.DataFrame] = {}
    for cond in sorted(human):
        rows = [{"method": "human", **human[cond]}]
        for name, per_condition in methods.items():
            match = [r for r in per_condition if float(r["condition"]) == cond]
            if not match:
                continue
            r = match[0]
            rows.append(
                {
                    "method": METHOD_LABELS.get(name, name),
                    "accuracy": r["accuracy_model"],
                    "median_rt_correct": r["median_rt_correct_model"],
                    "wasserstein": r["wasserstein"],
                }
            )
        tables[cond] = pd.DataFrame(rows).set_index("method")
    summary_rows = []
    for name, per_condition in methods.items():
        w1 = [r["wasserstein"] for r in per_condition if r["wasserstein"] is not None]
        dacc = [
            abs(r["accuracy_model"] - r["accuracy_human"])
            for r in per_condition
            if r["accuracy_model"] is not None
        ]
        summary_rows.append(
            {
                "method": METHOD_LABELS.get(name, name),
                "mean_wasserstein": float(np.mean(w1)) if w1 else math.nan,
                "mean_abs_accuracy_error": float(np.mean(dacc)) if dacc else math.nan,
            }
        )
    summary = pd.DataFrame(summary_rows).set_index("method").sort_values("mean_wasserstein")
    best: dict[str, Any] = {"method": summary.index[0], "mean_wasserstein": float(summary.iloc[0, 0])}
    if len(summary) > 1:
        runner = float(summary.iloc[1, 0])
        best.update(
            {
                "runner_up": summary.index[1],
                "runner_up_mean_wasserstein": runner,
                "margin": runner - best["mean_wasserstein"],
                "ratio": runner / best["mean_wasserstein"] if best["mean_wasserstein"] > 0 else math.inf,
            }
        )
    return tables, summary, best


def markdown_number(value: Any) -> str:
    """A Markdown table cell: three decimals, or — for a missing value (None or NaN)."""
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def coherence_markdown(cond: float, rows: Iterable[tuple[str, Any, Any, Any]]) -> list[str]:
    """One coherence's block: a heading and a table of (method, accuracy, median correct RT, W1) rows."""
    lines = [
        f"## coherence {cond:g}%",
        "",
        "| method | accuracy | median correct RT (s) | W1 (s) |",
        "|---|---|---|---|",
    ]
    for method, *values in rows:
        lines.append(f"| {method} | " + " | ".join(markdown_number(v) for v in values) + " |")
    return [*lines, ""]


def summary_markdown(title: str, rows: Iterable[tuple[str, Any, Any]]) -> list[str]:
    """The mean-over-coherences table: (method, mean W1, mean absolute accuracy error) rows."""
    lines = [f"## {title}", "", "| method | mean W1 (s) | mean abs accuracy error |", "|---|---|---|"]
    return lines + [f"| {m} | {markdown_number(w1)} | {markdown_number(err)} |" for m, w1, err in rows]


def comparison_markdown(tables: Mapping[float, pd.DataFrame], summary: pd.DataFrame, best: Mapping) -> str:
    """The comparison as Markdown: one table per coherence, the summary table, one verdict line."""
    lines = ["# RTify comparison on the human test split", ""]
    for cond, table in tables.items():
        lines += coherence_markdown(
            cond,
            (
                (
                    method,
                    row["accuracy"],
                    row["median_rt_correct"],
                    None if method == "human" else row["wasserstein"],
                )
                for method, row in table.iterrows()
            ),
        )
    lines += summary_markdown(
        "summary over coherences",
        ((m, row["mean_wasserstein"], row["mean_abs_accuracy_error"]) for m, row in summary.iterrows()),
    )
    lines += ["", verdict_line(best), ""]
    return "\n".join(lines)


def verdict_line(best: Mapping) -> str:
    """One sentence naming the best method (lowest mean W1) and its margin over the runner-up."""
    line = (
        f"Best fit (lowest mean Wasserstein-1 over coherences): {best['method']} "
        f"({best['mean_wasserstein']:.4f} s)"
    )
    if "runner_up" in best:
        line += (
            f", {best['margin']:.4f} s lower than {best['runner_up']} "
            f"({best['runner_up_mean_wasserstein']:.4f} s, ×{best['ratio']:.2f})."
        )
    else:
        line += "."
    return line
