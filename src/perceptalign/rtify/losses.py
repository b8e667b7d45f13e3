"""Losses that pull a model's decision times towards human behaviour (RTify §2).

(a) distributions: the pieces of the shared objective :class:`perceptalign.rtify.objective.RTLoss` (a
differentiable soft histogram of signed RTs, + correct, − error, and its MSE or 1-D Wasserstein distance
to the human one); (b) per-item RTs: negative Pearson correlation; (c) no human data: cross-entropy plus
a penalty on decision time. All are plain differentiable tensor functions; bad input raises
PerceptAlignError. Distribution fits go through ``RTLoss`` (per condition, with the accuracy term).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from perceptalign.io import PerceptAlignError

if TYPE_CHECKING:
    from perceptalign.rtify.heads import RTifyOutput

__all__ = [
    "histogram_mse",
    "neg_pearson",
    "self_penalty_loss",
    "self_penalty_objective",
    "signed_rt",
    "soft_histogram",
    "wasserstein1_from_histograms",
]


def _as_1d(x: Tensor, name: str, *, min_len: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        raise PerceptAlignError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 1:
        raise PerceptAlignError(f"{name} must be 1-D (one value per trial), got shape {tuple(x.shape)}.")
    if x.shape[0] < min_len:
        raise PerceptAlignError(f"{name} needs at least {min_len} value(s), got {x.shape[0]}.")
    if x.is_floating_point() and not torch.isfinite(x.detach()).all():
        raise PerceptAlignError(f"{name} contains NaN or infinite values.")
    return x


def _bin_edges(lo: float, hi: float, n_bins: int, like: Tensor) -> Tensor:
    if not (isinstance(n_bins, int) and n_bins > 0):
        raise PerceptAlignError(f"n_bins must be a positive integer, got {n_bins!r}.")
    if not lo < hi:
        raise PerceptAlignError(f"histogram range needs lo < hi, got lo={lo}, hi={hi}.")
    return torch.linspace(lo, hi, n_bins + 1, dtype=like.dtype, device=like.device)


def signed_rt(rt_s: Tensor, correct: Tensor) -> Tensor:
    """+RT for correct trials, −RT for errors: one axis that carries both speed and accuracy."""
    _as_1d(rt_s, "rt_s")
    _as_1d(correct, "correct")
    if correct.shape != rt_s.shape:
        raise PerceptAlignError(f"rt_s {tuple(rt_s.shape)} and correct {tuple(correct.shape)} must match.")
    return torch.where(correct.bool(), rt_s, -rt_s)


def soft_histogram(
    signed_rt: Tensor,
    *,
    lo: float = -2.5,
    hi: float = 2.5,
    n_bins: int = 500,
    sigma: float = 40.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Differentiable histogram over ``n_bins`` equal bins of [lo, hi], normalised to sum 1.

    Bin j gets Σ_i w_i [sigmoid(σ(r_i − c_j + Δ/2)) − sigmoid(σ(r_i − c_j − Δ/2))] (RTify §2), i.e. each
    sample is spread with a logistic kernel of scale 1/σ s; σ → ∞ recovers the hard histogram. ``weights``
    (non-negative, e.g. ``decision.decided.float()``) drop or down-weight trials; if every weight is 0 or
    all samples fall far outside the range, the result is all zeros rather than NaN.
    """
    _as_1d(signed_rt, "signed_rt")
    if not signed_rt.is_floating_point():
        signed_rt = signed_rt.float()
    if not sigma > 0:
        raise PerceptAlignError(f"sigma (kernel sharpness, 1/s) must be positive, got {sigma!r}.")
    edges = _bin_edges(lo, hi, n_bins, signed_rt)
    # sigmoid(σ(r − e_j)) − sigmoid(σ(r − e_{j+1})) is the formula above with e_j = c_j − Δ/2.
    cdf = torch.sigmoid(sigma * (signed_rt.unsqueeze(1) - edges.unsqueeze(0)))
    mass = cdf[:, :-1] - cdf[:, 1:]
    if weights is not None:
        _as_1d(weights, "weights")
        if weights.shape != signed_rt.shape:
            raise PerceptAlignError(
                f"weights {tuple(weights.shape)} must match signed_rt {tuple(signed_rt.shape)}."
            )
        if (weights.detach() < 0).any():
            raise PerceptAlignError("weights must be non-negative.")
        hist = weights.to(mass.dtype) @ mass
    else:
        hist = mass.sum(0)
    return hist / hist.sum().clamp_min(torch.finfo(hist.dtype).tiny)


def histogram_mse(model_hist: Tensor, human_hist: Tensor) -> Tensor:
    """Mean squared difference between two histograms over the same bins."""
    _check_pair(model_hist, human_hist)
    return torch.mean((model_hist - human_hist.to(model_hist)) ** 2)


def wasserstein1_from_histograms(model_hist: Tensor, human_hist: Tensor, *, bin_width: float) -> Tensor:
    """1-D earth mover's distance Σ_j |CDF_m(j) − CDF_h(j)|·Δ between normalised histograms (in seconds).

    Unlike MSE it sees HOW FAR mass must move, so a shifted model RT distribution gets a gradient even
    when it does not overlap the human one.
    """
    _check_pair(model_hist, human_hist)
    if not bin_width > 0:
        raise PerceptAlignError(f"bin_width must be positive, got {bin_width!r}.")
    diff = torch.cumsum(model_hist, 0) - torch.cumsum(human_hist.to(model_hist), 0)
    return diff.abs().sum() * bin_width


def _check_pair(model_hist: Tensor, human_hist: Tensor) -> None:
    _as_1d(model_hist, "model_hist")
    _as_1d(human_hist, "human_hist")
    if model_hist.shape != human_hist.shape:
        raise PerceptAlignError(
            f"histograms must share bins: model {tuple(model_hist.shape)} vs human {tuple(human_hist.shape)}."
        )


def neg_pearson(model_rt: Tensor, human_rt: Tensor) -> Tensor:
    """−Pearson r between per-item model RTs and human RTs (e.g. per-image median RT).

    A constant model RT gives r = 0 with a finite gradient (not NaN), so training can leave that state;
    constant human RTs are an input error (the correlation is undefined).
    """
    _as_1d(model_rt, "model_rt", min_len=2)
    _as_1d(human_rt, "human_rt", min_len=2)
    if model_rt.shape != human_rt.shape:
        raise PerceptAlignError(
            f"model_rt {tuple(model_rt.shape)} and human_rt {tuple(human_rt.shape)} must match."
        )
    y = human_rt.to(model_rt) - human_rt.to(model_rt).mean()
    if torch.all(y == 0):
        raise PerceptAlignError("human_rt is constant; Pearson correlation is undefined.")
    x = model_rt - model_rt.mean()
    denom = torch.sqrt((x * x).sum() * (y * y).sum() + torch.finfo(x.dtype).tiny)
    return -(x * y).sum() / denom


def self_penalty_loss(
    choice_logits: Tensor,
    labels: Tensor,
    tau: Tensor,
    *,
    lam: float,
    kind: Literal["margin", "tau", "p_correct"] = "margin",
) -> Tensor:
    """Self-penalised "ideal observer": CE(choice, label) + λ·mean(penalty·τ), no human data needed.

    ``kind="margin"`` (published; λ = 0.0035 for random dots, 5e−4 for objects, τ in steps): penalty =
    correct-class logit minus the best other logit. It is negative on errors, so this term REWARDS slow
    errors. ``"tau"``: penalty 1 (plain speed pressure). ``"p_correct"``: penalty = softmax prob of the
    label, so confident trials are pushed to be fast and uncertain ones may take time.
    """
    if not isinstance(choice_logits, Tensor) or choice_logits.dim() != 2 or choice_logits.shape[1] < 2:
        raise PerceptAlignError("choice_logits must be a (B, C ≥ 2) tensor.")
    batch = choice_logits.shape[0]
    _as_1d(labels, "labels")
    _as_1d(tau, "tau")
    if labels.shape[0] != batch or tau.shape[0] != batch:
        raise PerceptAlignError(
            f"choice_logits has {batch} trials but labels has {labels.shape[0]} and tau {tau.shape[0]}."
        )
    if labels.is_floating_point() or (labels < 0).any() or (labels >= choice_logits.shape[1]).any():
        raise PerceptAlignError(f"labels must be integer class indices in [0, {choice_logits.shape[1]}).")
    if kind not in ("margin", "tau", "p_correct"):
        raise PerceptAlignError(f"kind must be 'margin', 'tau' or 'p_correct', got {kind!r}.")
    if not lam >= 0:
        raise PerceptAlignError(f"lam must be ≥ 0, got {lam!r}.")
    ce = F.cross_entropy(choice_logits, labels)
    if kind == "tau":
        penalty = torch.ones_like(tau)
    elif kind == "p_correct":
        penalty = torch.softmax(choice_logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    else:
        correct = choice_logits.gather(1, labels.unsqueeze(1)).squeeze(1)
        others = choice_logits.masked_fill(F.one_hot(labels, choice_logits.shape[1]).bool(), -torch.inf)
        penalty = correct - others.amax(dim=1)
    return ce + lam * torch.mean(penalty * tau)


def self_penalty_objective(
    out: RTifyOutput, labels: Tensor, *, lam: float, kind: Literal["margin", "tau", "p_correct"] = "margin"
) -> Tensor:
    """The self-penalised objective on the choice the accumulator makes, for an RTify head's output.

    With the soft estimator, the cost of Bogacz et al. (2006): expected error rate + λ·mean(penalty·E[t*]),
    both from the first-passage distribution (mass still undecided at the end of the window guesses at
    chance, at time T). The error rate replaces cross-entropy because a hard choice's likelihood is ~0 on
    every error (the CE is unbounded there, and a few confident errors would dominate). Penalties: "tau" 1,
    "p_correct" P(correct), "margin" P(correct) − max P(other) (bounded analogues of the logit forms).
    Pathwise estimators keep the published form (:func:`self_penalty_loss` on the causal read-out).
    """
    if out.passage is None:
        return self_penalty_loss(out.choice_logits, labels, out.decision.tau, lam=lam, kind=kind)
    if kind not in ("margin", "tau", "p_correct"):
        raise PerceptAlignError(f"kind must be 'margin', 'tau' or 'p_correct', got {kind!r}.")
    if not lam >= 0:
        raise PerceptAlignError(f"lam must be ≥ 0, got {lam!r}.")
    probs = out.passage.log_choice_probability().exp()
    p_correct = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    if kind == "tau":
        penalty = torch.ones_like(p_correct)
    elif kind == "p_correct":
        penalty = p_correct
    else:
        others = probs.masked_fill(F.one_hot(labels, probs.shape[1]).bool(), -1.0)
        penalty = p_correct - others.amax(dim=1)
    return (1 - p_correct).mean() + lam * torch.mean(penalty * out.passage.censored_time())
