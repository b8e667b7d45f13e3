"""The coherence-driven Wong–Wang model as an estimator (fitted by
:func:`perceptalign.rtify.experiments.rdm.wongwang_fit.fit_ww_to_human` on the shared objective)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import pandas as pd
import torch

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.estimators.base import RTEstimator
from perceptalign.rtify.objective import RTLoss
from perceptalign.rtify.trials import check_coherences, validate_trials
from perceptalign.rtify.trials import conditions as table_conditions

if TYPE_CHECKING:
    from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig

__all__ = ["WongWangEstimator"]


class WongWangEstimator(RTEstimator):
    """Wong & Wang (2006) driven by the motion coherence, fitted to human RTs: θ and the motor delay by
    the soft first-passage gradient of the shared objective, the dynamics by finite differences on common
    noise (:class:`perceptalign.rtify.experiments.rdm.wongwang_fit.WWFitConfig`). The motor delay is
    capped at the fastest training RT.

    After ``fit``: ``model_`` (:class:`perceptalign.rtify.WongWang2`), ``history_``, ``params_init_``.
    (A network-logit-driven Wong–Wang is fitted by ``run_ww_fit`` with backbone trials.)
    """

    name = "ww-coherence"

    def __init__(self, config: WWFitConfig | None = None, *, progress: PhaseStatusCallback | None = None):
        from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig

        config = WWFitConfig() if config is None else config
        if not isinstance(config, WWFitConfig):
            raise PerceptAlignError(f"WongWangEstimator expects a WWFitConfig, got {config!r}.")
        super().__init__(config)
        self.progress = progress

    @property
    def loss(self) -> RTLoss:
        """The shared objective the fit minimises."""
        return self.config.rt_loss

    def fit(self, trials: pd.DataFrame) -> Self:
        from perceptalign.rtify.experiments.rdm.human_fit import HumanTargets
        from perceptalign.rtify.experiments.rdm.wongwang_fit import (
            build_ww,
            coherence_trials,
            fit_ww_to_human,
            ww_parameters,
        )

        cfg: WWFitConfig = self.config
        human = validate_trials(trials, name="human training trials")
        conds = check_coherences(table_conditions(human), name="coherence conditions")
        torch.manual_seed(cfg.seed)
        targets = HumanTargets.from_table(human, conds, cfg.hist_config(), name="human training trials")
        self.model_ = build_ww(cfg)
        self.params_init_ = ww_parameters(self.model_)
        self.fit_trials_per_step_ = cfg.n_train * len(conds)
        self.history_ = fit_ww_to_human(
            self.model_,
            coherence_trials(conds, cfg.n_train),
            targets,
            cfg,
            max_delay_s=float(human["rt_s"].min()),
            progress=self.progress,
        )
        self._mark_fitted()
        return self

    def _simulate(self, conditions: list[Any], n_per_condition: int, seed: int) -> pd.DataFrame:
        from perceptalign.rtify.experiments.rdm.wongwang_fit import coherence_trials, predict_ww_table

        return predict_ww_table(self.model_, coherence_trials(conditions, n_per_condition), seed=seed)

    @property
    def n_parameters(self) -> int:
        self._check_fitted("n_parameters")
        return len(self.config.learn)

    def params(self) -> dict[str, Any]:
        from perceptalign.rtify.experiments.rdm.wongwang_fit import ww_parameters

        self._check_fitted("params()")
        return {**ww_parameters(self.model_), "dt_ms": self.config.dt_ms, "choice_rule": "first crossing"}
