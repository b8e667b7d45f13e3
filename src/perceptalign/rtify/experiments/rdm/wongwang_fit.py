"""Fit the two-population Wong–Wang model (WW) to human RDM reaction times, driven either by the motion
coherence itself or by a frozen video backbone's logit, and evaluate it like every other RTify method.

Choices and why:

* Learnable: J₁₁ (= J₂₂), J₁₂ (= J₂₁), J_ext, I₀, σ, θ and the non-decision time, which is WW's motor
  delay (``motor_delay_s``: RT = decision time + delay). a, b, d, γ, τ_S, τ_A stay at Wong & Wang (2006).
  Parameters live on very different scales (J_ext ≈ 0.016 nA, I₀ ≈ 0.33 nA, θ ≈ 0.5) and the dynamics
  are far more sensitive to I₀ and J₁₁ (they set the attractor landscape) than to the others, so Adam
  runs with one learning rate per parameter: ``lr`` × the parameter's initial magnitude × a sensitivity
  factor (``_LR_FACTOR``). After each step the parameters are projected back into a physiological box
  (``_BOUNDS``; the delay into [0, fastest human RT]).
* Gradient estimator (``estimator``) for θ and the motor delay. ``"soft"`` (default): each trial's S
  trajectories go through the soft first-passage distribution
  (:func:`perceptalign.rtify.decision.first_passage`, race, S_{−1} = s0) and every (step, choice) cell
  enters the objective with its probability mass, the estimator the RTify head uses.
  ``"interpolated"``: hard decisions with the interpolated crossing time. The objective is the shared
  :class:`perceptalign.rtify.objective.RTLoss` (W1 / MSE / quantile distance on signed-RT histograms + the
  Bernoulli KL accuracy term), so the methods are comparable.
* Gradient of the dynamical parameters (J₁₁, J₁₂, J_ext, I₀, σ and the logit scale w;
  ``dynamics_gradient``). ``"crn"`` (default): central finite differences of the hard-decision
  objective (:func:`hard_loss`), both sides on the step's own noise (common random numbers), steps
  :data:`FD_STEPS` (:func:`crn_gradients`, wired in by :func:`ww_objective`); the loss value is unchanged.
  Cost: 2 hard runs (no gradient, early stop) per learnt dynamical parameter, against the adjoint it
  saves — a step is ~2× the pathwise one (25 steps at dt = 5 ms on the human data: 18 s against 9 s).
  ``"pathwise"``: autograd through the trajectories (the hand-written adjoint), as for θ.
  Why not pathwise: which population wins is settled by the noisy symmetry breaking long before either S
  nears θ, and moving I₀ (or J₁₁, σ, J_ext) switches the winner of some trials — a jump of the per-trial
  choice that no pathwise derivative sees, soft or hard (the soft split at the crossing is saturated:
  its derivative is ~1e−12). At 6.4 % coherence (dt 5 ms, 4000 trials, differences on common noise)
  dP(correct)/dI₀ = −6.1 ± 0.5 where every pathwise rule gives 0; dP/dJ₁₁ = −2.3 ± 0.4, dP/dσ = −16 ± 3,
  dP/dJ_ext = +10 ± 3. Nor does anything smooth in the framework: the margin S_correct − S_wrong at the
  crossing jumps across a gap of ±0.4 when the winner switches, so a temperature on it changes P(correct)
  itself long before its gradient sees a switch (and its straight-through form has the wrong sign for I₀
  and J₁₁: raising them widens that margin but makes decisions faster and LESS accurate; with dt = 1 ms,
  7 coherences × 1000 trials × 3 seeds, ∂KL/∂I₀·I₀ = −23 by differences, +32 by that surrogate, and it
  collapsed fits into no-decision). The likelihood-ratio (score function) term of the Euler–Maruyama path
  density is unbiased, but its standard error is 14× that of the differences on the same trials
  (per-trial s.d. ≈ 460 against 33 for dP/dI₀: the 1-ms path carries far more information about I₀ than
  the choice; ``benchmarks/rtify_gradients.py`` prints it), and Girsanov weights that keep S₁ − S₂ fixed
  along the perturbation are no better (s.d. ≈ 1000: the noisy gains leak the common-mode perturbation
  into S₁ − S₂ at every step). The differences also fix the E[RT] derivative at low coherence, where
  trials near a switch linger at the saddle and give the pathwise derivative a heavy tail. In the same
  25-step fit, accuracy at 3.2/12.8/51.2 % went .69/.98/1.0 → .56/.79/1.0 with "crn" (humans .56/.73/.98)
  and → .62/.94/1.0 with "pathwise" (final loss 0.69 against 1.25).
* Every optimisation step draws fresh noise (seed + step): WW is a stochastic model and a fixed noise
  sample would be over-fitted. A step whose trials leave more than ``max_no_decision`` undecided is
  still rolled back (a safety net; it did not fire in a 150-step fit at dt = 5 ms on the human data,
  where the straight-through choice used to collapse the fit).
* Time grid: ``dt_ms`` (default 10 ms) is the output grid the decisions are read from; the model
  integrates with internal steps of at most 1 ms whatever ``dt_ms`` is (see
  :mod:`perceptalign.rtify.wongwang`), so the fitted model is the same model at any output dt. The fit is
  also re-evaluated at ``fine_dt_ms`` (1 ms), which now only checks the readout resolution (``dt_check``).
* Logit-driven WW: the backbone's logit for "rightward", times a learnable scale w (the model's
  :class:`~perceptalign.rtify.wongwang.WWDrive` input stage, ``input_scale``), replaces the coherence:
  per frame (a time series held for one frame each) or one constant clip logit. Population 1 (choice 0)
  receives +w·logit, so choice 0 means "rightward". w starts at the least-squares map from the mean
  signed logit per coherence onto the coherence in %, i.e. where the logit-driven model sees the same
  drive as the coherence-driven one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import first_passage, rt_seconds
from perceptalign.rtify.estimators.wongwang import WongWangEstimator
from perceptalign.rtify.experiments.rdm import (
    FitConfig,
    FitResult,
    HumanTargets,
    check_split_tables,
    evaluate_method,
    write_fit_outputs,
)
from perceptalign.rtify.metrics import fit_quality, summarize_fit
from perceptalign.rtify.objective import RTLoss, RTSample
from perceptalign.rtify.trials import check_coherences, validate_trials
from perceptalign.rtify.wongwang import WW_DEFAULTS, WongWang2

__all__ = [
    "DYNAMICS_NAMES",
    "FD_STEPS",
    "PARAM_NAMES",
    "WWFitConfig",
    "WWFitRun",
    "WWTrials",
    "build_ww",
    "coherence_trials",
    "crn_gradients",
    "dynamics_parameters",
    "fit_ww_to_human",
    "hard_loss",
    "init_logit_scale",
    "input_kind",
    "predict_ww_table",
    "project_parameters",
    "run_ww_fit",
    "trajectory_figure",
    "write_ww_outputs",
    "ww_objective",
    "ww_parameters",
    "ww_sample",
]

LossKind = Literal["mse", "wasserstein", "quantile"]
Estimator = Literal["soft", "interpolated"]
DynamicsGradient = Literal["crn", "pathwise"]
WWModel = WongWang2

PARAM_NAMES: tuple[str, ...] = ("J11", "J12", "J_ext", "I0", "sigma", "threshold", "motor_delay_s")
# Relative sensitivity of the dynamics to each parameter (see the module docstring): I₀ and J₁₁ shift the
# fixed points, so a 1% change in them moves RTs as much as a ~10% change in J_ext or σ.
_LR_FACTOR: dict[str, float] = {
    "J11": 0.1,
    "J12": 1.0,
    "J_ext": 1.0,
    "I0": 0.05,
    "sigma": 1.0,
    "threshold": 0.3,
    "motor_delay_s": 1.0,
    "w": 1.0,
}
# Physiological box the parameters are projected into after every step (the delay's upper bound is the
# fastest human RT, set at fit time). θ must stay above S(0) = 0.1 and below S's ceiling of 1.
_BOUNDS: dict[str, tuple[float, float]] = {
    "J11": (0.05, 0.6),
    "J12": (0.0, 0.5),
    "J_ext": (1e-4, 0.2),
    "I0": (0.2, 0.45),
    "sigma": (1e-3, 0.1),
    "threshold": (0.15, 0.95),
    "motor_delay_s": (0.0, 1.0),
}
# The parameters that enter the dynamics (θ and the motor delay only read the trajectories out).
DYNAMICS_NAMES: tuple[str, ...] = ("J11", "J12", "J_ext", "I0", "sigma", "w")
# Central-difference steps of the "crn" gradient, relative to max(|value|, _FD_FLOOR). Chosen from a
# scan at the default parameters (6.4 %, 4000 trials, steps 0.5-5 %): I₀ sits 5 % above the loss of
# bistability (at −5 % no trial decides within 4 s) and dP/dI₀ curves (−5.4 ± 0.7, −6.1 ± 0.5, −7.3 ± 0.4
# at 0.5, 1, 2 %), so its step is 1 %; J₁₁'s derivatives agree over 0.5-5 % (1 %); J₁₂, J_ext, σ and w
# move fewer trials per % (standard error ∝ 1/√step), so 2 %, where they agree with 0.5-1 % within errors.
FD_STEPS: dict[str, float] = {"J11": 0.01, "J12": 0.02, "J_ext": 0.02, "I0": 0.01, "sigma": 0.02, "w": 0.02}
# Scale floor of a step (a parameter at 0, e.g. J₁₂ on its bound, still gets a non-zero step).
_FD_FLOOR: dict[str, float] = {"J11": 0.05, "J12": 0.01, "J_ext": 1e-3, "I0": 0.05, "sigma": 1e-3, "w": 1e-3}
_EVAL_CHUNK = 8192  # trials per forward call at evaluation: bounded memory at any dt
# First-passage cells with less mass than this are left out of the objective's sample (each soft histogram
# entry costs n_bins floats): at most T·2·1e-6 of a trial's mass, against its O(1) mass at the crossing.
_MIN_CELL_MASS = 1e-6


@dataclass(frozen=True)
class WWFitConfig:
    """Settings of one Wong–Wang fit. ``init`` overrides starting values (names in :data:`PARAM_NAMES`)."""

    loss: LossKind = "wasserstein"
    acc_weight: float = 1.0
    estimator: Estimator = "soft"
    dynamics_gradient: DynamicsGradient = "crn"
    temperature: float = 0.2
    dt_ms: float = 10.0
    fine_dt_ms: float | None = 1.0
    max_time_s: float = 2.5
    stim_duration_s: float = 2.0
    steps: int = 300
    lr: float = 0.02
    n_train: int = 300
    n_eval: int = 2000
    average_last: float = 0.25
    max_no_decision: float = 0.2
    learn: tuple[str, ...] = PARAM_NAMES
    init: Mapping[str, float] = field(default_factory=dict)
    sigma_hist: float = 40.0
    n_bins: int = 500
    lo: float = -2.5
    hi: float = 2.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "wasserstein", "quantile"):
            raise PerceptAlignError(f"loss must be one of mse, wasserstein, quantile, got {self.loss!r}.")
        if self.estimator not in ("soft", "interpolated"):
            raise PerceptAlignError(f"estimator must be 'soft' or 'interpolated', got {self.estimator!r}.")
        if self.dynamics_gradient not in ("crn", "pathwise"):
            raise PerceptAlignError(
                f"dynamics_gradient must be 'crn' (finite differences on common noise) or 'pathwise', got "
                f"{self.dynamics_gradient!r}."
            )
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise PerceptAlignError(f"temperature must be a positive number, got {self.temperature!r}.")
        for name in ("steps", "n_train", "n_eval", "n_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PerceptAlignError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("dt_ms", "fine_dt_ms"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 50):
                raise PerceptAlignError(
                    f"{name} must be in (0, 50] ms, got {value!r}: the output (readout) step; the model "
                    "integrates in internal steps of at most 1 ms whatever it is (10 ms is the default)."
                )
        if not (self.max_time_s > 0 and self.stim_duration_s >= 0):
            raise PerceptAlignError("max_time_s must be positive and stim_duration_s non-negative (seconds).")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise PerceptAlignError(f"lr must be a positive number, got {self.lr!r}.")
        if not (self.acc_weight >= 0 and math.isfinite(self.acc_weight)):
            raise PerceptAlignError(f"acc_weight must be ≥ 0, got {self.acc_weight!r}.")
        if not 0 < self.max_no_decision <= 1:
            raise PerceptAlignError(f"max_no_decision must be in (0, 1], got {self.max_no_decision!r}.")
        if not 0 <= self.average_last < 1:
            raise PerceptAlignError(f"average_last must be in [0, 1), got {self.average_last!r}.")
        unknown = [n for n in (*self.learn, *self.init) if n not in PARAM_NAMES]
        if unknown:
            raise PerceptAlignError(
                f"unknown Wong–Wang parameter(s) {unknown}; choose from {list(PARAM_NAMES)}."
            )
        for name, value in self.init.items():
            lo, hi = _BOUNDS[name]
            if not (isinstance(value, (int, float)) and lo <= value <= hi):
                raise PerceptAlignError(f"init {name} = {value!r} is outside its range [{lo}, {hi}].")
        if not (self.sigma_hist > 0 and self.lo < 0 < self.hi):
            raise PerceptAlignError("need sigma_hist > 0 and a histogram window lo < 0 < hi (signed RTs).")

    def hist_config(self) -> FitConfig:
        """The :class:`FitConfig` whose objective (``rt_loss``: histogram/loss settings) the fit uses."""
        return FitConfig(
            loss=self.loss,
            acc_weight=self.acc_weight,
            temperature=self.temperature,
            sigma=self.sigma_hist,
            n_bins=self.n_bins,
            lo=self.lo,
            hi=self.hi,
            seed=self.seed,
        )

    @property
    def rt_loss(self) -> RTLoss:
        """The shared objective of the fit (the same object a head fit with these settings uses)."""
        return self.hist_config().rt_loss

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["learn"] = list(self.learn)
        out["init"] = dict(self.init)
        return out


# --------------------------------------------------------------------------------------------------------
# Trials and models.
# --------------------------------------------------------------------------------------------------------


@dataclass
class WWTrials:
    """A pool of model trials: the WW input per trial, its condition and which WW choice is correct.

    ``drive`` is (N,) (coherence in %, or a constant clip logit) or (N, F) (per-frame logits held
    ``frame_s`` seconds each); ``correct_choice`` (N,) is 0 when population 1 is the correct one.
    """

    drive: Tensor
    cond_idx: Tensor
    correct_choice: Tensor
    conditions: list[float]
    frame_s: float | None = None
    check: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        if not self.check:
            return
        n = self.drive.shape[0] if isinstance(self.drive, Tensor) else -1
        if n < 1 or self.drive.dim() not in (1, 2):
            raise PerceptAlignError("WWTrials.drive must be a non-empty (N,) or (N, F) tensor.")
        if self.cond_idx.shape != (n,) or self.correct_choice.shape != (n,):
            raise PerceptAlignError("WWTrials: cond_idx and correct_choice need one entry per trial.")
        present = set(self.cond_idx.tolist())
        missing = [c for k, c in enumerate(self.conditions) if k not in present]
        if missing:
            raise PerceptAlignError(f"WWTrials has no trials for condition(s) {missing}.")

    def __len__(self) -> int:
        return int(self.drive.shape[0])

    def repeat(self, times: int) -> WWTrials:
        """Each trial ``times`` times (WW adds its own noise, so repeats are fresh trials)."""
        return WWTrials(
            self.drive.repeat_interleave(times, dim=0),
            self.cond_idx.repeat_interleave(times),
            self.correct_choice.repeat_interleave(times),
            self.conditions,
            self.frame_s,
        )

    def chunks(self, size: int) -> list[WWTrials]:
        """Consecutive pieces of at most ``size`` trials (evaluation in bounded memory)."""
        return [
            WWTrials(
                self.drive[i : i + size],
                self.cond_idx[i : i + size],
                self.correct_choice[i : i + size],
                self.conditions,
                self.frame_s,
                check=False,
            )
            for i in range(0, len(self), size)
        ]


def coherence_trials(conditions: Sequence[float], n_per_condition: int) -> WWTrials:
    """``n_per_condition`` trials per coherence (%), positive coherence: population 1 is always correct."""
    conds = check_coherences(conditions)
    if not conds:
        raise PerceptAlignError("coherences must be a non-empty list of percentages in [0, 100].")
    k = torch.arange(len(conds)).repeat_interleave(n_per_condition)
    drive = torch.tensor(conds, dtype=torch.float32)[k]
    return WWTrials(drive, k, torch.zeros_like(k), conds)


def build_ww(config: WWFitConfig, *, input_scale: float | None = None) -> WongWang2:
    """A WongWang2 on the config's grid, started at Wong & Wang (2006) values or ``config.init``.

    ``input_scale`` (w) makes it logit-driven: its input stage multiplies the input by a learnable w.
    """
    values = {
        "J11": WW_DEFAULTS["j_self"],
        "J12": WW_DEFAULTS["j_cross"],
        "J_ext": WW_DEFAULTS["j_ext"],
        "I0": WW_DEFAULTS["i0"],
        "sigma": WW_DEFAULTS["sigma"],
        "threshold": WW_DEFAULTS["threshold"],
        "motor_delay_s": WW_DEFAULTS["motor_delay_s"],
        **config.init,
    }
    model = WongWang2(
        j11=values["J11"],
        j12=values["J12"],
        j_ext=values["J_ext"],
        i0=values["I0"],
        sigma=values["sigma"],
        threshold=values["threshold"],
        motor_delay_s=values["motor_delay_s"],
        learn_motor_delay=True,
        dt_ms=config.dt_ms,
        max_time_s=config.max_time_s,
        stim_duration_s=config.stim_duration_s,
        input_scale=input_scale,
    )
    for name in PARAM_NAMES:
        getattr(model, name).requires_grad_(name in config.learn)
    return model


def input_kind(model: WWModel) -> str:
    """Which input drives the model: "coherence", or "logit" (w·logit with a learnable w)."""
    return "coherence" if model.drive.scale is None else "logit"


def init_logit_scale(trials: WWTrials) -> float:
    """w minimising Σ_c (w·m_c − c)², m_c = mean over condition c of the signed (towards-correct) logit.

    The sign is the direction of the correct population (choice 0 ↔ positive drive), so m_c > 0 for a
    backbone better than chance and w > 0 maps its evidence onto the coherence scale in %.
    """
    x = trials.drive if trials.drive.dim() == 1 else trials.drive.mean(dim=1)
    signed = x.double() * (1 - 2 * trials.correct_choice.double())
    m = torch.stack([signed[trials.cond_idx == k].mean() for k in range(len(trials.conditions))])
    c = torch.tensor(trials.conditions, dtype=torch.float64)
    denom = float((m * m).sum())
    if denom <= 0 or not math.isfinite(denom):
        raise PerceptAlignError("the logits carry no evidence (all zero); check the backbone outputs.")
    w = float((m * c).sum()) / denom
    if w <= 0:
        raise PerceptAlignError(
            "the backbone's logits point the wrong way on average (w < 0): its logit must be positive for "
            "rightward motion; check the backbone outputs and their direction labels."
        )
    return w


def ww_parameters(model: WWModel) -> dict[str, float]:
    """Current parameter values (plus the logit scale ``w`` for a logit-driven model)."""
    out = {name: float(getattr(model, name).detach()) for name in PARAM_NAMES}
    if model.drive.scale is not None:
        out["w"] = float(model.drive.scale.detach())
    return out


@torch.no_grad()
def project_parameters(model: WWModel, bounds: Mapping[str, tuple[float, float]]) -> None:
    """Clamp every WW parameter into its box (in place)."""
    for name, (lo, hi) in bounds.items():
        getattr(model, name).clamp_(lo, hi)


def ww_sample(
    model: WWModel, trials: WWTrials, config: WWFitConfig, generator: torch.Generator | None
) -> tuple[RTSample, float]:
    """One simulated batch as the objective's weighted sample, and its (hard) no-decision rate.

    ``"soft"``: every (step, choice) cell of each trial's first-passage distribution over its S
    trajectories, RT = (interpolated cell time)·dt + motor delay, with the cell's probability mass (cells
    below ``_MIN_CELL_MASS`` left out). ``"interpolated"``: one entry per trial, the hard decision.
    """
    n_cond = len(trials.conditions)
    if config.estimator == "interpolated":
        out = model(trials.drive, generator=generator, frame_s=trials.frame_s)
        correct = (out.choice == trials.correct_choice).to(out.rt_s.dtype)
        sample = RTSample.from_decisions(out.rt_s, correct, out.decided, trials.cond_idx, n_cond)
        return sample, out.no_decision_rate
    S = model.trajectories(trials.drive, generator=generator, frame_s=trials.frame_s)  # (B, T, 2)
    passage = first_passage(S, model.threshold, mode="race", temperature=config.temperature, initial=model.s0)
    rt = rt_seconds(passage.time, model.dt_ms / 1000.0, model.motor_delay_s)
    sample = RTSample.from_passage(
        rt, passage.mass, trials.correct_choice, trials.cond_idx, n_cond, min_mass=_MIN_CELL_MASS
    )
    no_decision = float((S.detach().amax(dim=(1, 2)) <= model.threshold.detach()).double().mean())
    return sample, no_decision


# --------------------------------------------------------------------------------------------------------
# Fitting and prediction.
# --------------------------------------------------------------------------------------------------------


def dynamics_parameters(model: WWModel) -> dict[str, Tensor]:
    """The learnable parameters that enter the dynamics (``DYNAMICS_NAMES`` that require a gradient)."""
    named = {name: getattr(model, name) for name in DYNAMICS_NAMES if name != "w"}
    if model.drive.scale is not None:
        named["w"] = model.drive.scale
    return {name: p for name, p in named.items() if p.requires_grad}


@contextmanager
def _frozen(params: Sequence[Tensor]) -> Iterator[None]:
    """Parameters marked as needing no gradient for the block: the model then integrates without building
    its adjoint (θ and the motor delay still get theirs from the read-out)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def hard_loss(
    model: WWModel, trials: WWTrials, targets: HumanTargets, config: WWFitConfig, seed: int
) -> Tensor:
    """The objective on hard decisions (first crossing) of ``trials``, noise from ``seed``; no gradient."""
    with torch.no_grad():
        out = model(trials.drive, generator=torch.Generator().manual_seed(seed), frame_s=trials.frame_s)
        correct = (out.choice == trials.correct_choice).to(out.rt_s.dtype)
        sample = RTSample.from_decisions(
            out.rt_s, correct, out.decided, trials.cond_idx, len(trials.conditions)
        )
        return config.rt_loss(sample, targets)[0]


def crn_gradients(
    params: Mapping[str, Tensor],
    quantity: Callable[[], Tensor],
    *,
    steps: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """∂quantity/∂p for each named parameter by central differences on common random numbers.

    ``quantity()`` must draw its noise from a fixed seed (so both sides of a difference see the same
    trials: only the trials whose outcome the parameter changes contribute, which is what makes this
    estimator far less noisy than a likelihood ratio). Each parameter is moved in place by
    ±h = ``steps[name]``·max(|p|, floor) (default steps: ``FD_STEPS``) and restored bit for bit.
    The result has the shape of ``quantity()``'s output (e.g. a scalar loss, or several statistics).
    """
    steps = FD_STEPS if steps is None else steps
    out: dict[str, Tensor] = {}
    for name, param in params.items():
        if name not in steps:
            raise PerceptAlignError(
                f"no finite-difference step for parameter {name!r}; give one in `steps` (relative to |p|)."
            )
        with torch.no_grad():
            saved = param.detach().clone()
            h = float(steps[name]) * max(abs(float(saved)), _FD_FLOOR.get(name, 1e-3))
            try:
                param.copy_(saved + h)
                up = quantity().detach().double()
                param.copy_(saved - h)
                down = quantity().detach().double()
            finally:
                param.copy_(saved)
        out[name] = (up - down) / (2.0 * h)
    return out


def _with_gradients(loss: Tensor, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> Tensor:
    """``loss`` with the same value whose gradient w.r.t. each of ``params`` is in addition ``grads``."""
    extra = [((params[n] - params[n].detach()) * grads[n].to(params[n].dtype)).to(loss.dtype) for n in grads]
    return loss + torch.stack(extra).sum() if extra else loss


def _optimizer(model: WWModel, lr: float) -> torch.optim.Optimizer:
    groups = []
    named = [(n, getattr(model, n)) for n in PARAM_NAMES]
    if model.drive.scale is not None:
        named.append(("w", model.drive.scale))
    for name, param in named:
        if param.requires_grad:
            scale = max(abs(float(param.detach())), 1e-3)
            groups.append({"params": [param], "lr": lr * scale * _LR_FACTOR[name], "name": name})
    if not groups:
        raise PerceptAlignError("nothing to fit: config.learn names no parameter (and no logit scale).")
    return torch.optim.Adam(groups)


def ww_objective(
    model: WWModel, trials: WWTrials, targets: HumanTargets, config: WWFitConfig, seed: int
) -> tuple[Tensor, dict[str, float], float]:
    """One batch's objective as the fit differentiates it: (loss, its parts, the no-decision rate).

    The value is exactly the plain estimator's (``ww_sample`` on noise from ``seed``, then the objective);
    θ and the motor delay get that estimator's gradient. With ``dynamics_gradient="crn"`` the dynamical
    parameters are frozen for the sample (no adjoint is built) and get :func:`crn_gradients` of
    :func:`hard_loss` on the same noise instead, attached as ``(p − p.detach())·g`` (value 0).
    """
    dynamics = dynamics_parameters(model) if config.dynamics_gradient == "crn" else {}
    with _frozen(list(dynamics.values())):
        sample, no_decision = ww_sample(model, trials, config, torch.Generator().manual_seed(seed))
    loss, parts = config.rt_loss(sample, targets)
    if dynamics:
        grads = crn_gradients(dynamics, lambda: hard_loss(model, trials, targets, config, seed))
        loss = _with_gradients(loss, dynamics, grads)
    return loss, parts, no_decision


def fit_ww_to_human(
    model: WWModel,
    trials: WWTrials,
    targets: HumanTargets,
    config: WWFitConfig,
    *,
    max_delay_s: float | None = None,
    progress: PhaseStatusCallback | None = None,
) -> list[dict[str, float]]:
    """Adam on the human-fit objective, fresh WW noise every step; returns the loss/parameter history.

    The objective is stochastic, so the returned model holds the AVERAGE of the iterates over the last
    ``config.average_last`` fraction of the steps (Polyak–Ruppert averaging), not the last noisy iterate.
    A step whose trials leave more than ``config.max_no_decision`` undecided is rolled back (parameters
    and Adam state of the last healthy step, step size halved): a safety net, since a model that stops
    deciding gets little gradient back. Its former trigger, the straight-through choice gradient, is
    gone (module docstring). Rolled-back iterates are not averaged. ``history`` records the parameters
    each step simulated with. Each step's loss and gradient are :func:`ww_objective`'s.

    ``max_delay_s`` caps the non-decision time (the fastest human RT: a larger delay could not produce
    it); parameters are projected into their box after every step.
    """
    if trials.conditions != targets.conditions:
        raise PerceptAlignError(
            f"model conditions {trials.conditions} differ from the human conditions {targets.conditions}."
        )
    bounds = dict(_BOUNDS)
    if max_delay_s is not None:
        bounds["motor_delay_s"] = (0.0, float(max_delay_s))
    project_parameters(model, bounds)
    opt = _optimizer(model, config.lr)
    history: list[dict[str, float]] = []
    params = [p for group in opt.param_groups for p in group["params"]]
    first_avg = (
        config.steps - max(1, round(config.average_last * config.steps)) if config.average_last else None
    )
    running = [torch.zeros_like(p) for p in params]
    n_avg = 0
    snapshot: tuple[list[Tensor], dict[str, Any]] | None = None
    n_rollbacks = 0
    for step in range(config.steps):
        loss, parts, no_decision = ww_objective(
            model, trials, targets, config, config.seed * 1_000_003 + step
        )
        record = {
            "loss": float(loss.detach()),
            **parts,
            "no_decision_rate": no_decision,
            **ww_parameters(model),  # the parameters this step's trials were simulated with
            "rolled_back": 0.0,
        }
        if no_decision > config.max_no_decision and snapshot is not None:
            # Undecided trials carry no gradient: a step into the no-decision regime cannot be undone by
            # the optimiser, so go back to the last healthy state and continue with half the step size.
            with torch.no_grad():
                for param, saved in zip(params, snapshot[0], strict=True):
                    param.copy_(saved)
            opt.load_state_dict(snapshot[1])
            for group in opt.param_groups:
                group["lr"] *= 0.5
            n_rollbacks += 1
            record["rolled_back"] = 1.0
        else:
            snapshot = ([q.detach().clone() for q in params], copy.deepcopy(opt.state_dict()))
            if first_avg is not None and step >= first_avg:
                n_avg += 1
                for acc, q in zip(running, params, strict=True):
                    acc.add_(q.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
            project_parameters(model, bounds)
        history.append(record)
        if progress is not None:
            status = f"loss {record['loss']:.4g}" + (f", {n_rollbacks} rollbacks" if n_rollbacks else "")
            progress("fit WW", step + 1, config.steps, status)
    with torch.no_grad():
        if n_avg:
            for acc, q in zip(running, params, strict=True):
                q.copy_(acc / n_avg)
        elif snapshot is not None and history[-1]["rolled_back"]:
            for q, saved in zip(params, snapshot[0], strict=True):
                q.copy_(saved)
    return history


@torch.no_grad()
def predict_ww_table(
    model: WWModel, trials: WWTrials, *, seed: int, dt_ms: float | None = None
) -> pd.DataFrame:
    """Trials table (condition, rt_s, correct, decided) of hard WW decisions, in bounded-memory chunks."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for chunk in trials.chunks(_EVAL_CHUNK):
        out = model(chunk.drive, generator=gen, frame_s=chunk.frame_s, dt_ms=dt_ms)
        rows.append(
            pd.DataFrame(
                {
                    "condition": np.asarray(chunk.conditions, dtype=float)[chunk.cond_idx.numpy()],
                    "rt_s": out.rt_s.double().numpy(),
                    "correct": (out.choice == chunk.correct_choice).numpy(),
                    "decided": out.decided.numpy(),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def trajectory_figure(
    model: WWModel,
    trials: WWTrials,
    *,
    n_examples: int = 3,
    seed: int = 0,
    dt_ms: float | None = None,
    max_panels: int = 4,
) -> Figure:
    """S₁(t), S₂(t) with θ for a few example trials of up to ``max_panels`` conditions (correct population
    solid, the other dashed); the title gives the trial outcomes."""
    conds = list(range(len(trials.conditions)))
    if len(conds) > max_panels:
        picks = np.linspace(0, len(conds) - 1, max_panels).round().astype(int)
        conds = [conds[i] for i in sorted(set(picks.tolist()))]
    fig = Figure(figsize=(3.4 * len(conds), 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(conds), sharey=True))
    theta = float(model.threshold.detach())
    gen = torch.Generator().manual_seed(seed)
    for ax, k in zip(axes, conds, strict=True):
        idx = (trials.cond_idx == k).nonzero().squeeze(1)[:n_examples]
        with torch.no_grad():
            traj = model.inference(trials.drive[idx], generator=gen, dt_ms=dt_ms, frame_s=trials.frame_s)
        time_s = traj.time_s.numpy()
        correct = trials.correct_choice[idx].numpy()
        for i in range(len(idx)):
            color = f"C{i}"
            ax.plot(time_s, traj.S[i, :, correct[i]].numpy(), color=color, lw=1.2)
            ax.plot(time_s, traj.S[i, :, 1 - correct[i]].numpy(), color=color, lw=1.2, ls="--")
        ax.axhline(theta, color="k", lw=0.8, ls=":")
        ax.set_title(f"condition {trials.conditions[k]:g}", fontsize=9)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("S (solid: correct pop., dashed: other)")
    return fig


# --------------------------------------------------------------------------------------------------------
# The whole experiment.
# --------------------------------------------------------------------------------------------------------


def _evaluate(
    model: WWModel,
    eval_trials: WWTrials,
    human_test: pd.DataFrame,
    targets_test: HumanTargets,
    config: WWFitConfig,
) -> tuple[dict[str, Any], pd.DataFrame]:
    table = predict_ww_table(model, eval_trials, seed=config.seed + 303)
    report = evaluate_method(table, human_test, targets_test, config.hist_config())
    report["params"] = {**ww_parameters(model), "dt_ms": config.dt_ms, "choice_rule": "first crossing"}
    if config.fine_dt_ms is not None and config.fine_dt_ms != config.dt_ms:
        fine = predict_ww_table(model, eval_trials, seed=config.seed + 404, dt_ms=config.fine_dt_ms)
        quality = fit_quality(fine, human_test)
        report["dt_check"] = {
            "dt_ms": config.fine_dt_ms,
            "summary": summarize_fit(quality),
            "accuracy_model": dict(
                zip(map(str, quality["condition"]), quality["accuracy_model"], strict=True)
            ),
            "median_rt_correct_model": dict(
                zip(map(str, quality["condition"]), quality["median_rt_correct_model"], strict=True)
            ),
            "no_decision_rate": float(1.0 - fine["decided"].mean()),
        }
    return report, table


@dataclass
class WWFitRun:
    """A finished fit: the report/tables (as ``rtify fit`` writes them), the model, its evaluation pool."""

    result: FitResult
    model: WWModel
    eval_trials: WWTrials


def run_ww_fit(
    human_train: pd.DataFrame,
    human_test: pd.DataFrame,
    config: WWFitConfig,
    *,
    fit_trials: WWTrials | None = None,
    eval_trials: WWTrials | None = None,
    name: str | None = None,
    progress: PhaseStatusCallback | None = None,
) -> WWFitRun:
    """Fit WW to ``human_train`` and evaluate on ``human_test``.

    Without trials the model is coherence-driven (``config.n_train`` / ``n_eval`` trials per coherence).
    With backbone trials (``fit_trials`` and ``eval_trials``, e.g. the pools of
    :func:`perceptalign.rtify.experiments.pixel.pixel_experiment.backbone_drive`) it is logit-driven;
    each step uses the fit pool
    repeated to about ``n_train`` trials per condition, and evaluation the eval pool repeated to
    ``n_eval``.
    """
    conds = check_split_tables(human_train, human_test)
    runtime: dict[str, float] = {}
    torch.manual_seed(config.seed)
    targets_train = HumanTargets.from_table(
        human_train, conds, config.hist_config(), name="human training trials"
    )
    targets_test = HumanTargets.from_table(human_test, conds, config.hist_config(), name="human test trials")
    if (fit_trials is None) != (eval_trials is None):
        raise PerceptAlignError("give both fit_trials and eval_trials (backbone-driven) or neither.")
    coherence_driven = fit_trials is None or eval_trials is None
    if fit_trials is None or eval_trials is None:
        model_name = name or "ww-coherence"
    else:
        for pool in (fit_trials, eval_trials):
            if pool.conditions != conds:
                raise PerceptAlignError(
                    f"backbone trial conditions {pool.conditions} differ from the human ones {conds}."
                )
        model = build_ww(config, input_scale=init_logit_scale(fit_trials))
        per_cond = len(fit_trials) / len(conds)
        fit_pool = fit_trials.repeat(max(1, round(config.n_train / per_cond)))
        eval_pool = eval_trials.repeat(max(1, math.ceil(config.n_eval / (len(eval_trials) / len(conds)))))
        model_name = name or "ww-logit"
    start = time.perf_counter()
    if coherence_driven:  # the estimator every coherence-driven fit goes through
        estimator = WongWangEstimator(config, progress=progress).fit(human_train)
        model, init, history = estimator.model_, estimator.params_init_, estimator.history_
        n_fit_trials = estimator.fit_trials_per_step_
        eval_pool = coherence_trials(conds, config.n_eval)
    else:
        init = ww_parameters(model)
        max_delay = float(validate_trials(human_train)["rt_s"].min())
        history = fit_ww_to_human(
            model, fit_pool, targets_train, config, max_delay_s=max_delay, progress=progress
        )
        n_fit_trials = len(fit_pool)
    runtime["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    entry, table = _evaluate(model, eval_pool, human_test, targets_test, config)
    entry["params_init"] = init
    entry["learned"] = [*config.learn, *(["w"] if input_kind(model) == "logit" else [])]
    runtime["evaluate"] = time.perf_counter() - start
    stride = max(1, len(history) // 100)
    report = {
        "version": 1,
        "objective": "human",
        "model": model_name,
        "settings": {
            "ww_fit": config.to_dict(),
            "input": input_kind(model),
            "torch_threads": torch.get_num_threads(),
        },
        "data": {
            "conditions": conds,
            "n_train": len(human_train),
            "n_test": len(human_test),
            "human_train_accuracy": dict(zip(map(str, conds), targets_train.accuracy.tolist(), strict=True)),
            "model_trials_per_step": n_fit_trials,
            "model_eval_trials": len(eval_pool),
        },
        "rtify": entry,
        "baselines": {},
        "history": history[::stride] + ([history[-1]] if (len(history) - 1) % stride else []),
        "runtime_s": {**runtime, "total": float(sum(runtime.values()))},
    }
    return WWFitRun(FitResult(report=report, tables={model_name: table}), model, eval_pool)


def write_ww_outputs(run: WWFitRun, human_test: pd.DataFrame, out: Path, *, seed: int = 0) -> list[Path]:
    """fit.json and the comparison figures (as ``rtify fit``) plus ``ww_trajectories.png``."""
    from perceptalign.plotting import save_figure

    paths = write_fit_outputs(run.result, human_test, out)
    fig = trajectory_figure(run.model, run.eval_trials, seed=seed)
    paths.append(save_figure(fig, Path(out) / "ww_trajectories.png"))
    return paths
