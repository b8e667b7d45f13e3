"""Settings of the RTify fit on human RDM RTs, its option types and the method labels of every report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.objective import RTLoss

Objective = Literal["human", "self-penalty"]
LossKind = Literal["mse", "wasserstein", "quantile"]
PenaltyKind = Literal["margin", "tau", "p_correct"]
EvidenceKind = Literal["increment", "linear"]
GradientEstimator = Literal["soft", "interpolated", "implicit"]

METHOD_LABELS = {
    "rtify-human": "RTify (human fit)",
    "rtify-self-penalty": "RTify self-penalised",
    "entropy": "entropy threshold",
    "evidential": "evidential",
    "ddm": "DDM (BIC-selected)",
    "ddm-simple": "DDM (simple)",
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
    estimator: GradientEstimator = "soft"
    temperature: float = 0.1
    urgency: bool = False
    drift_variability: bool = False
    fit_gain: bool = False
    head_steps: int = 200
    lr: float = 0.03
    lr_schedule: Literal["constant", "cosine"] = "constant"
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
            "estimator": ("soft", "interpolated", "implicit"),
            "lr_schedule": ("constant", "cosine"),
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
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise PerceptAlignError(f"`temperature` must be a positive number, got {self.temperature!r}.")
        for name in ("urgency", "drift_variability", "fit_gain"):
            if not isinstance(getattr(self, name), bool):
                raise PerceptAlignError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.fit_gain and self.objective != "human":
            raise PerceptAlignError(
                "`fit_gain` fits the stimulus gain to human RTs; the self-penalised objective has no human "
                "data to fit it to: drop `fit_gain` or use objective 'human'."
            )
        self.rt_loss  # noqa: B018 — validates the objective's settings now, not at the first fit step

    @property
    def rt_loss(self) -> RTLoss:
        """The objective these settings define (shared by the head, Wong–Wang and the baselines)."""
        return RTLoss(
            kind=self.loss,
            acc_weight=self.acc_weight,
            lo=self.lo,
            hi=self.hi,
            n_bins=self.n_bins,
            sigma=self.sigma,
        )

    @property
    def model_name(self) -> str:
        return "rtify-human" if self.objective == "human" else "rtify-self-penalty"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
