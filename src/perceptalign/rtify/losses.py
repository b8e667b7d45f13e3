"""Losses that pull a model's decision times towards human behaviour (RTify §2).

(a) distributions: a differentiable soft histogram of signed RTs (+ correct, − error) compared with the
human one per condition by MSE or 1-D Wasserstein, or RT quantiles compared directly; (b) per-item
RTs: negative Pearson correlation; (c) no human data: cross-entropy plus a penalty on decision time.
All losses are plain differentiable tensor functions; bad input raises PerceptAlignError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from perceptalign.io import PerceptAlignError

if TYPE_CHECKING:
    from perceptalign.rtify.heads import RTifyOutput

__all__ = [
    "histogram_mse",
    "histograms_by_condition",
    "neg_pearson",
    "quantile_loss",
    "rt_histogram_loss",
    "sample_quantiles",
    "self_penalty_loss",
    "self_penalty_objective",
    "signed_rt",
    "soft_histogram",
    "wasserstein1_from_histograms",
]

HistMode = Literal["signed", "correct_only"]
Distance = Literal["mse", "wasserstein"]
DEFAULT_QS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)


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


def _condition_keys(human: Mapping[object, Tensor] | Tensor, name: str) -> list[tuple[object, Tensor]]:
    """(key, target) pairs from a {condition: tensor} mapping or a (K, ...) tensor indexed 0..K−1."""
    if isinstance(human, Tensor):
        if human.dim() != 2 or human.shape[0] == 0:
            raise PerceptAlignError(
                f"{name} as a tensor must be (K conditions, n), got {tuple(human.shape)}."
            )
        return [(k, human[k]) for k in range(human.shape[0])]
    if isinstance(human, Mapping):
        if not human:
            raise PerceptAlignError(f"{name} is empty; give at least one condition.")
        return list(human.items())
    raise PerceptAlignError(f"{name} must be a dict {{condition: tensor}} or a (K, n) tensor.")


def _select(model_condition: Tensor, key: object, n_trials: int) -> Tensor:
    if model_condition.shape[0] != n_trials:
        raise PerceptAlignError(
            f"model_condition has {model_condition.shape[0]} entries for {n_trials} model trials."
        )
    mask = model_condition == torch.as_tensor(key, dtype=model_condition.dtype, device=model_condition.device)
    if not mask.any():
        raise PerceptAlignError(
            f"no model trials for condition {key!r}; simulate every condition present in the human data "
            f"(model conditions: {sorted(set(model_condition.tolist()))[:10]})."
        )
    return mask


def histograms_by_condition(
    signed_rt: Tensor,
    condition: Tensor,
    *,
    mode: HistMode = "signed",
    lo: float = -2.5,
    hi: float = 2.5,
    n_bins: int = 500,
    sigma: float = 40.0,
) -> dict[float, Tensor]:
    """Per-condition soft histograms of (human) signed RTs, built exactly as the model's will be."""
    _as_1d(signed_rt, "signed_rt")
    _as_1d(condition, "condition")
    if mode not in ("signed", "correct_only"):
        raise PerceptAlignError(f"mode must be 'signed' or 'correct_only', got {mode!r}.")
    out: dict[float, Tensor] = {}
    for key in sorted(set(condition.tolist())):
        mask = _select(condition, key, signed_rt.shape[0])
        values = signed_rt[mask]
        if mode == "correct_only":
            values = values[values > 0]
            if values.numel() == 0:
                raise PerceptAlignError(
                    f"condition {key!r} has no correct trials for a correct-only histogram."
                )
        out[key] = soft_histogram(values, lo=lo, hi=hi, n_bins=n_bins, sigma=sigma)
    return out


def rt_histogram_loss(
    model_signed_rt: Tensor,
    model_condition: Tensor,
    human_hist_by_condition: Mapping[object, Tensor] | Tensor,
    *,
    mode: HistMode = "signed",
    distance: Distance = "mse",
    lo: float = -2.5,
    hi: float = 2.5,
    n_bins: int = 500,
    sigma: float = 40.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Σ over conditions of distance(model soft histogram, human histogram).

    ``human_hist_by_condition`` is {condition value: (n_bins,) histogram} (see
    :func:`histograms_by_condition`) or a (K, n_bins) tensor whose row k matches ``model_condition == k``.
    ``mode="correct_only"`` histograms only correct (positive) model trials; the human histograms must
    have been built the same way. ``weights`` (e.g. decided flags) down-weight model trials.
    """
    _as_1d(model_signed_rt, "model_signed_rt")
    _as_1d(model_condition, "model_condition")
    if mode not in ("signed", "correct_only"):
        raise PerceptAlignError(f"mode must be 'signed' or 'correct_only', got {mode!r}.")
    if distance not in ("mse", "wasserstein"):
        raise PerceptAlignError(f"distance must be 'mse' or 'wasserstein', got {distance!r}.")
    n = model_signed_rt.shape[0]
    w = torch.ones_like(model_signed_rt) if weights is None else weights.to(model_signed_rt.dtype)
    if w.shape != model_signed_rt.shape:
        raise PerceptAlignError(
            f"weights {tuple(w.shape)} must match model_signed_rt {tuple(model_signed_rt.shape)}."
        )
    if mode == "correct_only":
        w = w * (model_signed_rt.detach() > 0).to(w.dtype)
    total = model_signed_rt.new_zeros(())
    for key, human in _condition_keys(human_hist_by_condition, "human_hist_by_condition"):
        if not isinstance(human, Tensor) or human.dim() != 1 or human.shape[0] != n_bins:
            raise PerceptAlignError(
                f"human histogram for condition {key!r} must be a ({n_bins},) tensor matching n_bins."
            )
        mask = _select(model_condition, key, n)
        hist = soft_histogram(
            model_signed_rt[mask], lo=lo, hi=hi, n_bins=n_bins, sigma=sigma, weights=w[mask]
        )
        if distance == "mse":
            total = total + histogram_mse(hist, human)
        else:
            total = total + wasserstein1_from_histograms(hist, human, bin_width=(hi - lo) / n_bins)
    return total


def sample_quantiles(values: Tensor, qs: Sequence[float] = DEFAULT_QS) -> Tensor:
    """Linear-interpolation sample quantiles (numpy's default), differentiable through the sorted values."""
    _as_1d(values, "values")
    q = _check_qs(qs, values)
    ordered = torch.sort(values).values
    pos = q * (values.shape[0] - 1)
    below = pos.floor().long()
    above = pos.ceil().long()
    frac = (pos - below.to(pos.dtype)).to(values.dtype)
    return ordered[below] + frac * (ordered[above] - ordered[below])


def _check_qs(qs: Sequence[float], like: Tensor) -> Tensor:
    q = torch.as_tensor(list(qs), dtype=like.dtype if like.is_floating_point() else torch.float32)
    if q.dim() != 1 or q.numel() == 0 or (q < 0).any() or (q > 1).any():
        raise PerceptAlignError(f"qs must be a non-empty sequence of probabilities in [0, 1], got {qs!r}.")
    return q.to(like.device)


def quantile_loss(
    model_rt: Tensor,
    human_quantiles: Mapping[object, Tensor] | Tensor,
    qs: Sequence[float] = DEFAULT_QS,
    *,
    model_condition: Tensor | None = None,
) -> Tensor:
    """Σ over conditions of the mean squared difference (s²) between model and human RT quantiles.

    Without ``model_condition``, ``human_quantiles`` is one (len(qs),) tensor. With it, a {condition:
    quantiles} dict or a (K, len(qs)) tensor as in :func:`rt_histogram_loss`. Model quantiles are
    sorted-sample quantiles, whose gradient reaches the trials sitting at (or next to) each quantile.
    """
    _as_1d(model_rt, "model_rt")
    q = _check_qs(qs, model_rt)
    if model_condition is None:
        if not isinstance(human_quantiles, Tensor) or human_quantiles.shape != q.shape:
            raise PerceptAlignError(
                f"without model_condition, human_quantiles must be a ({q.numel()},) tensor matching qs."
            )
        pairs: list[tuple[object, Tensor]] = [(None, human_quantiles)]
    else:
        _as_1d(model_condition, "model_condition")
        pairs = _condition_keys(human_quantiles, "human_quantiles")
    total = model_rt.new_zeros(())
    for key, human in pairs:
        if not isinstance(human, Tensor) or human.shape != q.shape:
            raise PerceptAlignError(f"human quantiles for condition {key!r} must have shape ({q.numel()},).")
        values = model_rt if key is None else model_rt[_select(model_condition, key, model_rt.shape[0])]
        total = total + torch.mean((sample_quantiles(values, qs) - human.to(model_rt)) ** 2)
    return total


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
