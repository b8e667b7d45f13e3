"""Simulated RDM trials through the frozen GRU backbone (the one sensory representation all methods share)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.rdm.task import (
    GRUBackbone,
    RDMTaskConfig,
    make_trials,
)

if TYPE_CHECKING:
    from perceptalign.rtify.estimators.base import Pool
    from perceptalign.rtify.experiments.rdm.config import FitConfig
    from perceptalign.rtify.heads import RTifyHead


@dataclass
class SimulatedTrials:
    """Frozen-backbone outputs for a set of trials: hidden (N, T, H), logits (N, T, 2), labels (N,),
    cond_idx (N,) indexing ``conditions`` (python floats, exactly as in trials tables)."""

    hidden: Tensor
    logits: Tensor
    labels: Tensor
    cond_idx: Tensor
    conditions: list[float]
    # The stimulus as signal (N, 1, 2, at the task's gain) and noise (N, T, 2), so that the network can be
    # re-run at another gain on the same noise (``fit_gain``); None for outputs without a stimulus.
    signal: Tensor | None = None
    noise: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def by_condition(self, array: np.ndarray) -> dict[float, np.ndarray]:
        """Split a per-trial array into {condition: rows}."""
        idx = self.cond_idx.numpy()
        return {c: array[idx == k] for k, c in enumerate(self.conditions)}


def simulate(
    backbone: GRUBackbone,
    task: RDMTaskConfig,
    n_per_condition: int,
    *,
    seed: int,
    gain_scale: float = 1.0,
) -> SimulatedTrials:
    """Run ``n_per_condition`` fresh trials per coherence through the frozen backbone; ``gain_scale``
    multiplies the stimulus signal (not its noise), i.e. a task gain of ``gain_scale·task.gain``."""
    trials = make_trials(task, n_per_condition, seed=seed)
    assert trials.signal is not None and trials.noise is not None
    x = trials.x if gain_scale == 1.0 else trials.noise + gain_scale * trials.signal
    hidden, logits = backbone.encode(x)
    cond_idx = torch.arange(len(task.coherences)).repeat_interleave(n_per_condition)
    return SimulatedTrials(
        hidden, logits, trials.labels, cond_idx, list(task.coherences), trials.signal, trials.noise
    )


class GRUTrials:
    """The frozen GRU run on fresh RDM trials of any coherences: the
    :class:`perceptalign.rtify.estimators.NetworkTrials` of the abstract RDM task.

    ``GRUTrials(backbone, task)(conditions, n, seed=s)`` equals ``simulate(backbone, task with those
    coherences, n, seed=s)``. The last few results are kept, so that estimators sharing one network (the
    RTify head and the entropy and evidential baselines) decide on the very same simulated trials without
    running the GRU again.
    """

    def __init__(
        self, backbone: GRUBackbone, task: RDMTaskConfig, *, keep: int = 4, gain_scale: float = 1.0
    ) -> None:
        if not (isinstance(gain_scale, (int, float)) and 0 < gain_scale < float("inf")):
            raise PerceptAlignError(f"`gain_scale` must be a positive number, got {gain_scale!r}.")
        self.backbone, self.task, self.keep = backbone, task, keep
        self.gain_scale = float(gain_scale)
        self._cache: OrderedDict[tuple[tuple[float, ...], int, int], SimulatedTrials] = OrderedDict()

    @property
    def dt(self) -> float:
        return self.task.dt

    @property
    def n_steps(self) -> int:
        return self.task.n_steps

    def __call__(
        self, conditions: Sequence[float], n_per_condition: int, *, seed: int, pool: Pool = "fit"
    ) -> SimulatedTrials:
        """Fresh trials; ``pool`` is accepted and ignored (trials of other seeds are other trials, so the
        estimators' fit and eval seeds already keep their pools disjoint)."""
        key = (tuple(float(c) for c in conditions), int(n_per_condition), int(seed))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        task = replace(self.task, coherences=key[0])
        sim = simulate(self.backbone, task, key[1], seed=key[2], gain_scale=self.gain_scale)
        self._cache[key] = sim
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return sim

    def with_gain_scale(self, gain_scale: float) -> GRUTrials:
        """The same network and task seeing the stimulus signal scaled by ``gain_scale`` (same noise)."""
        return GRUTrials(self.backbone, self.task, keep=self.keep, gain_scale=gain_scale)

    def build_head(self, config: FitConfig, *, t0_max: float | None = None) -> RTifyHead:
        """A two-bound head started from the GRU's own read-out (:func:`decision_head.build_head`)."""
        from perceptalign.rtify.experiments.rdm.decision_head import build_head

        return build_head(self.backbone, self.task, config, t0_max=t0_max)
