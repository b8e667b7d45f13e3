"""Shared training loop of the NTPS comparison measurements (LoRA, frozen linear head, from scratch).

All three train the same classifier, backbone → masked mean of the last hidden state → linear head, with
the same optimizer (Adafactor with a fixed learning rate, as in the paper), the same cosine schedule with
linear warm-up and the same seeded mini-batch order, so that their held-out accuracies differ only by
what is trained: nothing of the backbone (linear head), low-rank adapters (LoRA) or everything (scratch).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn import functional as F

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import TextDataset, load_text_dataset, stratified_split
from perceptalign.ntps.models import (
    LoadedModel,
    _accepts_position_ids,
    backbone,
    pad_batch,
    token_budget_batches,
    tokenize,
)

ProgressCallback = Callable[[str, int, int], None]
"""Called as ``progress(phase, done, total)``: ``done = 0`` when a phase starts, then after each unit."""

StatusCallback = Callable[[str], None]

#: Published split seed, reused for the held-out fraction of a dataset that has a single split.
EVAL_SPLIT_SEED = 42


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """Optimisation settings shared by every head/backbone training run of one comparison."""

    steps: int = 5000
    batch_size: int = 1
    lr: float = 1e-4
    warmup_fraction: float = 0.05
    eval_interval: int = 500
    eval_token_budget: int = 4096
    seed: int = 0

    def validate(self) -> None:
        """Raise a PerceptAlignError naming the option to fix (the CLI option names are used)."""
        checks = [
            (
                isinstance(self.steps, int) and self.steps >= 1,
                f"--steps must be an integer ≥ 1 (got {self.steps!r}).",
            ),
            (
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                f"--batch-size must be an integer ≥ 1 (got {self.batch_size!r}).",
            ),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number (got {self.lr!r})."),
            (
                0.0 <= self.warmup_fraction < 1.0,
                f"the warm-up fraction must lie in [0, 1) (got {self.warmup_fraction!r}).",
            ),
            (
                isinstance(self.eval_interval, int) and self.eval_interval >= 1,
                f"--eval-interval must be an integer ≥ 1 (got {self.eval_interval!r}); "
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


# --------------------------------------------------------------------------------------------------
# optimizer and schedule


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
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    total, warmup = config.steps, config.warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_warmup_factor(s, total, warmup))


# --------------------------------------------------------------------------------------------------
# data


@dataclass
class EncodedTexts:
    """Tokenised texts with labels, padded on the tokenizer's side on demand."""

    token_ids: list[list[int]]
    labels: torch.Tensor
    pad_id: int
    padding_side: str

    def __len__(self) -> int:
        return len(self.token_ids)

    @classmethod
    def from_dataset(cls, loaded: LoadedModel, dataset: TextDataset, max_length: int) -> EncodedTexts:
        return cls(
            token_ids=tokenize(loaded, dataset.texts, max_length),
            labels=torch.as_tensor(dataset.labels, dtype=torch.long),
            pad_id=int(loaded.tokenizer.pad_token_id),
            padding_side=loaded.padding_side,
        )

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids, mask = pad_batch([self.token_ids[i] for i in indices], self.pad_id, self.padding_side)
        return input_ids, mask, self.labels[list(indices)]

    def eval_batches(self, token_budget: int) -> list[list[int]]:
        return token_budget_batches([len(x) for x in self.token_ids], token_budget)


class Batches(Protocol):
    """What the training loop needs from a data set: its size, padded batches and eval batches."""

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def eval_batches(self, token_budget: int) -> list[list[int]]: ...


class BatchSampler:
    """Seeded mini-batches: a fresh permutation per epoch, consumed ``batch_size`` indices at a time.

    Every run of one comparison builds its own sampler with the same seed, so LoRA, the linear head and
    the scratch model see exactly the same sequence of batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise PerceptAlignError("the training set is empty; check the split and --max-samples.")
        self.n, self.batch_size = n, batch_size
        self._generator = torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def next(self) -> list[int]:
        while len(self._order) < self.batch_size:
            self._order.extend(torch.randperm(self.n, generator=self._generator).tolist())
        batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return batch


def load_train_eval(
    dataset: str,
    *,
    split: str = "train",
    eval_split: str = "test",
    eval_fraction: float = 0.3,
    max_samples: int | None = None,
    max_eval_samples: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
) -> tuple[TextDataset, TextDataset, str]:
    """Training and held-out sets, plus a description of where the held-out set came from.

    The eval split is used when the dataset has one with other content; otherwise (no such split, or a
    local file without a ``split`` column, which loads whole under any split name) a stratified
    ``eval_fraction`` of the training split is held out by the content-hash split (seed 42), so the same
    text never lands on both sides.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise PerceptAlignError(f"--eval-fraction must lie in (0, 1) (got {eval_fraction!r}).")
    columns = {"text_column": text_column, "label_column": label_column}
    train = load_text_dataset(dataset, split, **columns)
    held_out: TextDataset | None = None
    reason = ""
    if eval_split != split:
        try:
            held_out = load_text_dataset(dataset, eval_split, **columns)
        except PerceptAlignError as exc:
            reason = f" (split {eval_split!r} unavailable: {str(exc)[:160]})"
        if held_out is not None and _content_digest(held_out) == _content_digest(train):
            held_out, reason = None, f" (split {eval_split!r} has the same rows as {split!r})"
        if held_out is not None and held_out.class_names != train.class_names:
            raise PerceptAlignError(
                f"splits {split!r} and {eval_split!r} of {dataset!r} have different class lists "
                f"({train.class_names} vs {held_out.class_names}); pick splits of one labelling."
            )
    if held_out is None:
        is_eval = stratified_split(
            train.texts, train.labels, test_fraction=eval_fraction, seed=EVAL_SPLIT_SEED
        )
        if is_eval.all() or not is_eval.any():
            raise PerceptAlignError(
                f"cannot hold out {eval_fraction:.0%} of {len(train)} texts; use a dataset with a test split "
                "or more rows."
            )
        held_out = train.select(np.flatnonzero(is_eval))
        held_out.split = f"{split}[held-out {eval_fraction:g}]"
        train = train.select(np.flatnonzero(~is_eval))
        train.split = f"{split}[rest]"
        source = f"stratified {eval_fraction:g} of {split!r} by content hash (seed {EVAL_SPLIT_SEED}){reason}"
    else:
        source = f"split {eval_split!r}"
    train = train.subset(max_samples, seed=seed)
    held_out = held_out.subset(max_eval_samples, seed=seed)
    return train, held_out, source


def _content_digest(ds: TextDataset) -> str:
    digest = hashlib.sha256()
    for text, label in zip(ds.texts, ds.labels.tolist(), strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# the classifier


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden rows of the real tokens (B×T×d, B×T → B×d), in float32 at least."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    return (hidden.to(dtype) * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def last_hidden_state(
    base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_positions: bool
) -> torch.Tensor:
    """Last hidden state of a transformer body (equal to ``hidden_states[-1]``, the layer NTPS calls L).

    Position ids come from the mask, as in :func:`perceptalign.ntps.models.forward_hidden_states`, so a
    left-padded text is encoded exactly like the same text unpadded.
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if with_positions:
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = base(**kwargs)
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out[0]


class SequenceClassifier(nn.Module):
    """Backbone → masked mean pooling of the last layer → linear head (float32)."""

    def __init__(self, causal_lm: nn.Module, hidden_size: int, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise PerceptAlignError(f"a classifier needs at least 2 classes (got {n_classes}).")
        self.causal_lm = causal_lm
        self.head = nn.Linear(hidden_size, n_classes)
        # Resolved once: a PEFT wrapper injects its adapters into this same module tree.
        self._body = backbone(causal_lm)
        self._with_positions = _accepts_position_ids(self._body)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = last_hidden_state(self._body, input_ids, attention_mask, self._with_positions)
        return masked_mean(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask).to(self.head.weight.dtype))


def trainable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for _, p in trainable_parameters(module))


def active_dropout(model: nn.Module) -> dict[str, float]:
    """Dropout probabilities > 0 (modules and config ``*dropout*`` fields): what train mode switches on."""
    found = {name: float(m.p) for name, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0}
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in config.to_dict().items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if "dropout" in key and numeric and value > 0:
                found[f"config.{key}"] = float(value)
    return found


# --------------------------------------------------------------------------------------------------
# training


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


def _eval_steps(config: TrainConfig) -> set[int]:
    """Steps (1-based, counted after the update) at which the held-out set is scored; always the last."""
    return {s for s in range(config.eval_interval, config.steps + 1, config.eval_interval)} | {config.steps}


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Batches, token_budget: int, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``data`` in eval mode (no dropout); restores the training mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for indices in data.eval_batches(token_budget):
        input_ids, mask, labels = data.batch(indices)
        logits = model(input_ids.to(device), mask.to(device)).float()
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
    progress: ProgressCallback | None = None,
    train_mode: bool = True,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad, scoring ``held_out`` as it goes.

    ``train_mode=False`` keeps dropout off while training (a frozen feature extractor under a trained head).
    """
    config.validate()
    params = [p for _, p in trainable_parameters(model)]
    if not params:
        raise PerceptAlignError(f"{name}: the model has no trainable parameters.")
    model.to(device)
    optimizer = make_optimizer(params, config.lr)
    scheduler = make_scheduler(optimizer, config)
    sampler = BatchSampler(len(train), config.batch_size, config.seed)
    evals = _eval_steps(config)
    losses: list[float] = []
    lrs: list[float] = []
    history: list[dict[str, float]] = []
    eval_seconds = 0.0
    if progress:
        progress(name, 0, config.steps)
    model.train(train_mode)
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        input_ids, mask, labels = train.batch(sampler.next())
        loss = F.cross_entropy(model(input_ids.to(device), mask.to(device)).float(), labels.to(device))
        if not torch.isfinite(loss):
            raise PerceptAlignError(
                f"{name}: the training loss became {float(loss)} at step {step}; lower --lr or use "
                "--dtype float32."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step in evals:
            t0 = time.perf_counter()
            eval_loss, accuracy = evaluate(model, held_out, config.eval_token_budget, device)
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
            progress(name, step, config.steps)
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
        seconds_per_step=(seconds - eval_seconds) / config.steps,
    )


# --------------------------------------------------------------------------------------------------
# the frozen-backbone linear baseline


@torch.no_grad()
def pooled_features(
    model: SequenceClassifier,
    data: EncodedTexts,
    token_budget: int,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    phase: str = "features",
) -> torch.Tensor:
    """Mean-pooled last-layer features of every text (N×d, float32), computed once in eval mode."""
    model.eval()
    features: torch.Tensor | None = None
    done = 0
    if progress:
        progress(phase, 0, len(data))
    for indices in data.eval_batches(token_budget):
        input_ids, mask, _ = data.batch(indices)
        pooled = model.pooled(input_ids.to(device), mask.to(device)).float().cpu()
        if features is None:
            features = torch.empty(len(data), pooled.shape[1], dtype=torch.float32)
        features[indices] = pooled
        done += len(indices)
        if progress:
            progress(phase, done, len(data))
    assert features is not None
    return features


class _FeatureClassifier(nn.Module):
    """A linear head over precomputed features; its "input ids" are row numbers into the feature matrix."""

    def __init__(self, head: nn.Linear, features: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("features", features, persistent=False)

    def forward(self, rows: torch.Tensor, _mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features[rows])


@dataclass
class FeatureRows:
    """Rows ``offset … offset + len(labels) − 1`` of a feature matrix, served like :class:`EncodedTexts`."""

    labels: torch.Tensor
    offset: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(list(indices), dtype=torch.long) + self.offset
        return rows, torch.ones(len(rows), 1, dtype=torch.long), self.labels[list(indices)]

    def eval_batches(self, token_budget: int) -> list[list[int]]:
        size = max(1, token_budget)
        return [list(range(i, min(i + size, len(self)))) for i in range(0, len(self), size)]


def train_linear_head(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    n_classes: int,
    config: TrainConfig,
    *,
    name: str = "linear head",
    progress: ProgressCallback | None = None,
) -> tuple[nn.Linear, TrainResult]:
    """Train a linear head on frozen pooled features with the loop, optimizer and batches of the others.

    A frozen backbone run in eval mode maps each text to the same features at every step, so feeding the
    cached features is the same computation as running the backbone each step (checked in the tests),
    minus the per-step forward. The backbone is in eval mode: its own dropout (e.g. GPT-2's 0.1) is off
    for this baseline, which is what "frozen feature extractor" means; LoRA and scratch train in train mode.
    """
    torch.manual_seed(config.seed)
    head = nn.Linear(train_features.shape[1], n_classes)
    features = torch.cat([train_features, eval_features]).float()
    model = _FeatureClassifier(head, features)
    train = FeatureRows(train_labels.long(), offset=0)
    held_out = FeatureRows(eval_labels.long(), offset=len(train_labels))
    result = train_classifier(model, train, held_out, config, name=name, progress=progress, train_mode=False)
    return head, result


# --------------------------------------------------------------------------------------------------
# figures


def training_figure(results: Sequence[TrainResult], title: str = "") -> Figure:
    """Training loss (per step, faint, and its running mean) and held-out accuracy vs step, per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, result in enumerate(results):
        color = f"C{i}"
        steps = np.arange(1, len(result.losses) + 1)
        ax_loss.plot(steps, result.losses, color=color, alpha=0.2, linewidth=0.6)
        window = max(1, len(result.losses) // 50)
        smooth = np.convolve(result.losses, np.ones(window) / window, mode="valid")
        ax_loss.plot(steps[window - 1 :], smooth, color=color, label=f"{result.name} (mean of {window})")
        hist = result.eval_history
        ax_acc.plot(
            [h["step"] for h in hist],
            [h["eval_accuracy"] for h in hist],
            "o-",
            color=color,
            label=f"{result.name}: {result.eval_accuracy:.3f}",
        )
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training cross-entropy")
    ax_loss.legend(fontsize=8)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("held-out accuracy")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_head(path: Path, head: nn.Linear, metadata: dict[str, Any]) -> None:
    """The head as safetensors (weight C×d, bias C) with string metadata (atomic)."""
    from perceptalign.io import save_tensors_atomic

    save_tensors_atomic(
        path, {"weight": head.weight, "bias": head.bias}, {k: str(v) for k, v in metadata.items()}
    )


# --------------------------------------------------------------------------------------------------
# job configuration and the NTPS re-measurement shared by `ntps lora` and `ntps scratch`


@dataclass
class FinetuneJobConfig:
    """Model, data and optimisation of one training job (the CLI fills it from its options)."""

    model: str
    dataset: str
    out: Path
    split: str = "train"
    eval_split: str = "test"
    eval_fraction: float = 0.3
    max_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 512
    dtype: str = "float32"
    text_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    device: str = "cpu"
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.train.validate()
        if self.max_length < 1:
            raise PerceptAlignError(f"--max-length must be ≥ 1 (got {self.max_length}).")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``; refuses a device this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise PerceptAlignError(f"unknown --device {name!r}; use cpu, cuda, cuda:0 or mps.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PerceptAlignError(f"--device {name} requested but torch sees no CUDA device; use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PerceptAlignError(f"--device {name} requested but MPS is unavailable; use --device cpu.")
    return device


def load_job_inputs(
    config: FinetuneJobConfig, status: StatusCallback
) -> tuple[TextDataset, TextDataset, str, LoadedModel]:
    """Datasets (train, held-out, where held-out came from) and the pretrained model of a job."""
    from perceptalign.ntps.jobs import load_job_model

    status(f"loading dataset {config.dataset}")
    train_ds, eval_ds, eval_source = load_train_eval(
        config.dataset,
        split=config.split,
        eval_split=config.eval_split,
        eval_fraction=config.eval_fraction,
        max_samples=config.max_samples,
        max_eval_samples=config.max_eval_samples,
        text_column=config.text_column,
        label_column=config.label_column,
        seed=config.train.seed,
    )
    return train_ds, eval_ds, eval_source, load_job_model(config, status)


def job_record(
    config: FinetuneJobConfig,
    train_ds: TextDataset,
    eval_ds: TextDataset,
    eval_source: str,
    device: torch.device,
) -> dict[str, Any]:
    """The data and optimisation entries every training job records (lora.json and scratch.json alike).

    One definition keeps the jobs' results comparable key for key: the comparison rests on their data,
    held-out set and optimisation being the same.
    """
    return {
        "dataset": train_ds.name,
        "dataset_source": train_ds.source,
        "n_train": len(train_ds),
        "n_eval": len(eval_ds),
        "eval_source": eval_source,
        "n_classes": train_ds.n_classes,
        "class_names": list(train_ds.class_names),
        "chance_accuracy": float(eval_ds.class_counts().max() / len(eval_ds)),
        "max_length": config.max_length,
        "dtype": config.dtype,
        "device": str(device),
        "steps": config.train.steps,
        "batch_size": config.train.batch_size,
        "lr": config.train.lr,
        "warmup_steps": config.train.warmup_steps,
        "optimizer": OPTIMIZER_DESCRIPTION,
        "seed": config.train.seed,
    }


@dataclass
class NTPSSettings:
    """Which layers and k to score when NTPS is re-measured after training."""

    layers: list[int] | None = None
    fractions: list[float] | None = None
    ks: list[int] | None = None
    token_budget: int = 4096
    ridge: float = 0.0


def measure_ntps(
    loaded: LoadedModel,
    dataset: TextDataset,
    settings: NTPSSettings,
    *,
    max_length: int,
    max_samples: int | None,
    cache: Path | None = None,
    reuse: bool = True,
    phase: str = "ntps",
    progress: ProgressCallback | None = None,
) -> tuple[dict[str, Any], bool]:
    """NTPS tables of ``loaded`` on ``dataset`` with the statistics and subspace code of `ntps score`.

    With ``cache`` and ``reuse``, statistics saved there with the same identity (model fingerprint, data
    hash, tokenisation) are reused and other statistics are refused; fresh statistics are saved there
    (``reuse=False`` always recomputes and overwrites: trained weights change every run). Returns the
    ``ntps_all_layers`` dict (plus ``n_tokens``) and whether the cache was reused.
    """
    from perceptalign.ntps.score import compute_statistics, resolve_layers, statistics_metadata
    from perceptalign.ntps.statistics import load_statistics, save_statistics
    from perceptalign.ntps.subspace import DEFAULT_FRACTIONS, ntps_all_layers

    layers = resolve_layers(settings.layers, loaded.n_hidden_states)
    metadata = statistics_metadata(loaded, dataset, layers, max_length, max_samples)
    statistics = None
    if reuse and cache is not None and cache.is_file():
        statistics, cached_meta = load_statistics(cache, expected=metadata)
        metadata["n_tokens"] = cached_meta["n_tokens"]
    reused = statistics is not None
    if statistics is None:
        done = 0
        if progress:
            progress(phase, 0, len(dataset))

        def on_batch(n_texts: int, _n_tokens: int) -> None:
            nonlocal done
            done += n_texts
            if progress:
                progress(phase, done, len(dataset))

        accumulator = compute_statistics(
            loaded,
            dataset,
            layers,
            max_length=max_length,
            token_budget=settings.token_budget,
            on_batch=on_batch,
        )
        statistics = accumulator.finalize()
        metadata["n_tokens"] = accumulator.n_tokens
        if cache is not None:
            save_statistics(cache, statistics, metadata)
    fractions = None if settings.ks else (settings.fractions or list(DEFAULT_FRACTIONS))
    scores = ntps_all_layers(
        statistics, fractions=fractions or DEFAULT_FRACTIONS, ks=settings.ks, ridge=settings.ridge
    )
    scores.update(
        model=loaded.model_id,
        model_fingerprint=loaded.fingerprint,
        dataset=dataset.name,
        split=dataset.split,
        n_texts=len(dataset),
        n_tokens=int(metadata["n_tokens"]),
        n_classes=dataset.n_classes,
    )
    return scores, reused


def ntps_change_figure(
    before: dict[str, Any], after: dict[str, Any], key: str = "ntps", label: str = ""
) -> Figure:
    """Layer × k heat maps of NTPS before and after training, and their difference."""
    columns = before.get("fractions") or before["ks"][0]
    layers = list(before["layers"])
    a = np.asarray(before[key], dtype=float)
    b = np.asarray(after[key], dtype=float)
    delta = b - a
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.18 * len(layers) + 2.6))
    bound = max(1e-6, float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 1e-6)
    panels = [
        (a, "before", "viridis", 0.0, 1.0),
        (b, f"after {label}".strip(), "viridis", 0.0, 1.0),
        (delta, "after − before", "RdBu_r", -bound, bound),
    ]
    for ax, (table, title, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(table, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([f"{c:g}" for c in columns], rotation=90, fontsize=7)
        step = max(1, len(layers) // 16)
        ax.set_yticks(range(0, len(layers), step))
        ax.set_yticklabels([str(layers[i]) for i in range(0, len(layers), step)], fontsize=7)
        ax.set_xlabel("fraction f of rank(V)" if before.get("fractions") else "k_V")
        ax.set_ylabel("layer (0 = embeddings)")
        ax.set_title(f"{key}: {title}")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{before.get('model', '?')} on {before.get('dataset', '?')}")
    fig.tight_layout()
    return fig
