"""Reaction-time baselines that RTify is compared with, all on the same footing.

Each baseline is fitted on the human *training* trials and produces a model trials table (see
:mod:`perceptalign.rtify.trials`) for any condition, which :func:`perceptalign.rtify.metrics.fit_quality`
then compares with the human *test* trials:

- :class:`EntropyThresholdRT` — a network's softmax trajectory decides when its entropy first drops below
  a threshold θ_H (fitted to the human RT histograms, with a non-decision time t₀);
- :class:`EvidentialRT` — a per-step read-out trained with the evidential loss (Sensoy et al. 2018) decides
  when its uncertainty K/Σα first falls below θ (θ and t₀ fitted like the entropy threshold's);
- drift-diffusion models fitted by maximum likelihood with PyDDM, with optional collapsing bound, drift /
  start-point / non-decision-time variability and a fitted lapse, and a BIC/AIC choice among variants:
  :mod:`perceptalign.rtify.ddm` (:class:`DDM`, :func:`fit_ddm_variants`; :class:`DDMBaseline` is the
  simple variant behind the first baseline's interface), re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.ddm import DDM as DDM  # the drift-diffusion baseline, re-exported
from perceptalign.rtify.ddm import DDMBaseline as DDMBaseline
from perceptalign.rtify.ddm import DDMConfig as DDMConfig
from perceptalign.rtify.ddm import _condition_key
from perceptalign.rtify.ddm import fit_ddm_variants as fit_ddm_variants
from perceptalign.rtify.trials import validate_trials

Objective = Literal["hist_mse", "wasserstein"]


def _trials_table(cond: Any, rt_s: np.ndarray, correct: np.ndarray, decided: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "condition": np.full(len(rt_s), _condition_key(cond), dtype=object),
            "rt_s": np.asarray(rt_s, dtype=float),
            "correct": np.asarray(correct, dtype=bool),
            "decided": np.asarray(decided, dtype=bool),
        }
    )


def _concat_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    return validate_trials(pd.concat(tables, ignore_index=True), name="baseline trials")


# --------------------------------------------------------------------------------------------------------
# Shared fitting objective: binned signed-RT histograms, cheap enough to evaluate on a parameter grid.
# --------------------------------------------------------------------------------------------------------


class _BinnedObjective:
    """Distance between model signed RTs and one condition's human histogram on fixed bins.

    ``hist_mse`` is the published RTify measure (MSE of histograms normalised by trial counts);
    ``wasserstein`` is W1 between the binned distributions, Σ|F_model − F_human|·Δ over the window, which
    equals the exact W1 up to the bin width Δ for trials inside the window. Model trials that are
    undecided or outside [lo, hi] contribute no mass, so the objective penalises them.
    """

    def __init__(
        self, human: tuple[np.ndarray, int], objective: Objective, n_bins: int, lo: float, hi: float
    ):
        self.n_bins, self.lo, self.width = n_bins, lo, (hi - lo) / n_bins
        self.objective = objective
        self.human = self.hist(*human)
        self.human_cdf = np.cumsum(self.human)

    def hist(self, signed: np.ndarray, n_total: int) -> np.ndarray:
        idx = np.floor((signed - self.lo) / self.width).astype(np.int64)
        idx = idx[(idx >= 0) & (idx < self.n_bins)]
        return np.bincount(idx, minlength=self.n_bins) / max(n_total, 1)

    def __call__(self, signed: np.ndarray, n_total: int) -> float:
        model = self.hist(signed, n_total)
        if self.objective == "hist_mse":
            return float(np.mean((model - self.human) ** 2))
        return float(np.sum(np.abs(np.cumsum(model) - self.human_cdf)) * self.width)


def _check_objective(objective: str) -> None:
    if objective not in ("hist_mse", "wasserstein"):
        raise PerceptAlignError(f"objective must be 'hist_mse' or 'wasserstein', got {objective!r}.")


def _human_by_condition(human: pd.DataFrame, wanted: Sequence[Any]) -> dict[Any, tuple[np.ndarray, int]]:
    """(signed RTs of responded trials, number of trials) per wanted condition; error if one is absent.

    A reference table may itself carry a ``decided`` column (e.g. synthetic data from a model): its
    undecided trials count in the normaliser exactly as in :func:`perceptalign.rtify.metrics.fit_quality`.
    """
    human = validate_trials(human, required_conditions=list(wanted), name="human training trials")
    signed = np.where(human["correct"].to_numpy(), human["rt_s"].to_numpy(), -human["rt_s"].to_numpy())
    decided = (
        human["decided"].to_numpy(dtype=bool) if "decided" in human.columns else np.ones(len(human), bool)
    )
    cond = human["condition"].to_numpy()
    out = {c: (signed[(cond == c) & decided], int((cond == c).sum())) for c in wanted}
    empty = [c for c, (values, _) in out.items() if len(values) == 0]
    if empty:
        raise PerceptAlignError(
            f"human training trials: no responded (decided) trials in condition(s) {empty}."
        )
    return out


# --------------------------------------------------------------------------------------------------------
# Entropy threshold.
# --------------------------------------------------------------------------------------------------------


def softmax_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, with 0·log 0 = 0."""
    p = np.asarray(probs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)


def _check_probs(probs: Any, where: str) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 3 or min(p.shape) == 0:
        raise PerceptAlignError(
            f"{where}: expected class probabilities of shape (trials N, time steps T, classes C), got shape "
            f"{p.shape}."
        )
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
        raise PerceptAlignError(
            f"{where}: probabilities must be finite, non-negative and sum to 1 over classes (last axis); "
            "pass softmax(logits, axis=-1), not raw logits."
        )
    return p


def _check_labels(labels: Any, n: int, n_classes: int, where: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= n_classes).any():
        raise PerceptAlignError(
            f"{where}: labels must be {n} integers in [0, {n_classes}) (the correct class of each trial), "
            "got "
            f"shape {y.shape} dtype {y.dtype}."
        )
    return y.astype(np.int64)


def _paired_inputs(
    arrays_by_condition: Mapping[Any, Any], labels_by_condition: Mapping[Any, Any], check: Any, kind: str
) -> dict[float | str, tuple[np.ndarray, np.ndarray]]:
    """Validate {condition: array} and {condition: labels} mappings that must have the same conditions."""
    if not isinstance(arrays_by_condition, Mapping) or not arrays_by_condition:
        raise PerceptAlignError(f"{kind}: expected a non-empty mapping condition -> array (N, T, C).")
    arrays = {_condition_key(k): v for k, v in arrays_by_condition.items()}
    labels = {_condition_key(k): v for k, v in labels_by_condition.items()}
    if set(arrays) != set(labels):
        raise PerceptAlignError(
            f"{kind}: the label mapping must have the same conditions as the {kind} mapping; "
            f"{kind} has {sorted(arrays, key=str)}, labels have {sorted(labels, key=str)}."
        )
    out = {}
    for cond, array in arrays.items():
        a = check(array, f"{kind} for condition {cond!r}")
        out[cond] = (a, _check_labels(labels[cond], a.shape[0], a.shape[2], f"labels for condition {cond!r}"))
    return out


def entropy_crossing_steps(entropy: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """First step t with entropy[n, t] < θ for each trial and threshold, T where it never happens.

    Uses the running minimum m_t = min_{s≤t} H_s: the first t with H_t < θ is the number of steps whose
    running minimum is still ≥ θ, so all thresholds are answered by one sorted search per trial.
    """
    h = np.asarray(entropy, dtype=float)
    running_min = np.minimum.accumulate(h, axis=1)
    negated = -running_min  # non-decreasing along time
    thresholds = np.asarray(thresholds, dtype=float)
    steps = np.empty((h.shape[0], len(thresholds)), dtype=np.int64)
    for n in range(h.shape[0]):
        steps[n] = np.searchsorted(negated[n], -thresholds, side="right")
    return steps


class EntropyThresholdRT:
    """RT = t*·dt + t₀, t* the continuous time at which the softmax entropy falls below θ_H (the crossing
    interpolated within its step, entropy log C before any evidence, as for every method).

    Trials whose entropy never falls below θ_H get step T−1 and ``decided=False``; the choice is the
    argmax class at the decision step. ``fit`` chooses θ_H (and t₀ unless ``fit_t0=False``) minimising the
    binned distance (``objective``: histogram MSE, the RTify loss, or binned W1) summed over conditions
    between the model's and the humans' signed-RT distributions. Search: a coarse grid of θ_H at
    ``n_theta`` quantiles of the training entropies (the objective only changes where θ_H passes an
    observed entropy) × ``n_t0`` values of t₀ in [0, t0_max] (default: the fastest human RT, since no RT
    can be faster than t₀), then a refinement grid (``n_refine``² points spanning one coarse step either
    side) around each of the ``n_starts`` best coarse points; the best refined point wins.
    ``dt`` (seconds per time step) is given, not fitted: it is a property of the stimulus/network clock.
    """

    def __init__(
        self,
        dt: float,
        *,
        objective: Objective = "hist_mse",
        fit_t0: bool = True,
        t0: float = 0.0,
        t0_max: float | None = None,
        n_theta: int = 96,
        n_t0: int = 41,
        n_refine: int = 21,
        n_starts: int = 3,
        n_bins: int = 500,
        lo: float = -2.5,
        hi: float = 2.5,
    ):
        if not dt > 0:
            raise PerceptAlignError(f"dt (seconds per time step) must be > 0, got {dt}.")
        if t0 < 0:
            raise PerceptAlignError(f"t0 (non-decision time) must be >= 0, got {t0}.")
        _check_objective(objective)
        if min(n_theta, n_t0, n_refine) < 2:
            raise PerceptAlignError("n_theta, n_t0 and n_refine must be >= 2 grid points.")
        self.dt, self.objective, self.fit_t0, self.t0, self.t0_max = dt, objective, fit_t0, t0, t0_max
        self.n_theta, self.n_t0, self.n_refine = n_theta, n_t0, n_refine
        if n_starts < 1:
            raise PerceptAlignError(f"n_starts must be >= 1, got {n_starts}.")
        self.n_starts = n_starts
        self.n_bins, self.lo, self.hi = n_bins, lo, hi

    def _loss_grid(
        self,
        data: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, _BinnedObjective]],
        thetas: np.ndarray,
        t0s: np.ndarray,
    ) -> np.ndarray:
        """Summed objective for every (θ, t₀) pair: shape (len(thetas), len(t0s))."""
        loss = np.zeros((len(thetas), len(t0s)))
        for entropy, correct_at, _, initial, objective in data:
            t_star, steps, decided = _uncertainty_crossings(entropy, thetas, initial)
            correct = np.take_along_axis(correct_at, steps, axis=1)
            for g in range(len(thetas)):
                rt0 = t_star[decided[:, g], g] * self.dt
                sign = np.where(correct[decided[:, g], g], 1.0, -1.0)
                for j, t0 in enumerate(t0s):
                    loss[g, j] += objective(sign * (rt0 + t0), len(entropy))
        return loss

    def fit(
        self,
        probs_by_condition: Mapping[Any, Any],
        human_train: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
    ) -> EntropyThresholdRT:
        """Fit θ_H (and t₀) to the human training trials of the conditions in ``probs_by_condition``."""
        data, human = self._prepare(probs_by_condition, human_train, labels_by_condition)
        pooled = np.concatenate([entropy.ravel() for entropy, *_ in data])
        # Just above each quantile so that θ = q makes H = q count as "below"; plus one above the maximum.
        thetas = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, self.n_theta)))
        thetas = np.nextafter(thetas, np.inf)
        if self.fit_t0:
            fastest = min(float(np.abs(v).min()) for v, _ in human.values() if len(v))
            t0_max = fastest if self.t0_max is None else self.t0_max
            t0s = np.linspace(0.0, max(t0_max, 0.0), self.n_t0)
        else:
            t0s = np.array([self.t0])
        coarse = self._loss_grid(data, thetas, t0s)
        best = (math.inf, math.nan, math.nan)
        # Refine around the n_starts best coarse cells: the binned objective is rugged, and its best coarse
        # cell is not always the basin of the best fine point.
        for flat in np.argsort(coarse, axis=None)[: self.n_starts]:
            g, j = np.unravel_index(flat, coarse.shape)
            fine_thetas = np.unique(
                np.concatenate(
                    [
                        np.linspace(
                            thetas[max(g - 1, 0)], thetas[min(g + 1, len(thetas) - 1)], self.n_refine
                        ),
                        [thetas[g]],
                    ]
                )
            )
            if len(t0s) > 1:
                step = t0s[1] - t0s[0]
                fine_t0s = np.unique(
                    np.concatenate(
                        [np.clip(np.linspace(t0s[j] - step, t0s[j] + step, self.n_refine), 0, None), [t0s[j]]]
                    )
                )
            else:
                fine_t0s = t0s
            fine = self._loss_grid(data, fine_thetas, fine_t0s)
            fg, fj = np.unravel_index(np.argmin(fine), fine.shape)
            if fine[fg, fj] < best[0]:
                best = (float(fine[fg, fj]), float(fine_thetas[fg]), float(fine_t0s[fj]))
        self.loss_, self.theta_, self.t0_ = best
        self.coarse_loss_ = float(coarse.min())
        self.conditions_ = list(human)
        return self

    def _prepare(
        self,
        probs_by_condition: Mapping[Any, Any],
        human_train: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, float, _BinnedObjective]], dict]:
        inputs = _paired_inputs(probs_by_condition, labels_by_condition, _check_probs, "probabilities")
        human = _human_by_condition(human_train, list(inputs))
        data = []
        for cond, (probs, labels) in inputs.items():
            entropy = softmax_entropy(probs)
            correct_at = probs.argmax(-1) == labels[:, None]
            objective = _BinnedObjective(human[cond], self.objective, self.n_bins, self.lo, self.hi)
            # The entropy before any evidence is that of the uniform distribution, log C.
            data.append((entropy, correct_at, labels, math.log(probs.shape[2]), objective))
        return data, human

    def objective_value(
        self,
        probs_by_condition: Mapping[Any, Any],
        human: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
        *,
        theta: float | None = None,
        t0: float | None = None,
    ) -> float:
        """The fitting objective (summed over conditions) at given θ_H, t₀ (default: the fitted ones)."""
        theta = self._fitted("theta_") if theta is None else theta
        t0 = self._fitted("t0_") if t0 is None else t0
        data, _ = self._prepare(probs_by_condition, human, labels_by_condition)
        return float(self._loss_grid(data, np.array([theta]), np.array([t0]))[0, 0])

    def decision_steps(
        self, probs: Any, theta: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step, decided, choice) per trial for one array of probabilities (N, T, C)."""
        p = _check_probs(probs, "probabilities")
        theta = self._fitted("theta_") if theta is None else theta
        steps = entropy_crossing_steps(softmax_entropy(p), np.array([theta]))[:, 0]
        decided = steps < p.shape[1]
        steps = np.minimum(steps, p.shape[1] - 1)
        choice = p[np.arange(p.shape[0]), steps].argmax(-1)
        return steps, decided, choice

    def decisions(
        self, probs: Any, theta: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(t*, step, decided, choice) per trial: t* the continuous crossing time in steps
        (:func:`_uncertainty_crossings`, entropy log C before any evidence); choice at the decision step."""
        p = _check_probs(probs, "probabilities")
        theta = self._fitted("theta_") if theta is None else theta
        t_star, steps, decided = _uncertainty_crossings(
            softmax_entropy(p), np.array([theta]), math.log(p.shape[2])
        )
        steps, decided = steps[:, 0], decided[:, 0]
        choice = p[np.arange(p.shape[0]), steps].argmax(-1)
        return t_star[:, 0], steps, decided, choice

    def predict(
        self, probs_by_condition: Mapping[Any, Any], labels_by_condition: Mapping[Any, Any]
    ) -> pd.DataFrame:
        """Model trials table (with ``decided``) for every condition in ``probs_by_condition``."""
        theta, t0 = self._fitted("theta_"), self._fitted("t0_")
        inputs = _paired_inputs(probs_by_condition, labels_by_condition, _check_probs, "probabilities")
        tables = []
        for cond, (probs, labels) in inputs.items():
            t_star, _, decided, choice = self.decisions(probs, theta)
            tables.append(_trials_table(cond, t_star * self.dt + t0, choice == labels, decided))
        return _concat_tables(tables)

    def _fitted(self, attr: str) -> float:
        if not hasattr(self, attr):
            raise PerceptAlignError(f"{type(self).__name__} is not fitted yet: call fit() first.")
        return float(getattr(self, attr))


# --------------------------------------------------------------------------------------------------------
# Evidential read-out (Sensoy, Kaplan & Kandemir 2018), decided by its uncertainty.
# --------------------------------------------------------------------------------------------------------


def _check_alpha(alpha: Any, where: str) -> np.ndarray:
    a = np.asarray(alpha, dtype=float)
    if a.ndim != 3 or min(a.shape) == 0:
        raise PerceptAlignError(
            f"{where}: expected Dirichlet parameters α of shape (trials N, time steps T, classes K), got "
            f"shape {a.shape}."
        )
    if not np.isfinite(a).all() or (a < 1).any():
        raise PerceptAlignError(
            f"{where}: Dirichlet parameters must be finite and ≥ 1 (α = evidence + 1, evidence ≥ 0)."
        )
    return a


def evidential_uncertainty(alpha: Any) -> np.ndarray:
    """Uncertainty u_t = K / Σ_k α_k per trial and step (N, T).

    It is 1 with no evidence (α = 1) and falls towards 0 as evidence grows, whichever class it favours.
    """
    a = _check_alpha(alpha, "Dirichlet parameters")
    return a.shape[-1] / a.sum(axis=-1)


def _uncertainty_crossings(
    u: np.ndarray, thetas: np.ndarray, initial: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t*, s, decided), each (N, len(thetas)), for uncertainties u (N, T) against thresholds θ ≤ ``initial``.

    s is the first step with u_s < θ (T − 1 where there is none); t* (in steps, state s at time s + 1)
    interpolates linearly between u_{s−1} (u_{−1} := ``initial``, the uncertainty before any evidence: 1 for
    the evidential u = K/Σα, log C for the softmax entropy) and u_s:
    t* = s + (u_{s−1} − θ) / (u_{s−1} − u_s) ∈ [s, s + 1). Undecided trials get t* = T (end of stimulus).
    This is the continuous decision time of the RTify head (``decision.crossing_time``), so every method's
    RT is t*·dt + t₀ on the same clock.
    """
    n_steps = u.shape[1]
    thetas = np.minimum(np.asarray(thetas, dtype=float), initial)
    first = entropy_crossing_steps(u, thetas)  # generic: first t with u_t < θ, T if never
    decided = first < n_steps
    steps = np.minimum(first, n_steps - 1)
    at = np.take_along_axis(u, steps, axis=1)
    before = np.where(steps == 0, initial, np.take_along_axis(u, np.maximum(steps - 1, 0), axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip((before - thetas[None, :]) / (before - at), 0.0, 1.0)
    t_star = np.where(decided, steps + frac, float(n_steps))
    return t_star, steps, decided


def evidential_decisions(alpha: Any, theta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t*, s, decided, choice) per trial for Dirichlet parameters α (N, T, K) and a threshold 0 < θ ≤ 1.

    The decision is the first step s with u_s = K/Σα_s < θ, at the interpolated time t* (in steps; see
    :func:`_uncertainty_crossings`); the choice is argmax α at step s, because the response is committed
    when the decision is made (evidence arriving later cannot change it). Undecided trials get t* = T,
    s = T − 1, ``decided`` False and the choice at the last step.
    """
    a = _check_alpha(alpha, "Dirichlet parameters")
    if not (isinstance(theta, (int, float, np.floating)) and 0 < float(theta) <= 1):
        raise PerceptAlignError(f"theta (uncertainty threshold) must be a number in (0, 1], got {theta!r}.")
    t_star, steps, decided = _uncertainty_crossings(a.shape[-1] / a.sum(-1), np.array([float(theta)]))
    steps = steps[:, 0]
    choice = a[np.arange(a.shape[0]), steps].argmax(-1)
    return t_star[:, 0], steps, decided[:, 0], choice


def kl_annealing(epoch: int, annealing_epochs: int = 10) -> float:
    """λ_t = min(1, t / annealing_epochs) (Sensoy et al. 2018: 10 epochs), so the regulariser does not stop
    the read-out from collecting evidence before it has learned which evidence is correct."""
    if not (isinstance(epoch, (int, np.integer)) and epoch >= 0):
        raise PerceptAlignError(f"epoch must be an integer ≥ 0, got {epoch!r}.")
    if not (isinstance(annealing_epochs, (int, np.integer)) and annealing_epochs >= 1):
        raise PerceptAlignError(f"annealing_epochs must be an integer ≥ 1, got {annealing_epochs!r}.")
    return min(1.0, int(epoch) / int(annealing_epochs))


def dirichlet_kl_to_uniform(alpha: Tensor) -> Tensor:
    """KL(Dir(α) ‖ Dir(1)) over the last axis:
    ln Γ(Σα) − ln Γ(K) − Σ ln Γ(α_k) + Σ (α_k − 1)(ψ(α_k) − ψ(Σα))."""
    total = alpha.sum(-1)
    return (
        torch.lgamma(total)
        - math.lgamma(alpha.shape[-1])
        - torch.lgamma(alpha).sum(-1)
        + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(total).unsqueeze(-1))).sum(-1)
    )


def _evidential_mse_loss(alpha: Tensor, labels: Tensor, annealing: float) -> Tensor:
    y = F.one_hot(labels, alpha.shape[-1]).to(alpha.dtype)
    total = alpha.sum(-1, keepdim=True)
    p = alpha / total
    mse = ((y - p) ** 2 + p * (1 - p) / (total + 1)).sum(-1)
    misleading = y + (1 - y) * alpha  # α̃: the evidence for the correct class removed
    return mse + annealing * dirichlet_kl_to_uniform(misleading)


def evidential_mse_loss(alpha: Tensor, labels: Tensor, annealing: float) -> Tensor:
    """Per-sample evidential loss (Sensoy et al. 2018, eq. 5 + KL term), shape ``labels.shape``.

    Σ_j (y_j − p̂_j)² + p̂_j(1 − p̂_j)/(S + 1) with p̂ = α/S, S = Σα — the expected squared error of a
    class-probability vector drawn from Dir(α) — plus ``annealing`` · KL(Dir(α̃) ‖ Dir(1)) on the misleading
    evidence α̃ = y + (1 − y)⊙α. Without the KL term the variance part rewards growing S even on
    uninformative inputs, so uncertainty would vanish at chance level.
    """
    if not (isinstance(alpha, Tensor) and alpha.dim() >= 1 and alpha.is_floating_point()):
        raise PerceptAlignError("alpha must be a floating-point tensor (..., K) of Dirichlet parameters.")
    if not (torch.isfinite(alpha.detach()).all() and (alpha.detach() >= 1).all()):
        raise PerceptAlignError("alpha must be finite and ≥ 1 (α = evidence + 1, evidence ≥ 0).")
    k = alpha.shape[-1]
    if (
        not isinstance(labels, Tensor)
        or labels.shape != alpha.shape[:-1]
        or labels.is_floating_point()
        or labels.dtype == torch.bool
        or (labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k))
    ):
        raise PerceptAlignError(
            f"labels must be an integer tensor of shape {tuple(alpha.shape[:-1])} with values in [0, {k})."
        )
    if not (math.isfinite(annealing) and annealing >= 0):
        raise PerceptAlignError(f"annealing (KL weight λ_t) must be finite and ≥ 0, got {annealing!r}.")
    return _evidential_mse_loss(alpha, labels.long(), float(annealing))


class EvidentialReadout(nn.Module):
    """Per-step read-out α_t = softplus(W h_t + b) + 1 of hidden states (..., H) → (..., K).

    Softplus rather than the paper's ReLU: with only K linear units, a ReLU unit whose drive is negative
    on all inputs (as on the uninformative early steps) gets no gradient and never recovers; exp makes
    the evidence exponential in h, so the loss's gradients explode on confident trials. Softplus is
    smooth with a non-zero gradient everywhere and ≈ ReLU for large drives (evidence linear in W h).
    """

    def __init__(self, hidden_size: int, n_classes: int = 2, *, generator: torch.Generator | None = None):
        super().__init__()
        if not (hidden_size >= 1 and n_classes >= 2):
            raise PerceptAlignError(f"need hidden_size ≥ 1 and n_classes ≥ 2, got {hidden_size}, {n_classes}")
        self.linear = nn.Linear(hidden_size, n_classes)
        bound = 1.0 / math.sqrt(hidden_size)  # nn.Linear's own init range, drawn from ``generator``
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound, generator=generator)
            self.linear.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, hidden: Tensor) -> Tensor:
        return F.softplus(self.linear(hidden)) + 1.0


def _check_train_settings(**settings: Any) -> None:
    for name in ("epochs", "annealing_epochs", "batch_size"):
        value = settings[name]
        if not (isinstance(value, int) and value >= 1):
            raise PerceptAlignError(f"{name} must be a positive integer, got {value!r}.")
    if not (isinstance(settings["lr"], (int, float)) and settings["lr"] > 0):
        raise PerceptAlignError(f"lr must be positive, got {settings['lr']!r}.")


def train_evidential_readout(
    hidden: Any,
    labels: Any,
    *,
    n_classes: int = 2,
    epochs: int = 20,
    annealing_epochs: int = 10,
    lr: float = 0.02,
    batch_size: int = 4096,
    seed: int = 0,
) -> tuple[EvidentialReadout, float]:
    """Train an :class:`EvidentialReadout` with :func:`evidential_mse_loss` on hidden states (N, T, H).

    Every step is a sample with its trial's label, so the read-out learns how much evidence the state
    holds at each point of the trial (little early on, more as the network integrates). Adam on shuffled
    minibatches, λ_t = :func:`kl_annealing` (epoch); returns the read-out and its final mean loss on all
    samples (at the last epoch's λ). Seeded by ``seed`` alone (no global RNG is touched).
    """
    h = torch.as_tensor(np.asarray(hidden, dtype=np.float32))
    if h.dim() != 3 or min(h.shape) == 0 or not torch.isfinite(h).all():
        raise PerceptAlignError(
            f"hidden states must be finite, of shape (trials N, time steps T, H), got {tuple(h.shape)}."
        )
    y = torch.as_tensor(_check_labels(labels, h.shape[0], n_classes, "labels"))
    _check_train_settings(epochs=epochs, annealing_epochs=annealing_epochs, batch_size=batch_size, lr=lr)
    x = h.reshape(-1, h.shape[-1])
    y = y.repeat_interleave(h.shape[1])
    generator = torch.Generator().manual_seed(seed)
    readout = EvidentialReadout(h.shape[-1], n_classes, generator=generator)
    optimizer = torch.optim.Adam(readout.parameters(), lr=lr)
    annealing = 0.0
    for epoch in range(epochs):
        annealing = kl_annealing(epoch, annealing_epochs)
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = _evidential_mse_loss(readout(x[batch]), y[batch], annealing).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        final = float(_evidential_mse_loss(readout(x), y, annealing).mean())
    return readout.eval(), final


class _UncertaintyThreshold(EntropyThresholdRT):
    """The entropy baseline's (θ, t₀) grid search run on evidential uncertainty with interpolated times.

    Inputs are {condition: α (N, T, K)}; the entropy is replaced by u = K/Σα and the integer decision
    step by t* of :func:`_uncertainty_crossings`, so both baselines share the search, objective and t₀ box.
    """

    def _prepare(
        self,
        probs_by_condition: Mapping[Any, Any],
        human_train: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, int, _BinnedObjective]], dict]:
        inputs = _paired_inputs(probs_by_condition, labels_by_condition, _check_alpha, "Dirichlet parameters")
        human = _human_by_condition(human_train, list(inputs))
        data = []
        for cond, (alpha, labels) in inputs.items():
            u = alpha.shape[-1] / alpha.sum(-1)
            correct_at = alpha.argmax(-1) == labels[:, None]
            objective = _BinnedObjective(human[cond], self.objective, self.n_bins, self.lo, self.hi)
            data.append((u, correct_at, labels, alpha.shape[1], objective))
        return data, human

    def _loss_grid(
        self,
        data: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, _BinnedObjective]],
        thetas: np.ndarray,
        t0s: np.ndarray,
    ) -> np.ndarray:
        loss = np.zeros((len(thetas), len(t0s)))
        for u, correct_at, _, _, objective in data:
            t_star, steps, decided = _uncertainty_crossings(u, thetas)
            correct = np.take_along_axis(correct_at, steps, axis=1)
            for g in range(len(thetas)):
                rt0 = t_star[decided[:, g], g] * self.dt
                sign = np.where(correct[decided[:, g], g], 1.0, -1.0)
                for j, t0 in enumerate(t0s):
                    loss[g, j] += objective(sign * (rt0 + t0), len(u))
        return loss


def _check_hidden(hidden: Any, where: str) -> np.ndarray:
    h = np.asarray(hidden, dtype=float)
    if h.ndim != 3 or min(h.shape) == 0 or not np.isfinite(h).all():
        raise PerceptAlignError(
            f"{where}: expected finite hidden states of shape (trials N, time steps T, H), got {h.shape}."
        )
    return h


def _paired_hidden(
    hidden_by_condition: Mapping[Any, Any], labels_by_condition: Mapping[Any, Any], n_classes: int
) -> dict[float | str, tuple[np.ndarray, np.ndarray]]:
    """Validate {condition: hidden (N, T, H)}, {condition: labels (N,)}: same conditions, same T and H."""
    if not isinstance(hidden_by_condition, Mapping) or not hidden_by_condition:
        raise PerceptAlignError("hidden states: expected a non-empty mapping condition -> array (N, T, H).")
    if not isinstance(labels_by_condition, Mapping):
        raise PerceptAlignError("labels: expected a mapping condition -> labels (N,).")
    hidden = {_condition_key(k): v for k, v in hidden_by_condition.items()}
    labels = {_condition_key(k): v for k, v in labels_by_condition.items()}
    if set(hidden) != set(labels):
        raise PerceptAlignError(
            "the label mapping must have the same conditions as the hidden-state mapping; hidden states have "
            f"{sorted(hidden, key=str)}, labels have {sorted(labels, key=str)}."
        )
    out = {}
    for cond, array in hidden.items():
        h = _check_hidden(array, f"hidden states for condition {cond!r}")
        out[cond] = (h, _check_labels(labels[cond], h.shape[0], n_classes, f"labels for condition {cond!r}"))
    shapes = {h.shape[1:] for h, _ in out.values()}
    if len(shapes) > 1:
        raise PerceptAlignError(f"hidden states: all conditions need the same (T, H), got {sorted(shapes)}.")
    return out


class EvidentialRT:
    """Evidential deep learning as an RT model: a per-step read-out of the network's hidden states trained
    with the evidential loss (Sensoy et al. 2018), deciding when its uncertainty u_t = K/Σα_t falls below θ.

    Unlike u computed on a cross-entropy-trained network's logits (which only rescales the softmax), the
    read-out is trained to hold evidence only where the hidden state supports the label, so u is its own
    learned uncertainty and falls as the network accumulates evidence. ``fit`` (1) trains the read-out
    on the simulated training trials at every step (:func:`train_evidential_readout`; labels come from
    the simulation, not from humans), then (2) fits θ and t₀ to the human training trials with exactly
    the entropy-threshold baseline's objective, grid search and t₀ box (``t0_max``; default the fastest
    human RT). RT = t*·dt + t₀ with the interpolated crossing t* of :func:`evidential_decisions`; the
    choice is argmax α at the decision step. Trials that never cross within T steps are kept, with
    ``decided`` False and RT = T·dt + t₀ (the end of the stimulus).
    """

    def __init__(
        self,
        dt: float,
        *,
        objective: Objective = "hist_mse",
        fit_t0: bool = True,
        t0: float = 0.0,
        t0_max: float | None = None,
        n_theta: int = 96,
        n_t0: int = 41,
        n_refine: int = 21,
        n_starts: int = 3,
        n_bins: int = 500,
        lo: float = -2.5,
        hi: float = 2.5,
        epochs: int = 20,
        annealing_epochs: int = 10,
        lr: float = 0.02,
        batch_size: int = 4096,
        seed: int = 0,
        n_classes: int = 2,
    ):
        if not (isinstance(n_classes, int) and n_classes >= 2):
            raise PerceptAlignError(f"n_classes must be an integer ≥ 2, got {n_classes!r}.")
        self.n_classes = n_classes
        self._search = _UncertaintyThreshold(
            dt,
            objective=objective,
            fit_t0=fit_t0,
            t0=t0,
            t0_max=t0_max,
            n_theta=n_theta,
            n_t0=n_t0,
            n_refine=n_refine,
            n_starts=n_starts,
            n_bins=n_bins,
            lo=lo,
            hi=hi,
        )
        self.dt, self.fit_t0 = dt, fit_t0
        self.train_settings = {
            "epochs": epochs,
            "annealing_epochs": annealing_epochs,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
        }
        _check_train_settings(**self.train_settings)  # fail now rather than after a fit has started

    @property
    def n_params(self) -> int:
        """Parameters fitted to human data: θ and t₀ (θ only with ``fit_t0=False``); the read-out's
        weights are trained on the simulation's labels, never on human RTs."""
        return 2 if self.fit_t0 else 1

    def fit(
        self,
        hidden_by_condition: Mapping[Any, Any],
        human_train: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
    ) -> EvidentialRT:
        """Train the read-out on {condition: hidden (N, T, H)} and fit θ, t₀ to the human training trials."""
        inputs = _paired_hidden(hidden_by_condition, labels_by_condition, self.n_classes)
        _human_by_condition(human_train, list(inputs))  # fail on missing human conditions before training
        hidden = np.concatenate([h for h, _ in inputs.values()])
        labels = np.concatenate([y for _, y in inputs.values()])
        self.readout_, final_loss = train_evidential_readout(
            hidden, labels, n_classes=self.n_classes, **self.train_settings
        )
        alpha = {cond: self.alpha(h) for cond, (h, _) in inputs.items()}
        self.training_summary_ = {
            "evidence": "softplus",
            "n_readout_params": sum(p.numel() for p in self.readout_.parameters()),
            **self.train_settings,
            "final_loss": final_loss,
            "accuracy_last_step": {
                cond: float((alpha[cond][:, -1].argmax(-1) == y).mean()) for cond, (_, y) in inputs.items()
            },
            "mean_uncertainty_last_step": {
                cond: float(evidential_uncertainty(a)[:, -1].mean()) for cond, a in alpha.items()
            },
        }
        labels_by = {cond: y for cond, (_, y) in inputs.items()}
        self._search.fit(alpha, human_train, labels_by)
        self.theta_, self.t0_, self.loss_ = self._search.theta_, self._search.t0_, self._search.loss_
        self.conditions_ = list(inputs)
        return self

    def alpha(self, hidden: Any) -> np.ndarray:
        """Dirichlet parameters α (N, T, K) of the trained read-out for hidden states (N, T, H)."""
        if not hasattr(self, "readout_"):
            raise PerceptAlignError("EvidentialRT is not fitted yet: call fit() first.")
        h = _check_hidden(hidden, "hidden states")
        if h.shape[-1] != self.readout_.linear.in_features:
            raise PerceptAlignError(
                f"hidden size mismatch: the read-out was trained on H = {self.readout_.linear.in_features}, "
                f"got H = {h.shape[-1]}."
            )
        with torch.no_grad():
            return self.readout_(torch.as_tensor(h, dtype=torch.float32)).double().numpy()

    def predict(
        self, hidden_by_condition: Mapping[Any, Any], labels_by_condition: Mapping[Any, Any]
    ) -> pd.DataFrame:
        """Model trials table (condition, rt_s, correct, decided) for every condition given."""
        if not hasattr(self, "theta_"):
            raise PerceptAlignError("EvidentialRT is not fitted yet: call fit() first.")
        inputs = _paired_hidden(hidden_by_condition, labels_by_condition, self.n_classes)
        tables = []
        for cond, (hidden, labels) in inputs.items():
            t_star, _, decided, choice = evidential_decisions(self.alpha(hidden), min(self.theta_, 1.0))
            tables.append(_trials_table(cond, t_star * self.dt + self.t0_, choice == labels, decided))
        return _concat_tables(tables)
