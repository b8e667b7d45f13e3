"""Estimators that decide on a frozen network's states: the RTify head and the entropy and evidential
baselines.

All three read the same :class:`NetworkTrials` (a frozen network run on stimuli of given conditions), so
they differ only in how a decision time is read from that one representation. Training trials are
simulated with ``seed + 101`` (``n_train`` per condition), the seed offset of ``rtify fit``, so a
network's cache hands every method the very same trials.

Every call names its pool: ``fit`` draws ``pool="fit"`` trials, ``simulate`` (and so ``score``) draws
``pool="eval"`` trials. A fresh simulation (``GRUTrials``) ignores the pool (other seeds are other
trials); a cache of network outputs (:class:`perceptalign.rtify.estimators.CachedTrials`) keeps the two
pools disjoint, so no estimator is scored on the trials it was fitted on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import numpy as np
import pandas as pd
import torch

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.estimators.base import (
    Pool,
    RTEstimator,
    check_optional_t0_max,
    check_positive_int,
)
from perceptalign.rtify.objective import RTLoss, RTTargets
from perceptalign.rtify.trials import conditions as table_conditions
from perceptalign.rtify.trials import default_t0_max, validate_trials

if TYPE_CHECKING:
    from perceptalign.rtify.baselines import EntropyThresholdRT, EvidentialRT
    from perceptalign.rtify.experiments.rdm.config import FitConfig
    from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials
    from perceptalign.rtify.experiments.rdm.stimulus_gain import StimulusGain
    from perceptalign.rtify.heads import RTifyHead

__all__ = [
    "TRAIN_SEED_OFFSET",
    "EntropyThresholdConfig",
    "EntropyThresholdEstimator",
    "EvidentialConfig",
    "EvidentialEstimator",
    "NetworkTrials",
    "RTifyHeadConfig",
    "RTifyHeadEstimator",
]

#: Training trials of a network-based estimator are simulated with ``config.seed + TRAIN_SEED_OFFSET``.
TRAIN_SEED_OFFSET = 101


class NetworkTrials(Protocol):
    """A frozen network's trials of given conditions: run on fresh stimuli (e.g.
    :class:`perceptalign.rtify.experiments.rdm.simulated_trials.GRUTrials`) or read from a cache of its
    outputs (:class:`perceptalign.rtify.estimators.CachedTrials`)."""

    @property
    def dt(self) -> float: ...

    @property
    def n_steps(self) -> int: ...

    def __call__(
        self, conditions: Sequence[float], n_per_condition: int, *, seed: int, pool: Pool = "fit"
    ) -> SimulatedTrials:
        """States (N, T, H), logits (N, T, C) and labels of ``n_per_condition`` trials per condition,
        drawn from ``pool``: "fit" trials for fitting, "eval" trials for simulating/scoring. A source that
        cannot honour a request (an unknown condition, more trials than its pool holds) must refuse it
        with a :class:`PerceptAlignError`, never hand out trials of the other pool."""
        ...

    def build_head(self, config: FitConfig, *, t0_max: float | None = None) -> RTifyHead:
        """An RTify head on the network's states, started from its own read-out."""
        ...


def _check_loss(owner: str, loss: Any) -> None:
    if not isinstance(loss, RTLoss):
        raise PerceptAlignError(f"{owner}: `loss` must be an RTLoss (the shared objective), got {loss!r}.")


def _check_network(owner: str, network: Any) -> None:
    if not (callable(network) and hasattr(network, "dt")):
        raise PerceptAlignError(
            f"{owner}: `network` must be a NetworkTrials (callable (conditions, n, seed=…) → SimulatedTrials "
            f"with a `dt`), got {type(network).__name__}."
        )


# --------------------------------------------------------------------------------------------------------
# RTify head.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RTifyHeadConfig:
    """Settings of an RTify head fit: the shared objective ``loss`` plus the head's own settings (names and
    meanings as in :class:`perceptalign.rtify.experiments.rdm.FitConfig`); ``t0_max`` None is the shared
    box min(0.8 s, median training RT)."""

    loss: RTLoss = field(default_factory=RTLoss)
    objective: Literal["human", "self-penalty"] = "human"
    penalty: Literal["margin", "tau", "p_correct"] = "margin"
    lam: float = 0.0035
    evidence: Literal["increment", "linear"] = "linear"
    readout: Literal["soft_mask", "gaussian"] = "gaussian"
    estimator: Literal["soft", "interpolated", "implicit"] = "soft"
    temperature: float = 0.1
    urgency: bool = False
    drift_variability: bool = False
    fit_gain: bool = False
    head_steps: int = 200
    lr: float = 0.03
    lr_schedule: Literal["constant", "cosine"] = "constant"
    n_train: int = 250
    self_penalty_batch: int = 64
    t0_init: float = 0.25
    t0_fixed: float = 0.3
    t0_max: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_loss("RTifyHeadConfig", self.loss)
        check_optional_t0_max("RTifyHeadConfig", self.t0_max)
        self.fit_config()  # validates every other setting now, not at the first fit step

    def fit_config(self) -> FitConfig:
        """The experiment settings the wrapped fit functions take (their ``rt_loss`` equals ``loss``)."""
        from perceptalign.rtify.experiments.rdm.config import FitConfig

        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("loss", "t0_max")}
        loss = self.loss
        return FitConfig(
            **own,
            loss=loss.kind,
            acc_weight=loss.acc_weight,
            sigma=loss.sigma,
            n_bins=loss.n_bins,
            lo=loss.lo,
            hi=loss.hi,
        )

    @classmethod
    def from_fit_config(cls, config: FitConfig, *, t0_max: float | None = None) -> RTifyHeadConfig:
        """The head settings of an ``rtify fit`` experiment (``config.rt_loss`` becomes ``loss``)."""
        names = {f.name for f in fields(cls)} - {"loss", "t0_max"}
        return cls(loss=config.rt_loss, t0_max=t0_max, **{n: getattr(config, n) for n in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scalar_or_none(value: torch.Tensor | None) -> float | None:
    return None if value is None else float(value.detach())


class RTifyHeadEstimator(RTEstimator):
    """An RTify head on a frozen network's states, fitted to human RTs with the shared objective
    (:func:`perceptalign.rtify.experiments.rdm.fit_head_to_human`), or self-penalised without human data
    (``objective="self-penalty"``: :func:`perceptalign.rtify.experiments.rdm.train_self_penalised_on` on
    fresh trials every step; the trials passed to ``fit`` then only name the conditions).

    ``fit`` draws ``n_train`` trials per condition (self-penalised: ``self_penalty_batch`` per step) from
    the network's fit pool, ``simulate`` from its eval pool; a cached network
    (:class:`perceptalign.rtify.estimators.CachedTrials`) refuses sizes beyond its pools.

    After ``fit``: ``head_`` (the :class:`RTifyHead`), ``history_`` (per-step loss) and ``t0_max_``.
    """

    def __init__(
        self,
        config: RTifyHeadConfig,
        network: NetworkTrials,
        *,
        progress: PhaseStatusCallback | None = None,
    ) -> None:
        if not isinstance(config, RTifyHeadConfig):
            raise PerceptAlignError(f"RTifyHeadEstimator expects an RTifyHeadConfig, got {config!r}.")
        _check_network("RTifyHeadEstimator", network)
        super().__init__(config)
        self.network, self.progress = network, progress
        self.name = "rtify-human" if config.objective == "human" else "rtify-self-penalty"

    @property
    def loss(self) -> RTLoss:
        return self.config.loss

    def fit(self, trials: pd.DataFrame) -> Self:
        from perceptalign.rtify.experiments.rdm.human_fit import HumanTargets, fit_head_to_human
        from perceptalign.rtify.experiments.rdm.self_penalised import train_self_penalised_on

        cfg: RTifyHeadConfig = self.config
        settings = cfg.fit_config()
        if cfg.fit_gain:
            self._check_gain_network()
        human = validate_trials(trials, name="human training trials")
        conds = table_conditions(human)
        self.t0_max_ = cfg.t0_max if cfg.t0_max is not None else default_t0_max(human)
        self.conditions_ = conds
        if cfg.objective == "human":
            targets = HumanTargets.from_table(
                human, conds, settings, name="human training trials", beyond_window="count"
            )
            sim = self.network(conds, cfg.n_train, seed=cfg.seed + TRAIN_SEED_OFFSET, pool="fit")
            self.head_ = self.network.build_head(settings, t0_max=self.t0_max_)
            gain = self._stimulus_gain(sim) if cfg.fit_gain else None
            self.history_ = fit_head_to_human(
                self.head_, sim, targets, settings, progress=self.progress, gain=gain
            )
            self.gain_scale_ = None if gain is None else float(gain.scale.detach())
        else:
            batch = cfg.self_penalty_batch
            warm = self.network(conds, batch, seed=cfg.seed + 7919, pool="fit")
            self.head_ = self.network.build_head(settings, t0_max=self.t0_max_)
            self.history_ = train_self_penalised_on(
                self.head_,
                lambda step: self.network(conds, batch, seed=cfg.seed + 10_000 + step, pool="fit"),
                warm.hidden,
                self.network.n_steps / 2,
                settings,
                progress=self.progress,
            )
        if cfg.objective != "human":
            self.gain_scale_ = None
        self._mark_fitted()
        return self

    def _check_gain_network(self) -> None:
        """``fit_gain`` needs a network that simulates its stimulus (refused before any simulation)."""
        from perceptalign.rtify.experiments.rdm.simulated_trials import GRUTrials

        if not isinstance(self.network, GRUTrials):
            raise PerceptAlignError(
                f"RTifyHeadEstimator: `fit_gain` re-runs the network at another stimulus gain, which "
                f"{type(self.network).__name__} cannot do (a cache of network outputs has no stimulus); use "
                "the abstract RDM network (GRUTrials) or fit without `fit_gain`."
            )

    def _stimulus_gain(self, sim: SimulatedTrials) -> StimulusGain:
        """The fitted stimulus gain of ``fit_gain`` on the fit trials ``sim`` (the network was checked by
        :meth:`_check_gain_network` before any simulation)."""
        from perceptalign.rtify.experiments.rdm.stimulus_gain import StimulusGain

        return StimulusGain(self.network.backbone, sim)  # type: ignore[attr-defined]

    @property
    def simulation_network(self) -> NetworkTrials:
        """The network ``simulate`` runs: at the fitted stimulus gain with ``fit_gain``, else the one
        given."""
        self._check_fitted("simulation_network")
        if self.gain_scale_ is None:
            return self.network
        return self.network.with_gain_scale(self.gain_scale_)  # type: ignore[attr-defined]

    def _simulate(self, conditions: list[Any], n_per_condition: int, seed: int) -> pd.DataFrame:
        from perceptalign.rtify.experiments.rdm.human_fit import predict_table

        sim = self.simulation_network(conditions, n_per_condition, seed=seed, pool="eval")
        return predict_table(self.head_, sim)

    @torch.no_grad()
    def expected_loss(
        self, targets: RTTargets, conditions: list[Any], n_per_condition: int, *, seed: int
    ) -> tuple[float, int]:
        """The objective's expected (soft first-passage) value on the eval trials that ``simulate`` with the
        same seed decides (the head's own stream: at the fitted gain with ``fit_gain``), and the number of
        trials whose crossing slope was clamped."""
        from perceptalign.rtify.experiments.rdm.human_fit import head_sample

        self._check_fitted("expected_loss()")
        sim = self.simulation_network(list(conditions), n_per_condition, seed=seed, pool="eval")
        out = self.head_(sim.hidden)
        value, _ = self.loss(head_sample(out, self.head_, sim), targets)
        return float(value), int(out.decision.n_clamped)

    @property
    def n_parameters(self) -> int:
        self._check_fitted("n_parameters")
        if self.config.objective != "human":
            return 0
        return self.head_.n_fitted_parameters() + int(self.gain_scale_ is not None)

    def params(self) -> dict[str, Any]:
        self._check_fitted("params()")
        human = self.config.objective == "human"
        return {
            "threshold": float(self.head_.threshold.detach()),
            "t0": float(self.head_.t0.detach()),
            "t0_max": self.t0_max_ if human else None,
            "t0_learned": human,
            "choice": "accumulator (bound crossed)",
            "estimator": self.config.estimator,
            "urgency_rate_per_s": _scalar_or_none(self.head_.urgency_rate),
            "drift_sd_per_s": _scalar_or_none(self.head_.drift_sd),
            "stimulus_gain_scale": self.gain_scale_,
        }


# --------------------------------------------------------------------------------------------------------
# Entropy threshold and evidential uncertainty: grid searches on the binned form of the shared objective.
# --------------------------------------------------------------------------------------------------------


def _grid_objective(loss: RTLoss) -> Literal["hist_mse", "wasserstein"]:
    """The grid search's binned distance for the shared objective: histogram MSE for ``mse``, binned W1
    otherwise (a quantile distance has no binned form; W1 compares the same RT distributions)."""
    return "hist_mse" if loss.kind == "mse" else "wasserstein"


@dataclass(frozen=True)
class EntropyThresholdConfig:
    """Settings of the entropy-threshold baseline: the shared objective ``loss`` (its distance and
    histogram window), the (θ_H, t₀) grid (:class:`perceptalign.rtify.EntropyThresholdRT`), ``n_train``
    simulated trials per condition and ``seed``."""

    loss: RTLoss = field(default_factory=RTLoss)
    t0_max: float | None = None
    n_theta: int = 96
    n_t0: int = 81
    n_refine: int = 21
    n_starts: int = 3
    n_train: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_loss(owner, self.loss)
        check_optional_t0_max(owner, self.t0_max)
        for name in ("n_theta", "n_t0", "n_refine"):
            value = getattr(self, name)
            check_positive_int(owner, name, value)
            if value < 2:
                raise PerceptAlignError(f"{owner}: `{name}` must be ≥ 2 grid points, got {value!r}.")
        for name in ("n_starts", "n_train"):
            check_positive_int(owner, name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PerceptAlignError(f"{owner}: `seed` must be a non-negative integer, got {self.seed!r}.")

    def search_settings(self, t0_max: float) -> dict[str, Any]:
        """Keyword arguments of the grid search, in the shared t₀ box ``t0_max``."""
        return {
            "objective": _grid_objective(self.loss),
            "t0_max": t0_max,
            "n_theta": self.n_theta,
            "n_t0": self.n_t0,
            "n_refine": self.n_refine,
            "n_starts": self.n_starts,
            "n_bins": self.loss.n_bins,
            "lo": self.loss.lo,
            "hi": self.loss.hi,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvidentialConfig(EntropyThresholdConfig):
    """The entropy baseline's settings plus the evidential read-out's training (Sensoy et al. 2018)."""

    epochs: int = 20
    annealing_epochs: int = 10
    lr: float = 0.02
    batch_size: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("epochs", "annealing_epochs", "batch_size"):
            check_positive_int(type(self).__name__, name, getattr(self, name))
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise PerceptAlignError(f"EvidentialConfig: `lr` must be a positive number, got {self.lr!r}.")


def _probabilities(sim: SimulatedTrials) -> dict[float, np.ndarray]:
    return sim.by_condition(torch.softmax(sim.logits, -1).double().numpy())


def _labels(sim: SimulatedTrials) -> dict[float, np.ndarray]:
    return sim.by_condition(sim.labels.numpy())


class _ThresholdEstimator(RTEstimator):
    """Shared fit/simulate of the two grid-searched baselines (they differ in what they threshold)."""

    config_type: type[EntropyThresholdConfig] = EntropyThresholdConfig

    def __init__(self, config: EntropyThresholdConfig, network: NetworkTrials) -> None:
        owner = type(self).__name__
        if not isinstance(config, self.config_type):
            raise PerceptAlignError(f"{owner} expects a {self.config_type.__name__}, got {config!r}.")
        _check_network(owner, network)
        super().__init__(config)
        self.network = network

    def _inputs(self, sim: SimulatedTrials) -> dict[float, np.ndarray]:
        raise NotImplementedError

    def _make(self, t0_max: float) -> EntropyThresholdRT | EvidentialRT:
        raise NotImplementedError

    def fit(self, trials: pd.DataFrame) -> Self:
        human = validate_trials(trials, name="human training trials")
        conds = table_conditions(human)
        self.t0_max_ = self.config.t0_max if self.config.t0_max is not None else default_t0_max(human)
        sim = self.network(conds, self.config.n_train, seed=self.config.seed + TRAIN_SEED_OFFSET, pool="fit")
        self.model_ = self._make(self.t0_max_).fit(self._inputs(sim), human, _labels(sim))
        self._mark_fitted()
        return self

    def _simulate(self, conditions: list[Any], n_per_condition: int, seed: int) -> pd.DataFrame:
        sim = self.network(conditions, n_per_condition, seed=seed, pool="eval")
        return self.model_.predict(self._inputs(sim), _labels(sim))


class EntropyThresholdEstimator(_ThresholdEstimator):
    """RT = the time at which the softmax entropy of the network's read-out falls below θ_H, plus t₀
    (:class:`perceptalign.rtify.EntropyThresholdRT`); θ_H and t₀ grid-searched on the shared objective."""

    name = "entropy"

    def _inputs(self, sim: SimulatedTrials) -> dict[float, np.ndarray]:
        return _probabilities(sim)

    def _make(self, t0_max: float) -> EntropyThresholdRT:
        from perceptalign.rtify.baselines import EntropyThresholdRT

        return EntropyThresholdRT(self.network.dt, **self.config.search_settings(t0_max))

    @property
    def n_parameters(self) -> int:
        return 2

    def params(self) -> dict[str, Any]:
        self._check_fitted("params()")
        return {"theta_H": self.model_.theta_, "t0": self.model_.t0_}


class EvidentialEstimator(_ThresholdEstimator):
    """A per-step evidential read-out of the network's states trained with its own loss, deciding when its
    uncertainty falls below θ (:class:`perceptalign.rtify.EvidentialRT`); θ and t₀ grid-searched on the
    shared objective, the read-out trained on the simulation's labels (never on human RTs)."""

    name = "evidential"
    config_type = EvidentialConfig

    def _inputs(self, sim: SimulatedTrials) -> dict[float, np.ndarray]:
        return sim.by_condition(sim.hidden.numpy())

    def _make(self, t0_max: float) -> EvidentialRT:
        from perceptalign.rtify.baselines import EvidentialRT

        cfg: EvidentialConfig = self.config
        return EvidentialRT(
            self.network.dt,
            **cfg.search_settings(t0_max),
            epochs=cfg.epochs,
            annealing_epochs=cfg.annealing_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )

    @property
    def n_parameters(self) -> int:
        return 2

    def params(self) -> dict[str, Any]:
        self._check_fitted("params()")
        model = self.model_
        # Per-condition entries get string keys, as everywhere else in the report (JSON keys are strings).
        readout = {
            k: {str(c): x for c, x in v.items()} if isinstance(v, dict) else v
            for k, v in model.training_summary_.items()
        }
        return {"theta_u": model.theta_, "t0": model.t0_, "n_params": model.n_params, "readout": readout}
