"""Fitting the RTify head on the frozen GRU to human RTs with the shared objective (`rtify.objective`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.rdm.config import FitConfig
from perceptalign.rtify.experiments.rdm.decision_head import init_threshold
from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials
from perceptalign.rtify.experiments.rdm.stimulus_gain import StimulusGain
from perceptalign.rtify.heads import RTifyHead, RTifyOutput
from perceptalign.rtify.losses import soft_histogram
from perceptalign.rtify.objective import RTSample, RTTargets, weighted_quantiles
from perceptalign.rtify.trials import check_rt_window, rt_beyond, validate_trials

__all__ = [
    "WINDOW_TOLERANCE",
    "BeyondWindow",
    "HumanTargets",
    "check_human_window",
    "expected_signed_histograms",
    "fit_head_to_human",
    "head_sample",
    "predict_table",
    "rt_window_s",
    "table_loss",
    "weighted_quantiles",
]


#: What :meth:`HumanTargets.from_table` does with human RTs beyond the fit's window (:func:`rt_window_s`).
BeyondWindow = Literal["refuse", "count"]


def rt_window_s(config: FitConfig) -> float:
    """The end of the fit's RT window (s): the signed-RT histograms of the objective cover [−w, w] (and
    the DDMs are solved to 2.5 s), so an RT from w on is beyond what the fits see."""
    return float(min(config.hi, -config.lo))


class HumanTargets(RTTargets):
    """:class:`perceptalign.rtify.objective.RTTargets` built from a trials table with a fit's settings."""

    @classmethod
    def from_table(
        cls,
        human: pd.DataFrame,
        conds: Sequence[float],
        config: FitConfig,
        *,
        name: str = "human trials",
        beyond_window: BeyondWindow = "refuse",
    ) -> HumanTargets:
        """Targets of ``conds`` from a trials table.

        RTs at or beyond the fit's window (:func:`rt_window_s`) are refused (``"refuse"``, past a small
        tolerance, see :func:`check_human_window`) or counted (``"count"``): within the window such a
        trial has no response, exactly like an undecided model trial, so it becomes missing mass of its
        condition's histogram (normalised by ALL its trials, as the model's are), while the accuracy and
        RT-quantile targets keep it. Dropping it instead would let a model that never responds that late
        look perfect.
        """
        human = validate_trials(human, required_conditions=list(conds), name=name)
        if beyond_window == "refuse":
            check_human_window(human, config, name=name)
        elif beyond_window != "count":
            raise PerceptAlignError(f"`beyond_window` must be 'refuse' or 'count', got {beyond_window!r}.")
        base = config.rt_loss.targets(human, list(conds), name=name)
        if beyond_window == "count":
            base.hist = _histograms_with_missing_mass(human, list(conds), config, base.hist)
        return cls(**vars(base))


def _histograms_with_missing_mass(
    human: pd.DataFrame, conds: list[float], config: FitConfig, hist: Tensor
) -> Tensor:
    """Rows of conditions with RTs beyond the window rebuilt from the in-window trials and scaled by their
    share, so the late trials are missing mass; the other rows are returned unchanged (bit for bit)."""
    window = rt_window_s(config)
    late = rt_beyond(human, window)
    rows = list(hist)
    for k, cond in enumerate(conds):
        if int(late.get(cond, 0)) == 0:
            continue
        sub = human[human["condition"] == cond]
        inside = sub[sub["rt_s"] < window]
        if len(inside) == 0:  # no response within the window at all: an all-missing histogram
            rows[k] = torch.zeros_like(hist[k])
            continue
        rt = inside["rt_s"].to_numpy(dtype=float)
        signed = torch.tensor(np.where(inside["correct"].to_numpy(bool), rt, -rt), dtype=torch.float32)
        # built exactly like RTLoss.targets' histograms (float32 signed RTs, the loss's kernel and bins)
        shape = soft_histogram(
            signed, lo=config.lo, hi=config.hi, n_bins=config.n_bins, sigma=config.sigma
        ).to(hist.dtype)
        rows[k] = shape * (len(inside) / len(sub))
    return torch.stack(rows)


#: Human RTs up to this fraction beyond the fit's window are kept: the window's edge is soft (models add
#: a motor delay after their simulated time, histograms are Gaussian-smoothed). Longer RTs are refused.
WINDOW_TOLERANCE = 0.1


def check_human_window(human: pd.DataFrame, config: FitConfig, *, name: str = "human trials") -> None:
    """Refuse human RTs well beyond the fit's window (the signed-RT histogram range, which the models'
    simulated time does not exceed by more than a motor delay): such trials would be dropped from the
    histograms and could never be produced by the model, so the fit would be silently wrong."""
    human = validate_trials(human, name=name)
    window = min(config.hi, -config.lo)
    check_rt_window(
        human,
        round(window * (1 + WINDOW_TOLERANCE), 6),
        name=name,
        window=(
            f"the fit only sees reaction times up to about {window:g} s (signed-RT histograms on "
            f"[{config.lo:g}, {config.hi:g}] s, and the models simulate no longer)"
        ),
        fix="drop those trials from the data (or check that the RTs are in seconds)",
    )


def expected_signed_histograms(
    rt_s: Tensor,
    p: Tensor,
    decided: Tensor,
    cond_idx: Tensor,
    n_conditions: int,
    config: FitConfig,
) -> Tensor:
    """(K, n_bins) signed-RT histograms in expectation over the choice draw (mass p at +RT, 1 − p at −RT).

    Each condition's histogram is normalised by ALL its trials: undecided trials (and mass outside the
    window) are missing mass, as in :func:`perceptalign.rtify.metrics.fit_quality`.
    """
    return config.rt_loss.histograms(RTSample.from_decisions(rt_s, p, decided, cond_idx, n_conditions))


def head_sample(out: RTifyOutput, head: RTifyHead, sim: SimulatedTrials) -> RTSample:
    """The head's RTs as the objective's weighted sample.

    With the soft estimator, every (step, choice) cell of each trial's first-passage distribution, so the
    choice probabilities and the RT distribution both get gradients; with a pathwise estimator, the hard
    decisions (the choice has no gradient, as in the published method).
    """
    n_cond = len(sim.conditions)
    if out.passage is not None:
        return RTSample.from_passage(
            out.passage_rt_s(head.dt, head.t0), out.passage.mass, sim.labels, sim.cond_idx, n_cond
        )
    correct = (out.decision.choice == sim.labels).to(out.rt_s.dtype)
    return RTSample.from_decisions(out.rt_s, correct, out.decision.decided, sim.cond_idx, n_cond)


def fit_head_to_human(
    head: RTifyHead,
    sim: SimulatedTrials,
    targets: HumanTargets,
    config: FitConfig,
    *,
    progress: PhaseStatusCallback | None = None,
    gain: StimulusGain | None = None,
) -> list[dict[str, float]]:
    """Adam on the human-fit objective over a fixed pool of simulated trials (the head has ~100 weights).

    With ``gain`` (:class:`StimulusGain` on the same trials), the stream's gain is fitted with the head:
    each step re-runs the frozen network at the current gain (same noise), and the history records it.

    Returns the loss history (with each step's learning rate). θ starts where the median decision time
    matches the humans'. ``config.lr_schedule="cosine"`` anneals the learning rate from ``lr`` to 0 over
    the steps. The loss is deterministic (fixed trials and draws) and oscillates by up to ±0.1 late in a
    fit at the constant rate of 0.03, but annealing lowered the final loss in only 5 of 12 planted fits
    (some parameters, such as the urgency rate, are still moving at step 200), so it is off by default.
    """
    if sim.conditions != targets.conditions:
        raise PerceptAlignError(
            f"simulated conditions {sim.conditions} differ from the human conditions {targets.conditions}."
        )
    init_threshold(head, sim.hidden, (targets.median_rt - config.t0_init) / head.dt)
    fitted = [p for p in head.parameters() if p.requires_grad] + ([gain.log_scale] if gain else [])
    opt = torch.optim.Adam(fitted, lr=config.lr)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.head_steps)
        if config.lr_schedule == "cosine"
        else None
    )
    history: list[dict[str, float]] = []
    loss_fn = config.rt_loss
    for step in range(config.head_steps):
        out = head(sim.hidden if gain is None else gain())
        loss, parts = loss_fn(head_sample(out, head, sim), targets)
        opt.zero_grad()
        loss.backward()
        lr = float(opt.param_groups[0]["lr"])
        used = {"gain_scale": float(gain.scale.detach())} if gain is not None else {}  # this step's gain
        opt.step()
        if schedule is not None:
            schedule.step()
        record = {
            "loss": float(loss.detach()),
            "lr": lr,
            **used,
            **parts,
            "no_decision_rate": out.decision.no_decision_rate,
            "n_clamped": out.decision.n_clamped,
        }
        history.append(record)
        if progress is not None:
            progress("fit head", step + 1, config.head_steps, f"loss {record['loss']:.4g}")
    return history


@torch.no_grad()
def predict_table(head: RTifyHead, sim: SimulatedTrials) -> pd.DataFrame:
    """Model trials table (condition, rt_s, correct, decided): the hard crossing of every simulated trial.

    The choice is the accumulator's (the bound crossed / race winner) and the RT its continuous crossing
    time — what the soft first-passage distribution converges to as its temperature goes to 0.
    """
    out = head(sim.hidden)
    return pd.DataFrame(
        {
            "condition": np.asarray(sim.conditions, dtype=float)[sim.cond_idx.numpy()],
            "rt_s": out.rt_s.double().numpy(),
            "correct": (out.decision.choice == sim.labels).numpy().astype(bool),
            "decided": out.decision.decided.numpy().astype(bool),
        }
    )


def table_loss(model: pd.DataFrame, targets: RTTargets, config: FitConfig) -> float:
    """The fitting objective evaluated on a hard trials table (any method), against ``targets``."""
    with torch.no_grad():
        value, _ = config.rt_loss(RTSample.from_table(model, targets.conditions), targets)
    return float(value)
