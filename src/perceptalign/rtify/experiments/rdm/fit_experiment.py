"""The whole RTify experiment on human RDM RTs (what `perceptalign rtify fit` runs) and its outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError, write_json_atomic
from perceptalign.rtify.experiments.rdm.baseline_fits import evaluate_method, run_baselines
from perceptalign.rtify.experiments.rdm.config import METHOD_LABELS, FitConfig
from perceptalign.rtify.experiments.rdm.decision_head import build_head
from perceptalign.rtify.experiments.rdm.human_fit import (
    HumanTargets,
    fit_head_to_human,
    head_sample,
    predict_table,
)
from perceptalign.rtify.experiments.rdm.self_penalised import train_self_penalised
from perceptalign.rtify.experiments.rdm.simulated_trials import simulate
from perceptalign.rtify.experiments.rdm.task import (
    GRUTrainConfig,
    RDMTaskConfig,
    load_or_train_gru,
)
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.trials import check_coherences, default_t0_max, validate_trials
from perceptalign.rtify.trials import conditions as table_conditions


@dataclass
class FitResult:
    """Everything one experiment produced: JSON report plus the trials tables for the figures."""

    report: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    head: RTifyHead | None = None
    fitted: dict[str, Any] = field(default_factory=dict)  # seed-independent fits (DDMs) to reuse


def check_split_tables(
    human_train: pd.DataFrame, human_test: pd.DataFrame, *, source: str = ""
) -> list[float]:
    """Validated numeric (coherence %) conditions of the training split; the test split must have the same.

    ``source`` (e.g. the data file) starts the messages. Every training coherence is evaluated on the
    test split and every test coherence needs a fit, so both splits must hold the same coherences.
    """
    prefix = f"{source}: " if source else ""
    train = validate_trials(human_train, name=f"{prefix}human training trials")
    test = validate_trials(human_test, name=f"{prefix}human test trials")
    conds = table_conditions(train)
    if any(isinstance(c, str) for c in conds):
        raise PerceptAlignError(
            f"{prefix}the RDM task needs numeric coherence conditions (in %), got {conds}; relabel the "
            "conditions."
        )
    conds = check_coherences(conds, name=f"{prefix}coherence conditions")
    test_conds = table_conditions(test)
    missing = [c for c in test_conds if c not in conds]
    if missing:
        raise PerceptAlignError(
            f"{prefix}test coherence(s) {missing} have no training trials; every test coherence needs "
            "training trials: add them to the train split, or drop those test trials."
        )
    untested = [c for c in conds if c not in test_conds]
    if untested:
        raise PerceptAlignError(
            f"{prefix}the test split has no trials for coherence(s) {untested} of the train split; every "
            "fitted coherence is evaluated on the test split: add test trials for them, or drop their "
            "training trials."
        )
    return [float(c) for c in conds]


def run_fit(
    human_train: pd.DataFrame,
    human_test: pd.DataFrame,
    config: FitConfig,
    *,
    task: RDMTaskConfig | None = None,
    gru: GRUTrainConfig | None = None,
    baselines: bool = True,
    cache: Path | None = None,
    reuse: dict[str, Any] | None = None,
    progress: PhaseStatusCallback | None = None,
) -> FitResult:
    """Train (or load) the GRU, fit the RTify head (human or self-penalty objective), fit the baselines,
    and evaluate every method on ``human_test``. The task's coherences are the human conditions.

    ``reuse`` holds seed-independent fits of an earlier run on the same training trials (the DDMs,
    from ``FitResult.fitted``), which are then only resimulated."""
    conds = check_split_tables(human_train, human_test)
    # Human targets first: bad human data must stop the run before the GRU is trained.
    targets_train = HumanTargets.from_table(human_train, conds, config, name="human training trials")
    targets_test = HumanTargets.from_table(human_test, conds, config, name="human test trials")
    task = task or RDMTaskConfig()
    task = RDMTaskConfig(
        coherences=tuple(conds), dt=task.dt, n_steps=task.n_steps, gain=task.gain, noise=task.noise
    )
    gru = gru or GRUTrainConfig(seed=config.seed)
    runtime: dict[str, float] = {}
    torch.manual_seed(config.seed)

    start = time.perf_counter()
    backbone, gru_info = load_or_train_gru(
        task,
        gru,
        cache=cache,
        progress=None
        if progress is None
        else (lambda d, t, loss: progress("train GRU", d, t, f"CE {loss:.3f}")),
    )
    runtime["gru"] = time.perf_counter() - start

    start = time.perf_counter()
    sim_train = simulate(backbone, task, config.n_train, seed=config.seed + 101)
    sim_eval = simulate(backbone, task, config.n_eval, seed=config.seed + 202)
    runtime["simulate"] = time.perf_counter() - start
    gru_accuracy = {
        c: float(
            (
                sim_eval.logits[sim_eval.cond_idx == k, -1].argmax(-1)
                == sim_eval.labels[sim_eval.cond_idx == k]
            )
            .float()
            .mean()
        )
        for k, c in enumerate(conds)
    }

    t0_box = default_t0_max(human_train)
    head = build_head(backbone, task, config, t0_max=t0_box)
    start = time.perf_counter()
    if config.objective == "human":
        history = fit_head_to_human(head, sim_train, targets_train, config, progress=progress)
    else:
        history = train_self_penalised(head, backbone, task, config, progress=progress)
    runtime["head"] = time.perf_counter() - start

    start = time.perf_counter()
    table = predict_table(head, sim_eval)
    model_eval = evaluate_method(table, human_test, targets_test, config)
    with torch.no_grad():
        out = head(sim_eval.hidden)
        expected, _ = config.rt_loss(head_sample(out, head, sim_eval), targets_test)
        n_clamped = out.decision.n_clamped
    model_eval["test_objective_expected"] = float(expected)
    model_eval["n_params"] = head.n_fitted_parameters() if config.objective == "human" else 0
    model_eval["params"] = {
        "threshold": float(head.threshold.detach()),
        "t0": float(head.t0.detach()),
        "t0_max": t0_box if config.objective == "human" else None,
        "t0_learned": config.objective == "human",
        "choice": "accumulator (bound crossed)",
        "estimator": config.estimator,
        "n_clamped_slopes_eval": int(n_clamped),
    }
    runtime["evaluate"] = time.perf_counter() - start
    tables = {config.model_name: table}

    baseline_reports: dict[str, Any] = {}
    result_fitted: dict[str, Any] = {}
    if baselines:
        start = time.perf_counter()
        fitted = run_baselines(
            sim_train,
            sim_eval,
            human_train,
            task.dt,
            seed=config.seed,
            objective="hist_mse" if config.loss == "mse" else "wasserstein",
            t0_max=t0_box,
            reuse=reuse,
            progress=progress,
        )
        for name, item in fitted.items():
            report = evaluate_method(item["table"], human_test, targets_test, config)
            report["params"] = item["params"]
            report["n_params"] = item.get("n_params")
            if "estimator" in item:
                result_fitted[name] = item["estimator"]
            if "estimator_selection" in item:
                result_fitted[f"{name}-selection"] = item["estimator_selection"]
            if "selection" in item:
                report["selection"] = item["selection"]
            report["fit_seconds"] = item["seconds"]
            baseline_reports[name] = report
            tables[name] = item["table"]
        runtime["baselines"] = time.perf_counter() - start

    stride = max(1, len(history) // 100)
    report = {
        "version": 1,
        "objective": config.objective,
        "model": config.model_name,
        "settings": {
            "fit": config.to_dict(),
            "task": task.to_dict(),
            "gru": gru.to_dict(),
            "t0_max_s": t0_box,
        },
        "data": {
            "conditions": conds,
            "n_train": len(human_train),
            "n_test": len(human_test),
            "human_train_accuracy": dict(zip(map(str, conds), targets_train.accuracy.tolist(), strict=True)),
        },
        "gru": {**gru_info, "final_step_accuracy": {str(c): a for c, a in gru_accuracy.items()}},
        "rtify": model_eval,
        "baselines": baseline_reports,
        "history": history[::stride] + ([history[-1]] if (len(history) - 1) % stride else []),
        "runtime_s": {**runtime, "total": float(sum(runtime.values()))},
    }
    return FitResult(report=report, tables=tables, head=head, fitted=result_fitted)


def write_fit_outputs(result: FitResult, human_test: pd.DataFrame, out: Path) -> list[Path]:
    """Write ``fit.json`` and the three comparison figures (human test vs every method) into ``out``."""
    from perceptalign.plotting import save_figure
    from perceptalign.rtify.figures import (
        psychometric_chronometric,
        quantile_probability_plot,
        signed_rt_histograms,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "fit.json"]
    write_json_atomic(paths[0], result.report)
    models = {METHOD_LABELS.get(k, k): v for k, v in result.tables.items()}
    for name, fig in (
        ("signed_rt_histograms.png", signed_rt_histograms(human_test, models)),
        ("psychometric_chronometric.png", psychometric_chronometric(human_test, models)),
        ("quantile_probability.png", quantile_probability_plot(human_test, models)),
    ):
        paths.append(save_figure(fig, out / name))
    return paths
