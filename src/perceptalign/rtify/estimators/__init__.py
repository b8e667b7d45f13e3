"""One way to fit: every RT model as an estimator with ``fit(trials)``, ``simulate(conditions, n)`` and
``score(trials)`` (the same per-condition metric table for all), built from a frozen, validated config.

- :class:`RTifyHeadEstimator` — an RTify head on a frozen network's states (human fit or self-penalised);
- :class:`EntropyThresholdEstimator`, :class:`EvidentialEstimator` — the grid-searched baselines on the
  same network;
- :class:`DDMEstimator` — the strong (BIC-selected) or simple drift-diffusion model, by likelihood;
- :class:`WongWangEstimator` — the coherence-driven Wong–Wang model.

The gradient- and grid-fitted estimators share one objective, :class:`perceptalign.rtify.RTLoss`
(distance, accuracy weight, histogram window); the DDMs are fitted by likelihood.
"""

from perceptalign.rtify.estimators.base import RTEstimator
from perceptalign.rtify.estimators.ddm import DDMEstimator, DDMEstimatorConfig
from perceptalign.rtify.estimators.network import (
    TRAIN_SEED_OFFSET,
    EntropyThresholdConfig,
    EntropyThresholdEstimator,
    EvidentialConfig,
    EvidentialEstimator,
    NetworkTrials,
    RTifyHeadConfig,
    RTifyHeadEstimator,
)
from perceptalign.rtify.estimators.wongwang import WongWangEstimator

__all__ = [
    "TRAIN_SEED_OFFSET",
    "DDMEstimator",
    "DDMEstimatorConfig",
    "EntropyThresholdConfig",
    "EntropyThresholdEstimator",
    "EvidentialConfig",
    "EvidentialEstimator",
    "NetworkTrials",
    "RTEstimator",
    "RTifyHeadConfig",
    "RTifyHeadEstimator",
    "WongWangEstimator",
]
