"""Decision times of bounded accumulators: the hard first crossing, and a soft first-passage distribution.

Time convention, shared by every model in RTify (heads, Wong–Wang, baselines): the accumulator value at
trajectory index t is the state at time (t + 1)·dt, and Φ_{−1} (the state at time 0) is ``initial``
(0 for an accumulator that starts empty). The decision step s is the first index with Φ_s > θ (strict:
touching the bound is not deciding). The decision time is the linear interpolation of the crossing
between the two samples that bracket it, in steps,

    t* = s + f,   f = (θ − Φ_{s−1}) / Δ,   Δ = Φ_s − Φ_{s−1}   (so t* ∈ [s, s + 1]),

and the reaction time is RT = t*·dt + t₀ (:func:`rt_seconds`), continuous rather than on the step grid.

Two ways to get gradients:

* :func:`first_crossing` and friends return t* per trial with the exact derivative of the interpolation
  (``gradient="interpolated"``: ∂t*/∂θ = 1/Δ, ∂t*/∂Φ_s = −f/Δ, ∂t*/∂Φ_{s−1} = −(1 − f)/Δ), or the
  published implicit-function rule (``gradient="implicit"``: ∂/∂θ = 1/Δ, ∂/∂Φ_s = −1/Δ). Both are
  pathwise: they move each trial's crossing within its step, but miss the probability mass that jumps to
  a later step when θ passes a local maximum of a noisy trajectory. Under noise both are biased for
  distributional quantities (E[RT], P(correct), histograms) — see ``benchmarks/rtify_gradients.py``.
* :func:`first_passage` replaces the hard crossing by a hazard h_t = σ((Φ_t − θ)/T) per step, giving each
  trial a first-passage distribution over (step, choice) whose mass moves smoothly between steps as θ,
  the drift or any network weight changes. Every step's mass sits at that step's interpolated crossing
  time, so as the temperature T → 0 it converges to the hard crossing (the same t* and choice).
  What it smooths is the crossing of θ. A choice settled away from the bound — an attractor model such as
  Wong–Wang, where the noisy symmetry breaking picks the winner long before either population nears θ —
  still jumps between trials' winners as a parameter moves, and no pathwise derivative (soft or hard)
  sees that jump: there the Wong–Wang fit differentiates the dynamics by finite differences on common
  random numbers (``experiments.rdm.wongwang_fit``; measured in ``benchmarks/rtify_gradients.py``).

Slopes below ``min_slope`` (including Φ̇ ≤ 0, possible only at s = 0 with a threshold below ``initial``)
are replaced by ``min_slope`` and counted in ``Decision.n_clamped`` (the published −1/(Φ̇ + 1e−6)
explodes or flips sign). Trials that never cross are censored: t* = T (the end of the window), decided
False, and an exactly-zero gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from perceptalign.io import PerceptAlignError

__all__ = [
    "Decision",
    "FirstPassage",
    "Gradient",
    "first_crossing",
    "first_crossing_multiclass",
    "first_crossing_two_bound",
    "first_passage",
    "rt_seconds",
]

Gradient = Literal["interpolated", "implicit"]
PassageMode = Literal["race", "two_bound", "single"]


def rt_seconds(t_star: Tensor, dt: float | Tensor, t0: float | Tensor) -> Tensor:
    """Reaction time in seconds of a decision at ``t_star`` steps: t*·dt + t₀ (the one RT formula)."""
    return t_star * dt + t0


@dataclass
class Decision:
    """Outcome of a bounded accumulation for a batch of trials.

    ``tau`` is the continuous decision time t* in steps (∈ [step, step + 1], differentiable); undecided
    trials hold T (the end of the window) with zero gradient. ``step`` is the integer index of the first
    sample past the bound (T − 1 for undecided trials). ``choice`` is the class index (race), 1 for the
    upper / 0 for the lower bound (two-bound), 0 for a single accumulator.
    """

    tau: Tensor
    choice: Tensor
    decided: Tensor
    n_clamped: int
    n_ties: int = 0
    step: Tensor | None = None

    @property
    def no_decision_rate(self) -> float:
        """Fraction of trials whose accumulator never crossed the threshold within the T steps."""
        return 1.0 - int(self.decided.sum().item()) / self.decided.numel()


class _CrossingTime(torch.autograd.Function):
    """t* as a function of (Φ_s, Φ_{s−1}, θ): value from the forward search, gradient from given partials."""

    @staticmethod
    def forward(
        ctx: Any,
        at_step: Tensor,
        before_step: Tensor,
        threshold: Tensor,
        value: Tensor,
        partials: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(partials)
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        (partials,) = ctx.saved_tensors  # (3, B): ∂t*/∂Φ_s, ∂t*/∂Φ_{s−1}, ∂t*/∂θ; zero when undecided
        return grad * partials[0], grad * partials[1], grad * partials[2], None, None


def _check_min_slope(min_slope: float) -> None:
    if not (isinstance(min_slope, (int, float)) and min_slope > 0 and min_slope < float("inf")):
        raise PerceptAlignError(f"`min_slope` must be a positive finite number, got {min_slope!r}.")


def _check_gradient(gradient: str) -> None:
    if gradient not in ("interpolated", "implicit"):
        raise PerceptAlignError(f"`gradient` must be 'interpolated' or 'implicit', got {gradient!r}.")


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


def _check_initial(initial: float) -> float:
    if isinstance(initial, bool) or not isinstance(initial, (int, float)) or not math.isfinite(initial):
        raise PerceptAlignError(
            f"`initial` (the accumulator's value at time 0) must be a finite number, got {initial!r}."
        )
    return float(initial)


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


def crossing_time(
    level: Tensor,
    thr: Tensor,
    step: Tensor,
    decided: Tensor,
    *,
    min_slope: float,
    gradient: Gradient = "interpolated",
    initial: float = 0.0,
) -> tuple[Tensor, int]:
    """Differentiable t* from a (B, T) level trajectory and its crossing steps; returns (t*, n_clamped).

    Used by every model that finds crossings its own way (e.g. Wong–Wang's engine) so that the decision
    time and its gradient follow one convention (module docstring).
    """
    steps = level.shape[1]
    idx = step.unsqueeze(1)
    at_step = level.gather(1, idx).squeeze(1)
    gathered = level.gather(1, (idx - 1).clamp_min(0)).squeeze(1)
    first = step == 0
    before = torch.where(first, torch.full_like(gathered, initial), gathered)
    with torch.no_grad():
        slope = at_step - before
        clamped = decided & (slope < min_slope)
        slope = slope.clamp_min(min_slope)
        frac = ((thr.detach() - before) / slope).clamp(0.0, 1.0)
        value = torch.where(decided, step.to(level.dtype) + frac, torch.full_like(frac, float(steps)))
        inv = torch.where(decided, 1.0 / slope, torch.zeros_like(slope))
        if gradient == "interpolated":
            d_at, d_before = -frac * inv, -(1.0 - frac) * inv
        else:  # published implicit rule: the whole gradient goes to Φ at the crossing sample
            d_at, d_before = -inv, torch.zeros_like(inv)
        d_before = torch.where(first, torch.zeros_like(d_before), d_before)  # Φ_{−1} is a constant
        partials = torch.stack([d_at, d_before, inv])
    t_star = _CrossingTime.apply(at_step, gathered, thr, value, partials)
    return t_star, int(clamped.sum().item())


def first_crossing(
    phi: Tensor,
    threshold: Tensor | float,
    *,
    min_slope: float = 1e-3,
    gradient: Gradient = "interpolated",
    initial: float = 0.0,
) -> Decision:
    """Decision time of a single accumulator ``phi`` (B, T) against ``threshold`` (scalar or (B,)).

    ``choice`` is all zeros (there is one response). See the module docstring for the time convention,
    the two gradient rules, slope clamping and censoring.
    """
    _check_min_slope(min_slope)
    _check_gradient(gradient)
    _check_phi(phi, 2, "(B, T)")
    initial = _check_initial(initial)
    thr = _threshold_per_trial(threshold, phi)
    step, decided = _crossing_step(phi.detach(), thr.detach())
    tau, n_clamped = crossing_time(
        phi, thr, step, decided, min_slope=min_slope, gradient=gradient, initial=initial
    )
    choice = torch.zeros(phi.shape[0], dtype=torch.long, device=phi.device)
    return Decision(tau=tau, choice=choice, decided=decided, n_clamped=n_clamped, n_ties=0, step=step)


def first_crossing_two_bound(
    phi: Tensor,
    threshold: Tensor | float,
    *,
    min_slope: float = 1e-3,
    gradient: Gradient = "interpolated",
) -> Decision:
    """Decision time of a signed accumulator ``phi`` (B, T), starting at 0, between the bounds ±θ (θ ≥ 0).

    The decision is the first t with |Φ_t| > θ; ``choice`` is 1 if Φ at that step is positive (upper
    bound) else 0 — the bound that was crossed. For undecided trials the choice is the sign of the final
    Φ, which callers should treat as censored. The crossing time interpolates |Φ|.
    """
    _check_min_slope(min_slope)
    _check_gradient(gradient)
    _check_phi(phi, 2, "(B, T)")
    thr = _threshold_per_trial(threshold, phi)
    if (thr.detach() < 0).any():
        raise PerceptAlignError(
            "two-bound threshold must be non-negative (the bounds are ±θ); parametrise it with softplus."
        )
    level = phi.abs()
    step, decided = _crossing_step(level.detach(), thr.detach())
    tau, n_clamped = crossing_time(level, thr, step, decided, min_slope=min_slope, gradient=gradient)
    signed_at_step = phi.detach().gather(1, step.unsqueeze(1)).squeeze(1)
    choice = (signed_at_step > 0).long()
    return Decision(tau=tau, choice=choice, decided=decided, n_clamped=n_clamped, n_ties=0, step=step)


def first_crossing_multiclass(
    phi: Tensor,
    threshold: Tensor | float,
    *,
    min_slope: float = 1e-3,
    gradient: Gradient = "interpolated",
    initial: float = 0.0,
) -> Decision:
    """Race between C accumulators ``phi`` (B, T, C): the class whose Φ crosses ``threshold`` first wins.

    The decision step is min over classes, and t* interpolates the winner's trajectory. Ties (two classes
    first crossing at the same step) go to the larger overshoot Φ_s − θ, then to the lowest class index,
    and are counted in ``n_ties``. Undecided trials report the class with the largest final Φ as
    ``choice`` (decided False, t* = T, zero gradient).
    """
    _check_min_slope(min_slope)
    _check_gradient(gradient)
    _check_phi(phi, 3, "(B, T, C)")
    initial = _check_initial(initial)
    thr = _threshold_per_trial(threshold, phi)
    with torch.no_grad():
        values = phi.detach()
        step_c, decided_c = _crossing_step(values, thr.detach())  # (B, C) each
        steps = values.shape[1]
        step_c = torch.where(decided_c, step_c, steps)
        step_min = step_c.amin(dim=1)
        decided = step_min < steps
        tied = decided_c & (step_c == step_min.unsqueeze(1))
        at_min = values.gather(1, step_min.clamp_max(steps - 1).view(-1, 1, 1).expand(-1, 1, values.shape[2]))
        overshoot = at_min.squeeze(1) - thr.detach().unsqueeze(1)
        # argmax returns the first maximal index, so equal overshoots resolve to the lowest class.
        winner = torch.where(tied, overshoot, torch.full_like(overshoot, -torch.inf)).argmax(dim=1)
        fallback = values[:, -1, :].argmax(dim=1)
        choice = torch.where(decided, winner, fallback)
        n_ties = int((decided & (tied.sum(dim=1) > 1)).sum().item())
        step = torch.where(decided, step_min, steps - 1)
    level = phi.gather(2, choice.view(-1, 1, 1).expand(-1, phi.shape[1], 1)).squeeze(2)
    tau, n_clamped = crossing_time(
        level, thr, step, decided, min_slope=min_slope, gradient=gradient, initial=initial
    )
    return Decision(tau=tau, choice=choice, decided=decided, n_clamped=n_clamped, n_ties=n_ties, step=step)


# ----------------------------------------------------------------------------- soft first passage
@dataclass
class FirstPassage:
    """Each trial's distribution over (decision step, choice), smooth in θ and in whatever made Φ.

    ``mass`` (B, T, C) is the probability of deciding at step t for choice c; ``time`` (B, T, C) is the
    continuous decision time (in steps, ∈ [t, t + 1]) of that decision. Mass that never decides within
    the window is ``1 − decided_mass``: it is censored, exactly like an undecided hard trial.
    """

    mass: Tensor
    time: Tensor
    temperature: Tensor

    @property
    def decided_mass(self) -> Tensor:
        """(B,) probability of deciding within the window."""
        return self.mass.sum(dim=(1, 2))

    @property
    def choice_probability(self) -> Tensor:
        """(B, C) probability of each choice (decided trials only; rows sum to ``decided_mass``)."""
        return self.mass.sum(dim=1)

    def expected_time(self) -> Tensor:
        """(B,) E[t* | decided] in steps."""
        total = self.decided_mass.clamp_min(torch.finfo(self.mass.dtype).tiny)
        return (self.mass * self.time).sum(dim=(1, 2)) / total

    def censored_time(self) -> Tensor:
        """(B,) E[min(t*, T)] in steps: undecided mass counts at the end of the window, like a hard trial."""
        steps = self.mass.shape[1]
        return (self.mass * self.time).sum(dim=(1, 2)) + (1 - self.decided_mass) * steps

    def log_choice_probability(self) -> Tensor:
        """(B, C) log P(choice c) when a trial still undecided at the end of the window guesses (1/C each).

        A proper distribution over the C choices (rows sum to 1), bounded below by (1 − decided)/C, so an
        objective on it sees undecided mass as chance performance rather than as an infinite loss.
        """
        n_choices = self.mass.shape[2]
        guess = (1 - self.decided_mass).clamp_min(0).unsqueeze(1) / n_choices
        return torch.log((self.choice_probability + guess).clamp_min(torch.finfo(self.mass.dtype).tiny))


def _passage_levels(phi: Tensor, mode: str) -> Tensor:
    if mode == "race":
        _check_phi(phi, 3, "(B, T, C)")
        return phi
    _check_phi(phi, 2, "(B, T)")
    if mode == "two_bound":
        return torch.stack([-phi, phi], dim=-1)  # choice 0 = lower bound, 1 = upper bound
    if mode == "single":
        return phi.unsqueeze(-1)
    raise PerceptAlignError(f"`mode` must be 'race', 'two_bound' or 'single', got {mode!r}.")


def step_scale(phi: Tensor, *, initial: float = 0.0) -> Tensor:
    """Median absolute per-step change of the accumulator (detached): the natural unit of a temperature.

    Probability mass jumps between steps on the scale of one step's change of Φ, so a temperature in
    these units means the same smoothing for any evidence scale, dt or network.
    """
    first = phi[:, :1] - initial
    increments = torch.cat([first, phi[:, 1:] - phi[:, :-1]], dim=1).detach().abs()
    return increments.median().clamp_min(torch.finfo(phi.dtype).eps)


def first_passage(
    phi: Tensor,
    threshold: Tensor | float,
    *,
    mode: PassageMode = "race",
    temperature: float = 0.1,
    relative: bool = True,
    min_slope: float = 1e-3,
    initial: float = 0.0,
) -> FirstPassage:
    """Soft first-passage distribution of accumulators ``phi`` against ``threshold``.

    Per step and accumulator, the hazard is h = σ((Φ_t − θ)/T); the trial decides at step t with
    probability ∏_{s<t}∏_c(1 − h_{s,c}) · (1 − ∏_c(1 − h_{t,c})), split between the accumulators by a
    softmax of their scaled overshoots (Φ_t − θ)/T — the race winner, or the bound that was crossed,
    with the hard race's tie rule (larger overshoot) in the limit; nothing after the decision enters it.
    The mass of step t sits at each accumulator's interpolated crossing time
    t + clamp((θ − Φ_{t−1})/Δ, 0, 1). As T → 0 this is the hard crossing. ``temperature`` is in units of
    :func:`step_scale` when ``relative`` (default), else in units of Φ.

    ``mode``: "race" for (B, T, C) accumulators, "two_bound" for a signed (B, T) accumulator between
    ±θ (choices: 0 lower, 1 upper), "single" for one (B, T) accumulator.
    """
    _check_min_slope(min_slope)
    initial = _check_initial(initial)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise PerceptAlignError(f"`temperature` must be a positive number, got {temperature!r}.")
    levels = _passage_levels(phi, mode)
    flat = levels.reshape(levels.shape[0], levels.shape[1] * levels.shape[2])
    thr = _threshold_per_trial(threshold, flat)
    if mode == "two_bound" and (thr.detach() < 0).any():
        raise PerceptAlignError(
            "two-bound threshold must be non-negative (the bounds are ±θ); parametrise it with softplus."
        )
    scale = step_scale(phi, initial=initial) if relative else torch.ones((), dtype=phi.dtype)
    temp = scale * temperature
    thr_b = thr.view(-1, 1, 1)
    z = (levels - thr_b) / temp
    log_stay = F.logsigmoid(-z).sum(dim=-1)  # (B, T): log ∏_c (1 − h_c), no decision at step t
    log_alive = torch.cumsum(log_stay, dim=1) - log_stay  # exclusive: survived every earlier step
    stop = -torch.expm1(log_stay)
    # Split by softmax of the scaled overshoots: when several accumulators cross in the same step the
    # larger overshoot takes the mass as T → 0 (the hard race's tie rule); one crossing takes all of it.
    split = torch.softmax(z, dim=-1)
    mass = (torch.exp(log_alive) * stop).unsqueeze(-1) * split
    start = torch.full_like(levels[:, :1], initial if mode != "two_bound" else 0.0)
    previous = torch.cat([start, levels[:, :-1]], dim=1)
    slope = (levels - previous).clamp_min(min_slope)
    frac = ((thr_b - previous) / slope).clamp(0.0, 1.0)
    steps = torch.arange(levels.shape[1], dtype=levels.dtype, device=levels.device).view(1, -1, 1)
    return FirstPassage(mass=mass, time=steps + frac, temperature=temp.detach())
