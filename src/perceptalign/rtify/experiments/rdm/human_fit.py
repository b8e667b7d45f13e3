"""Human targets and the human-fit objective: expected signed-RT histograms, quantiles, accuracy KL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.rdm.config import ChoiceRule, FitConfig
from perceptalign.rtify.experiments.rdm.decision_head import init_threshold, p_correct
from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.losses import (
    histogram_mse,
    soft_histogram,
    wasserstein1_from_histograms,
)
from perceptalign.rtify.metrics import QUANTILES
from perceptalign.rtify.trials import check_rt_window, validate_trials


def _hazen(values: np.ndarray) -> np.ndarray:
    """Human RT quantiles defined exactly like :func:`weighted_quantiles` with equal weights."""
    return np.quantile(values, QUANTILES, method="hazen")


@dataclass
class HumanTargets:
    """Per-condition human statistics, rows in the order of ``conditions``."""

    conditions: list[float]
    hist: Tensor  # (K, n_bins) soft signed-RT histograms, built exactly like the model's
    accuracy: Tensor  # (K,)
    q_correct: Tensor  # (K, Q)
    q_error: Tensor  # (K, Q); NaN where a condition has no errors
    median_rt: float

    @classmethod
    def from_table(
        cls, human: pd.DataFrame, conds: Sequence[float], config: FitConfig, *, name: str = "human trials"
    ) -> HumanTargets:
        """Targets of ``conds`` from a trials table; RTs beyond the fit's window are refused, not dropped."""
        human = validate_trials(human, required_conditions=list(conds), name=name)
        check_human_window(human, config, name=name)
        hists, accs, qc, qe = [], [], [], []
        for cond in conds:
            sub = human[human["condition"] == cond]
            correct = sub["correct"].to_numpy(dtype=bool)
            rt = sub["rt_s"].to_numpy(dtype=float)
            signed = torch.tensor(np.where(correct, rt, -rt), dtype=torch.float32)
            hists.append(
                soft_histogram(signed, lo=config.lo, hi=config.hi, n_bins=config.n_bins, sigma=config.sigma)
            )
            accs.append(float(correct.mean()))
            qc.append(_hazen(rt[correct]) if correct.any() else np.full(len(QUANTILES), np.nan))
            qe.append(_hazen(rt[~correct]) if (~correct).any() else np.full(len(QUANTILES), np.nan))
        return cls(
            conditions=list(conds),
            hist=torch.stack(hists),
            accuracy=torch.tensor(accs, dtype=torch.float32),
            q_correct=torch.tensor(np.array(qc), dtype=torch.float32),
            q_error=torch.tensor(np.array(qe), dtype=torch.float32),
            median_rt=float(human["rt_s"].median()),
        )


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
    rows = []
    d = decided.to(rt_s.dtype)
    for k in range(n_conditions):
        mask = cond_idx == k
        if not mask.any():
            raise PerceptAlignError(f"no model trials for condition index {k}; simulate every condition.")
        r, pk, dk = rt_s[mask], p[mask], d[mask]
        values = torch.cat([r, -r])
        weights = torch.cat([pk * dk, (1 - pk) * dk])
        hist = soft_histogram(
            values, lo=config.lo, hi=config.hi, n_bins=config.n_bins, sigma=config.sigma, weights=weights
        )
        rows.append(hist * dk.mean())
    return torch.stack(rows)


def weighted_quantiles(values: Tensor, weights: Tensor, qs: Sequence[float]) -> Tensor:
    """Quantiles of a weighted sample, differentiable in the values and the weights.

    Sorted values sit at the midpoints of their weight intervals (the Hazen plotting positions, i.e.
    numpy's ``method="hazen"`` for equal weights) and quantiles interpolate linearly between them; samples
    of weight exactly 0 are dropped (otherwise they would occupy a plotting position).
    """
    if values.dim() != 1 or values.shape != weights.shape or values.numel() == 0:
        raise PerceptAlignError("values and weights must be matching non-empty 1-D tensors.")
    keep = weights.detach() > 0  # zero-weight samples (e.g. undecided trials) are not part of the sample
    if not keep.any():
        raise PerceptAlignError("all weights are zero: the weighted sample is empty.")
    values, weights = values[keep], weights[keep]
    order = torch.argsort(values.detach())
    v, w = values[order], weights[order]
    total = w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    pos = (torch.cumsum(w, 0) - 0.5 * w) / total
    q = torch.as_tensor(list(qs), dtype=v.dtype)
    hi = (
        torch.searchsorted(pos.detach(), q).clamp(1, len(v) - 1) if len(v) > 1 else torch.zeros_like(q).long()
    )
    if len(v) == 1:
        return v.expand(len(q))
    lo = hi - 1
    span = (pos[hi] - pos[lo]).clamp_min(1e-12)
    frac = ((q - pos[lo]) / span).clamp(0, 1)
    return v[lo] + frac * (v[hi] - v[lo])


def _bernoulli_kl(target: Tensor, p: Tensor) -> Tensor:
    """KL(Bernoulli(target) ‖ Bernoulli(p)), zero when p matches the human accuracy."""
    p = p.clamp(1e-6, 1 - 1e-6)
    t = target.clamp(1e-6, 1 - 1e-6)
    return t * torch.log(t / p) + (1 - t) * torch.log((1 - t) / (1 - p))


def objective_value(
    rt_s: Tensor,
    p: Tensor,
    decided: Tensor,
    cond_idx: Tensor,
    targets: HumanTargets,
    config: FitConfig,
) -> tuple[Tensor, dict[str, float]]:
    """The human-fit loss Σ_conditions distance + acc_weight·Σ_conditions KL(acc_human ‖ mean p).

    ``p`` is each trial's probability of a correct choice (the read-out probability for the RTify head;
    0/1 for a hard trials table). The distance is the histogram MSE (published), the histogram W1, or the
    MSE of correct- and error-RT quantiles (weighted by p and 1 − p).
    """
    n_cond = len(targets.conditions)
    d = decided.to(rt_s.dtype)
    if config.loss in ("mse", "wasserstein"):
        hist = expected_signed_histograms(rt_s, p, decided, cond_idx, n_cond, config)
        width = (config.hi - config.lo) / config.n_bins
        parts = [
            histogram_mse(hist[k], targets.hist[k])
            if config.loss == "mse"
            else wasserstein1_from_histograms(hist[k], targets.hist[k], bin_width=width)
            for k in range(n_cond)
        ]
        distance = torch.stack(parts).sum()
    else:
        terms = []
        for k in range(n_cond):
            mask = cond_idx == k
            r, pk, dk = rt_s[mask], p[mask], d[mask]
            for w, target in ((pk * dk, targets.q_correct[k]), ((1 - pk) * dk, targets.q_error[k])):
                if torch.isnan(target).any() or float(w.detach().sum()) <= 0:
                    continue
                terms.append(torch.mean((weighted_quantiles(r, w, QUANTILES) - target) ** 2))
        distance = torch.stack(terms).sum() if terms else rt_s.new_zeros(())
    mean_p = torch.stack(
        [
            (p[cond_idx == k] * d[cond_idx == k]).sum() / d[cond_idx == k].sum().clamp_min(1.0)
            for k in range(n_cond)
        ]
    )
    kl = _bernoulli_kl(targets.accuracy, mean_p).sum()
    total = distance + config.acc_weight * kl
    return total, {"distance": float(distance.detach()), "accuracy_kl": float(kl.detach())}


def fit_head_to_human(
    head: RTifyHead,
    sim: SimulatedTrials,
    targets: HumanTargets,
    config: FitConfig,
    *,
    progress: PhaseStatusCallback | None = None,
) -> list[dict[str, float]]:
    """Adam on the human-fit objective over a fixed pool of simulated trials (the head has ~100 weights).

    Returns the loss history. Undecided trials carry no gradient (censored); θ starts where the median
    decision time matches the humans'.
    """
    if sim.conditions != targets.conditions:
        raise PerceptAlignError(
            f"simulated conditions {sim.conditions} differ from the human conditions {targets.conditions}."
        )
    init_threshold(head, sim.hidden, (targets.median_rt - config.t0_init) / head.dt)
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=config.lr)
    history: list[dict[str, float]] = []
    for step in range(config.head_steps):
        out = head(sim.hidden)
        p = p_correct(out.choice_logits, sim.labels)
        loss, parts = objective_value(out.rt_s, p, out.decision.decided, sim.cond_idx, targets, config)
        opt.zero_grad()
        loss.backward()
        opt.step()
        record = {
            "loss": float(loss.detach()),
            **parts,
            "no_decision_rate": out.decision.no_decision_rate,
            "n_clamped": out.decision.n_clamped,
        }
        history.append(record)
        if progress is not None:
            progress("fit head", step + 1, config.head_steps, f"loss {record['loss']:.4g}")
    return history


@torch.no_grad()
def predict_table(
    head: RTifyHead, sim: SimulatedTrials, *, choice_rule: ChoiceRule, seed: int
) -> pd.DataFrame:
    """Model trials table (condition, rt_s, correct, decided) from the head on simulated trials.

    ``choice_rule="sample"`` draws each choice from the read-out probability (what the human fit
    optimises in expectation); ``"argmax"`` takes the most probable class.
    """
    if choice_rule not in ("sample", "argmax"):
        raise PerceptAlignError(f"choice_rule must be 'sample' or 'argmax', got {choice_rule!r}.")
    out = head(sim.hidden)
    p = p_correct(out.choice_logits, sim.labels)
    if choice_rule == "sample":
        gen = torch.Generator().manual_seed(seed)
        correct = torch.rand(p.shape, generator=gen) < p
    else:
        correct = out.choice == sim.labels
    return pd.DataFrame(
        {
            "condition": np.asarray(sim.conditions, dtype=float)[sim.cond_idx.numpy()],
            "rt_s": out.rt_s.numpy().astype(float),
            "correct": correct.numpy().astype(bool),
            "decided": out.decision.decided.numpy().astype(bool),
        }
    )


def table_loss(model: pd.DataFrame, targets: HumanTargets, config: FitConfig) -> float:
    """The fitting objective evaluated on a hard trials table (any method), against ``targets``."""
    model = validate_trials(model, required_conditions=targets.conditions, name="model trials")
    index = {c: k for k, c in enumerate(targets.conditions)}
    model = model[model["condition"].isin(list(index))]
    decided = model["decided"].to_numpy(bool) if "decided" in model.columns else np.ones(len(model), bool)
    with torch.no_grad():
        value, _ = objective_value(
            torch.tensor(model["rt_s"].to_numpy(float), dtype=torch.float32),
            torch.tensor(model["correct"].to_numpy(bool), dtype=torch.float32),
            torch.tensor(decided),
            torch.tensor([index[c] for c in model["condition"]], dtype=torch.long),
            targets,
            config,
        )
    return float(value)
