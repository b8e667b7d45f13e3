"""Keys, the per-layer result type and the helpers shared by the accumulator and the statistics cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from perceptalign.io import PerceptAlignError

STAT_KEYS = ("M_xx", "M_xy", "C0", "C1")
COUNT_KEYS = ("n_texts", "n_tokens")
_SYMMETRIC = ("M_xx", "C0")
#: Version of the layout of statistics caches and checkpoints (both refuse another version).
_FORMAT_VERSION = 1


@dataclass
class LayerStatistics:
    """Moments of one layer, already divided by the number of texts N (float64)."""

    M_xx: Tensor  # d×d, Σ x̄ x̄ᵀ / N
    M_xy: Tensor  # d×C, Σ x̄ yᵀ / N
    C0: Tensor  # d×d symmetric, Σ_n Σ_t S_t S_tᵀ / N
    C1: Tensor  # d×d, Σ_n Σ_t S_t h_{t+1}ᵀ / N

    def as_dict(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) for key in STAT_KEYS}


def _symmetric(upper: Tensor) -> Tensor:
    """Full symmetric matrix from a matrix whose upper triangle (with diagonal) is valid."""
    return torch.triu(upper) + torch.triu(upper, diagonal=1).T


def _safetensors_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise PerceptAlignError(f"{path} is not a readable safetensors file ({exc}); delete it.") from exc


def _validate_layers(layers: Sequence[int]) -> list[int]:
    try:
        out = [int(layer) for layer in layers]
    except (TypeError, ValueError) as exc:
        raise PerceptAlignError(f"layers must be integers, got {layers!r}.") from exc
    if not out:
        raise PerceptAlignError("at least one layer is needed.")
    if any(layer < 0 for layer in out):
        raise PerceptAlignError(
            f"layers must be non-negative hidden-state indices (0 = embeddings), got {out}; resolve negative "
            "indices against the model's number of hidden states first."
        )
    if len(set(out)) != len(out):
        raise PerceptAlignError(f"duplicate layers in {out}; list each layer once.")
    return out


def _layers_in_keys(keys: Any, allow_extra: set[str]) -> list[int]:
    layers: dict[int, set[str]] = {}
    for key in keys:
        if key in allow_extra:
            continue
        head, _, stat = key.partition(".")
        if not head.startswith("layer") or stat not in STAT_KEYS or not head[5:].isdigit():
            raise PerceptAlignError(
                f"unexpected statistics key {key!r}; expected 'layer<l>.<M_xx|M_xy|C0|C1>'."
            )
        layers.setdefault(int(head[5:]), set()).add(stat)
    incomplete = {layer: sorted(set(STAT_KEYS) - s) for layer, s in layers.items() if set(STAT_KEYS) - s}
    if not layers or incomplete:
        raise PerceptAlignError(f"statistics sums are incomplete: missing {incomplete or 'all layers'}.")
    return list(layers)  # order of first appearance
