"""A frozen network's outputs computed once (a cache) as the trial sources of the estimators, with
explicit, disjoint fit and eval pools.

Why pools: a fresh simulation (``GRUTrials``) gives new trials for a new seed, so the estimators' fit and
eval seeds already keep fitting and scoring apart. A cache holds a fixed set of trials, so a seed alone
cannot: here every cached trial belongs to exactly one pool, fixed at construction, and each call names
the pool it draws from (``fit`` draws ``pool="fit"``, ``simulate``/``score`` draw ``pool="eval"``). No
request is ever served from the other pool.

- :class:`CachedTrials` — a :class:`perceptalign.rtify.estimators.NetworkTrials` over cached states,
  logits and labels (RTify heads, entropy and evidential baselines). The head decides deterministically
  on the states, so a cached trial used twice is the same trial twice: a request for more trials per
  condition than the pool holds is REFUSED (ask :meth:`CachedTrials.pool_size` for the largest). Exactly
  the pool size gives the whole pool in cache order, whatever the seed; fewer gives a seeded subset
  without replacement.
- :class:`CachedDrive` — the input of a logit-driven Wong–Wang model
  (:class:`perceptalign.rtify.estimators.WongWangEstimator`) from cached logits. WW adds its own noise,
  so repeating a pool trial gives a new model trial: any number of trials per condition is served from
  the pool alone, each pool trial repeated ⌊n/m⌋ or ⌈n/m⌉ times, consecutively (m = pool size).

Conditions match exactly (python floats, as in trials tables): a builder from float32 caches rounds them
first (e.g. :func:`perceptalign.rtify.experiments.pixel.pixel_experiment.backbone_network`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.estimators.base import Pool, check_pool, check_positive_int

if TYPE_CHECKING:
    from perceptalign.rtify.experiments.rdm.config import FitConfig
    from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials
    from perceptalign.rtify.experiments.rdm.wongwang_fit import WWTrials
    from perceptalign.rtify.heads import RTifyHead

__all__ = ["CachedDrive", "CachedTrials"]


class _Pools:
    """Per-trial conditions and the fit/eval assignment of a cache; which rows a request gets."""

    def __init__(self, owner: str, n: int, condition: Sequence[float] | Tensor, fit: Tensor) -> None:
        values = condition.tolist() if isinstance(condition, Tensor) else list(condition)
        if len(values) != n:
            raise PerceptAlignError(
                f"{owner}: `condition` needs one value per cached trial ({n}), got {len(values)}."
            )
        try:
            self._condition = np.asarray([float(c) for c in values], dtype=float)
        except (TypeError, ValueError) as exc:
            raise PerceptAlignError(f"{owner}: `condition` must hold numbers, got {exc}.") from exc
        if not np.isfinite(self._condition).all():
            raise PerceptAlignError(f"{owner}: `condition` contains NaN or infinite values.")
        if not isinstance(fit, Tensor) or fit.dtype != torch.bool or fit.shape != (n,):
            shape = tuple(fit.shape) if isinstance(fit, Tensor) else type(fit).__name__
            raise PerceptAlignError(
                f"{owner}: `fit` must be a bool tensor (N,) = ({n},) marking the fit pool (the rest is the "
                f"eval pool), got {shape}."
            )
        self._owner = owner
        self._fit = fit.numpy().copy()
        self._rows: dict[tuple[float, Pool], np.ndarray] = {}
        for c in dict.fromkeys(self._condition.tolist()):
            at = self._condition == c
            for pool, mask in (("fit", self._fit), ("eval", ~self._fit)):
                self._rows[(c, pool)] = np.flatnonzero(at & mask)  # type: ignore[index]

    @property
    def conditions(self) -> list[float]:
        """The cached conditions, in order of first appearance."""
        return list(dict.fromkeys(c for c, _ in self._rows))

    def pool_rows(self, condition: float, pool: Pool) -> np.ndarray:
        """Cache rows (ascending) of ``condition`` in ``pool``; an unknown condition is refused."""
        check_pool(self._owner, pool)
        key = (float(condition), pool)
        if key not in self._rows:
            raise PerceptAlignError(
                f"{self._owner}: no cached trials at condition {condition!r} (the cache has "
                f"{self.conditions}); compute the cache with every condition you fit or score."
            )
        rows = self._rows[key]
        if len(rows) == 0:
            raise PerceptAlignError(
                f"{self._owner}: the {pool} pool has no trials at condition {condition!r}."
            )
        return rows

    def pool_size(self, conditions: Sequence[float] | None = None, *, pool: Pool = "eval") -> int:
        """The fewest ``pool`` trials any of ``conditions`` (default: every cached one) has."""
        conds = self.conditions if conditions is None else list(conditions)
        return min(len(self.pool_rows(c, pool)) for c in conds)

    def _conditions(self, conditions: Sequence[float]) -> list[float]:
        if isinstance(conditions, (str, bytes)) or not isinstance(conditions, Sequence) or not conditions:
            raise PerceptAlignError(
                f"{self._owner}: `conditions` must be a non-empty list, got {conditions!r}."
            )
        return [float(c) for c in conditions]


class CachedTrials(_Pools):
    """A frozen network's cached outputs as :class:`perceptalign.rtify.estimators.NetworkTrials`.

    ``hidden`` (N, T, H) states, ``logits`` (N, T, C) per-step read-out, ``labels`` (N,) correct classes,
    ``condition`` (N,) each trial's condition, ``fit`` (N,) bool: True for the fit pool, False for the
    eval pool; ``dt`` the step in seconds. :meth:`build_head` starts a two-bound head on the network's
    own read-out (two classes), recovered by least squares on the fit pool's states.
    """

    def __init__(
        self,
        hidden: Tensor,
        logits: Tensor,
        labels: Tensor,
        condition: Sequence[float] | Tensor,
        fit: Tensor,
        *,
        dt: float,
    ) -> None:
        owner = "CachedTrials"
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or hidden.shape[0] < 1 or hidden.shape[1] < 1:
            shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
            raise PerceptAlignError(f"{owner}: `hidden` must be a non-empty (N, T, H) tensor, got {shape}.")
        n, steps = hidden.shape[:2]
        if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[:2] != (n, steps):
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise PerceptAlignError(f"{owner}: `logits` must be (N, T, C) = ({n}, {steps}, C), got {shape}.")
        if logits.shape[2] < 2:
            raise PerceptAlignError(f"{owner}: `logits` need C ≥ 2 classes, got {logits.shape[2]}.")
        if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.dtype.is_floating_point:
            raise PerceptAlignError(f"{owner}: `labels` must be an integer tensor (N,) = ({n},).")
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < logits.shape[2]):
            raise PerceptAlignError(f"{owner}: `labels` must be class indices in [0, {logits.shape[2]}).")
        if not (torch.isfinite(hidden).all() and torch.isfinite(logits).all()):
            raise PerceptAlignError(f"{owner}: `hidden` or `logits` contain NaN or infinite values.")
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (0 < dt < math.inf):
            raise PerceptAlignError(f"{owner}: `dt` must be a step in seconds > 0, got {dt!r}.")
        super().__init__(owner, n, condition, fit)
        self.hidden, self.logits, self.labels = hidden.float(), logits.float(), labels.long()
        self._dt = float(dt)

    @property
    def dt(self) -> float:
        return self._dt

    @property
    def n_steps(self) -> int:
        return int(self.hidden.shape[1])

    def rows(
        self, conditions: Sequence[float], n_per_condition: int, *, seed: int, pool: Pool = "fit"
    ) -> Tensor:
        """The cache rows a request gets, condition by condition (what :meth:`__call__` returns).

        The whole pool of a condition (in cache order) when ``n_per_condition`` is its size, a subset drawn
        without replacement with ``seed`` (kept in cache order) when smaller; more is refused.
        """
        check_positive_int(self._owner, "n_per_condition", n_per_condition)
        out = []
        for k, c in enumerate(self._conditions(conditions)):
            rows = self.pool_rows(c, pool)
            if n_per_condition > len(rows):
                raise PerceptAlignError(
                    f"{self._owner}: asked for `n_per_condition` = {n_per_condition} {pool} trials at "
                    f"condition {c:g}, but its {pool} pool holds {len(rows)}: a cached trial cannot be "
                    f"drawn twice (the head decides deterministically on it), and the other pool is never "
                    f"used. Ask for at most {len(rows)} (pool_size), or cache more trials."
                )
            if n_per_condition < len(rows):
                rng = np.random.default_rng([int(seed), k])
                rows = np.sort(rng.choice(rows, size=n_per_condition, replace=False))
            out.append(rows)
        return torch.from_numpy(np.concatenate(out)).long()

    def __call__(
        self, conditions: Sequence[float], n_per_condition: int, *, seed: int, pool: Pool = "fit"
    ) -> SimulatedTrials:
        from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials

        conds = self._conditions(conditions)
        rows = self.rows(conds, n_per_condition, seed=seed, pool=pool)
        cond_idx = torch.arange(len(conds)).repeat_interleave(n_per_condition)
        return SimulatedTrials(self.hidden[rows], self.logits[rows], self.labels[rows], cond_idx, conds)

    def readout(self) -> tuple[Tensor, float]:
        """(a, c) of the network's two-class log-odds l_t = logit₁ − logit₀ ≈ a·h_t + c, by least squares
        on the fit pool's states (exact when the read-out is linear in the state, as for an LSTM's)."""
        if self.logits.shape[2] != 2:
            raise PerceptAlignError(
                f"{self._owner}: the read-out head is a two-bound head for 2 classes; the cache has "
                f"{self.logits.shape[2]}."
            )
        rows = torch.from_numpy(np.flatnonzero(self._fit)).long()
        if len(rows) == 0:
            raise PerceptAlignError(f"{self._owner}: the fit pool is empty; mark some trials in `fit`.")
        hidden = self.hidden[rows]
        logit = self.logits[rows, :, 1] - self.logits[rows, :, 0]
        design = torch.cat([hidden.reshape(-1, hidden.shape[-1]), torch.ones(logit.numel(), 1)], 1)
        coef = torch.linalg.lstsq(design.double(), logit.reshape(-1, 1).double()).solution.squeeze(1)
        return coef[:-1].float(), float(coef[-1])

    def build_head(self, config: FitConfig, *, t0_max: float | None = None) -> RTifyHead:
        """A two-bound head whose evidence and choice read-out start as the network's own log-odds.

        Evidence e_t = a·h_t + c (or the increment form, ``config.evidence``), classifier [−l_t/2, l_t/2]
        (softmax = sigmoid of the log-odds); the step is ``dt``. t₀ as in every RTify head: learnt in the
        shared box [0, ``t0_max``] (starting at min(``t0_init``, t0_max/2)) for a human fit, fixed at
        ``t0_fixed`` when self-penalised.
        """
        from perceptalign.rtify.experiments.rdm.decision_head import head_from_readout

        weight, bias = self.readout()
        # The log-odds l = a·h + c as a 2-class read-out [−l/2, l/2] (softmax = sigmoid of l).
        return head_from_readout(
            self.hidden.shape[-1],
            self.dt,
            config,
            torch.stack([-0.5 * weight, 0.5 * weight]),
            torch.tensor([-0.5 * bias, 0.5 * bias]),
            t0_max=t0_max,
        )


class CachedDrive(_Pools):
    """Cached logits as the input of a logit-driven Wong–Wang model, with fit and eval pools.

    ``drive`` is (N,) (one constant logit per trial) or (N, F) (per-frame logits held ``frame_s`` s each),
    the logit for the evidence that population 1 (WW choice 0) integrates; ``correct_choice`` (N,) is 0
    where population 1 is correct; ``condition`` and ``fit`` as in :class:`CachedTrials`. ``name`` labels
    the input ("frames", "clip"): the estimator is then called ``ww-<name>``.
    """

    def __init__(
        self,
        drive: Tensor,
        correct_choice: Tensor,
        condition: Sequence[float] | Tensor,
        fit: Tensor,
        *,
        frame_s: float | None = None,
        name: str = "logit",
    ) -> None:
        owner = "CachedDrive"
        if not isinstance(drive, Tensor) or drive.dim() not in (1, 2) or drive.shape[0] < 1:
            raise PerceptAlignError(f"{owner}: `drive` must be a non-empty (N,) or (N, F) tensor.")
        n = drive.shape[0]
        if not torch.isfinite(drive).all():
            raise PerceptAlignError(f"{owner}: `drive` contains NaN or infinite values.")
        if not isinstance(correct_choice, Tensor) or correct_choice.shape != (n,):
            raise PerceptAlignError(f"{owner}: `correct_choice` must be a tensor (N,) = ({n},).")
        if not bool(((correct_choice == 0) | (correct_choice == 1)).all()):
            raise PerceptAlignError(f"{owner}: `correct_choice` must be 0 or 1 (the correct population).")
        if drive.dim() == 2 and not (isinstance(frame_s, (int, float)) and 0 < frame_s < math.inf):
            raise PerceptAlignError(
                f"{owner}: a per-frame `drive` (N, F) needs `frame_s`, the frame duration in s > 0, got "
                f"{frame_s!r}."
            )
        if not isinstance(name, str) or not name:
            raise PerceptAlignError(f"{owner}: `name` must be a non-empty string, got {name!r}.")
        super().__init__(owner, n, condition, fit)
        self.drive, self.correct_choice = drive.float(), correct_choice.long()
        self.frame_s = None if drive.dim() == 1 else float(frame_s)  # type: ignore[arg-type]
        self.name = name

    def rows(self, conditions: Sequence[float], n_per_condition: int, *, pool: Pool = "fit") -> Tensor:
        """Cache rows of a request: per condition, pool trial ⌊j·m/n⌋ for j < n (m = pool size), i.e.
        each pool trial repeated ⌊n/m⌋ or ⌈n/m⌉ times, consecutively (for n < m, an even spread)."""
        check_positive_int(self._owner, "n_per_condition", n_per_condition)
        out = []
        for c in self._conditions(conditions):
            rows = self.pool_rows(c, pool)
            pick = (np.arange(n_per_condition) * len(rows)) // n_per_condition
            out.append(rows[pick])
        return torch.from_numpy(np.concatenate(out)).long()

    def _trials(self, conds: list[float], rows: Tensor, cond_idx: Tensor) -> WWTrials:
        from perceptalign.rtify.experiments.rdm.wongwang_fit import WWTrials

        return WWTrials(self.drive[rows], cond_idx, self.correct_choice[rows], conds, self.frame_s)

    def __call__(self, conditions: Sequence[float], n_per_condition: int, *, pool: Pool = "fit") -> WWTrials:
        """``n_per_condition`` WW input trials per condition from ``pool`` (:meth:`rows`)."""
        conds = self._conditions(conditions)
        rows = self.rows(conds, n_per_condition, pool=pool)
        return self._trials(conds, rows, torch.arange(len(conds)).repeat_interleave(n_per_condition))

    def pool_trials(self, conditions: Sequence[float], pool: Pool) -> WWTrials:
        """Every trial of ``pool`` at ``conditions``, once each (condition by condition, cache order)."""
        conds = self._conditions(conditions)
        parts = [self.pool_rows(c, pool) for c in conds]
        rows = torch.from_numpy(np.concatenate(parts)).long()
        cond_idx = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(parts)])
        return self._trials(conds, rows, cond_idx)

    def initial_scale(self, conditions: Sequence[float]) -> float:
        """The logit scale w a fit starts from: the least-squares map of the fit pool's mean signed logit
        per condition onto the coherence
        (:func:`perceptalign.rtify.experiments.rdm.wongwang_fit.init_logit_scale`)."""
        from perceptalign.rtify.experiments.rdm.wongwang_fit import init_logit_scale

        return init_logit_scale(self.pool_trials(conditions, "fit"))
