"""Optimizer (Adafactor, fixed learning rate, as in the paper) and the cosine schedule with linear warm-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def warmup_steps_for(total_steps: int, fraction: float) -> int:
    """Warm-up length: ``round(fraction · total)`` steps, at least one when the fraction is positive."""
    if fraction <= 0:
        return 0
    return min(total_steps, max(1, round(fraction * total_steps)))


def cosine_warmup_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based) out of ``total_steps``.

    Linear warm-up (s + 1)/w for s < w, then a half cosine from 1 at s = w down towards 0 at s = total.
    The warm-up is shifted by one compared with transformers' schedule so that no step runs at lr 0.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


#: How :func:`make_optimizer` and :func:`make_scheduler` train, as recorded in every job's results.
OPTIMIZER_DESCRIPTION = (
    "Adafactor(scale_parameter=False, relative_step=False, warmup_init=False), "
    "cosine schedule with linear warm-up"
)


def make_optimizer(params: Sequence[nn.Parameter] | Any, lr: float) -> torch.optim.Optimizer:
    """Adafactor with a fixed (scheduled) learning rate, the paper's setting (no relative step)."""
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def make_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_warmup_factor(s, steps, warmup_steps)
    )
