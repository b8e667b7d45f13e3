"""Types, validators, the progress callback and the estimator scaffolding shared by the natural-image RTify
modules."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from perceptalign.callbacks import PhaseCallback as Progress
from perceptalign.io import PerceptAlignError

Decider = Literal["rtify", "wong-wang"]
PenaltyKind = Literal["margin", "tau", "p_correct"]


def report_progress(progress: Progress | None, stage: str, done: int, total: int) -> None:
    """Call ``progress`` (stage, done, total) when one was given; library code never prints."""
    if progress is not None:
        progress(stage, done, total)


def check_choice(owner: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse a value outside ``allowed``, naming the field."""
    if not isinstance(value, str) or value not in allowed:
        options = " or ".join(repr(a) for a in allowed)
        raise PerceptAlignError(f"{owner}: `{name}` must be {options}, got {value!r}.")


def check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    """Refuse anything but an integer ≥ ``minimum`` (bools included), naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise PerceptAlignError(f"{owner}: `{name}` must be an integer ≥ {minimum}, got {value!r}.")


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = True,
) -> None:
    """Refuse anything but a finite real number in the interval from ``lo`` to ``hi`` (bools refused)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise PerceptAlignError(
            f"{owner}: `{name}` must be a finite number in {left}{lo:g}, {hi:g}{right}, got {value!r}."
        )


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise PerceptAlignError(f"{owner}: `{name}` must be True or False, got {value!r}.")


class ItemEstimatorBase:
    """What the natural-image estimators share with :class:`perceptalign.rtify.estimators.RTEstimator`:
    a frozen config, ``fit`` → ``self``, refusal before ``fit``, ``n_parameters``, ``params()`` and
    ``to_dict()``. (They do not subclass it: that interface is written for trials tables of conditions,
    these fit per-image tables.)"""

    name: str = "item-estimator"

    def __init__(self, config: Any) -> None:
        self.config = config
        self._fitted = False

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def _check_fitted(self, what: str) -> None:
        if not self._fitted:
            raise PerceptAlignError(f"{type(self).__name__} is not fitted yet: call fit(...) before {what}.")

    @property
    def n_parameters(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def params(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fitted_dict(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Method name, settings and (once fitted) parameter count, values and fit facts, JSON-ready."""
        out: dict[str, Any] = {"method": self.name, "config": self.config.to_dict()}
        if self._fitted:
            out["n_parameters"] = self.n_parameters
            out["params"] = self.params()
            out.update(self._fitted_dict())
        return out

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"{type(self).__name__}({state})"
