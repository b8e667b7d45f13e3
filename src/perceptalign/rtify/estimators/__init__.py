"""One way to fit: every RT model as an estimator with ``fit(trials)``, ``simulate(conditions, n)`` and
``score(trials)`` (the same per-condition metric table for all), built from a frozen, validated config.

- :class:`RTifyHeadEstimator` — an RTify head on a frozen network's states (human fit or self-penalised);
- :class:`EntropyThresholdEstimator`, :class:`EvidentialEstimator` — the grid-searched baselines on the
  same network;
- :class:`DDMEstimator` — the strong (BIC-selected) or simple drift-diffusion model, by likelihood;
- :class:`WongWangEstimator` — the Wong–Wang model, driven by the coherence or by a network's logits.

Trial sources: a network run on fresh trials (``GRUTrials``) or its outputs cached once
(:class:`CachedTrials`; :class:`CachedDrive` for Wong–Wang), with disjoint fit and eval pools: ``fit``
draws from the fit pool, ``simulate`` and ``score`` from the eval pool (:data:`Pool`).

The gradient- and grid-fitted estimators share one objective, :class:`perceptalign.rtify.RTLoss`
(distance, accuracy weight, histogram window); the DDMs are fitted by likelihood.
"""

from perceptalign.rtify.estimators.base import POOLS, Pool, RTEstimator
from perceptalign.rtify.estimators.cached import CachedDrive, CachedTrials
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
from perceptalign.rtify.estimators.wongwang import CoherenceDrive, WongWangEstimator, WWInput

__all__ = [
    "POOLS",
    "TRAIN_SEED_OFFSET",
    "CachedDrive",
    "CachedTrials",
    "CoherenceDrive",
    "DDMEstimator",
    "DDMEstimatorConfig",
    "EntropyThresholdConfig",
    "EntropyThresholdEstimator",
    "EvidentialConfig",
    "EvidentialEstimator",
    "NetworkTrials",
    "Pool",
    "RTEstimator",
    "RTifyHeadConfig",
    "RTifyHeadEstimator",
    "WWInput",
    "WongWangEstimator",
]
