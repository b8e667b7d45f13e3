"""The Wong–Wang model as an estimator (fitted by
:func:`perceptalign.rtify.experiments.rdm.wongwang_fit.fit_ww_to_human` on the shared objective), driven
by the motion coherence (:class:`CoherenceDrive`, the default) or by a frozen network's logits
(:class:`perceptalign.rtify.estimators.CachedDrive`: a backbone's per-frame or clip logit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self

import pandas as pd
import torch

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.estimators.base import Pool, RTEstimator, check_pool
from perceptalign.rtify.objective import RTLoss
from perceptalign.rtify.trials import check_coherences, validate_trials
from perceptalign.rtify.trials import conditions as table_conditions

if TYPE_CHECKING:
    from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig, WWTrials

__all__ = ["CoherenceDrive", "WWInput", "WongWangEstimator"]


class WWInput(Protocol):
    """What drives a Wong–Wang estimator: ``n_per_condition`` input trials per condition from a pool
    (:data:`perceptalign.rtify.estimators.base.Pool`: "fit" while fitting, "eval" for simulate/score), and
    the logit scale w the fit starts from (None: the input is the coherence itself, no w)."""

    name: str

    def __call__(
        self, conditions: Sequence[float], n_per_condition: int, *, pool: Pool = "fit"
    ) -> WWTrials: ...

    def initial_scale(self, conditions: Sequence[float]) -> float | None: ...


class CoherenceDrive:
    """The coherence (%) itself as WW's input: I₁,₂ = J_ext(1 ± c/100), every trial of a condition alike
    (WW's own noise makes them different trials), so both pools are the same input."""

    name = "coherence"

    def __call__(self, conditions: Sequence[float], n_per_condition: int, *, pool: Pool = "fit") -> WWTrials:
        from perceptalign.rtify.experiments.rdm.wongwang_fit import coherence_trials

        check_pool("CoherenceDrive", pool)
        return coherence_trials(check_coherences(conditions, name="coherence conditions"), n_per_condition)

    def initial_scale(self, conditions: Sequence[float]) -> None:
        return None


class WongWangEstimator(RTEstimator):
    """Wong & Wang (2006) fitted to human RTs: θ and the motor delay by the soft first-passage gradient of
    the shared objective, the dynamics (and a logit-driven model's input scale w) by finite differences on
    common noise (:class:`perceptalign.rtify.experiments.rdm.wongwang_fit.WWFitConfig`). The motor delay
    is capped at the fastest training RT.

    ``drive``: the coherence (default, :class:`CoherenceDrive`; method "ww-coherence") or a network's
    logits (:class:`perceptalign.rtify.estimators.CachedDrive`; method "ww-<drive.name>", w learnt and
    started at ``drive.initial_scale``). ``fit`` simulates ``n_train`` trials per condition from the
    drive's fit pool, ``simulate`` from its eval pool.

    After ``fit``: ``model_`` (:class:`perceptalign.rtify.WongWang2`), ``history_``, ``params_init_``.
    """

    def __init__(
        self,
        config: WWFitConfig | None = None,
        *,
        drive: WWInput | None = None,
        progress: PhaseStatusCallback | None = None,
    ):
        from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig

        config = WWFitConfig() if config is None else config
        if not isinstance(config, WWFitConfig):
            raise PerceptAlignError(f"WongWangEstimator expects a WWFitConfig, got {config!r}.")
        drive = CoherenceDrive() if drive is None else drive
        if not (
            callable(drive)
            and hasattr(drive, "initial_scale")
            and isinstance(getattr(drive, "name", None), str)
        ):
            raise PerceptAlignError(
                "WongWangEstimator: `drive` must be a WWInput (CoherenceDrive, CachedDrive: callable "
                "(conditions, n, pool=…) → WWTrials with `name` and `initial_scale`), got "
                f"{type(drive).__name__}."
            )
        super().__init__(config)
        self.drive, self.progress = drive, progress
        self.name = "ww-coherence" if isinstance(drive, CoherenceDrive) else f"ww-{drive.name}"

    @property
    def loss(self) -> RTLoss:
        """The shared objective the fit minimises."""
        return self.config.rt_loss

    def fit(self, trials: pd.DataFrame) -> Self:
        from perceptalign.rtify.experiments.rdm.human_fit import HumanTargets
        from perceptalign.rtify.experiments.rdm.wongwang_fit import build_ww, fit_ww_to_human, ww_parameters

        cfg: WWFitConfig = self.config
        human = validate_trials(trials, name="human training trials")
        conds = table_conditions(human)
        if isinstance(self.drive, CoherenceDrive):
            conds = check_coherences(conds, name="coherence conditions")
        torch.manual_seed(cfg.seed)
        targets = HumanTargets.from_table(human, conds, cfg.hist_config(), name="human training trials")
        fit_trials = self.drive(conds, cfg.n_train, pool="fit")
        self.model_ = build_ww(cfg, input_scale=self.drive.initial_scale(conds))
        self.params_init_ = ww_parameters(self.model_)
        self.fit_trials_per_step_ = len(fit_trials)
        self.history_ = fit_ww_to_human(
            self.model_,
            fit_trials,
            targets,
            cfg,
            max_delay_s=float(human["rt_s"].min()),
            progress=self.progress,
        )
        self._mark_fitted()
        return self

    def _simulate(self, conditions: list[Any], n_per_condition: int, seed: int) -> pd.DataFrame:
        from perceptalign.rtify.experiments.rdm.wongwang_fit import predict_ww_table

        return predict_ww_table(self.model_, self.drive(conditions, n_per_condition, pool="eval"), seed=seed)

    @property
    def n_parameters(self) -> int:
        """The learnt WW parameters, plus the logit scale w of a logit-driven model."""
        self._check_fitted("n_parameters")
        return len(self.config.learn) + (0 if self.model_.drive.scale is None else 1)

    def params(self) -> dict[str, Any]:
        from perceptalign.rtify.experiments.rdm.wongwang_fit import ww_parameters

        self._check_fitted("params()")
        return {
            **ww_parameters(self.model_),
            "dt_ms": self.config.dt_ms,
            "choice_rule": "first crossing",
            "input": self.drive.name,
        }
