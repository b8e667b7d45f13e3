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
from perceptalign.rtify.trials import censor_beyond, default_t0_max


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
    t0_max: float | None = None,
    reuse: dict[str, Any] | None = None,
    progress: PhaseStatusCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """Entropy threshold and evidential RT on the frozen GRU's outputs, and a PyDDM drift-diffusion model,
    each fitted on the human training trials; returns {name: {table, params, seconds}}.

    ``objective`` is the grid-search distance of the entropy and evidential thresholds (θ, t₀ in the same
    t₀ box); :func:`run_fit` passes the one matching the RTify loss (histogram MSE for ``mse``, binned W1
    otherwise), so all are tuned for the same target. The evidential read-out is first trained with the
    evidential loss on the training simulations' hidden states; the DDM is fitted by maximum likelihood.

    Every method is simulated at ``sim_eval``'s conditions, which may include coherences without human
    training trials: the thresholds are shared by all coherences and the DDM's drift is k·coherence.
    Human RTs beyond a method's window are counted, never dropped: the threshold objectives normalise by
    all trials (late ones are missing mass), and if a training RT reaches the DDM's ``max_time_s`` the
    DDM likelihood treats those trials as censored (P(no response within ``max_time_s``)) instead of
    conditioning on a response; its ``notes`` then say so and it predicts undecided trials too.
    """
    from perceptalign.rtify.baselines import EntropyThresholdRT, EvidentialRT
    from perceptalign.rtify.ddm import DDM_VARIANTS, fit_ddm_variants

    labels_train = sim_train.by_condition(sim_train.labels.numpy())
    labels_eval = sim_eval.by_condition(sim_eval.labels.numpy())
    out: dict[str, dict[str, Any]] = {}
    steps = ["entropy", "evidential", "ddm"]

    def tick(i: int, name: str) -> None:
        if progress is not None:
            progress("baselines", i, len(steps), name)

    tick(0, "entropy")
    start = time.perf_counter()
    if t0_max is None:  # the experiment passes its one shared box; this is the same rule
        t0_max = default_t0_max(human_train)
    entropy = EntropyThresholdRT(dt, objective=objective, t0_max=t0_max, n_t0=81).fit(
        _probs(sim_train), human_train, labels_train
    )
    out["entropy"] = {
        "table": entropy.predict(_probs(sim_eval), labels_eval),
        "params": {"theta_H": entropy.theta_, "t0": entropy.t0_},
        "n_params": 2,
        "seconds": time.perf_counter() - start,
    }
    tick(1, "evidential")
    start = time.perf_counter()
    evidential = EvidentialRT(dt, objective=objective, t0_max=t0_max, n_t0=81, seed=seed).fit(
        sim_train.by_condition(sim_train.hidden.numpy()), human_train, labels_train
    )
    # Per-condition entries get string keys, as everywhere else in the report (JSON keys are strings).
    readout = {
        k: {str(c): x for c, x in v.items()} if isinstance(v, dict) else v
        for k, v in evidential.training_summary_.items()
    }
    out["evidential"] = {
        "table": evidential.predict(sim_eval.by_condition(sim_eval.hidden.numpy()), labels_eval),
        "params": {
            "theta_u": evidential.theta_,
            "t0": evidential.t0_,
            "n_params": evidential.n_params,
            "readout": readout,
        },
        "n_params": evidential.n_params,
        "seconds": time.perf_counter() - start,
    }
    tick(2, "ddm")
    start = time.perf_counter()
    reuse = reuse or {}
    n_eval = len(sim_eval) // len(sim_eval.conditions)
    # PyDDM solves up to max_time_s; a human RT there or later is a trial without a response in that time.
    ddm_window = min(cfg.max_time_s for cfg in DDM_VARIANTS.values())
    ddm_train = censor_beyond(human_train, ddm_window)
    n_censored = int((~ddm_train["decided"]).sum())
    overrides: dict[str, Any] = {"seed": seed}
    if n_censored:
        overrides["condition_on_response"] = False
    if "ddm" in reuse and "ddm-simple" in reuse:
        strong, simple, selection = reuse["ddm"], reuse["ddm-simple"], reuse.get("ddm-selection")
    else:
        # Every variant on the training trials only, in the same t₀ box; BIC picks the strong DDM.
        chosen = fit_ddm_variants(ddm_train, t0_max=t0_max, overrides=overrides)
        strong, simple, selection = chosen.best, chosen.fits["simple"], chosen.table
    ddm_notes = (
        [
            f"{n_censored} training trial(s) with RTs at or beyond max_time_s = {ddm_window:g} s entered the "
            "likelihood as censored (no response within max_time_s), so the DDM also predicts undecided "
            "trials (see no_decision_rate)."
        ]
        if n_censored
        else []
    )
    seconds = time.perf_counter() - start
    for name, model in (("ddm", strong), ("ddm-simple", simple)):
        out[name] = {
            "table": model.simulate(sim_eval.conditions, n_eval, seed=seed),
            "params": dict(model.params_),
            "n_params": model.n_params,
            "estimator": model,
            "seconds": seconds if name == "ddm" else 0.0,
            "notes": ddm_notes,
        }
    out["ddm"]["params"]["variant"] = str(selection.loc[selection["selected"], "variant"].iloc[0])
    out["ddm"]["selection"] = json_records(selection)
    out["ddm"]["estimator_selection"] = selection
    tick(3, "done")
    return out


def json_records(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN → None); no table, no rows."""
    if table is None:
        return []
    rows = table.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def evaluate_method(
    table: pd.DataFrame, human_test: pd.DataFrame, targets_test: HumanTargets, config: FitConfig
) -> dict[str, Any]:
    """fit_quality per condition, its summary, the objective on the test split, and the no-decision rate."""
    quality = fit_quality(table, human_test)
    decided = table["decided"].to_numpy(bool) if "decided" in table.columns else np.ones(len(table), bool)
    return {
        "per_condition": json_records(quality),
        "summary": summarize_fit(quality),
        "test_loss": table_loss(table, targets_test, config),
        "no_decision_rate": float(1.0 - decided.mean()),
    }
