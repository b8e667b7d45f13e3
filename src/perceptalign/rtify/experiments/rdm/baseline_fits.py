"""The baselines fitted on the same trials (entropy threshold, evidential, DDM) and the evaluation."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.rtify.experiments.rdm.config import FitConfig
from perceptalign.rtify.experiments.rdm.human_fit import HumanTargets, table_loss
from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials
from perceptalign.rtify.metrics import fit_quality, summarize_fit


def _probs(sim: SimulatedTrials) -> dict[float, np.ndarray]:
    return sim.by_condition(torch.softmax(sim.logits, -1).double().numpy())


def run_baselines(
    sim_train: SimulatedTrials,
    sim_eval: SimulatedTrials,
    human_train: pd.DataFrame,
    dt: float,
    *,
    seed: int,
    objective: Literal["hist_mse", "wasserstein"] = "wasserstein",
    progress: PhaseStatusCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """Entropy threshold and evidential RT on the frozen GRU's outputs, and a PyDDM drift-diffusion model,
    each fitted on the human training trials; returns {name: {table, params, seconds}}.

    ``objective`` is the entropy threshold's grid-search distance; :func:`run_fit` passes the one matching
    the RTify loss (histogram MSE for ``mse``, binned W1 otherwise), so both are tuned for the same target.
    The evidential map is fitted by quantile matching and the DDM by maximum likelihood (their own fits).
    """
    from perceptalign.rtify.baselines import DDMBaseline, EntropyThresholdRT, EvidentialRT

    labels_train = sim_train.by_condition(sim_train.labels.numpy())
    labels_eval = sim_eval.by_condition(sim_eval.labels.numpy())
    out: dict[str, dict[str, Any]] = {}
    steps = ["entropy", "evidential", "ddm"]

    def tick(i: int, name: str) -> None:
        if progress is not None:
            progress("baselines", i, len(steps), name)

    tick(0, "entropy")
    start = time.perf_counter()
    # Same bound on the non-decision time as the DDM baseline gets (median human RT, at most 0.8 s): the
    # class default (fastest human RT) would forbid the t₀ that RTify and the DDM are free to fit.
    t0_max = min(0.8, float(human_train["rt_s"].median()))
    entropy = EntropyThresholdRT(dt, objective=objective, t0_max=t0_max, n_t0=81).fit(
        _probs(sim_train), human_train, labels_train
    )
    out["entropy"] = {
        "table": entropy.predict(_probs(sim_eval), labels_eval),
        "params": {"theta_H": entropy.theta_, "t0": entropy.t0_},
        "seconds": time.perf_counter() - start,
    }
    tick(1, "evidential")
    start = time.perf_counter()
    logits_train = sim_train.by_condition(sim_train.logits.double().numpy())
    evidential = EvidentialRT(dt=dt).fit(logits_train, human_train, labels_train)
    out["evidential"] = {
        "table": evidential.predict(sim_eval.by_condition(sim_eval.logits.double().numpy()), labels_eval),
        "params": {"scale": evidential.scale_, "t0": evidential.t0_},
        "seconds": time.perf_counter() - start,
    }
    tick(2, "ddm")
    start = time.perf_counter()
    ddm = DDMBaseline(seed=seed).fit(human_train)
    n_eval = len(sim_eval) // len(sim_eval.conditions)
    out["ddm"] = {
        "table": ddm.predict(sim_eval.conditions, n_eval, seed=seed),
        "params": ddm.params_,
        "seconds": time.perf_counter() - start,
    }
    tick(3, "done")
    return out


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN → None)."""
    rows = table.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def evaluate_method(
    table: pd.DataFrame, human_test: pd.DataFrame, targets_test: HumanTargets, config: FitConfig
) -> dict[str, Any]:
    """fit_quality per condition, its summary, the objective on the test split, and the no-decision rate."""
    quality = fit_quality(table, human_test)
    decided = table["decided"].to_numpy(bool) if "decided" in table.columns else np.ones(len(table), bool)
    return {
        "per_condition": _records(quality),
        "summary": summarize_fit(quality),
        "test_loss": table_loss(table, targets_test, config),
        "no_decision_rate": float(1.0 - decided.mean()),
    }
