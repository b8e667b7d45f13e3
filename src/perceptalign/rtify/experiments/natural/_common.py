"""Types, validators, the progress callback and the estimator scaffolding shared by the natural-image RTify
modules."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from perceptalign.callbacks import PhaseCallback as Progress
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.estimators.base import FittedEstimator

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


class ItemEstimatorBase(FittedEstimator):
    """The natural-image estimators: :class:`perceptalign.rtify.estimators.base.FittedEstimator` (a frozen
    config, ``fit`` → ``self``, refusal before ``fit``, ``n_parameters``, ``params()``, ``to_dict()``),
    without :class:`perceptalign.rtify.estimators.RTEstimator`'s simulate/score, which are written for
    trials tables of conditions; these fit per-image tables."""

    name = "item-estimator"
