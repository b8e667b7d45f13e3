"""The training settings shared by the LoRA, linear-head and from-scratch measurements."""

from __future__ import annotations

import math
from dataclasses import dataclass

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.finetune.schedule import SCHEDULES, warmup_steps_for


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every head/backbone training run of one comparison.

    The defaults are the ``default`` recipe's LoRA run (:mod:`perceptalign.ntps.recipes`); ``paper`` sets the
    published optimizer, weight decay, schedule, epochs, head dropout and autocast.
    ``epochs``, when set, replaces ``steps``: that many passes over the training texts, each reshuffled,
    its last batch shorter (``steps_for`` gives the number of steps).
    """

    steps: int = 5000
    batch_size: int = 1
    lr: float = 1e-4
    warmup_fraction: float = 0.05
    eval_interval: int = 500
    eval_token_budget: int = 4096
    seed: int = 0
    optimizer: str = "adafactor"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    epochs: int | None = None
    head_dropout: float = 0.0
    autocast: str | None = None

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
            (
                self.optimizer in ("adafactor", "adamw"),
                f"the optimizer must be adafactor or adamw (got {self.optimizer!r}).",
            ),
            (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                f"the weight decay must be a finite number ≥ 0 (got {self.weight_decay!r}).",
            ),
            (
                self.schedule in SCHEDULES,
                f"the schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r}).",
            ),
            (
                self.epochs is None or (isinstance(self.epochs, int) and self.epochs >= 1),
                f"the number of epochs must be an integer ≥ 1 or None (got {self.epochs!r}).",
            ),
            (
                0.0 <= self.head_dropout < 1.0,
                f"the head dropout must lie in [0, 1) (got {self.head_dropout!r}).",
            ),
            (
                self.autocast in (None, "bfloat16", "float16"),
                f"autocast must be None, bfloat16 or float16 (got {self.autocast!r}).",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise PerceptAlignError(message)

    @property
    def warmup_steps(self) -> int:
        return self.warmup_for(self.steps)

    def steps_for(self, n_train: int) -> int:
        """Optimizer steps of a run over ``n_train`` texts: ``steps``, or ``epochs`` × ⌈n_train / batch⌉."""
        if self.epochs is None:
            return self.steps
        return self.epochs * math.ceil(max(1, n_train) / self.batch_size)

    def warmup_for(self, steps: int) -> int:
        """Warm-up steps of a run of ``steps`` steps (0 without a schedule; ``cosine_hf``: int(f·steps))."""
        if self.schedule == "constant":
            return 0
        if self.schedule == "cosine_hf":
            return int(self.warmup_fraction * steps)
        return warmup_steps_for(steps, self.warmup_fraction)
