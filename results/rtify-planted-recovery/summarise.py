"""Score the planted-recovery fits against the declared criterion (PREREGISTRATION.md) and write
summary.md / summary.json: per method, planted model and coherence, held-out W1 and KS with their noise
floors (human-train resampled to the method's decided model trials, 200 draws)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from perceptalign.rtify.uncertainty import noise_floor

MARGIN_S = 0.01
PLANTED = ["constant_sv", "collapsing", "collapsing_sv"]
METHODS = {  # label: (fit directory prefix, path to the method's entry in fit.json)
    "RTify head": ("fit", ("rtify",)),
    "RTify head + urgency": ("urgency", ("rtify",)),  # amendment 1
    "RTify head + drift variability": ("variability", ("rtify",)),  # amendment 2
    "RTify head + urgency + drift variability": ("both", ("rtify",)),  # amendment 2
    "RTify head, cosine lr": ("cosine", ("rtify",)),  # amendment 3
    "RTify head + urgency, cosine lr": ("cosine-urgency", ("rtify",)),
    "RTify head + drift variability, cosine lr": ("cosine-variability", ("rtify",)),
    "RTify head + urgency + drift variability, cosine lr": ("cosine-both", ("rtify",)),
    "RTify head + fitted gain": ("gain", ("rtify",)),  # amendment 4
    "RTify head + urgency + fitted gain": ("gain-urgency", ("rtify",)),
    "RTify head, 1000 training trials": ("trials1000", ("rtify",)),  # amendment 5
    "Wong–Wang": ("ww", ("rtify",)),
    "DDM (BIC-selected)": ("fit", ("baselines", "ddm")),
}


def method_rows(runs: Path, planted: str) -> list[dict]:
    trials = pd.read_csv(runs / f"{planted}.csv")
    train = trials[trials["split"] == "train"].drop(columns="split")
    test = trials[trials["split"] == "test"].drop(columns="split")
    rows = []
    for label, (prefix, path) in METHODS.items():
        report = json.loads((runs / f"{prefix}-{planted}" / "fit.json").read_text())
        entry = report
        for key in path:
            entry = entry[key]
        per = pd.DataFrame(entry["per_condition"])
        counts = {float(c): int(n) for c, n in zip(per["condition"], per["n_decided_model"], strict=True)}
        floor = noise_floor(train, test, n_model=counts, overall=False).set_index("condition")
        for _, r in per.iterrows():
            f = floor.loc[float(r["condition"])]
            rows.append(
                {
                    "planted": planted,
                    "method": label,
                    "coherence": float(r["condition"]),
                    "w1": float(r["wasserstein"]),
                    "w1_floor": float(f["wasserstein_mean"]),
                    "w1_excess": float(r["wasserstein"] - f["wasserstein_mean"]),
                    "ks": float(r["ks"]),
                    "ks_floor": float(f["ks_mean"]),
                    "accuracy_model": float(r["accuracy_model"]),
                    "accuracy_planted": float(r["accuracy_human"]),
                    "within": bool(r["wasserstein"] <= f["wasserstein_mean"] + MARGIN_S),
                }
            )
    return rows


def markdown(table: pd.DataFrame) -> str:
    lines = [
        "# Planted recovery: RTify head and Wong–Wang vs drift-diffusion models with known parameters",
        "",
        "Criterion (pre-registered): held-out W1 ≤ noise floor + 0.01 s at every coherence. Cells: W1 (s) / "
        "floor, ✓ where within; accuracy model vs planted.",
        "",
    ]
    verdict = table.groupby(["planted", "method"])["within"].agg(["sum", "size"]).reset_index()
    lines += ["| planted | method | coherences within | recovers |", "|---|---|---|---|"]
    for _, v in verdict.iterrows():
        lines.append(
            f"| {v.planted} | {v.method} | {v['sum']}/{v['size']} | "
            f"{'yes' if v['sum'] == v['size'] else 'no'} |"
        )
    for planted, part in table.groupby("planted", sort=False):
        lines += [
            "",
            f"## {planted}",
            "",
            "| coherence % | " + " | ".join(METHODS) + " |",
            "|---" * (len(METHODS) + 1) + "|",
        ]
        for coh, row in part.groupby("coherence"):
            cells = []
            for label in METHODS:
                r = row[row["method"] == label].iloc[0]
                mark = " ✓" if r.within else ""
                cells.append(
                    f"{r.w1:.3f} / {r.w1_floor:.3f}{mark} "
                    f"(acc {r.accuracy_model:.2f} vs {r.accuracy_planted:.2f})"
                )
            lines.append(f"| {coh:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    table = pd.DataFrame([row for p in PLANTED for row in method_rows(runs, p)])
    (out / "summary.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1) + "\n")
    (out / "summary.md").write_text(markdown(table))
