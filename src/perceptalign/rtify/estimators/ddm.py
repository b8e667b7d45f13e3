"""Drift-diffusion estimators: the strong DDM (the variant chosen by BIC among
:data:`perceptalign.rtify.ddm.DDM_VARIANTS`) and the simple three-parameter DDM, fitted by likelihood."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Self

import pandas as pd

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.ddm import DDM, DDM_VARIANTS, fit_ddm_variants
from perceptalign.rtify.estimators.base import RTEstimator, check_optional_t0_max
from perceptalign.rtify.trials import censor_beyond, default_t0_max, validate_trials

__all__ = ["DDMEstimator", "DDMEstimatorConfig"]


@dataclass(frozen=True)
class DDMEstimatorConfig:
    """``variant``: "strong" (every declared variant fitted, one chosen by ``criterion`` on the training
    trials) or "simple" (drift ∝ condition, constant bound, t₀: three parameters). ``t0_max`` None is the
    shared box min(0.8 s, median training RT); ``seed`` seeds the multi-start search."""

    variant: Literal["strong", "simple"] = "strong"
    criterion: Literal["bic", "aic"] = "bic"
    t0_max: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "DDMEstimatorConfig"
        if self.variant not in ("strong", "simple"):
            raise PerceptAlignError(
                f"{owner}: `variant` must be 'strong' (BIC-selected) or 'simple', got {self.variant!r}."
            )
        if self.criterion not in ("bic", "aic"):
            raise PerceptAlignError(f"{owner}: `criterion` must be 'bic' or 'aic', got {self.criterion!r}.")
        check_optional_t0_max(owner, self.t0_max)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise PerceptAlignError(f"{owner}: `seed` must be an integer in [0, 2**32), got {self.seed!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: PyDDM solves every variant up to this time; a human RT there or later is a trial without a response.
DDM_WINDOW_S = min(cfg.max_time_s for cfg in DDM_VARIANTS.values())


class DDMEstimator(RTEstimator):
    """A drift-diffusion model (:class:`perceptalign.rtify.DDM`) fitted by maximum likelihood.

    Training RTs at or beyond the solver's window (:data:`DDM_WINDOW_S`) enter the likelihood as censored
    trials (no response in time), and the model then also predicts undecided trials (``notes_`` says so).
    After ``fit``: ``model_`` (the fitted :class:`DDM`), ``selection_`` (the variant table; strong only),
    ``fits_`` (every variant fitted), ``notes_``.
    """

    def __init__(self, config: DDMEstimatorConfig | None = None) -> None:
        config = DDMEstimatorConfig() if config is None else config
        if not isinstance(config, DDMEstimatorConfig):
            raise PerceptAlignError(f"DDMEstimator expects a DDMEstimatorConfig, got {config!r}.")
        super().__init__(config)
        self.name = "ddm" if config.variant == "strong" else "ddm-simple"

    def fit(self, trials: pd.DataFrame) -> Self:
        cfg: DDMEstimatorConfig = self.config
        human = validate_trials(trials, name="DDM training trials")
        t0_max = cfg.t0_max if cfg.t0_max is not None else default_t0_max(human)
        censored = censor_beyond(human, DDM_WINDOW_S)
        n_censored = int((~censored["decided"]).sum())
        overrides: dict[str, Any] = {"seed": cfg.seed}
        if n_censored:
            overrides["condition_on_response"] = False
        variants = None if cfg.variant == "strong" else ["simple"]
        chosen = fit_ddm_variants(
            censored, variants, criterion=cfg.criterion, t0_max=t0_max, overrides=overrides
        )
        notes = (
            [
                f"{n_censored} training trial(s) with RTs at or beyond max_time_s = {DDM_WINDOW_S:g} s "
                "entered the likelihood as censored (no response within max_time_s), so the DDM also "
                "predicts undecided trials (see no_decision_rate)."
            ]
            if n_censored
            else []
        )
        model = chosen.best if cfg.variant == "strong" else chosen.fits["simple"]
        return self._set(model, chosen.table if cfg.variant == "strong" else None, chosen.fits, notes)

    def _set(
        self, model: DDM, selection: pd.DataFrame | None, fits: dict[str, DDM], notes: list[str]
    ) -> Self:
        self.model_, self.selection_, self.fits_, self.notes_ = model, selection, fits, notes
        self._mark_fitted()
        return self

    def simple(self) -> DDMEstimator:
        """The simple DDM among this strong fit's variants, as its own (fitted) estimator: the same fit a
        ``variant="simple"`` estimator makes (the simple variant is fitted first, from no other fit)."""
        self._check_fitted("simple()")
        if "simple" not in self.fits_:
            raise PerceptAlignError("this DDM fit has no 'simple' variant.")
        cfg: DDMEstimatorConfig = self.config
        out = DDMEstimator(DDMEstimatorConfig("simple", cfg.criterion, cfg.t0_max, cfg.seed))
        return out._set(self.fits_["simple"], None, {"simple": self.fits_["simple"]}, list(self.notes_))

    @property
    def variant(self) -> str:
        """The variant's name in :data:`perceptalign.rtify.ddm.DDM_VARIANTS`."""
        self._check_fitted("variant")
        if self.selection_ is None:
            return "simple"
        return str(self.selection_.loc[self.selection_["selected"], "variant"].iloc[0])

    def _simulate(self, conditions: list[Any], n_per_condition: int, seed: int) -> pd.DataFrame:
        return self.model_.simulate(conditions, n_per_condition, seed=seed)

    @property
    def n_parameters(self) -> int:
        self._check_fitted("n_parameters")
        return self.model_.n_params

    def params(self) -> dict[str, Any]:
        self._check_fitted("params()")
        out: dict[str, Any] = dict(self.model_.params_)
        if self.selection_ is not None:
            out["variant"] = self.variant
        return out
