"""The classifier every job trains: backbone → masked mean of the last hidden state → linear head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.models import (
    accepts_position_ids,
    backbone,
)


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
    """Backbone → masked mean pooling of the last layer → (dropout) → linear head (float32).

    ``head_dropout`` > 0 drops pooled features before the head in train mode (the paper's
    ``ClassificationModel``, p = 0.05); at 0 there is no dropout module at all.
    """

    def __init__(
        self, causal_lm: nn.Module, hidden_size: int, n_classes: int, head_dropout: float = 0.0
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise PerceptAlignError(f"a classifier needs at least 2 classes (got {n_classes}).")
        self.causal_lm = causal_lm
        self.head = nn.Linear(hidden_size, n_classes)
        self.head_dropout = nn.Dropout(head_dropout) if head_dropout > 0 else nn.Identity()
        # Resolved once: a PEFT wrapper injects its adapters into this same module tree.
        self._body = backbone(causal_lm)
        self._with_positions = accepts_position_ids(self._body)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = last_hidden_state(self._body, input_ids, attention_mask, self._with_positions)
        return masked_mean(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.head_dropout(self.pooled(input_ids, attention_mask))
        return self.head(pooled.to(self.head.weight.dtype))


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
