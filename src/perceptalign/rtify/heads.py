"""The RTify head: hidden states → evidence → accumulator → threshold → decision time → reaction time.

Any recurrent model's per-step states (a GRU/LSTM output, per-frame backbone features) become a
human-comparable reaction time: RT = τ·dt + t₀, where τ is the accumulator's first threshold crossing
(differentiable through :mod:`perceptalign.rtify.decision`) and t₀ a learnable non-decision time (the
published heads had none, so their RTs could not match the ~0.16 s floor of human RTs). The choice is
read from a per-step classifier around τ, so that the choice itself depends on when the model stops.
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
    first_crossing_multiclass,
    first_crossing_two_bound,
)

__all__ = ["RTifyHead", "RTifyOutput", "TrialPredictions", "inverse_softplus"]

Mode = Literal["multiclass", "two_bound"]
Readout = Literal["soft_mask", "gaussian"]


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

    @property
    def choice(self) -> Tensor:
        """The read-out choice (argmax of ``choice_logits``)."""
        return self.choice_logits.argmax(dim=-1)


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
    only): one signed accumulator between ±θ, class 1 = upper bound. The per-step classifier is a
    separate linear layer (``classifier="linear"``, as in the published RNN heads) or the evidence itself
    (``classifier="evidence"``, so the read-out agrees with the accumulator race).
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
        min_slope: float = 1e-3,
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
        if readout not in ("soft_mask", "gaussian"):
            raise PerceptAlignError(f"readout must be 'soft_mask' or 'gaussian', got {readout!r}.")
        if classifier not in ("linear", "evidence"):
            raise PerceptAlignError(f"classifier must be 'linear' or 'evidence', got {classifier!r}.")
        if not (readout_sharpness > 0 and readout_width > 0):
            raise PerceptAlignError("readout_sharpness and readout_width must be positive.")

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
        raw_t0 = torch.tensor(inverse_softplus(t0_init) if t0_init > 0 else -20.0)
        self.raw_t0 = nn.Parameter(raw_t0, requires_grad=learn_t0)

    @property
    def threshold(self) -> Tensor:
        """θ > 0 (softplus of a free parameter)."""
        return F.softplus(self.raw_threshold)

    @property
    def t0(self) -> Tensor:
        """Non-decision time t₀ in seconds, > 0."""
        return F.softplus(self.raw_t0)

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

    def _readout_weights(self, tau: Tensor, steps: int) -> Tensor:
        """(B, T) weights over steps, differentiable in τ, that emphasise what was seen up to the decision."""
        t = torch.arange(steps, device=tau.device, dtype=tau.dtype)
        offset = tau.unsqueeze(1) - t.unsqueeze(0)
        if self.readout == "soft_mask":
            return torch.sigmoid(self.readout_sharpness * (offset + 0.5))
        return torch.exp(-0.5 * (offset / self.readout_width) ** 2)

    def forward(self, hidden: Tensor) -> RTifyOutput:
        """Run the head on hidden states (B, T, H)."""
        self._check_hidden(hidden)
        raw = self.evidence(hidden)
        if raw.dim() != 3 or raw.shape[-1] != self.n_evidence:
            raise PerceptAlignError(
                f"the evidence module must map (B, T, H) to (B, T, {self.n_evidence}), "
                f"got {tuple(raw.shape)}."
            )
        ev = F.softplus(raw) if self.nonnegative else raw
        phi = torch.cumsum(ev, dim=1)
        theta = self.threshold
        if self.mode == "multiclass":
            decision = first_crossing_multiclass(phi, theta, min_slope=self.min_slope)
        else:
            phi = phi.squeeze(-1)
            decision = first_crossing_two_bound(phi, theta, min_slope=self.min_slope)

        if self.classifier is not None:
            step_logits = self.classifier(hidden)
        elif self.mode == "multiclass":
            step_logits = ev
        else:  # signed evidence → logit difference e between "upper" (class 1) and "lower" (class 0)
            step_logits = torch.cat([-0.5 * ev, 0.5 * ev], dim=-1)
        weights = self._readout_weights(decision.tau, hidden.shape[1])
        # Weighted MEAN (not sum) so the logit scale does not grow with τ: otherwise CE alone would
        # reward slow decisions.
        choice_logits = (weights.unsqueeze(-1) * step_logits).sum(1) / weights.sum(1, keepdim=True)
        rt_s = decision.tau * self.dt + self.t0
        return RTifyOutput(
            decision=decision,
            rt_s=rt_s,
            choice_logits=choice_logits,
            step_logits=step_logits,
            phi=phi,
            threshold=theta,
        )

    @torch.no_grad()
    def predict_trials(
        self,
        hidden: Tensor,
        *,
        choice_from: Literal["readout", "accumulator"] = "readout",
        batch_size: int | None = None,
    ) -> TrialPredictions:
        """RTs (s), choices and decided flags as numpy arrays, in batches of ``batch_size`` trials.

        ``choice_from="accumulator"`` reports the race winner / bound hit instead of the read-out argmax.
        """
        if choice_from not in ("readout", "accumulator"):
            raise PerceptAlignError(f"choice_from must be 'readout' or 'accumulator', got {choice_from!r}.")
        self._check_hidden(hidden)
        if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
            raise PerceptAlignError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        step = batch_size or hidden.shape[0]
        rts, choices, decided = [], [], []
        for start in range(0, hidden.shape[0], step):
            out = self(hidden[start : start + step])
            rts.append(out.rt_s.cpu().numpy())
            choices.append((out.choice if choice_from == "readout" else out.decision.choice).cpu().numpy())
            decided.append(out.decision.decided.cpu().numpy())
        return TrialPredictions(
            rt_s=np.concatenate(rts), choice=np.concatenate(choices), decided=np.concatenate(decided)
        )
