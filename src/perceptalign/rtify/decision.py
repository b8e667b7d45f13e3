"""Differentiable decision times: the first threshold crossing of an accumulator, with implicit gradients.

The crossing step τ = min{t : Φ_t > θ} is a step function of θ and of whatever produced Φ, so its true
gradient is zero almost everywhere. RTify treats the crossing as the level set Φ(τ) = θ and applies the
implicit-function theorem: dτ/dθ = 1/Φ̇(τ) and dτ/dΦ_τ = −1/Φ̇(τ), every other step getting zero.
This equals the derivative (w.r.t. θ exactly, w.r.t. Φ_τ to first order) of the linearly interpolated
crossing time t* = τ − 1 + (θ − Φ_{τ−1}) / (Φ_τ − Φ_{τ−1}).

Conventions, shared by the three variants:

* crossing is STRICT (Φ_t > θ), so a trajectory that touches the bound exactly has not decided yet;
* the slope is the backward difference Φ̇(τ) = Φ_τ − Φ_{τ−1}, with Φ_{−1} := 0 (the accumulator starts
  empty before the first step, so for Φ = cumsum(e) the slope at τ = 0 is e_0 exactly);
* a slope below ``min_slope`` (including Φ̇ ≤ 0, possible only at τ = 0 with a negative threshold) is
  replaced by ``min_slope`` and counted in ``Decision.n_clamped``: the published −1/(Φ̇ + 1e−6) instead
  explodes or flips sign;
* trials that never cross are censored: τ = T − 1, ``decided`` False and an exactly-zero gradient (the
  published code back-propagated through a crossing that never happened).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError

__all__ = [
    "Decision",
    "first_crossing",
    "first_crossing_multiclass",
    "first_crossing_two_bound",
]


@dataclass
class Decision:
    """Outcome of a bounded accumulation for a batch of trials.

    ``tau`` is the decision step (integer-valued floats, differentiable by the implicit rule); undecided
    trials hold T − 1 with zero gradient. ``choice`` is the class index (multi-class), 1 for the upper /
    0 for the lower bound (two-bound), 0 for a single accumulator.
    """

    tau: Tensor
    choice: Tensor
    decided: Tensor
    n_clamped: int
    n_ties: int = 0

    @property
    def no_decision_rate(self) -> float:
        """Fraction of trials whose accumulator never crossed the threshold within the T steps."""
        return 1.0 - int(self.decided.sum().item()) / self.decided.numel()


class _ImplicitCrossingTime(torch.autograd.Function):
    """τ as a function of (Φ_τ, θ): value fixed by the forward search, gradient by the implicit rule.

    Only the accumulator value AT the crossing enters, so the gradient w.r.t. the whole trajectory is
    −1/Φ̇ at position τ and zero elsewhere once autograd scatters it back through the gather.
    """

    @staticmethod
    def forward(ctx: Any, phi_at_tau: Tensor, threshold: Tensor, tau: Tensor, inv_slope: Tensor) -> Tensor:
        ctx.save_for_backward(inv_slope)
        return tau.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_tau: Tensor) -> tuple[Tensor, Tensor, None, None]:
        (inv_slope,) = ctx.saved_tensors
        g = grad_tau * inv_slope  # inv_slope is exactly 0 for undecided trials
        return -g, g, None, None


def _check_min_slope(min_slope: float) -> None:
    if not (isinstance(min_slope, (int, float)) and min_slope > 0 and min_slope < float("inf")):
        raise PerceptAlignError(f"min_slope must be a positive finite number, got {min_slope!r}.")


def _check_phi(phi: Any, ndim: int, layout: str) -> None:
    if not isinstance(phi, Tensor):
        raise PerceptAlignError(f"phi must be a torch.Tensor of shape {layout}, got {type(phi).__name__}.")
    if not phi.is_floating_point():
        raise PerceptAlignError(
            f"phi must be a floating-point tensor, got dtype {phi.dtype}; cast it with .float()."
        )
    if phi.dim() != ndim:
        raise PerceptAlignError(
            f"phi must have shape {layout}, got {tuple(phi.shape)}; "
            "add a batch dimension with phi.unsqueeze(0) for a single trial."
        )
    if phi.shape[0] == 0:
        raise PerceptAlignError("phi has an empty batch (B = 0); pass at least one trial.")
    if phi.shape[1] == 0:
        raise PerceptAlignError("phi has no time steps (T = 0); the accumulator needs at least one step.")
    if ndim == 3 and phi.shape[2] == 0:
        raise PerceptAlignError("phi has no class accumulators (C = 0); pass at least one class.")
    if not torch.isfinite(phi.detach()).all():
        raise PerceptAlignError(
            "phi contains NaN or infinite values; check the evidence function and its inputs."
        )


def _threshold_per_trial(threshold: Tensor | float, phi: Tensor) -> Tensor:
    """Broadcast a scalar or (B,) threshold to (B,), keeping its autograd graph."""
    batch = phi.shape[0]
    if isinstance(threshold, bool) or not isinstance(threshold, (Tensor, int, float)):
        raise PerceptAlignError(
            f"threshold must be a float, a scalar tensor or a (B,) tensor, got {type(threshold).__name__}."
        )
    if not isinstance(threshold, Tensor):
        threshold = torch.tensor(float(threshold), dtype=phi.dtype, device=phi.device)
    if not threshold.is_floating_point():
        threshold = threshold.to(phi.dtype)
    if threshold.dim() == 0:
        thr = threshold.expand(batch)
    elif threshold.dim() == 1 and threshold.shape[0] == batch:
        thr = threshold
    else:
        raise PerceptAlignError(
            f"threshold must be a scalar or have shape (B,) = ({batch},), got {tuple(threshold.shape)}."
        )
    if not torch.isfinite(thr.detach()).all():
        raise PerceptAlignError("threshold contains NaN or infinite values.")
    return thr.to(phi.dtype)


def _crossing_step(level: Tensor, thr: Tensor) -> tuple[Tensor, Tensor]:
    """First index with level > thr along dim 1 (any trailing dims kept), and whether one exists.

    ``level`` is (B, T, ...) and ``thr`` broadcasts against level[:, 0]. Undecided entries get T − 1.
    """
    steps = level.shape[1]
    shape = [1, steps] + [1] * (level.dim() - 2)
    t_index = torch.arange(steps, device=level.device).view(shape)
    thr_b = thr.view([-1, 1] + [1] * (level.dim() - 2))
    crossed = level > thr_b
    first = torch.where(crossed, t_index, steps).amin(dim=1)
    decided = first < steps
    return torch.where(decided, first, steps - 1), decided


def _implicit_tau(
    level: Tensor, thr: Tensor, tau_idx: Tensor, decided: Tensor, min_slope: float
) -> tuple[Tensor, int]:
    """Differentiable τ from a (B, T) level trajectory and the crossing indices; returns (τ, n_clamped)."""
    idx = tau_idx.unsqueeze(1)
    at_tau = level.gather(1, idx).squeeze(1)
    with torch.no_grad():
        before = level.gather(1, (idx - 1).clamp_min(0)).squeeze(1)
        before = torch.where(tau_idx == 0, torch.zeros_like(before), before)  # Φ_{−1} := 0
        slope = at_tau - before
        clamped = decided & (slope < min_slope)
        slope = slope.clamp_min(min_slope)
        inv_slope = torch.where(decided, 1.0 / slope, torch.zeros_like(slope))
    tau = _ImplicitCrossingTime.apply(at_tau, thr, tau_idx.to(level.dtype), inv_slope)
    return tau, int(clamped.sum().item())


def first_crossing(phi: Tensor, threshold: Tensor | float, *, min_slope: float = 1e-3) -> Decision:
    """Decision time of a single accumulator ``phi`` (B, T) against ``threshold`` (scalar or (B,)).

    ``choice`` is all zeros (there is one response). Gradients reach ``phi`` only at τ (−1/Φ̇) and
    ``threshold`` (+1/Φ̇); see the module docstring for the crossing, slope and censoring conventions.
    """
    _check_min_slope(min_slope)
    _check_phi(phi, 2, "(B, T)")
    thr = _threshold_per_trial(threshold, phi)
    tau_idx, decided = _crossing_step(phi.detach(), thr.detach())
    tau, n_clamped = _implicit_tau(phi, thr, tau_idx, decided, min_slope)
    choice = torch.zeros(phi.shape[0], dtype=torch.long, device=phi.device)
    return Decision(tau=tau, choice=choice, decided=decided, n_clamped=n_clamped, n_ties=0)


def first_crossing_two_bound(phi: Tensor, threshold: Tensor | float, *, min_slope: float = 1e-3) -> Decision:
    """Decision time of a signed accumulator ``phi`` (B, T) between the bounds ±θ (θ ≥ 0 required).

    The decision is the first t with |Φ_t| > θ; ``choice`` is 1 if Φ_τ > 0 (upper bound) else 0. For
    undecided trials the choice is the sign of the final Φ (1 if positive), which is the natural guess
    but should be excluded or treated as censored by the caller. The slope is that of |Φ| at τ.
    """
    _check_min_slope(min_slope)
    _check_phi(phi, 2, "(B, T)")
    thr = _threshold_per_trial(threshold, phi)
    if (thr.detach() < 0).any():
        raise PerceptAlignError(
            "two-bound threshold must be non-negative (the bounds are ±θ); parametrise it with softplus."
        )
    level = phi.abs()
    tau_idx, decided = _crossing_step(level.detach(), thr.detach())
    tau, n_clamped = _implicit_tau(level, thr, tau_idx, decided, min_slope)
    signed_at_tau = phi.detach().gather(1, tau_idx.unsqueeze(1)).squeeze(1)
    choice = (signed_at_tau > 0).long()
    return Decision(tau=tau, choice=choice, decided=decided, n_clamped=n_clamped, n_ties=0)


def first_crossing_multiclass(phi: Tensor, threshold: Tensor | float, *, min_slope: float = 1e-3) -> Decision:
    """Race between C accumulators ``phi`` (B, T, C): the class whose Φ crosses ``threshold`` first wins.

    τ = min_c τ_c and the gradient flows only through the winning class's crossing. Ties (two classes
    first crossing at the same step) go to the larger overshoot Φ_τ − θ, then to the lowest class index,
    and are counted in ``n_ties``. Undecided trials report the class with the largest final Φ as
    ``choice`` (decided False, τ = T − 1, zero gradient).
    """
    _check_min_slope(min_slope)
    _check_phi(phi, 3, "(B, T, C)")
    thr = _threshold_per_trial(threshold, phi)
    with torch.no_grad():
        values = phi.detach()
        tau_c, decided_c = _crossing_step(values, thr.detach())  # (B, C) each
        steps = values.shape[1]
        tau_c = torch.where(decided_c, tau_c, steps)
        tau_min = tau_c.amin(dim=1)
        decided = tau_min < steps
        tied = decided_c & (tau_c == tau_min.unsqueeze(1))
        at_min = values.gather(1, tau_min.clamp_max(steps - 1).view(-1, 1, 1).expand(-1, 1, values.shape[2]))
        overshoot = at_min.squeeze(1) - thr.detach().unsqueeze(1)
        # argmax returns the first maximal index, so equal overshoots resolve to the lowest class.
        winner = torch.where(tied, overshoot, torch.full_like(overshoot, -torch.inf)).argmax(dim=1)
        fallback = values[:, -1, :].argmax(dim=1)
        choice = torch.where(decided, winner, fallback)
        n_ties = int((decided & (tied.sum(dim=1) > 1)).sum().item())
        tau_idx = torch.where(decided, tau_min, steps - 1)
    level = phi.gather(2, choice.view(-1, 1, 1).expand(-1, phi.shape[1], 1)).squeeze(2)
    tau, n_clamped = _implicit_tau(level, thr, tau_idx, decided, min_slope)
    return Decision(tau=tau, choice=choice, decided=decided, n_clamped=n_clamped, n_ties=n_ties)
