"""Markdown tables of the offline NTPS study, from the report and the results store (for summary.md).

Usage (from the repository root):
    python results/ntps-offline-study/summarize.py runs/study-offline > results/ntps-offline-study/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

MODES = ("fixed", "nested", "best_in_sample")
MODE_LABELS = {"fixed": "fixed a priori", "nested": "nested (LODO)", "best_in_sample": "best in sample ⚠"}
TARGET_LABELS = {"probe_accuracy": "held-out probe accuracy", "neg_mse": "−MSE", "lora_gain": "LoRA gain"}


def fmt(value: float | None, digits: int = 2, signed: bool = True) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def correlation_cell(summary: dict | None) -> str:
    if not summary or summary.get("spearman") is None:
        return "–"
    return f"{fmt(summary['spearman'])} (p = {summary['selection_perm_p']:.2f})"


def zoo_table(models: list[str]) -> list[str]:
    from perceptalign.ntps.pretrain import resolve_pretrained_alias

    lines = ["| model | parameters | val. perplexity | tokens seen |", "|---|---|---|---|"]
    for model in models:
        path = resolve_pretrained_alias(model)
        info_path = Path(path) / "perceptalign_pretrain.json" if path else None
        if info_path is None or not info_path.is_file():
            lines.append(f"| {model} | 135M (SmolLM2-135M-Instruct, GGUF) | – | pretrained (~2T tokens) |")
            continue
        info = json.loads(info_path.read_text())
        params = info["parameters"]["total"] / 1e6
        perplexity, tokens = info["final_val_perplexity"], info["tokens_seen"] / 1e6
        lines.append(f"| {model} | {params:.1f}M | {perplexity:.1f} | {tokens:.1f}M |")
    return lines


def main(directory: str) -> None:
    study = Path(directory)
    report = json.loads((study / "report.json").read_text())
    table = pd.read_csv(study / "results.csv")
    models = list(report["models"])
    out: list[str] = []
    out += ["## Models", "", *zoo_table(models), ""]

    probe = table[(table.method == "probe") & (table.metric == "accuracy")]
    majority = table[table.metric == "majority_class_accuracy"].set_index(["model", "dataset"])["value"]
    out += ["## Held-out probe accuracy (probe layer) and NTPS at the fixed configuration", ""]
    for model in models:
        analysis = report["models"][model]
        layer = analysis["probe_layer"]
        fixed = analysis["fixed_config"]
        acc = probe[(probe.model == model) & (probe.layer == layer)].set_index("dataset")["value"]
        out.append(
            f"**{model}** (probe layer {layer}; NTPS at layer {fixed['layer']}, f = {fixed['fraction']})"
        )
        out += ["", "| dataset | probe acc. | majority class | NTPS |", "|---|---|---|---|"]
        for dataset in analysis["datasets"]:
            out.append(
                f"| {dataset} | {fmt(acc.get(dataset), 3, False)} | "
                f"{fmt(majority.get((model, dataset)), 3, False)} | "
                f"{fmt(analysis['ntps_at_fixed'].get(dataset), 3, False)} |"
            )
        out.append("")

    out += [
        "## Spearman ρ of NTPS with each target",
        "",
        "p: one-sided permutation p in the declared direction (positive for accuracy and −MSE, negative for",
        "the LoRA gain), with the configuration choice repeated inside every permutation.",
        "",
        "| model | target | " + " | ".join(MODE_LABELS[m] for m in MODES) + " |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        for target, modes in report["models"][model]["correlations"].items():
            cells = [correlation_cell(modes.get(mode)) for mode in MODES]
            out.append(f"| {model} | {TARGET_LABELS.get(target, target)} | " + " | ".join(cells) + " |")
    out.append("")

    out += ["## NTPS before and after LoRA (merged weights) and the LoRA gain", ""]
    lora = table[table.method == "lora"]
    for model in models:
        change = report["models"][model].get("lora_ntps")
        if not change:
            continue
        gains = lora[(lora.model == model) & (lora.metric == "gain")].set_index("dataset")["value"]
        mine = lora[lora.model == model]
        head = mine[mine.metric == "eval_accuracy_linear_head"].set_index("dataset")["value"]
        tuned = mine[mine.metric == "eval_accuracy_lora"].set_index("dataset")["value"]
        fixed = report["models"][model]["fixed_config"]
        out += [
            f"**{model}** (NTPS at layer {fixed['layer']}, f = {fixed['fraction']})",
            "",
            "| dataset | NTPS before | NTPS after | linear head acc. | LoRA + head acc. | gain |",
            "|---|---|---|---|---|---|",
        ]
        for dataset, values in change.items():
            out.append(
                f"| {dataset} | {values['before']:.3f} | {values['after']:.3f} | "
                f"{fmt(head.get(dataset), 3, False)} | {fmt(tuned.get(dataset), 3, False)} | "
                f"{fmt(gains.get(dataset), 3)} |"
            )
        out.append("")

    out += [
        "## Peer metrics: Spearman ρ with held-out probe accuracy (fixed a priori / nested; permutation p)",
        "",
    ]
    metrics = list(next(iter(report["models"].values()))["peers"])
    out += ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for metric in metrics:
        cells = []
        for model in models:
            entry = report["models"][model]["peers"].get(metric, {}).get("probe_accuracy", {})
            fixed, nested = entry.get("fixed"), entry.get("nested")
            cells.append(f"{correlation_cell(fixed)} / {correlation_cell(nested)}")
        out.append(f"| {metric} | " + " | ".join(cells) + " |")
    out.append("")
    if any("lora_gain" in report["models"][m]["peers"].get("ntps", {}) for m in models):
        out += ["## Peer metrics: Spearman ρ with the LoRA gain (fixed a priori; permutation p)", ""]
        out += ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for metric in metrics:
            cells = []
            for model in models:
                entry = report["models"][model]["peers"].get(metric, {}).get("lora_gain", {})
                cells.append(correlation_cell(entry.get("fixed")))
            out.append(f"| {metric} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## The report's statements", ""] + [f"- {line}" for line in report["statements"]]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/study-offline")
