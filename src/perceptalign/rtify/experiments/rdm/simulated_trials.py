"""Simulated RDM trials through the frozen GRU backbone (the one sensory representation all methods share)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from perceptalign.rtify.experiments.rdm.task import (
    GRUBackbone,
    RDMTaskConfig,
    make_trials,
)


@dataclass
class SimulatedTrials:
    """Frozen-backbone outputs for a set of trials: hidden (N, T, H), logits (N, T, 2), labels (N,),
    cond_idx (N,) indexing ``conditions`` (python floats, exactly as in trials tables)."""

    hidden: Tensor
    logits: Tensor
    labels: Tensor
    cond_idx: Tensor
    conditions: list[float]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def by_condition(self, array: np.ndarray) -> dict[float, np.ndarray]:
        """Split a per-trial array into {condition: rows}."""
        idx = self.cond_idx.numpy()
        return {c: array[idx == k] for k, c in enumerate(self.conditions)}


def simulate(
    backbone: GRUBackbone, task: RDMTaskConfig, n_per_condition: int, *, seed: int
) -> SimulatedTrials:
    """Run ``n_per_condition`` fresh trials per coherence through the frozen backbone."""
    trials = make_trials(task, n_per_condition, seed=seed)
    hidden, logits = backbone.encode(trials.x)
    cond_idx = torch.arange(len(task.coherences)).repeat_interleave(n_per_condition)
    return SimulatedTrials(hidden, logits, trials.labels, cond_idx, list(task.coherences))
