"""The training settings shared by the LoRA, linear-head and from-scratch measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.finetune.schedule import warmup_steps_for


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every head/backbone training run of one comparison."""

    steps: int = 5000
    batch_size: int = 1
    lr: float = 1e-4
    warmup_fraction: float = 0.05
    eval_interval: int = 500
    eval_token_budget: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        """Raise a PerceptAlignError naming the option to fix (the CLI option names are used)."""
        checks = [
            (
                isinstance(self.steps, int) and self.steps >= 1,
                f"`steps` must be an integer ≥ 1 (got {self.steps!r}).",
            ),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"`batch_size` must be an integer ≥ 1 (got {self.batch_size!r}).",
            ),
            (math.isfinite(self.lr) and self.lr > 0, f"`lr` must be a positive number (got {self.lr!r})."),
            (
                0.0 <= self.warmup_fraction < 1.0,
                f"the warm-up fraction must lie in [0, 1) (got {self.warmup_fraction!r}).",
            ),
            (
                isinstance(self.eval_interval, int) and self.eval_interval >= 1,
                f"`eval_interval` must be an integer ≥ 1 (got {self.eval_interval!r}); "
                "it is counted in steps.",
            ),
            (
                self.eval_token_budget >= 1,
                f"the eval token budget must be ≥ 1 (got {self.eval_token_budget!r}).",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise PerceptAlignError(message)

    @property
    def warmup_steps(self) -> int:
        return warmup_steps_for(self.steps, self.warmup_fraction)
