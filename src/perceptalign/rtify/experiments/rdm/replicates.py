"""`rtify fit --seeds N`: the experiment repeated over seeds, with the uncertainty a reviewer asks for.

Each seed retrains the GRU, refits the RTify head and the network-based baselines and resimulates every
method; the DDMs are fitted once on the human training trials (their fit does not depend on a seed)
and resimulated per seed. The summary gives, per coherence and method: mean ± sd over seeds of held-out
W1 and KS, the 95 % bootstrap interval of the first seed (test trials and model trials resampled), the
paired difference RTify − strong DDM (same human resample), the parameter counts, and the noise floor
(human training trials resampled to the model's sample size, scored against the test split): gaps
smaller than the floor's spread are not evidence either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError, write_json_atomic, write_text_atomic
from perceptalign.rtify.experiments.rdm.baseline_fits import json_records
from perceptalign.rtify.experiments.rdm.config import METHOD_LABELS, FitConfig
from perceptalign.rtify.experiments.rdm.fit_experiment import FitResult, run_fit
from perceptalign.rtify.experiments.rdm.task import GRUTrainConfig, RDMTaskConfig
from perceptalign.rtify.metrics import fit_quality
from perceptalign.rtify.uncertainty import (
    OVERALL,
    aggregate_seeds,
    bootstrap_fit_quality,
    noise_floor,
    paired_difference,
)

__all__ = ["SeedsResult", "run_fit_seeds", "seeds_markdown", "write_seeds_outputs"]

METRICS = ("wasserstein", "ks")
STRONG_DDM = "ddm"


@dataclass
class SeedsResult:
    """Per-seed results and the summary tables (all pandas, also written as JSON/Markdown)."""

    runs: list[FitResult]
    seeds: list[int]
    over_seeds: dict[str, pd.DataFrame] = field(default_factory=dict)  # method → aggregate_seeds table
    intervals: dict[str, pd.DataFrame] = field(default_factory=dict)  # method → bootstrap (first seed)
    paired: pd.DataFrame | None = None  # RTify − strong DDM, per metric and condition (first seed)
    floor: pd.DataFrame | None = None
    n_params: dict[str, int | None] = field(default_factory=dict)


def _methods(run: FitResult) -> dict[str, dict[str, Any]]:
    report = run.report
    return {report["model"]: report["rtify"], **report["baselines"]}


def run_fit_seeds(
    human_train: pd.DataFrame,
    human_test: pd.DataFrame,
    config: FitConfig,
    seeds: int,
    *,
    task: RDMTaskConfig | None = None,
    gru: GRUTrainConfig | None = None,
    baselines: bool = True,
    cache: Path | None = None,
    n_boot: int = 500,
    progress: PhaseStatusCallback | None = None,
) -> SeedsResult:
    """Run :func:`run_fit` for seeds ``config.seed … config.seed + seeds − 1`` and summarise them."""
    if not (isinstance(seeds, int) and seeds >= 1):
        raise PerceptAlignError(f"`seeds` must be a positive integer, got {seeds!r}.")
    gru = gru or GRUTrainConfig(seed=config.seed)
    runs: list[FitResult] = []
    reuse: dict[str, Any] = {}
    seed_list = [config.seed + k for k in range(seeds)]
    for seed in seed_list:
        run = run_fit(
            human_train,
            human_test,
            replace(config, seed=seed),
            task=task,
            gru=replace(gru, seed=seed),
            baselines=baselines,
            cache=cache,
            reuse=reuse,
            progress=progress,
        )
        reuse.update(run.fitted)
        run.report["seed"] = seed
        runs.append(run)
    result = SeedsResult(runs=runs, seeds=seed_list)
    first = runs[0]
    names = list(first.tables)
    for name in names:
        per_seed = [fit_quality(run.tables[name], human_test) for run in runs]
        result.over_seeds[name] = aggregate_seeds(per_seed)
        result.intervals[name] = bootstrap_fit_quality(
            first.tables[name], human_test, metrics=METRICS, n_boot=n_boot, seed=config.seed
        )
        result.n_params[name] = _methods(first)[name].get("n_params")
    if STRONG_DDM in first.tables:
        result.paired = pd.concat(
            [
                paired_difference(
                    first.tables[config.model_name],
                    first.tables[STRONG_DDM],
                    human_test,
                    metric,
                    n_boot=n_boot,
                    seed=config.seed,
                ).assign(metric=metric)
                for metric in METRICS
            ],
            ignore_index=True,
        )
    model_conditions = first.tables[config.model_name]["condition"]
    n_model = {c: int((model_conditions == c).sum()) for c in first.report["data"]["conditions"]}
    # A test coherence without training trials has no floor (nothing to resample); the summary shows "—".
    trained = set(human_train["condition"])
    floor_conditions = [c for c in pd.unique(human_test["condition"]) if c in trained]
    result.floor = noise_floor(
        human_train, human_test, n_model=n_model, seed=config.seed, conditions=floor_conditions
    )
    return result


def _cell(over: pd.DataFrame, interval: pd.DataFrame, cond: Any, metric: str) -> str:
    row = over[over["condition"] == cond]
    if row.empty:
        return "—"
    mean, sd = float(row[f"{metric}_mean"].iloc[0]), float(row[f"{metric}_sd"].iloc[0])
    text = f"{mean:.3f}" + ("" if pd.isna(sd) else f" ± {sd:.3f}")
    band = interval[(interval["condition"] == cond) & (interval["metric"] == metric)]
    if not band.empty:
        lo, hi = basic_interval(band.iloc[0])
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def basic_interval(row: pd.Series) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval [2θ̂ − q_hi, 2θ̂ − q_lo], floored at 0.

    A distance between samples is biased upwards under resampling (replicates add their own sampling
    noise), so percentile intervals of W1/KS can lie entirely above the estimate; reflecting them about
    the estimate corrects that first-order bias.
    """
    estimate, lo, hi = float(row["estimate"]), float(row["lo"]), float(row["hi"])
    return max(0.0, 2 * estimate - hi), max(0.0, 2 * estimate - lo)


def seeds_markdown(result: SeedsResult, config: FitConfig) -> str:
    """The summary as Markdown: one table per metric, the paired RTify − DDM table, parameter counts."""
    names = list(result.runs[0].tables)
    conds = [*result.runs[0].report["data"]["conditions"], OVERALL]
    label = {n: METHOD_LABELS.get(n, n) for n in names}
    lines = [
        f"# RTify fit over {len(result.seeds)} seed(s): {', '.join(map(str, result.seeds))}",
        "",
        "Held-out human test trials. Cells: mean ± sd over seeds [95 % basic bootstrap interval of the first",
        "seed (test and model trials resampled)]. Noise floor: human training trials resampled to the",
        "model's sample size, against the test split (mean [2.5 %, 97.5 %]); gaps inside it prove nothing.",
        "",
    ]
    for metric in METRICS:
        title = "W1 of signed RTs (s)" if metric == "wasserstein" else "KS of signed RTs"
        lines += [f"## {title}", ""]
        header = ["coherence %", *[label[n] for n in names], "noise floor"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cond in conds:
            cells = [_cell(result.over_seeds[n], result.intervals[n], cond, metric) for n in names]
            floor = "—"
            if result.floor is not None:
                row = result.floor[result.floor["condition"] == cond]
                if not row.empty:
                    mean, lo, hi = (float(row[f"{metric}_{k}"].iloc[0]) for k in ("mean", "lo", "hi"))
                    floor = f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
            lines.append("| " + " | ".join([str(cond), *cells, floor]) + " |")
        lines.append("")
    if result.paired is not None:
        lines += [
            f"## {label[config.model_name]} − {label[STRONG_DDM]} (first seed, paired bootstrap)",
            "",
            "Negative = RTify closer to the humans. P = share of bootstrap replicates where RTify is better.",
            "",
            "| metric | coherence % | difference [95 % interval] | P(RTify better) |",
            "|---|---|---|---|",
        ]
        for _, row in result.paired.iterrows():
            lines.append(
                f"| {row['metric']} | {row['condition']} | {row['estimate']:+.3f} "
                f"[{row['lo']:+.3f}, {row['hi']:+.3f}] | {row['p_a_better']:.2f} |"
            )
        lines.append("")
    lines += ["## Fitted parameters per method", "", "| method | parameters fitted to human data |"]
    lines.append("|---|---|")
    for name in names:
        count = result.n_params.get(name)
        lines.append(f"| {label[name]} | {'—' if count is None else count} |")
    return "\n".join(lines) + "\n"


def write_seeds_outputs(
    result: SeedsResult, config: FitConfig, human_test: pd.DataFrame, out: Path
) -> list[Path]:
    """Each run's fit.json and figures (in ``out`` for one seed, in ``out/seed-<k>/`` for several), plus
    ``summary.json`` and ``summary.md`` in ``out``."""
    from perceptalign.rtify.experiments.rdm.fit_experiment import write_fit_outputs

    out = Path(out)
    paths: list[Path] = []
    for seed, run in zip(result.seeds, result.runs, strict=True):
        paths += write_fit_outputs(run, human_test, out if len(result.runs) == 1 else out / f"seed-{seed}")
    summary = {
        "version": 1,
        "seeds": result.seeds,
        "n_params": result.n_params,
        "over_seeds": {k: json_records(v) for k, v in result.over_seeds.items()},
        "intervals_first_seed": {k: json_records(v) for k, v in result.intervals.items()},
        "paired_rtify_minus_ddm": json_records(result.paired),
        "noise_floor": json_records(result.floor),
    }
    paths.append(out / "summary.json")
    write_json_atomic(paths[-1], summary)
    paths.append(out / "summary.md")
    write_text_atomic(paths[-1], seeds_markdown(result, config))
    return paths
