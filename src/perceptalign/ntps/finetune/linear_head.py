"""The frozen-backbone linear baseline: pooled features once, then a linear head on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptalign.callbacks import PhaseCallback
from perceptalign.ntps.finetune.classifier import SequenceClassifier
from perceptalign.ntps.finetune.config import TrainConfig
from perceptalign.ntps.finetune.data import EncodedTexts
from perceptalign.ntps.finetune.training import TrainResult, train_classifier


@torch.no_grad()
def pooled_features(
    model: SequenceClassifier,
    data: EncodedTexts,
    token_budget: int,
    *,
    device: torch.device | str = "cpu",
    progress: PhaseCallback | None = None,
    phase: str = "features",
    autocast: str | None = None,
) -> torch.Tensor:
    """Mean-pooled last-layer features of every text (N×d, float32), computed once in eval mode (under
    ``torch.autocast`` in ``autocast`` when given, as the training runs' forward passes)."""
    from perceptalign.ntps.finetune.training import autocast_context

    model.eval()
    features: torch.Tensor | None = None
    done = 0
    if progress:
        progress(phase, 0, len(data))
    for indices in data.eval_batches(token_budget):
        input_ids, mask, _ = data.batch(indices)
        with autocast_context(device, autocast):
            pooled = model.pooled(input_ids.to(device), mask.to(device))
        pooled = pooled.float().cpu()
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

    def __init__(self, head: nn.Linear, features: torch.Tensor, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.head = head
        self.head_dropout = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        self.register_buffer("features", features, persistent=False)

    def forward(self, rows: torch.Tensor, _mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.features[rows]))


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
    progress: PhaseCallback | None = None,
) -> tuple[nn.Linear, TrainResult]:
    """Train a linear head on frozen pooled features with the loop, optimizer and batches of the others.

    A frozen backbone run in eval mode maps each text to the same features at every step, so feeding the
    cached features is the same computation as running the backbone each step (checked in the tests),
    minus the per-step forward. The backbone is in eval mode: its own dropout (e.g. GPT-2's 0.1) is off
    for this baseline, which is what "frozen feature extractor" means; LoRA and scratch train in train mode.
    ``config.head_dropout`` (the paper's 0.05) drops cached features before the head while it trains.
    ``config.autocast`` applies to the head's forward passes here and to the extraction of the features
    (:func:`pooled_features`, pass it there); the pooled features themselves are kept in float32.
    """
    torch.manual_seed(config.seed)
    head = nn.Linear(train_features.shape[1], n_classes)
    features = torch.cat([train_features, eval_features]).float()
    model = _FeatureClassifier(head, features, config.head_dropout)
    train = FeatureRows(train_labels.long(), offset=0)
    held_out = FeatureRows(eval_labels.long(), offset=len(train_labels))
    result = train_classifier(
        model, train, held_out, config, name=name, progress=progress, train_mode=config.head_dropout > 0
    )
    return head, result


def save_head(path: Path, head: nn.Linear, metadata: dict[str, Any]) -> None:
    """The head as safetensors (weight C×d, bias C) with string metadata (atomic)."""
    from perceptalign.io import save_tensors_atomic

    save_tensors_atomic(
        path, {"weight": head.weight, "bias": head.bias}, {k: str(v) for k, v in metadata.items()}
    )
