"""How fast an ideal observer of a stimulus stream can be: Wald's bound on the mean decision time.

A two-choice stimulus whose evidence is a diffusion with drift ±v (unit noise per √s) lets no decision
rule reach accuracy P with a shorter mean decision time than the sequential probability ratio test, which
for symmetric errors is a constant-bound DDM with bounds ±a, a = ln(P/(1 − P))/(2v):

    E[T] ≥ (a/v)·tanh(a·v)   (Wald & Wolfowitz 1948; for the DDM, accuracy 1/(1 + e^(−2av)) and this mean).

A model that reads a stream (the RTify head on a frozen network, an ideal Bayesian observer) is bound by it:
if behaviour has accuracy P at a mean RT below this time plus a plausible non-decision time, the stream
is too poor in information to reproduce it, whatever the read-out. :func:`information_bound` tabulates the
bound per condition of a trials table for a stream of a given information rate (drift per unit of the
condition, e.g. :attr:`perceptalign.rtify.experiments.rdm.RDMTaskConfig.information_rate`).
"""

from __future__ import annotations

import math

import pandas as pd

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.trials import validate_trials


def sprt_min_mean_decision_time(accuracy: float, drift_per_s: float) -> float:
    """Wald's lower bound on the mean decision time (s) of any rule reaching ``accuracy`` on a unit-noise
    diffusion with drift ``drift_per_s``; 0 at chance (accuracy ≤ 0.5), infinite at accuracy 1."""
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        raise PerceptAlignError(f"`accuracy` must lie in [0, 1], got {accuracy!r}.")
    if not (math.isfinite(drift_per_s) and drift_per_s > 0):
        raise PerceptAlignError(f"`drift_per_s` must be a positive number, got {drift_per_s!r}.")
    if accuracy <= 0.5:
        return 0.0
    if accuracy == 1.0:
        return math.inf
    bound = math.log(accuracy / (1.0 - accuracy)) / (2.0 * drift_per_s)
    return bound / drift_per_s * math.tanh(bound * drift_per_s)


def information_bound(trials: pd.DataFrame, drift_per_unit: float) -> pd.DataFrame:
    """Per condition of a trials table (condition, rt_s, correct): accuracy, mean RT, Wald's minimum mean
    decision time on a stream of drift ``drift_per_unit``·|condition| per second, and the largest mean
    non-decision time that leaves (mean RT − it) for deciding. ``max_mean_t0_s`` < 0 means no read-out of
    such a stream can reproduce that condition's accuracy at its RTs. Near chance the accuracy's sampling
    error dominates the bound (``accuracy_se`` is given beside it)."""
    if not (math.isfinite(drift_per_unit) and drift_per_unit > 0):
        raise PerceptAlignError(f"`drift_per_unit` must be a positive number, got {drift_per_unit!r}.")
    table = validate_trials(trials, name="trials")
    rows = []
    for condition, group in table.groupby("condition", sort=True):
        accuracy = float(group["correct"].mean())
        mean_rt = float(group["rt_s"].mean())
        drift = drift_per_unit * abs(float(condition))
        bound = sprt_min_mean_decision_time(accuracy, drift) if drift > 0 else math.nan
        rows.append(
            {
                "condition": float(condition),
                "n": len(group),
                "accuracy": accuracy,
                "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / len(group)),
                "mean_rt_s": mean_rt,
                "min_mean_decision_time_s": bound,
                "max_mean_t0_s": mean_rt - bound,
            }
        )
    return pd.DataFrame(rows)


__all__ = ["information_bound", "sprt_min_mean_decision_time"]
