"""The RTify head: hidden states → evidence → accumulator → threshold → decision time → reaction time.

Any recurrent model's per-step states (a GRU/LSTM output, per-frame backbone features) become a
human-comparable reaction time: RT = t*·dt + t₀ (:func:`perceptalign.rtify.decision.rt_seconds`), where t*
is the accumulator's interpolated first threshold crossing (continuous, not on the step grid) and t₀ a
learnable non-decision time (the published heads had none, so their RTs could not match the ~0.16 s floor
of human RTs).

The choice is made by the accumulator: the race winner, or the bound that was crossed. An optional
per-step classifier ("read-out") is kept for objectives that need choice logits (self-penalised
training); it only reads states up to the decision step, never after it.

Gradients: with ``estimator="soft"`` (default) the head also returns each trial's soft first-passage
distribution (:func:`perceptalign.rtify.decision.first_passage`), which distributional losses use so that
probability mass moving between steps gets its gradient; ``"interpolated"`` and ``"implicit"`` (the
published rule) give pathwise gradients of t* only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import (
    Decision,
    FirstPassage,
    first_crossing_multiclass,
    first_crossing_two_bound,
    first_passage,
    rt_seconds,
)

__all__ = ["RTifyHead", "RTifyOutput", "TrialPredictions", "inverse_softplus"]

Mode = Literal["multiclass", "two_bound"]
Readout = Literal["soft_mask", "gaussian"]
Estimator = Literal["soft", "interpolated", "implicit"]


def inverse_softplus(value: float) -> float:
    """The raw parameter whose softplus equals ``value`` (> 0): lets positive parameters start where asked."""
    if not value > 0:
        raise PerceptAlignError(f"a softplus-parametrised quantity must start positive, got {value!r}.")
    return value + math.log(-math.expm1(-value))


@dataclass
class RTifyOutput:
    """Everything one forward pass produces; ``phi`` is (B, T, C) for a race, (B, T) for two bounds."""

    decision: Decision
    rt_s: Tensor
    choice_logits: Tensor
    step_logits: Tensor
    phi: Tensor
    threshold: Tensor
    passage: FirstPassage | None = None

    @property
    def choice(self) -> Tensor:
        """The choice the accumulator made (race winner / bound crossed)."""
        return self.decision.choice

    def passage_rt_s(self, dt: float, t0: Tensor) -> Tensor:
        """(B, T, C) reaction time of each soft first-passage (step, choice) cell."""
        if self.passage is None:
            raise PerceptAlignError("this output has no first-passage distribution; use estimator='soft'.")
        return rt_seconds(self.passage.time, dt, t0)


@dataclass
class TrialPredictions:
    """Per-trial predictions as numpy arrays, for trial tables and metrics."""

    rt_s: np.ndarray
    choice: np.ndarray
    decided: np.ndarray


class RTifyHead(nn.Module):
    """Learnable evidence, accumulator, threshold and non-decision time on top of per-step hidden states.

    ``mode="multiclass"``: one accumulator per class racing to a shared threshold (evidence made
    non-negative with softplus by default, so the race is monotone). ``mode="two_bound"`` (2 classes
    only): one signed accumulator between ±θ, class 1 = upper bound. The choice is the accumulator's. The
    per-step classifier (for choice logits) is a separate linear layer (``classifier="linear"``, as in
    the published RNN heads) or the evidence itself (``classifier="evidence"``); it reads steps ≤ the
    decision step only. ``estimator`` picks the gradient (module docstring); ``temperature`` is the soft
    first passage's, in units of the accumulator's median per-step change.
    """

    def __init__(
        self,
        hidden_size: int,
        n_classes: int = 2,
        *,
        mode: Mode = "multiclass",
        dt: float = 0.01,
        evidence: Literal["linear", "mlp"] | nn.Module = "linear",
        evidence_hidden: int = 32,
        nonnegative: bool | None = None,
        classifier: Literal["linear", "evidence"] = "linear",
        readout: Readout = "soft_mask",
        readout_sharpness: float = 2.0,
        readout_width: float = 2.0,
        threshold_init: float = 1.0,
        t0_init: float = 0.25,
        learn_t0: bool = True,
        t0_max: float | None = None,
        min_slope: float = 1e-3,
        estimator: Estimator = "soft",
        temperature: float = 0.1,
        urgency: bool = False,
        urgency_init: float = 0.1,
        drift_variability: bool = False,
        drift_sd_init: float = 0.5,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        if not (isinstance(hidden_size, int) and hidden_size > 0):
            raise PerceptAlignError(f"hidden_size must be a positive integer, got {hidden_size!r}.")
        if not (isinstance(n_classes, int) and n_classes >= 2):
            raise PerceptAlignError(f"n_classes must be an integer ≥ 2, got {n_classes!r}.")
        if mode not in ("multiclass", "two_bound"):
            raise PerceptAlignError(f"mode must be 'multiclass' or 'two_bound', got {mode!r}.")
        if mode == "two_bound" and n_classes != 2:
            raise PerceptAlignError(
                f"mode='two_bound' models a 2-choice task, got n_classes={n_classes}; use mode='multiclass'."
            )
        if mode == "two_bound" and nonnegative:
            raise PerceptAlignError(
                "nonnegative evidence makes a signed two-bound accumulator one-sided; drop it."
            )
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise PerceptAlignError(f"dt is the step duration in seconds and must be positive, got {dt!r}.")
        if not t0_init >= 0:
            raise PerceptAlignError(f"t0_init (non-decision time, s) must be ≥ 0, got {t0_init!r}.")
        if t0_max is not None and not (math.isfinite(t0_max) and 0 < t0_init < t0_max):
            raise PerceptAlignError(
                "`t0_max` bounds the non-decision time: need 0 < `t0_init` < `t0_max`, got "
                f"t0_init={t0_init!r}, t0_max={t0_max!r}."
            )
        if readout not in ("soft_mask", "gaussian"):
            raise PerceptAlignError(f"readout must be 'soft_mask' or 'gaussian', got {readout!r}.")
        if classifier not in ("linear", "evidence"):
            raise PerceptAlignError(f"classifier must be 'linear' or 'evidence', got {classifier!r}.")
        if not (readout_sharpness > 0 and readout_width > 0):
            raise PerceptAlignError("readout_sharpness and readout_width must be positive.")
        if estimator not in ("soft", "interpolated", "implicit"):
            raise PerceptAlignError(
                f"`estimator` must be 'soft', 'interpolated' or 'implicit', got {estimator!r}."
            )
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise PerceptAlignError(f"`temperature` must be a positive number, got {temperature!r}.")
        if not isinstance(urgency, bool):
            raise PerceptAlignError(f"`urgency` must be True or False, got {urgency!r}.")
        if not (isinstance(urgency_init, (int, float)) and math.isfinite(urgency_init) and urgency_init > 0):
            raise PerceptAlignError(
                f"`urgency_init` is the starting collapse rate in 1/s and must be > 0, got {urgency_init!r}."
            )
        if not isinstance(drift_variability, bool):
            raise PerceptAlignError(f"`drift_variability` must be True or False, got {drift_variability!r}.")
        if not (
            isinstance(drift_sd_init, (int, float)) and math.isfinite(drift_sd_init) and drift_sd_init > 0
        ):
            raise PerceptAlignError(
                "`drift_sd_init` is the starting across-trial drift sd (accumulator units per second) and "
                f"must be > 0, got {drift_sd_init!r}."
            )
        if isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0:
            raise PerceptAlignError(f"`noise_seed` must be a non-negative integer, got {noise_seed!r}.")

        self.hidden_size = hidden_size
        self.n_classes = n_classes
        self.mode: Mode = mode
        self.dt = float(dt)
        self.nonnegative = (mode == "multiclass") if nonnegative is None else bool(nonnegative)
        self.classifier_kind = classifier
        self.readout = readout
        self.readout_sharpness = float(readout_sharpness)
        self.readout_width = float(readout_width)
        self.min_slope = float(min_slope)
        self.estimator: Estimator = estimator
        self.temperature = float(temperature)
        n_evidence = n_classes if mode == "multiclass" else 1

        if isinstance(evidence, nn.Module):
            self.evidence = evidence
        elif evidence == "linear":
            self.evidence = nn.Linear(hidden_size, n_evidence)
        elif evidence == "mlp":
            self.evidence = nn.Sequential(
                nn.Linear(hidden_size, evidence_hidden), nn.GELU(), nn.Linear(evidence_hidden, n_evidence)
            )
        else:
            raise PerceptAlignError(f"evidence must be 'linear', 'mlp' or an nn.Module, got {evidence!r}.")
        self.n_evidence = n_evidence
        self.classifier = nn.Linear(hidden_size, n_classes) if classifier == "linear" else None
        self.raw_threshold = nn.Parameter(torch.tensor(inverse_softplus(threshold_init)))
        self.t0_max = None if t0_max is None else float(t0_max)
        if self.t0_max is None:
            raw_t0 = torch.tensor(inverse_softplus(t0_init) if t0_init > 0 else -20.0)
        else:  # t₀ = t0_max·σ(raw): the same box [0, t0_max] every compared method gets
            raw_t0 = torch.tensor(math.log(t0_init / (self.t0_max - t0_init)))
        self.raw_t0 = nn.Parameter(raw_t0, requires_grad=learn_t0)
        # Urgency: Φ_t·exp(r·t) against θ is the same crossing as Φ_t against a bound θ·exp(−r·t) that
        # collapses at rate r ≥ 0 (1/s); a constant threshold cannot shorten the right tail of the RTs.
        self.raw_urgency = (
            nn.Parameter(torch.tensor(inverse_softplus(float(urgency_init)))) if urgency else None
        )
        # Drift variability (the DDM's s_v): each trial's evidence gets a constant offset s_v·dt·z,
        # z ~ N(0, 1) drawn once per trial, so trials differ in drift and errors come from the low-drift
        # trials (slow errors), which a constant read-out of a frozen stream cannot produce.
        self.raw_drift_sd = (
            nn.Parameter(torch.tensor(inverse_softplus(float(drift_sd_init)))) if drift_variability else None
        )
        self.noise_seed = noise_seed

    @property
    def threshold(self) -> Tensor:
        """θ > 0 (softplus of a free parameter)."""
        return F.softplus(self.raw_threshold)

    @property
    def t0(self) -> Tensor:
        """Non-decision time t₀ in seconds, > 0 (and < ``t0_max`` when the head has a box)."""
        if self.t0_max is not None:
            return self.t0_max * torch.sigmoid(self.raw_t0)
        return F.softplus(self.raw_t0)

    @property
    def urgency_rate(self) -> Tensor | None:
        """The bound's collapse rate r (1/s, > 0) when the head has urgency, else None."""
        return None if self.raw_urgency is None else F.softplus(self.raw_urgency)

    @property
    def drift_sd(self) -> Tensor | None:
        """The across-trial drift sd s_v (accumulator units per second, > 0) when the head has drift
        variability, else None."""
        return None if self.raw_drift_sd is None else F.softplus(self.raw_drift_sd)

    def trial_noise(self, n_trials: int, *, device: torch.device | None = None) -> Tensor:
        """(n_trials, n_evidence) standard-normal drift draws from the head's ``noise_seed``.

        Trial i gets the same draw at every call (common random numbers), so a fit's loss is a deterministic
        function of the parameters and a trials table is reproducible; the draws are independent of the
        stimulus, as the DDM's drift variability is.
        """
        gen = torch.Generator().manual_seed(self.noise_seed)
        return torch.randn(n_trials, self.n_evidence, generator=gen).to(device)

    def n_fitted_parameters(self, *, include_classifier: bool = False) -> int:
        """Trainable scalars that shape RTs and choices: evidence, θ, t₀, the urgency rate and the drift sd
        (the read-out only when asked, since a human fit's choices come from the accumulator and never use
        it)."""
        modules = [self.evidence] + ([self.classifier] if include_classifier and self.classifier else [])
        count = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
        extras = [self.raw_threshold, self.raw_t0, self.raw_urgency, self.raw_drift_sd]
        return count + sum(int(p is not None and p.requires_grad) for p in extras)

    def _check_hidden(self, hidden: Tensor) -> None:
        if not isinstance(hidden, Tensor) or hidden.dim() != 3:
            shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
            raise PerceptAlignError(f"hidden states must be a (B, T, H) tensor, got {shape}.")
        if hidden.shape[1] == 0:
            raise PerceptAlignError("hidden states have no time steps (T = 0).")
        if hidden.shape[2] != self.hidden_size:
            raise PerceptAlignError(
                f"hidden size mismatch: the head was built for H = {self.hidden_size}, "
                f"got H = {hidden.shape[2]}."
            )
        if not torch.isfinite(hidden.detach()).all():
            raise PerceptAlignError("hidden states contain NaN or infinite values.")

    def _readout_weights(self, decision: Decision, steps: int) -> Tensor:
        """(B, T) weights over steps up to the decision step (causal), differentiable in t*.

        Index t holds the state at time t + 1 (in steps), so ``offset`` = t* − (t + 1) ≥ −1 for t ≤ step;
        steps after the decision step get weight exactly 0, whatever the window shape.
        """
        tau = decision.tau
        t = torch.arange(steps, device=tau.device, dtype=tau.dtype)
        offset = tau.unsqueeze(1) - (t.unsqueeze(0) + 1.0)
        if self.readout == "soft_mask":
            weights = torch.sigmoid(self.readout_sharpness * (offset + 0.5))
        else:  # one-sided Gaussian window ending at the decision
            weights = torch.exp(-0.5 * (offset.clamp_min(0.0) / self.readout_width) ** 2)
        assert decision.step is not None
        causal = t.unsqueeze(0) <= decision.step.unsqueeze(1).to(t.dtype)
        return weights * causal

    def forward(self, hidden: Tensor, trial_noise: Tensor | None = None) -> RTifyOutput:
        """Run the head on hidden states (B, T, H).

        ``trial_noise`` (B, n_evidence): the standard-normal drift draws of these trials when the head has
        drift variability; by default :meth:`trial_noise` (B) — pass slices of one draw when splitting a
        batch, so that chunks do not repeat the same draws.
        """
        self._check_hidden(hidden)
        raw = self.evidence(hidden)
        if raw.dim() != 3 or raw.shape[-1] != self.n_evidence:
            raise PerceptAlignError(
                f"the evidence module must map (B, T, H) to (B, T, {self.n_evidence}), "
                f"got {tuple(raw.shape)}."
            )
        drift_sd = self.drift_sd
        if drift_sd is not None:
            if trial_noise is None:
                trial_noise = self.trial_noise(raw.shape[0], device=raw.device)
            if tuple(trial_noise.shape) != (raw.shape[0], self.n_evidence):
                raise PerceptAlignError(
                    f"`trial_noise` must be ({raw.shape[0]}, {self.n_evidence}) (trials × accumulators), got "
                    f"{tuple(trial_noise.shape)}."
                )
            # before the non-negativity transform: the raw drift varies, the race stays monotone
            raw = raw + (drift_sd * self.dt) * trial_noise.to(raw.dtype).unsqueeze(1)
        elif trial_noise is not None:
            raise PerceptAlignError("`trial_noise` was given but the head has no drift variability.")
        ev = F.softplus(raw) if self.nonnegative else raw
        phi = torch.cumsum(ev, dim=1)
        rate = self.urgency_rate
        if rate is not None:  # index t holds the state at time (t + 1)·dt
            time_s = (torch.arange(phi.shape[1], device=phi.device, dtype=phi.dtype) + 1.0) * self.dt
            phi = phi * torch.exp(rate * time_s).view(1, -1, 1)
        theta = self.threshold
        gradient = "implicit" if self.estimator == "implicit" else "interpolated"
        if self.mode == "multiclass":
            decision = first_crossing_multiclass(phi, theta, min_slope=self.min_slope, gradient=gradient)
        else:
            phi = phi.squeeze(-1)
            decision = first_crossing_two_bound(phi, theta, min_slope=self.min_slope, gradient=gradient)
        passage = None
        if self.estimator == "soft":
            passage = first_passage(
                phi,
                theta,
                mode="race" if self.mode == "multiclass" else "two_bound",
                temperature=self.temperature,
                min_slope=self.min_slope,
            )

        if self.classifier is not None:
            step_logits = self.classifier(hidden)
        elif self.mode == "multiclass":
            step_logits = ev
        else:  # signed evidence → logit difference e between "upper" (class 1) and "lower" (class 0)
            step_logits = torch.cat([-0.5 * ev, 0.5 * ev], dim=-1)
        weights = self._readout_weights(decision, hidden.shape[1])
        # Weighted MEAN (not sum) so the logit scale does not grow with τ: otherwise CE alone would
        # reward slow decisions.
        choice_logits = (weights.unsqueeze(-1) * step_logits).sum(1) / weights.sum(1, keepdim=True)
        rt_s = rt_seconds(decision.tau, self.dt, self.t0)
        return RTifyOutput(
            decision=decision,
            rt_s=rt_s,
            choice_logits=choice_logits,
            step_logits=step_logits,
            phi=phi,
            threshold=theta,
            passage=passage,
        )

    @torch.no_grad()
    def predict_trials(
        self,
        hidden: Tensor,
        *,
        choice_from: Literal["readout", "accumulator"] = "accumulator",
        batch_size: int | None = None,
    ) -> TrialPredictions:
        """RTs (s), choices and decided flags as numpy arrays, in batches of ``batch_size`` trials.

        ``choice_from="accumulator"`` (default) reports the race winner / bound hit; ``"readout"`` the
        argmax of the causal read-out's logits.
        """
        if choice_from not in ("readout", "accumulator"):
            raise PerceptAlignError(f"choice_from must be 'readout' or 'accumulator', got {choice_from!r}.")
        self._check_hidden(hidden)
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
            raise PerceptAlignError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        step = batch_size or hidden.shape[0]
        noise = self.trial_noise(hidden.shape[0], device=hidden.device) if self.drift_sd is not None else None
        rts, choices, decided = [], [], []
        for start in range(0, hidden.shape[0], step):
            chunk = None if noise is None else noise[start : start + step]
            out = self(hidden[start : start + step], chunk)
            rts.append(out.rt_s.cpu().numpy())
            chosen = out.choice_logits.argmax(-1) if choice_from == "readout" else out.decision.choice
            choices.append(chosen.cpu().numpy())
            decided.append(out.decision.decided.cpu().numpy())
        return TrialPredictions(
            rt_s=np.concatenate(rts), choice=np.concatenate(choices), decided=np.concatenate(decided)
        )
