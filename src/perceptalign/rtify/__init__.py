"""RTify: differentiable decision times for recurrent networks, fitted to human reaction times.

The front door::

    from perceptalign.rtify import load_rt_dataset, RTifyHead, fit_quality

    human = load_rt_dataset("rdm-human", split="train")   # ships with the package
    head = RTifyHead(hidden_size=32, n_classes=2)           # wraps any B×T×H hidden states
    fit_quality(human_test, model_trials)                   # per-condition accuracy, quantiles, KS, W1

Trials tables (``condition``, ``rt_s``, ``correct``, optional ``split``/``decided``) are the one format in
which human data, models and baselines exchange reaction times (:mod:`perceptalign.rtify.trials`). Every
method is fitted the same way, as an estimator (:mod:`perceptalign.rtify.estimators`: ``fit(trials)``,
``simulate(conditions, n)``, ``score(trials)``) built from a frozen config and sharing one objective
(:class:`RTLoss`); the command-line experiments (``perceptalign rtify fit`` …) build those estimators.
"""

from perceptalign.rtify.baselines import DDMBaseline, EntropyThresholdRT, EvidentialRT
from perceptalign.rtify.ddm import DDM, DDMConfig, fit_ddm_variants
from perceptalign.rtify.decision import (
    Decision,
    FirstPassage,
    first_crossing,
    first_crossing_multiclass,
    first_crossing_two_bound,
    first_passage,
    rt_seconds,
)
from perceptalign.rtify.estimators import (
    CachedDrive,
    CachedTrials,
    DDMEstimator,
    DDMEstimatorConfig,
    EntropyThresholdConfig,
    EntropyThresholdEstimator,
    EvidentialConfig,
    EvidentialEstimator,
    NetworkTrials,
    RTEstimator,
    RTifyHeadConfig,
    RTifyHeadEstimator,
    WongWangEstimator,
)
from perceptalign.rtify.figures import (
    psychometric_chronometric,
    quantile_probability_plot,
    signed_rt_histograms,
)
from perceptalign.rtify.heads import RTifyHead, RTifyOutput
from perceptalign.rtify.ideal_observer import information_bound, sprt_min_mean_decision_time
from perceptalign.rtify.losses import neg_pearson, self_penalty_loss, soft_histogram
from perceptalign.rtify.metrics import fit_quality, rt_quantiles, summarize_fit
from perceptalign.rtify.objective import RTLoss, RTSample, RTTargets
from perceptalign.rtify.trials import (
    RT_DATASETS,
    load_rt_dataset,
    load_trials_csv,
    split_trials,
    trials_from_signed_rt,
    validate_trials,
)
from perceptalign.rtify.uncertainty import (
    aggregate_seeds,
    bootstrap_fit_quality,
    noise_floor,
    paired_difference,
)
from perceptalign.rtify.wongwang import WW_DEFAULTS, WongWang2, WongWangN, WWParams

__all__ = [
    "DDM",
    "RT_DATASETS",
    "WW_DEFAULTS",
    "CachedDrive",
    "CachedTrials",
    "DDMBaseline",
    "DDMConfig",
    "DDMEstimator",
    "DDMEstimatorConfig",
    "Decision",
    "EntropyThresholdConfig",
    "EntropyThresholdEstimator",
    "EntropyThresholdRT",
    "EvidentialConfig",
    "EvidentialEstimator",
    "EvidentialRT",
    "FirstPassage",
    "NetworkTrials",
    "RTEstimator",
    "RTLoss",
    "RTSample",
    "RTTargets",
    "RTifyHead",
    "RTifyHeadConfig",
    "RTifyHeadEstimator",
    "RTifyOutput",
    "WWParams",
    "WongWang2",
    "WongWangEstimator",
    "WongWangN",
    "aggregate_seeds",
    "bootstrap_fit_quality",
    "first_crossing",
    "first_crossing_multiclass",
    "first_crossing_two_bound",
    "first_passage",
    "fit_ddm_variants",
    "fit_quality",
    "information_bound",
    "load_rt_dataset",
    "load_trials_csv",
    "neg_pearson",
    "noise_floor",
    "paired_difference",
    "psychometric_chronometric",
    "quantile_probability_plot",
    "rt_quantiles",
    "rt_seconds",
    "self_penalty_loss",
    "signed_rt_histograms",
    "soft_histogram",
    "split_trials",
    "sprt_min_mean_decision_time",
    "summarize_fit",
    "trials_from_signed_rt",
    "validate_trials",
]
