"""The one interface of every RT model fitted to human trials: ``fit`` → ``simulate`` → ``score``.

Why a base class: the RTify head, Wong–Wang, the drift-diffusion models and the entropy and evidential
baselines are fitted in very different ways (gradient steps on the shared objective, likelihood, grid
search), but a comparison is only fair if every method is fitted on the same trials table, simulated the
same way and scored with the same per-condition metric table (:func:`perceptalign.rtify.fit_quality`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Self

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.metrics import fit_quality
from perceptalign.rtify.trials import conditions as table_conditions
from perceptalign.rtify.trials import normalise_conditions, validate_trials

__all__ = ["POOLS", "Pool", "RTEstimator", "check_optional_t0_max", "check_pool", "check_positive_int"]

#: Which trials of a trial source a call draws from: ``fit`` (what ``fit`` trains on) or ``eval`` (what
#: ``simulate`` and ``score`` report). A fresh simulation's pools are its seeds (disjoint by construction);
#: a cache of network outputs splits its fixed trials into two disjoint pools
#: (:mod:`perceptalign.rtify.estimators.cached`).
Pool = Literal["fit", "eval"]
POOLS: tuple[Pool, ...] = ("fit", "eval")


def check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    """Refuse anything but an integer ≥ ``minimum`` (bools included), naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise PerceptAlignError(f"{owner}: `{name}` must be {wanted}, got {value!r}.")


def check_positive_int(owner: str, name: str, value: Any) -> None:
    """Refuse anything but an integer ≥ 1 (bools included), naming the parameter."""
    check_int(owner, name, value, 1)


def check_pool(owner: str, pool: Any) -> None:
    """Refuse a trial pool other than "fit" or "eval", naming the parameter."""
    if pool not in POOLS:
        raise PerceptAlignError(f"{owner}: `pool` must be 'fit' or 'eval', got {pool!r}.")


def check_optional_t0_max(owner: str, value: Any) -> None:
    """``t0_max`` is None (the shared default box) or a positive number of seconds."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise PerceptAlignError(
            f"{owner}: `t0_max` must be None (min(0.8 s, median training RT)) or a number of seconds > 0, "
            f"got {value!r}."
        )


class FittedEstimator(ABC):
    """What every fitted RT model shares, whatever data it fits: a config, ``fit`` → ``self``, refusal
    before ``fit``, ``n_parameters``, ``params()``, ``to_dict()`` and a repr saying whether it is fitted.
    Subclasses call :meth:`_mark_fitted` at the end of ``fit``."""

    #: Short method name, as in ``fit.json`` ("rtify-human", "ddm", …).
    name: str = "estimator"
    #: How the refusal before ``fit`` names the call to make.
    fit_call: ClassVar[str] = "fit(...)"

    def __init__(self, config: Any) -> None:
        self.config = config
        self._fitted = False

    @property
    @abstractmethod
    def n_parameters(self) -> int:
        """How many parameters were fitted to the data (what a fair comparison charges for)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The fitted parameter values, JSON-ready."""

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def _check_fitted(self, what: str) -> None:
        if not self._fitted:
            raise PerceptAlignError(
                f"{type(self).__name__} is not fitted yet: call {self.fit_call} before {what}."
            )

    def _mark_fitted(self) -> None:
        self._fitted = True

    def _fitted_dict(self) -> dict[str, Any]:
        """Extra facts of a fitted model for :meth:`to_dict` (none by default)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """What ``fit.json`` records of the method: name, settings and (once fitted) parameter count and
        values."""
        config = self.config.to_dict() if hasattr(self.config, "to_dict") else dict(vars(self.config))
        out: dict[str, Any] = {"method": self.name, "config": config}
        if self._fitted:
            out["n_parameters"] = self.n_parameters
            out["params"] = self.params()
            out.update(self._fitted_dict())
        return out

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"{type(self).__name__}({state})"


class RTEstimator(FittedEstimator):
    """A reaction-time model fitted to a trials table (``condition``, ``rt_s``, ``correct``, optional
    ``decided``; :mod:`perceptalign.rtify.trials`).

    Subclasses implement :meth:`fit`, :meth:`_simulate`, :attr:`n_parameters` and :meth:`params`; the
    base class checks arguments, refuses use before ``fit`` and scores every method alike.
    """

    fit_call = "fit(trials)"
    #: Simulated trials per condition that :meth:`score` draws unless told otherwise.
    score_trials: ClassVar[int] = 2000

    @abstractmethod
    def fit(self, trials: pd.DataFrame) -> Self:
        """Fit to the (human training) trials; returns ``self``."""

    @abstractmethod
    def _simulate(self, conditions: list[Any], n_per_condition: int, seed: int) -> pd.DataFrame:
        """Model trials for checked ``conditions`` (the table is validated by :meth:`simulate`)."""

    def simulate(self, conditions: Sequence[Any], n: int, *, seed: int = 0) -> pd.DataFrame:
        """``n`` model trials per condition as a validated trials table (``decided`` included).

        Reproducible: the same ``seed`` gives the same table.
        """
        self._check_fitted("simulate()")
        check_positive_int(type(self).__name__, "n", n)
        if isinstance(conditions, (str, bytes)) or not isinstance(conditions, Sequence) or not conditions:
            raise PerceptAlignError(
                f"{type(self).__name__}: `conditions` must be a non-empty list, got {conditions!r}."
            )
        conds = normalise_conditions(list(dict.fromkeys(conditions)))
        table = self._simulate(conds, int(n), int(seed))
        if "decided" not in table.columns:
            table = table.assign(decided=True)
        return validate_trials(table, required_conditions=conds, name=f"{self.name} simulated trials")

    def score(self, trials: pd.DataFrame, *, n: int | None = None, seed: int = 0) -> pd.DataFrame:
        """The per-condition metric table of every method: :func:`perceptalign.rtify.fit_quality` of ``n``
        simulated trials per condition of ``trials`` (default :attr:`score_trials`) against ``trials``."""
        self._check_fitted("score()")
        human = validate_trials(trials, name="trials to score against")
        model = self.simulate(table_conditions(human), self.score_trials if n is None else n, seed=seed)
        return fit_quality(model, human)
