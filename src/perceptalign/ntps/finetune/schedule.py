"""Optimizers (Adafactor with a fixed learning rate, as in the paper; AdamW for the paper's linear baseline)
and the schedules: this package's cosine with linear warm-up, transformers' (the published one), constant."""

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


def hf_cosine_warmup_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """transformers' ``get_cosine_schedule_with_warmup`` (half a cycle): s/w during the warm-up (so the
    first step runs at lr 0), then a half cosine to 0 at ``total_steps`` (the published schedule)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


#: The schedules :func:`make_scheduler` knows (see :mod:`perceptalign.ntps.recipes`).
SCHEDULES = ("cosine", "cosine_hf", "constant")

#: How :func:`make_optimizer` and :func:`make_scheduler` train by default, as recorded in every job's results.
OPTIMIZER_DESCRIPTION = (
    "Adafactor(scale_parameter=False, relative_step=False, warmup_init=False), "
    "cosine schedule with linear warm-up"
)


def optimizer_description(
    optimizer: str = "adafactor", weight_decay: float = 0.0, schedule: str = "cosine"
) -> str:
    """What a job records as its ``optimizer`` (:data:`OPTIMIZER_DESCRIPTION` for the default setting)."""
    if (optimizer, weight_decay, schedule) == ("adafactor", 0.0, "cosine"):
        return OPTIMIZER_DESCRIPTION
    if optimizer == "adamw":
        opt = f"torch.optim.AdamW(weight_decay={weight_decay:g})"
    else:
        opt = (
            "Adafactor(scale_parameter=False, relative_step=False, warmup_init=False, "
            f"weight_decay={weight_decay:g})"
        )
    sched = {
        "cosine": "cosine schedule with linear warm-up",
        "cosine_hf": "transformers' cosine schedule with warm-up",
        "constant": "constant learning rate (no schedule)",
    }[schedule]
    return f"{opt}, {sched}"


def make_optimizer(
    params: Sequence[nn.Parameter] | Any, lr: float, *, kind: str = "adafactor", weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """Adafactor with a fixed (scheduled) learning rate, the paper's setting (no relative step), or AdamW
    (torch's, betas and eps at their defaults: the paper's linear baseline)."""
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    from transformers.optimization import Adafactor

    if weight_decay:
        return Adafactor(
            params,
            lr=lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
            weight_decay=weight_decay,
        )
    return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def make_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int, kind: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``steps`` (``cosine``: this
    package's warm-up; ``cosine_hf``: transformers'); ``constant``: a factor of 1 at every step."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _s: 1.0)
    factor = hf_cosine_warmup_factor if kind == "cosine_hf" else cosine_warmup_factor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factor(s, steps, warmup_steps))
