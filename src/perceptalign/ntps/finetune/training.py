"""The training loop: seeded batches, schedule, periodic held-out evaluation, loss curve."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from perceptalign.callbacks import PhaseCallback
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.finetune.classifier import trainable_parameters
from perceptalign.ntps.finetune.config import TrainConfig
from perceptalign.ntps.finetune.data import Batches, BatchSampler
from perceptalign.ntps.finetune.schedule import make_optimizer, make_scheduler


@dataclass
class TrainResult:
    """Per-step training losses and learning rates, held-out history and the final held-out scores."""

    name: str
    losses: list[float]
    lrs: list[float]
    eval_history: list[dict[str, float]]
    eval_accuracy: float
    eval_loss: float
    n_trainable: int
    seconds: float
    seconds_per_step: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, points: int = 100) -> dict[str, Any]:
        """JSON-ready: loss-curve summary (chunk means, first/last 5%), eval history and final scores."""
        losses = np.asarray(self.losses, dtype=float)
        window = max(1, len(losses) // 20)
        return {
            "eval_accuracy": self.eval_accuracy,
            "eval_loss": self.eval_loss,
            "n_trainable_params": self.n_trainable,
            "train_loss_first": float(losses[:window].mean()),
            "train_loss_last": float(losses[-window:].mean()),
            "train_loss_min": float(losses.min()),
            "train_loss_curve": loss_curve(self.losses, points),
            "eval_history": self.eval_history,
            "seconds": self.seconds,
            "seconds_per_step": self.seconds_per_step,
            **self.extra,
        }


def loss_curve(losses: Sequence[float], points: int = 100) -> dict[str, list[float]]:
    """At most ``points`` chunk means of the per-step losses, located at the chunk's last step (1-based)."""
    n = len(losses)
    edges = np.unique(np.linspace(0, n, min(points, n) + 1).round().astype(int))
    arr = np.asarray(losses, dtype=float)
    return {
        "step": [int(b) for b in edges[1:]],
        "loss": [float(arr[a:b].mean()) for a, b in itertools.pairwise(edges)],
    }


def _eval_steps(config: TrainConfig, steps: int | None = None) -> set[int]:
    """Steps (1-based, counted after the update) at which the held-out set is scored; always the last."""
    total = config.steps if steps is None else steps
    return {s for s in range(config.eval_interval, total + 1, config.eval_interval)} | {total}


@contextlib.contextmanager
def autocast_context(device: torch.device | str, dtype: str | None) -> Iterator[None]:
    """``torch.autocast`` in ``dtype`` on the device's type (the paper's bf16 mixed precision); a no-op
    for None."""
    if dtype is None:
        yield
        return
    kind = torch.device(device).type
    with torch.autocast(device_type=kind, dtype=getattr(torch, dtype)):
        yield


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Batches,
    token_budget: int,
    device: torch.device | str = "cpu",
    *,
    autocast: str | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``data`` in eval mode (no dropout); restores the training mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for indices in data.eval_batches(token_budget):
        input_ids, mask, labels = data.batch(indices)
        with autocast_context(device, autocast):
            logits = model(input_ids.to(device), mask.to(device))
        logits = logits.float()
        labels = labels.to(device)
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
    model.train(was_training)
    return total_loss / len(data), correct / len(data)


def train_classifier(
    model: nn.Module,
    train: Batches,
    held_out: Batches,
    config: TrainConfig,
    *,
    name: str,
    device: torch.device | str = "cpu",
    progress: PhaseCallback | None = None,
    train_mode: bool = True,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad, scoring ``held_out`` as it goes.

    ``train_mode=False`` keeps dropout off while training (a frozen feature extractor under a trained head).
    With ``config.epochs`` the run is that many reshuffled passes over ``train`` (the last batch of each
    shorter); with ``config.autocast`` every forward pass runs under ``torch.autocast`` in that dtype.
    """
    params = [p for _, p in trainable_parameters(model)]
    if not params:
        raise PerceptAlignError(f"{name}: the model has no trainable parameters.")
    model.to(device)
    total_steps = config.steps_for(len(train))
    optimizer = make_optimizer(params, config.lr, kind=config.optimizer, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, total_steps, config.warmup_for(total_steps), config.schedule)
    sampler = BatchSampler(
        len(train), config.batch_size, config.seed, epoch_aligned=config.epochs is not None
    )
    evals = _eval_steps(config, total_steps)
    losses: list[float] = []
    lrs: list[float] = []
    history: list[dict[str, float]] = []
    eval_seconds = 0.0
    if progress:
        progress(name, 0, total_steps)
    model.train(train_mode)
    started = time.perf_counter()
    for step in range(1, total_steps + 1):
        input_ids, mask, labels = train.batch(sampler.next())
        with autocast_context(device, config.autocast):
            logits = model(input_ids.to(device), mask.to(device))
        loss = F.cross_entropy(logits.float(), labels.to(device))
        if not torch.isfinite(loss):
            raise PerceptAlignError(
                f"{name}: the training loss became {float(loss)} at step {step}; lower `lr` or use "
                "`dtype` float32."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step in evals:
            t0 = time.perf_counter()
            eval_loss, accuracy = evaluate(
                model, held_out, config.eval_token_budget, device, autocast=config.autocast
            )
            eval_seconds += time.perf_counter() - t0
            history.append(
                {
                    "step": step,
                    "eval_loss": eval_loss,
                    "eval_accuracy": accuracy,
                    "train_loss": float(np.mean(losses[-config.eval_interval :])),
                }
            )
        if progress:
            progress(name, step, total_steps)
    model.eval()
    seconds = time.perf_counter() - started
    return TrainResult(
        name=name,
        losses=losses,
        lrs=lrs,
        eval_history=history,
        eval_accuracy=history[-1]["eval_accuracy"],
        eval_loss=history[-1]["eval_loss"],
        n_trainable=sum(p.numel() for p in params),
        seconds=seconds,
        seconds_per_step=(seconds - eval_seconds) / total_steps,
        extra={"steps": total_steps, "epochs": config.epochs} if config.epochs is not None else {},
    )
