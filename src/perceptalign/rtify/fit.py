"""RTify experiments on the abstract RDM task: fit a decision head to human RTs, train a self-penalised
ideal observer, fit the baselines on the same data, and evaluate everything on the human test split.

Choices and why:

* The GRU (see :mod:`perceptalign.rtify.tasks`) is trained once and FROZEN for every method, so that all
  methods share one sensory representation and differ only in how they turn it into a decision time.
* Choice rule of the human fit: the model's choice is a draw from the read-out probability p (the
  softmax of ``choice_logits``). The signed-RT histogram loss is then taken in EXPECTATION over that draw:
  each trial puts mass p at +RT and 1 − p at −RT (``weights`` of :func:`soft_histogram`). This makes the
  accuracy differentiable (a hard trial's sign is discrete and gets no gradient), and the quantity
  optimised is exactly the distribution the evaluated model produces. An explicit accuracy term, the
  Bernoulli KL(a_human ‖ mean p) per condition (``acc_weight``), makes the psychometric fit robust even
  when the distance (e.g. the published histogram MSE, whose values are ~1e−5) barely sees it.
* The self-penalised observer reports the argmax of its read-out (the accuracy-maximising choice that its
  cross-entropy trains). Its non-decision time cannot be learned without human data: it is FIXED at
  ``t0_fixed`` = 0.3 s (the order of the non-decision times of DDM fits to RDM data, e.g. Palmer, Huk &
  Shadlen 2005) and reported raw.
* Evidence: ``"increment"`` (default) uses e_t = w·(h_t − h_{t−1}) + b, so the accumulator equals the
  linear read-out w·h_t + b·(t + 1): the bound sits on the network's own decision variable (its log-odds
  at initialisation), plus a learnable urgency drift b. A GRU state already integrates the stream, so the
  published ``"linear"`` evidence e_t = w·h_t + b integrates it a second time; it is offered for comparison.
* Positive quantities (θ, t₀) are softplus-parametrised in :class:`RTifyHead`; the initial θ is chosen so
  that the median decision time matches the target (human median RT − t₀ for the human fit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError, read_json, write_json_atomic
from perceptalign.rtify.heads import RTifyHead, inverse_softplus
from perceptalign.rtify.losses import (
    histogram_mse,
    self_penalty_loss,
    soft_histogram,
    wasserstein1_from_histograms,
)
from perceptalign.rtify.metrics import QUANTILES, fit_quality, summarize_fit
from perceptalign.rtify.tasks import (
    GRUBackbone,
    GRUTrainConfig,
    RDMTaskConfig,
    load_or_train_gru,
    make_trials,
)
from perceptalign.rtify.trials import conditions as table_conditions
from perceptalign.rtify.trials import validate_trials

__all__ = [
    "FitConfig",
    "FitResult",
    "HumanTargets",
    "IncrementEvidence",
    "SimulatedTrials",
    "build_head",
    "compare_fits",
    "comparison_markdown",
    "expected_signed_histograms",
    "fit_head_to_human",
    "init_threshold",
    "objective_value",
    "predict_table",
    "run_fit",
    "simulate",
    "table_loss",
    "train_self_penalised",
    "weighted_quantiles",
    "write_fit_outputs",
]

Objective = Literal["human", "self-penalty"]
LossKind = Literal["mse", "wasserstein", "quantile"]
PenaltyKind = Literal["margin", "tau", "p_correct"]
EvidenceKind = Literal["increment", "linear"]
ChoiceRule = Literal["sample", "argmax"]
PhaseProgress = Callable[[str, int, int, str], None]
"""Progress callback: (phase name, steps done, total steps, short status text)."""

METHOD_LABELS = {
    "rtify-human": "RTify (human fit)",
    "rtify-self-penalty": "RTify self-penalised",
    "entropy": "entropy threshold",
    "evidential": "evidential",
    "ddm": "DDM",
}


@dataclass(frozen=True)
class FitConfig:
    """Settings of one RTify experiment (head fitting, evaluation and baselines)."""

    objective: Objective = "human"
    loss: LossKind = "wasserstein"
    penalty: PenaltyKind = "margin"
    lam: float = 0.0035
    acc_weight: float = 1.0
    evidence: EvidenceKind = "linear"
    readout: Literal["soft_mask", "gaussian"] = "gaussian"
    head_steps: int = 200
    lr: float = 0.03
    n_train: int = 250
    n_eval: int = 2000
    self_penalty_batch: int = 64
    t0_init: float = 0.25
    t0_fixed: float = 0.3
    sigma: float = 40.0
    n_bins: int = 500
    lo: float = -2.5
    hi: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "objective": ("human", "self-penalty"),
            "loss": ("mse", "wasserstein", "quantile"),
            "penalty": ("margin", "tau", "p_correct"),
            "evidence": ("increment", "linear"),
            "readout": ("soft_mask", "gaussian"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise PerceptAlignError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}."
                )
        for name in ("head_steps", "n_train", "n_eval", "self_penalty_batch", "n_bins"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise PerceptAlignError(f"{name} must be a positive integer, got {value!r}.")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise PerceptAlignError(f"lam (penalty weight) must be ≥ 0, got {self.lam!r}.")
        if not (math.isfinite(self.acc_weight) and self.acc_weight >= 0):
            raise PerceptAlignError(f"acc_weight must be ≥ 0, got {self.acc_weight!r}.")
        if not self.lr > 0:
            raise PerceptAlignError(f"lr must be positive, got {self.lr!r}.")
        if not (self.t0_init > 0 and self.t0_fixed > 0):
            raise PerceptAlignError("t0_init and t0_fixed (non-decision times, s) must be positive.")
        if not (self.sigma > 0 and self.lo < 0 < self.hi):
            raise PerceptAlignError("need sigma > 0 and a histogram window lo < 0 < hi (signed RTs).")

    @property
    def model_name(self) -> str:
        return "rtify-human" if self.objective == "human" else "rtify-self-penalty"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------
# Simulated trials through the frozen backbone.
# --------------------------------------------------------------------------------------------------------


@dataclass
class SimulatedTrials:
    """Frozen-backbone outputs for a set of trials: hidden (N, T, H), logits (N, T, 2), labels (N,),
    cond_idx (N,) indexing ``conditions`` (python floats, exactly as in trials tables)."""

    hidden: Tensor
    logits: Tensor
    labels: Tensor
    cond_idx: Tensor
    conditions: list[float]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def by_condition(self, array: np.ndarray) -> dict[float, np.ndarray]:
        """Split a per-trial array into {condition: rows}."""
        idx = self.cond_idx.numpy()
        return {c: array[idx == k] for k, c in enumerate(self.conditions)}


def simulate(
    backbone: GRUBackbone, task: RDMTaskConfig, n_per_condition: int, *, seed: int
) -> SimulatedTrials:
    """Run ``n_per_condition`` fresh trials per coherence through the frozen backbone."""
    trials = make_trials(task, n_per_condition, seed=seed)
    hidden, logits = backbone.encode(trials.x)
    cond_idx = torch.arange(len(task.coherences)).repeat_interleave(n_per_condition)
    return SimulatedTrials(hidden, logits, trials.labels, cond_idx, list(task.coherences))


# --------------------------------------------------------------------------------------------------------
# The head.
# --------------------------------------------------------------------------------------------------------


class IncrementEvidence(nn.Module):
    """e_t = w·(h_t − h_{t−1}) + b with h_{−1} = 0, so Σ_{k≤t} e_k = w·h_t + b·(t + 1).

    The accumulator then tracks a linear read-out of the recurrent state (which already integrates the
    stimulus) instead of integrating it a second time; b acts as an urgency signal.
    """

    def __init__(self, hidden_size: int, n_out: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, n_out)

    def forward(self, hidden: Tensor) -> Tensor:
        previous = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)
        return self.linear(hidden - previous)


def build_head(backbone: GRUBackbone, task: RDMTaskConfig, config: FitConfig) -> RTifyHead:
    """A two-bound RTify head on the backbone's states, started from the backbone's own read-out.

    Evidence weights start as the read-out's log-odds direction (class 1 − class 0) and the per-step
    classifier as the read-out itself: at initialisation the head bounds, and reads, the trained network's
    decision variable, so fitting starts from a sensible decision process instead of a random one.
    """
    hidden_size = backbone.hidden_size
    evidence: nn.Module = (
        IncrementEvidence(hidden_size) if config.evidence == "increment" else nn.Linear(hidden_size, 1)
    )
    head = RTifyHead(
        hidden_size,
        2,
        mode="two_bound",
        dt=task.dt,
        evidence=evidence,
        classifier="linear",
        readout=config.readout,
        t0_init=config.t0_init if config.objective == "human" else config.t0_fixed,
        learn_t0=config.objective == "human",
    )
    with torch.no_grad():
        weight, bias = backbone.readout.weight, backbone.readout.bias
        target = head.evidence.linear if isinstance(head.evidence, IncrementEvidence) else head.evidence
        target.weight.copy_((weight[1] - weight[0]).unsqueeze(0))
        if config.evidence == "increment":
            target.bias.zero_()  # no urgency at the start: the accumulator is the read-out's log-odds
        else:
            target.bias.copy_((bias[1] - bias[0]).unsqueeze(0))
        assert head.classifier is not None
        head.classifier.weight.copy_(weight)
        head.classifier.bias.copy_(bias)
    return head


@torch.no_grad()
def init_threshold(head: RTifyHead, hidden: Tensor, target_step: float) -> float:
    """Set θ so that the median first-crossing step of |Φ| is ``target_step``; returns θ.

    A trial has crossed by step t* iff max_{t≤t*} |Φ_t| > θ, so the median decision step is t* when θ is
    the median over trials of that running maximum.
    """
    if head.mode != "two_bound":
        raise PerceptAlignError("init_threshold is written for two-bound heads.")
    ev = head.evidence(hidden).squeeze(-1)
    level = torch.cumsum(ev, dim=1).abs()
    step = int(min(max(round(target_step), 0), hidden.shape[1] - 1))
    theta = float(level[:, : step + 1].amax(dim=1).median())
    theta = max(theta, 1e-3)
    head.raw_threshold.copy_(torch.tensor(inverse_softplus(theta)))
    return theta


def p_correct(choice_logits: Tensor, labels: Tensor) -> Tensor:
    """Read-out probability of the correct class, per trial."""
    return torch.softmax(choice_logits, dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)


# --------------------------------------------------------------------------------------------------------
# Human targets and the human-fit objective.
# --------------------------------------------------------------------------------------------------------


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
    def from_table(cls, human: pd.DataFrame, conds: Sequence[float], config: FitConfig) -> HumanTargets:
        human = validate_trials(human, required_conditions=list(conds), name="human trials")
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
    progress: PhaseProgress | None = None,
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


def train_self_penalised(
    head: RTifyHead,
    backbone: GRUBackbone,
    task: RDMTaskConfig,
    config: FitConfig,
    *,
    progress: PhaseProgress | None = None,
) -> list[dict[str, float]]:
    """Train the head (backbone frozen) with CE + λ·mean(penalty·τ), τ in steps, on fresh trials each step.

    No human data is used: θ starts where the median decision falls at half the stimulus, t₀ is fixed.
    """
    warm = simulate(backbone, task, config.self_penalty_batch, seed=config.seed + 7919)
    init_threshold(head, warm.hidden, task.n_steps / 2)
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=config.lr)
    history: list[dict[str, float]] = []
    for step in range(config.head_steps):
        sim = simulate(backbone, task, config.self_penalty_batch, seed=config.seed + 10_000 + step)
        out = head(sim.hidden)
        loss = self_penalty_loss(
            out.choice_logits, sim.labels, out.decision.tau, lam=config.lam, kind=config.penalty
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        accuracy = float((out.choice == sim.labels).float().mean())
        record = {
            "loss": float(loss.detach()),
            "mean_tau": float(out.decision.tau.detach().mean()),
            "accuracy": accuracy,
            "no_decision_rate": out.decision.no_decision_rate,
        }
        history.append(record)
        if progress is not None:
            progress("self-penalty", step + 1, config.head_steps, f"loss {record['loss']:.4g}")
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


# --------------------------------------------------------------------------------------------------------
# Baselines and evaluation.
# --------------------------------------------------------------------------------------------------------


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
    progress: PhaseProgress | None = None,
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


# --------------------------------------------------------------------------------------------------------
# The whole experiment.
# --------------------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """Everything one experiment produced: JSON report plus the trials tables for the figures."""

    report: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    head: RTifyHead | None = None


def _check_split_tables(human_train: pd.DataFrame, human_test: pd.DataFrame) -> list[float]:
    train = validate_trials(human_train, name="human training trials")
    test = validate_trials(human_test, name="human test trials")
    conds = table_conditions(train)
    if any(isinstance(c, str) for c in conds):
        raise PerceptAlignError(
            f"the RDM task needs numeric coherence conditions (in %), got {conds}; relabel the conditions."
        )
    if any(not 0 <= c <= 100 for c in conds):
        raise PerceptAlignError(f"coherence conditions must be percentages in [0, 100], got {conds}.")
    missing = [c for c in table_conditions(test) if c not in conds]
    if missing:
        raise PerceptAlignError(
            f"test conditions {missing} have no training trials; every test coherence needs training data."
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
    progress: PhaseProgress | None = None,
) -> FitResult:
    """Train (or load) the GRU, fit the RTify head (human or self-penalty objective), fit the baselines,
    and evaluate every method on ``human_test``. The task's coherences are the human conditions."""
    conds = _check_split_tables(human_train, human_test)
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

    targets_train = HumanTargets.from_table(human_train, conds, config)
    targets_test = HumanTargets.from_table(human_test, conds, config)
    head = build_head(backbone, task, config)
    start = time.perf_counter()
    if config.objective == "human":
        history = fit_head_to_human(head, sim_train, targets_train, config, progress=progress)
        choice_rule: ChoiceRule = "sample"
    else:
        history = train_self_penalised(head, backbone, task, config, progress=progress)
        choice_rule = "argmax"
    runtime["head"] = time.perf_counter() - start

    start = time.perf_counter()
    table = predict_table(head, sim_eval, choice_rule=choice_rule, seed=config.seed + 303)
    model_eval = evaluate_method(table, human_test, targets_test, config)
    with torch.no_grad():
        out = head(sim_eval.hidden)
        expected, _ = objective_value(
            out.rt_s,
            p_correct(out.choice_logits, sim_eval.labels),
            out.decision.decided,
            sim_eval.cond_idx,
            targets_test,
            config,
        )
        n_clamped = out.decision.n_clamped
    model_eval["test_objective_expected"] = float(expected)
    model_eval["params"] = {
        "threshold": float(head.threshold.detach()),
        "t0": float(head.t0.detach()),
        "t0_learned": config.objective == "human",
        "choice_rule": choice_rule,
        "n_clamped_slopes_eval": int(n_clamped),
    }
    runtime["evaluate"] = time.perf_counter() - start
    tables = {config.model_name: table}

    baseline_reports: dict[str, Any] = {}
    if baselines:
        start = time.perf_counter()
        fitted = run_baselines(
            sim_train,
            sim_eval,
            human_train,
            task.dt,
            seed=config.seed,
            objective="hist_mse" if config.loss == "mse" else "wasserstein",
            progress=progress,
        )
        for name, item in fitted.items():
            report = evaluate_method(item["table"], human_test, targets_test, config)
            report["params"] = item["params"]
            report["fit_seconds"] = item["seconds"]
            baseline_reports[name] = report
            tables[name] = item["table"]
        runtime["baselines"] = time.perf_counter() - start

    stride = max(1, len(history) // 100)
    report = {
        "version": 1,
        "objective": config.objective,
        "model": config.model_name,
        "settings": {"fit": config.to_dict(), "task": task.to_dict(), "gru": gru.to_dict()},
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
    return FitResult(report=report, tables=tables, head=head)


def write_fit_outputs(result: FitResult, human_test: pd.DataFrame, out: Path) -> list[Path]:
    """Write ``fit.json`` and the three comparison figures (human test vs every method) into ``out``."""
    from perceptalign.rtify.figures import (
        psychometric_chronometric,
        quantile_probability_plot,
        save_figure,
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


# --------------------------------------------------------------------------------------------------------
# Comparing fits.
# --------------------------------------------------------------------------------------------------------

_COMPARE_COLUMNS = ("accuracy", "median_rt_correct", "wasserstein")


def _load_fit(path: Path) -> dict[str, Any]:
    path = Path(path)
    file = path / "fit.json" if path.is_dir() else path
    if not file.is_file():
        raise PerceptAlignError(f"{path}: no fit.json found; pass a directory written by `rtify fit`.")
    report = read_json(file)
    if not isinstance(report, Mapping) or "rtify" not in report or "model" not in report:
        raise PerceptAlignError(f"{file} is not a fit.json written by `perceptalign rtify fit`.")
    return dict(report)


def compare_fits(paths: Sequence[Path]) -> tuple[dict[float, pd.DataFrame], pd.DataFrame, dict[str, Any]]:
    """Per-coherence tables (human + every method: accuracy, median correct RT, W1), a per-method summary
    (mean W1 and mean |Δaccuracy| over conditions), and the best method by mean W1.

    Methods come from each fit's RTify model and its baselines; a baseline present in several fits is
    taken from the first one that has it (they are fitted identically).
    """
    if not paths:
        raise PerceptAlignError("compare needs at least one fit directory.")
    methods: dict[str, list[dict[str, Any]]] = {}
    human: dict[float, dict[str, float]] = {}
    for path in paths:
        report = _load_fit(path)
        entries = [(report["model"], report["rtify"]), *report.get("baselines", {}).items()]
        for name, entry in entries:
            if name in methods:
                continue
            methods[name] = entry["per_condition"]
            for row in entry["per_condition"]:
                human.setdefault(
                    float(row["condition"]),
                    {
                        "accuracy": row["accuracy_human"],
                        "median_rt_correct": row["median_rt_correct_human"],
                        "wasserstein": 0.0,
                    },
                )
    tables: dict[float, pd.DataFrame] = {}
    for cond in sorted(human):
        rows = [{"method": "human", **human[cond]}]
        for name, per_condition in methods.items():
            match = [r for r in per_condition if float(r["condition"]) == cond]
            if not match:
                continue
            r = match[0]
            rows.append(
                {
                    "method": METHOD_LABELS.get(name, name),
                    "accuracy": r["accuracy_model"],
                    "median_rt_correct": r["median_rt_correct_model"],
                    "wasserstein": r["wasserstein"],
                }
            )
        tables[cond] = pd.DataFrame(rows).set_index("method")
    summary_rows = []
    for name, per_condition in methods.items():
        w1 = [r["wasserstein"] for r in per_condition if r["wasserstein"] is not None]
        dacc = [
            abs(r["accuracy_model"] - r["accuracy_human"])
            for r in per_condition
            if r["accuracy_model"] is not None
        ]
        summary_rows.append(
            {
                "method": METHOD_LABELS.get(name, name),
                "mean_wasserstein": float(np.mean(w1)) if w1 else math.nan,
                "mean_abs_accuracy_error": float(np.mean(dacc)) if dacc else math.nan,
            }
        )
    summary = pd.DataFrame(summary_rows).set_index("method").sort_values("mean_wasserstein")
    best: dict[str, Any] = {"method": summary.index[0], "mean_wasserstein": float(summary.iloc[0, 0])}
    if len(summary) > 1:
        runner = float(summary.iloc[1, 0])
        best.update(
            {
                "runner_up": summary.index[1],
                "runner_up_mean_wasserstein": runner,
                "margin": runner - best["mean_wasserstein"],
                "ratio": runner / best["mean_wasserstein"] if best["mean_wasserstein"] > 0 else math.inf,
            }
        )
    return tables, summary, best


def comparison_markdown(tables: Mapping[float, pd.DataFrame], summary: pd.DataFrame, best: Mapping) -> str:
    """The comparison as Markdown: one table per coherence, the summary table, one verdict line."""

    def fmt(value: Any) -> str:
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    lines = ["# RTify comparison on the human test split", ""]
    for cond, table in tables.items():
        lines += [
            f"## coherence {cond:g}%",
            "",
            "| method | accuracy | median correct RT (s) | W1 (s) |",
            "|---|---|---|---|",
        ]
        for method, row in table.iterrows():
            lines.append(
                f"| {method} | {fmt(row['accuracy'])} | {fmt(row['median_rt_correct'])} | "
                f"{fmt(row['wasserstein']) if method != 'human' else '—'} |"
            )
        lines.append("")
    lines += [
        "## summary over coherences",
        "",
        "| method | mean W1 (s) | mean abs accuracy error |",
        "|---|---|---|",
    ]
    for method, row in summary.iterrows():
        lines.append(f"| {method} | {fmt(row['mean_wasserstein'])} | {fmt(row['mean_abs_accuracy_error'])} |")
    lines += ["", verdict_line(best), ""]
    return "\n".join(lines)


def verdict_line(best: Mapping) -> str:
    """One sentence naming the best method (lowest mean W1) and its margin over the runner-up."""
    line = (
        f"Best fit (lowest mean Wasserstein-1 over coherences): {best['method']} "
        f"({best['mean_wasserstein']:.4f} s)"
    )
    if "runner_up" in best:
        line += (
            f", {best['margin']:.4f} s lower than {best['runner_up']} "
            f"({best['runner_up_mean_wasserstein']:.4f} s, ×{best['ratio']:.2f})."
        )
    else:
        line += "."
    return line
