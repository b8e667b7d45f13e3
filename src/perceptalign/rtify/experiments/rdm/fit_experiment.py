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
from perceptalign.rtify.estimators import (
    TRAIN_SEED_OFFSET,
    DDMEstimator,
    RTifyHeadConfig,
    RTifyHeadEstimator,
)
from perceptalign.rtify.experiments.rdm.baseline_fits import evaluate_method, fit_baselines, json_records
from perceptalign.rtify.experiments.rdm.config import METHOD_LABELS, FitConfig
from perceptalign.rtify.experiments.rdm.human_fit import HumanTargets, rt_window_s
from perceptalign.rtify.experiments.rdm.simulated_trials import GRUTrials
from perceptalign.rtify.experiments.rdm.task import (
    GRUTrainConfig,
    RDMTaskConfig,
    load_or_train_gru,
)
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.trials import check_coherences, default_t0_max, rt_beyond, validate_trials
from perceptalign.rtify.trials import conditions as table_conditions

#: The evaluation trials of the network-based methods are simulated with ``seed + EVAL_SEED_OFFSET``.
EVAL_SEED_OFFSET = 202


@dataclass
class FitResult:
    """Everything one experiment produced: JSON report plus the trials tables for the figures."""

    report: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    head: RTifyHead | None = None
    fitted: dict[str, Any] = field(default_factory=dict)  # seed-independent estimators (DDMs) to reuse


def _coherence_splits(
    human_train: pd.DataFrame, human_test: pd.DataFrame, prefix: str
) -> tuple[list[float], list[float]]:
    """Sorted coherences (%) of each split; a labelled (non-numeric) condition is refused, naming its split.

    The model of every method takes the condition as a number (the GRU's stimulus strength, the DDM's
    drift k·coherence) and none has per-condition parameters a label could get, so no method can score a
    labelled condition: the error comes before any fitting.
    """
    train = validate_trials(human_train, name=f"{prefix}human training trials")
    test = validate_trials(human_test, name=f"{prefix}human test trials")
    labels = {}
    for split, table in (("train", train), ("test", test)):
        values = pd.Series(table["condition"].unique())
        bad = values[pd.to_numeric(values, errors="coerce").isna()].astype(str).tolist()
        if bad:
            labels[split] = sorted(bad)
    if labels:
        where = "; ".join(f"{split} split: {values}" for split, values in labels.items())
        raise PerceptAlignError(
            f"{prefix}column 'condition' must hold motion coherences in % (numbers), but has labels "
            f"({where}). Every method of the RDM fit takes the coherence as its input (the GRU's "
            "stimulus strength, the DDM's drift = k·coherence), so a labelled condition cannot be simulated "
            "by any of them. Fix: replace the labels with coherences in %, or drop those trials."
        )
    conds = check_coherences(table_conditions(train), name=f"{prefix}coherence conditions (train split)")
    test_conds = check_coherences(table_conditions(test), name=f"{prefix}coherence conditions (test split)")
    return [float(c) for c in conds], [float(c) for c in test_conds]


def _check_tested(conds: list[float], test_conds: list[float], prefix: str) -> None:
    untested = [c for c in conds if c not in test_conds]
    if untested:
        raise PerceptAlignError(
            f"{prefix}the test split has no trials for coherence(s) {untested} of the train split; every "
            "fitted coherence is evaluated on the test split: add test trials for them, or drop their "
            "training trials."
        )


def check_split_tables(
    human_train: pd.DataFrame, human_test: pd.DataFrame, *, source: str = ""
) -> list[float]:
    """Validated numeric (coherence %) conditions of the training split; the test split must have the same.

    ``source`` (e.g. the data file) starts the messages. For fits whose methods have one set of parameters
    per training coherence (every test coherence needs a fit) and are evaluated on every one of them.
    :func:`run_fit` itself uses :func:`fit_conditions`, which accepts unseen test coherences.
    """
    prefix = f"{source}: " if source else ""
    conds, test_conds = _coherence_splits(human_train, human_test, prefix)
    missing = [c for c in test_conds if c not in conds]
    if missing:
        raise PerceptAlignError(
            f"{prefix}test coherence(s) {missing} have no training trials; every test coherence needs "
            "training trials: add them to the train split, or drop those test trials."
        )
    _check_tested(conds, test_conds, prefix)
    return conds


@dataclass(frozen=True)
class FitConditions:
    """Coherences of an `rtify fit`: fitted (train split), scored (test split), and the scored ones that
    have no training trials (predicted from the coherence alone)."""

    train: list[float]
    test: list[float]
    unseen: list[float]


def fit_conditions(human_train: pd.DataFrame, human_test: pd.DataFrame, *, source: str = "") -> FitConditions:
    """The coherences of :func:`run_fit`, checked before any work.

    A test coherence absent from the train split is accepted: every method maps the coherence to its
    input (the GRU sees a stimulus of that strength, which the RTify head and the entropy and evidential
    read-outs decide on; the DDMs' drift is k·coherence), so each predicts it with the parameters fitted on
    the other coherences. Refused, naming the values: labelled (non-numeric) conditions, which no method
    can take; coherences outside [0, 100] %; and training coherences without test trials (nothing to score).
    """
    prefix = f"{source}: " if source else ""
    conds, test_conds = _coherence_splits(human_train, human_test, prefix)
    _check_tested(conds, test_conds, prefix)
    return FitConditions(conds, test_conds, [c for c in test_conds if c not in conds])


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
    and evaluate every method on ``human_test``.

    The GRU is trained, and every method fitted, on the training coherences; every method is then
    simulated at the test coherences, including test coherences without training trials (see
    :func:`fit_conditions`; the report lists them under ``data.unseen_test_conditions`` and in
    ``data.notes``). Human RTs at or beyond the fit's window (:func:`rt_window_s`) are kept and counted,
    never dropped: they are missing mass of the histogram objective, censored trials of the DDM likelihood,
    and responses that W1 and KS compare with the model's (so a model that never responds that late scores
    worse); ``data.rt_beyond_window`` gives their number per split and condition.

    ``reuse`` holds seed-independent fits of an earlier run on the same training trials (the DDMs,
    from ``FitResult.fitted``), which are then only resimulated."""
    split = fit_conditions(human_train, human_test)
    conds, test_conds = split.train, split.test
    # Human targets first: bad human data must stop the run before the GRU is trained.
    targets_train = HumanTargets.from_table(
        human_train, conds, config, name="human training trials", beyond_window="count"
    )
    targets_test = HumanTargets.from_table(
        human_test, test_conds, config, name="human test trials", beyond_window="count"
    )
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

    network = GRUTrials(backbone, task)  # keeps its last simulations: every method sees the same trials
    start = time.perf_counter()
    network(conds, config.n_train, seed=config.seed + TRAIN_SEED_OFFSET)
    sim_eval = network(test_conds, config.n_eval, seed=config.seed + EVAL_SEED_OFFSET)
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
        for k, c in enumerate(test_conds)
    }

    t0_box = default_t0_max(human_train)
    head_config = RTifyHeadConfig.from_fit_config(config, t0_max=t0_box)
    start = time.perf_counter()
    rtify = RTifyHeadEstimator(head_config, network, progress=progress).fit(human_train)
    history, head = rtify.history_, rtify.head_
    runtime["head"] = time.perf_counter() - start

    start = time.perf_counter()
    table = rtify.simulate(test_conds, config.n_eval, seed=config.seed + EVAL_SEED_OFFSET)
    model_eval = evaluate_method(table, human_test, targets_test, config)
    expected, n_clamped = rtify.expected_loss(
        targets_test, test_conds, config.n_eval, seed=config.seed + EVAL_SEED_OFFSET
    )
    model_eval["test_objective_expected"] = float(expected)
    model_eval["n_params"] = rtify.n_parameters
    model_eval["params"] = {**rtify.params(), "n_clamped_slopes_eval": int(n_clamped)}
    runtime["evaluate"] = time.perf_counter() - start
    tables = {config.model_name: table}

    baseline_reports: dict[str, Any] = {}
    result_fitted: dict[str, Any] = {}
    if baselines:
        start = time.perf_counter()
        fitted, seconds = fit_baselines(
            network,
            human_train,
            loss=config.rt_loss,
            n_train=config.n_train,
            seed=config.seed,
            t0_max=t0_box,
            reuse=reuse,
            progress=progress,
        )
        for name, estimator in fitted.items():
            # The network's trials of the head's evaluation; the DDMs draw their own (seeded) trials.
            is_ddm = isinstance(estimator, DDMEstimator)
            eval_seed = config.seed + (0 if is_ddm else EVAL_SEED_OFFSET)
            baseline_table = estimator.simulate(test_conds, config.n_eval, seed=eval_seed)
            report = evaluate_method(baseline_table, human_test, targets_test, config)
            report["params"] = estimator.params()
            report["n_params"] = estimator.n_parameters
            if is_ddm:
                assert isinstance(estimator, DDMEstimator)
                result_fitted[name] = estimator
                if estimator.selection_ is not None:
                    report["selection"] = json_records(estimator.selection_)
                if estimator.notes_:
                    report["notes"] = list(estimator.notes_)
            report["fit_seconds"] = seconds[name]
            baseline_reports[name] = report
            tables[name] = baseline_table
        runtime["baselines"] = time.perf_counter() - start

    window = rt_window_s(config)
    beyond = {
        name: {str(c): int(n) for c, n in rt_beyond(table_, window).items()}
        for name, table_ in (("train", human_train), ("test", human_test))
    }
    stride = max(1, len(history) // 100)
    report = {
        "version": 1,
        "objective": config.objective,
        "model": config.model_name,
        "settings": {
            "torch_threads": torch.get_num_threads(),
            "fit": config.to_dict(),
            "task": task.to_dict(),
            "gru": gru.to_dict(),
            "t0_max_s": t0_box,
        },
        "data": {
            "conditions": test_conds,
            "train_conditions": conds,
            "unseen_test_conditions": split.unseen,
            "n_train": len(human_train),
            "n_test": len(human_test),
            "human_train_accuracy": dict(zip(map(str, conds), targets_train.accuracy.tolist(), strict=True)),
            "rt_window_s": window,
            "rt_beyond_window": beyond,
            "notes": data_notes(split, beyond, window),
        },
        "gru": {**gru_info, "final_step_accuracy": {str(c): a for c, a in gru_accuracy.items()}},
        "rtify": model_eval,
        "baselines": baseline_reports,
        "history": history[::stride] + ([history[-1]] if (len(history) - 1) % stride else []),
        "runtime_s": {**runtime, "total": float(sum(runtime.values()))},
    }
    return FitResult(report=report, tables=tables, head=head, fitted=result_fitted)


def data_notes(split: FitConditions, beyond: dict[str, dict[str, int]], window: float) -> list[str]:
    """Plain-language notes on what the scores of a fit mean for this data (written to fit.json)."""
    notes = []
    if split.unseen:
        notes.append(
            f"test coherence(s) {split.unseen} have no training trials: every method predicts them from "
            "the coherence alone (GRU stimulus strength; DDM drift = k·coherence), with the parameters "
            "fitted on the training coherences, so their scores measure generalisation."
        )
    counted = {
        "train": "they are missing mass of the fitting objective and censored trials of the DDM likelihood",
        "test": "they are missing mass of the test loss, and W1 and KS compare them with the model's RTs, "
        "so a model that never responds that late scores worse",
    }
    for name, counts in beyond.items():
        late = {c: n for c, n in counts.items() if n}
        if late:
            notes.append(
                f"{sum(late.values())} {name} trial(s) have RTs at or beyond the {window:g} s window (per "
                f"coherence: {late}), beyond what the fits see: {counted[name]} (none is dropped)."
            )
    return notes


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
