"""Streaming per-layer second moments for NTPS (ntps.md §2): M_xx, M_xy, C0, C1.

Why this module exists: the published code builds, per text, an L×(L−1) triangular matrix and a shift
matrix and multiplies them with the hidden states, which costs O(L²) memory and time per text. Here the
prefix sums S_t come from a chunked scan over the whole padded batch (O(L·d); the attention mask folded
into small triangular weights), and C0/C1 are two matrix products over all (prefix, next token) pairs of
the batch: the pairs are gathered when the batch has much padding, otherwise S is used in place with its
non-pair rows zeroed and the next-token rows taken as a one-row shift. C0 is symmetric, so only its upper
block triangle is multiplied. Scratch buffers are kept between batches (fresh multi-MB allocations
page-fault on every batch). Nothing O(L²) is ever built.

Precision policy: products run in the input dtype when it is float32 or float64 (float16 / bfloat16 are
upcast to float32, which is both faster and far more exact on CPU); prefix-sum carries and text totals are
float64; the C0/C1 products of consecutive batches accumulate in one compute-dtype block per layer until
it holds a few thousand token pairs (as many as one large batch), and each block is added into float64
sums with integer counts. M_xx (one row per text, not per token) is a float64 product of float64 text
means, buffered over batches so that it is one GEMM with a useful inner dimension. The sums are additive
over batches, shards and processes, so merging is addition and the division by N happens once, in
:meth:`StatisticsAccumulator.finalize`.
``compute_dtype=torch.float64`` forces float64 products.

Pairs: for each text, the prefix sum at each real token is paired with the NEXT REAL token, whatever the
padding side; a mask with holes is read as "these positions are not part of the text", i.e. the real rows
are compacted first, exactly as the per-text definition with L_n real rows. (For masks without holes this
is the same as the weight w_t = m_t·m_{t+1} of ntps.md.)
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from perceptalign.io import (
    PerceptAlignError,
    load_tensors,
    read_json,
    save_tensors_atomic,
    write_json_atomic,
)

STAT_KEYS = ("M_xx", "M_xy", "C0", "C1")
COUNT_KEYS = ("n_texts", "n_tokens")
_SYMMETRIC = ("M_xx", "C0")
_BLOCK_KEYS = ("C0", "C1")  # the token-pair products, kept in compute-dtype blocks between flushes

#: Metadata keys that identify how a statistics cache was made; a cache made with other values is refused.
IDENTITY_KEYS = (
    "model",
    "model_fingerprint",
    "dataset",
    "split",
    "max_length",
    "padding_side",
    "dtype",
    "n_classes",
    "class_names",
    "max_samples",
)
#: Keys starting with one of these (tokenizer settings) or ending in "fingerprint" are identity keys too.
IDENTITY_PREFIXES = ("tokenizer",)

_FORMAT_VERSION = 1
_CHECKPOINT_META_KEY = "perceptalign_statistics_checkpoint"
_WRITE_ID_KEY = "perceptalign_write_id"
# Chunk lengths of the blocked prefix scan, in order of preference (CPU ms for the scan of 32×64×576
# float32, 1 thread: c = 8: 0.45, 16: 0.42, 32: 0.56, 64: 0.89; torch.cumsum 1.27); the chunk that pads
# the batch least wins, so the scan needs no padded copy whenever T is a multiple of 8.
_SCAN_CHUNKS = (16, 32, 8)
# Use the shifted-row products (no gathered copies) when at least this fraction of the padded rows
# are pairs; below it, the product flops spent on zero rows cost more than gathering the pairs
# (measured at d = 576, B×T = 32×64: the gathered path wins below a fill of ~0.9).
_FLAT_MIN_FILL = 0.9
#: Token pairs per float32 product block (see :class:`StatisticsAccumulator`): consecutive small batches
#: share one block before it is added into the float64 sums, so each float32 partial sum covers about
#: as many pairs as one batch at a 4k-token budget.
DEFAULT_BLOCK_PAIRS = 4096
# Text means buffered per layer before their float64 M_xx product (256·d·8 bytes per layer).
_MEANS_ROWS = 256


@dataclass
class LayerStatistics:
    """Moments of one layer, already divided by the number of texts N (float64)."""

    M_xx: Tensor  # d×d, Σ x̄ x̄ᵀ / N
    M_xy: Tensor  # d×C, Σ x̄ yᵀ / N
    C0: Tensor  # d×d symmetric, Σ_n Σ_t S_t S_tᵀ / N
    C1: Tensor  # d×d, Σ_n Σ_t S_t h_{t+1}ᵀ / N

    def as_dict(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) for key in STAT_KEYS}


# --------------------------------------------------------------------------------------------------
# the accumulator


class StatisticsAccumulator:
    """Running float64 sums of the NTPS moments for a fixed set of layers.

    ``compute_dtype`` forces the dtype of the batch products (e.g. ``torch.float64`` for maximal precision
    on float32 models at about twice the cost); by default the input dtype is used (float16/bfloat16 →
    float32). Sums live on ``device`` (CPU by default); products run on the device of the hidden states.

    ``block_pairs``: the C0/C1 products of consecutive batches accumulate (``addmm``) in one compute-dtype
    block per layer until the block holds at least this many token pairs, and only then are added into
    the float64 sums. A float32 block of a few thousand pairs is as exact as one batch of that size (the
    rounding of a float32 sum of K terms grows like √K, the same inside a GEMM and across two), while
    the float64 conversion and addition of two d×d matrices per layer, which cost as much as a
    quarter of the update for short batches, are paid once per block rather than once per batch.
    M_xx is a product of text means (B rows per batch, not B·T), so it is made in float64: the means
    of up to ``_MEANS_ROWS`` texts wait in a buffer and are multiplied together, one GEMM with a useful
    inner dimension instead of a B-row product per batch (which measured ~8 % of the update).
    Block boundaries depend only on the data (never on checkpoints or timing), so results are
    reproducible bit for bit; ``sums()``, ``finalize()``, ``merge()`` and checkpoints add a partial
    block first. ``block_pairs=0`` adds every batch at once (2·d² values per layer less memory).
    """

    def __init__(
        self,
        layers: Sequence[int],
        hidden_size: int,
        n_classes: int,
        *,
        compute_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        block_pairs: int = DEFAULT_BLOCK_PAIRS,
    ) -> None:
        self.layers = _validate_layers(layers)
        if isinstance(block_pairs, bool) or not isinstance(block_pairs, int) or block_pairs < 0:
            raise PerceptAlignError(
                f"block_pairs must be an integer ≥ 0 (0 = add every batch into the float64 sums), got "
                f"{block_pairs!r}."
            )
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise PerceptAlignError(f"hidden_size must be a positive integer, got {hidden_size!r}.")
        if not isinstance(n_classes, int) or n_classes < 1:
            raise PerceptAlignError(
                f"n_classes must be a positive integer, got {n_classes!r}; "
                "take it from the dataset's label set."
            )
        if compute_dtype not in (None, torch.float32, torch.float64):
            raise PerceptAlignError(
                f"compute_dtype must be None, torch.float32 or torch.float64, got {compute_dtype}."
            )
        self.hidden_size = hidden_size
        self.n_classes = n_classes
        self.compute_dtype = compute_dtype
        self.device = torch.device(device)
        self.block_pairs = block_pairs
        self.n_texts = 0
        self.n_tokens = 0
        self._broken: str | None = None
        self._workspace = _Workspace()
        # Per-layer C0/C1 product blocks not yet added into the float64 sums (compute dtype, on the device
        # of the hidden states); ``_live`` holds the layers whose block has data.
        self._blocks: dict[int, dict[str, Tensor]] = {}
        self._live: set[int] = set()
        self._block_pairs_seen = 0
        # Per-layer float64 text means not yet multiplied into M_xx; rows [0, _means_rows) are filled
        # (the same count for every layer: each batch reaches all layers).
        self._means: dict[int, Tensor] = {}
        self._means_rows = 0
        d, f64 = hidden_size, torch.float64
        # C0 and M_xx keep only their upper triangle authoritative (the batch product of C0 fills only
        # upper blocks; a BLAS AᵀA need not be bitwise symmetric); sums()/finalize() mirror it.
        self._sums: dict[int, dict[str, Tensor]] = {
            layer: {
                "M_xx": torch.zeros(d, d, dtype=f64, device=self.device),
                "M_xy": torch.zeros(d, n_classes, dtype=f64, device=self.device),
                "C0": torch.zeros(d, d, dtype=f64, device=self.device),
                "C1": torch.zeros(d, d, dtype=f64, device=self.device),
            }
            for layer in self.layers
        }

    def __repr__(self) -> str:
        return (
            f"StatisticsAccumulator(layers={self.layers}, hidden_size={self.hidden_size}, "
            f"n_classes={self.n_classes}, n_texts={self.n_texts}, n_tokens={self.n_tokens})"
        )

    # ---- streaming ------------------------------------------------------------------------------

    def update(self, hidden_states: Sequence[Tensor], attention_mask: Tensor, labels: Tensor) -> None:
        """Add one padded batch.

        ``hidden_states``: one B×T×d tensor per entry of ``self.layers`` (same order), any float dtype.
        ``attention_mask``: B×T of 0/1 (which positions are real; either padding side). ``labels``: B
        integers in [0, n_classes). Input errors are raised before anything is added; a non-finite layer
        found after earlier layers were added leaves the accumulator refusing further use (reload the last
        checkpoint), because holding every layer's batch result to add them atomically would cost
        4·d²·8 bytes per layer.
        """
        self._check_usable()
        if len(hidden_states) != len(self.layers):
            raise PerceptAlignError(
                f"got {len(hidden_states)} hidden-state tensors for {len(self.layers)} layers {self.layers}; "
                "pass exactly one B×T×d tensor per accumulated layer, in the same order."
            )
        mask, labels = self._check_batch(hidden_states, attention_mask, labels)
        if self._means_rows and self._means_rows + mask.shape[0] > _MEANS_ROWS:
            self._fold_means()
        plans: dict[torch.device, _BatchPlan] = {}  # one per device (layers may sit on several devices)
        for position, (layer, hidden) in enumerate(zip(self.layers, hidden_states, strict=True)):
            if hidden.device not in plans:
                plans[hidden.device] = _BatchPlan(
                    mask.to(hidden.device), labels.to(hidden.device), self.n_classes
                )
            try:
                self._add_layer(layer, hidden, plans[hidden.device])
            except PerceptAlignError as exc:
                if position > 0:
                    self._broken = (
                        f"a previous update() failed at layer {layer} after layers {self.layers[:position]} "
                        f"had been added ({exc})"
                    )
                raise
        self.n_texts += int(mask.shape[0])
        self.n_tokens += int(mask.sum())
        self._means_rows += int(mask.shape[0])
        self._block_pairs_seen += next(iter(plans.values())).n_pairs
        if self._block_pairs_seen >= self.block_pairs:
            self.flush()

    @property
    def at_block_boundary(self) -> bool:
        """True when no batch products wait outside the float64 sums (a checkpoint here changes nothing)."""
        return not self._live and not self._means_rows

    def flush(self) -> None:
        """Add every layer's pending product block into the float64 sums (called by the readers)."""
        self._check_usable()
        for layer in sorted(self._live):
            self._flush_layer(layer)
        self._block_pairs_seen = 0
        self._fold_means()

    def _fold_means(self) -> None:
        """Multiply the buffered text means of every layer into its float64 M_xx (upper blocks only)."""
        rows, self._means_rows = self._means_rows, 0
        if not rows:
            return
        for layer in self.layers:
            means, target = self._means[layer][:rows], self._sums[layer]["M_xx"]
            if means.device == target.device:
                _upper_gram(means, target, accumulate=True)
            else:
                d = self.hidden_size
                product = self._workspace.get("M_xx", (d, d), torch.float64, means.device, zeroed=True)
                target += _upper_gram(means, product).to(target.device)

    def _flush_layer(self, layer: int) -> None:
        block, acc = self._blocks[layer], self._sums[layer]
        d = self.hidden_size
        # A float32 overflow shows up as inf/NaN somewhere in the products, hence in their sums; checked
        # once per block rather than per batch (three d×d reductions per layer and batch measured ~3 % of
        # the update). The block's batches are lost with it, so the accumulator refuses further use.
        if not all(_finite(block[key]) for key in _BLOCK_KEYS):
            dtype = block["C1"].dtype
            self._broken = (
                f"the {dtype} products of layer {layer} overflowed, losing the batches added since the "
                "last product block"
            )
            raise PerceptAlignError(
                f"non-finite values (NaN/inf) in the {dtype} products (overflow) of layer {layer}: the "
                "hidden states are too large for float32 products. Use float64 products "
                "(StatisticsAccumulator(compute_dtype=torch.float64)) for this model."
            )
        for key in _BLOCK_KEYS:
            # Only the upper triangle of the symmetric C0 is read (its block holds nothing else), so its
            # upper blocks are all that is added.
            for lo, hi in _upper_spans(d) if key in _SYMMETRIC else ((0, d),):
                part, target = block[key][lo:hi, lo:], acc[key][lo:hi, lo:]
                if part.device != self.device:
                    # Move through a kept buffer: a fresh 8·d² allocation per add page-faults, which
                    # measured 4× slower than the addition itself.
                    part = self._workspace.get("up", part.shape, torch.float64, self.device).copy_(part)
                target += part  # float32 + float64 → float64, element by element, no temporary
        self._live.discard(layer)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise PerceptAlignError(
                f"this accumulator is inconsistent: {self._broken}. Fix the cause and resume from the last "
                "checkpoint (or start again)."
            )

    def release_workspace(self) -> None:
        """Add the pending blocks, then free the scratch buffers kept between updates (re-created on the
        next update)."""
        self.flush()
        self._workspace.clear()
        self._blocks.clear()
        self._means.clear()

    def _check_batch(
        self, hidden_states: Sequence[Tensor], attention_mask: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 2:
            raise PerceptAlignError(
                "attention_mask must be a B×T tensor of 0/1, got "
                f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}."
            )
        B, T = attention_mask.shape
        if attention_mask.dtype == torch.bool:
            mask = attention_mask
        else:
            if attention_mask.is_floating_point() or attention_mask.is_complex():
                bad = ~((attention_mask == 0) | (attention_mask == 1))
            else:
                bad = (attention_mask < 0) | (attention_mask > 1)
            if bool(bad.any()):
                raise PerceptAlignError(
                    "attention_mask must contain only 0 and 1 (1 = real token); pass the tokenizer's mask, "
                    "not an additive attention bias."
                )
            mask = attention_mask != 0
        lengths = mask.sum(dim=1)
        if B == 0:
            raise PerceptAlignError("empty batch (B = 0): skip it instead of calling update().")
        empty = torch.nonzero(lengths == 0).flatten()
        if empty.numel():
            raise PerceptAlignError(
                f"text(s) at batch position(s) {empty.tolist()[:10]} have no real tokens (all-zero attention "
                "mask row); drop empty texts before accumulating (the mean of zero tokens is undefined)."
            )
        if not isinstance(labels, Tensor) or labels.shape != (B,):
            raise PerceptAlignError(
                f"labels must be a 1-D tensor of length B = {B}, got "
                f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}."
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise PerceptAlignError(f"labels must be integer class indices, got dtype {labels.dtype}.")
        labels = labels.to(torch.int64)
        if bool(((labels < 0) | (labels >= self.n_classes)).any()):
            bad_values = sorted({int(v) for v in labels[(labels < 0) | (labels >= self.n_classes)].tolist()})
            raise PerceptAlignError(
                f"labels {bad_values[:10]} are outside [0, {self.n_classes}); map labels to 0..n_classes−1 "
                "and take n_classes from the label set of all splits."
            )
        for layer, hidden in zip(self.layers, hidden_states, strict=True):
            if not isinstance(hidden, Tensor) or hidden.dim() != 3:
                raise PerceptAlignError(
                    f"hidden states of layer {layer} must be a B×T×d tensor, got "
                    f"{getattr(hidden, 'shape', type(hidden).__name__)}."
                )
            if tuple(hidden.shape) != (B, T, self.hidden_size):
                raise PerceptAlignError(
                    f"hidden states of layer {layer} have shape {tuple(hidden.shape)}, expected "
                    f"{(B, T, self.hidden_size)} (attention_mask is {B}×{T}, hidden_size {self.hidden_size})."
                )
            if not hidden.is_floating_point():
                raise PerceptAlignError(
                    f"hidden states of layer {layer} must be floating point, got {hidden.dtype}."
                )
        return mask, labels

    def _add_layer(self, layer: int, hidden: Tensor, plan: _BatchPlan) -> None:
        """Add one layer's batch products into its pending block (M_xy straight into the float64 sums)."""
        dtype = self.compute_dtype or (torch.float64 if hidden.dtype == torch.float64 else torch.float32)
        device = hidden.device
        block = self._block(layer, dtype, device)
        accumulate = layer in self._live
        # The copy-free path reads padding rows (weighted by zero); NaN/inf there (some models leave
        # fully masked rows undefined) would poison it, so non-finite totals are recomputed with the
        # masked copy, which never reads padding, before anything is reported. Finite totals mean every
        # row the products read is finite, so the products are only computed once the totals pass.
        copy_free = hidden.dtype == dtype and hidden.is_contiguous() and plan.padded_T == plan.T
        copied = not copy_free
        scan = _prefix_sums(hidden, plan, dtype, self._workspace, copy=copied)
        totals = scan[2]
        if not _finite(totals):
            if copied:
                raise _non_finite_error(layer, hidden.dtype, "hidden states")
            copied = True
            scan = _prefix_sums(hidden, plan, dtype, self._workspace, copy=True)
            totals = scan[2]
            if not _finite(totals):
                raise _non_finite_error(layer, hidden.dtype, "hidden states")
        if plan.n_pairs:
            _pair_products(
                scan, plan, block["C0"], block["C1"], self._workspace, copied=copied, accumulate=accumulate
            )
        elif not accumulate:
            block["C0"].zero_()
            block["C1"].zero_()
        # Text means from the float64 totals, kept in float64 for M_xx (see the class docstring).
        first, batch_size = self._means_rows, totals.shape[0]
        means = self._means_buffer(layer, batch_size, device)[first : first + batch_size]
        torch.div(totals, plan.lengths_column(totals.dtype), out=means)
        self._sums[layer]["M_xy"].addmm_(means.T.to(self.device), plan.one_hot.to(self.device))
        self._live.add(layer)

    def _means_buffer(self, layer: int, batch_size: int, device: torch.device) -> Tensor:
        """The layer's float64 text-mean buffer on ``device``, with room for ``batch_size`` more rows."""
        buffer, filled = self._means.get(layer), self._means_rows
        if buffer is None or buffer.device != device or buffer.shape[0] < filled + batch_size:
            grown = torch.empty(
                max(_MEANS_ROWS, filled + batch_size), self.hidden_size, dtype=torch.float64, device=device
            )
            if buffer is not None and filled:  # rows kept so far move with it (e.g. to another device)
                grown[:filled] = buffer[:filled]
            self._means[layer] = buffer = grown
        return buffer

    def _block(self, layer: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """The layer's pending block in ``dtype`` on ``device`` (a block of another kind is added first)."""
        block = self._blocks.get(layer)
        if block is not None and (block["C1"].dtype, block["C1"].device) != (dtype, device):
            if layer in self._live:
                self._flush_layer(layer)
            block = None
        if block is None:
            d = self.hidden_size
            # C0's lower blocks are never written: allocated zeroed, they stay zero.
            block = {key: torch.zeros(d, d, dtype=dtype, device=device) for key in _BLOCK_KEYS}
            self._blocks[layer] = block
        return block

    # ---- merging ------------------------------------------------------------------------------------

    def merge(self, other: StatisticsAccumulator) -> StatisticsAccumulator:
        """Add ``other``'s sums into this accumulator (in place) and return ``self``."""
        if not isinstance(other, StatisticsAccumulator):
            raise TypeError(f"cannot merge a StatisticsAccumulator with {type(other).__name__}")
        self.flush()
        other.flush()
        mismatch = [
            f"{name}: {getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in ("layers", "hidden_size", "n_classes")
            if getattr(self, name) != getattr(other, name)
        ]
        if mismatch:
            raise PerceptAlignError(
                "cannot merge statistics accumulated with different settings (" + "; ".join(mismatch) + "); "
                "merge only shards of the same model, layers and label set."
            )
        for layer in self.layers:
            for key in STAT_KEYS:
                self._sums[layer][key] += other._sums[layer][key].to(self.device)
        self.n_texts += other.n_texts
        self.n_tokens += other.n_tokens
        return self

    def __iadd__(self, other: StatisticsAccumulator) -> StatisticsAccumulator:
        return self.merge(other)

    def __add__(self, other: StatisticsAccumulator) -> StatisticsAccumulator:
        return self.copy().merge(other)

    def copy(self) -> StatisticsAccumulator:
        return type(self).from_sums(
            self.sums(),
            layers=self.layers,
            compute_dtype=self.compute_dtype,
            device=self.device,
            block_pairs=self.block_pairs,
        )

    # ---- raw sums (all-reduce, checkpoints) --------------------------------------------------------

    def sums(self) -> dict[str, Tensor]:
        """Raw float64 sums ``layer{l}.{key}`` (C0 symmetric) plus int64 counts ``n_texts``, ``n_tokens``.

        All entries are additive: a data-parallel run all-reduces each tensor with SUM, then calls
        :meth:`from_sums`. A pending product block is added first.
        """
        self.flush()
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            for key in STAT_KEYS:
                value = self._sums[layer][key]
                out[f"layer{layer}.{key}"] = _symmetric(value) if key in _SYMMETRIC else value.clone()
        out["n_texts"] = torch.tensor(self.n_texts, dtype=torch.int64, device=self.device)
        out["n_tokens"] = torch.tensor(self.n_tokens, dtype=torch.int64, device=self.device)
        return out

    @classmethod
    def from_sums(
        cls,
        sums: Mapping[str, Tensor],
        *,
        layers: Sequence[int] | None = None,
        compute_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        block_pairs: int = DEFAULT_BLOCK_PAIRS,
    ) -> StatisticsAccumulator:
        """Rebuild an accumulator from :meth:`sums` output (d and C are read from the tensors).

        ``layers`` fixes the layer order expected by :meth:`update` (default: order of the keys).
        """
        missing_counts = [key for key in COUNT_KEYS if key not in sums]
        if missing_counts:
            raise PerceptAlignError(
                f"statistics sums lack the count(s) {missing_counts}; pass the output of sums()."
            )
        found = _layers_in_keys(sums.keys(), allow_extra=set(COUNT_KEYS))
        if layers is None:
            layers = found
        elif sorted(int(layer) for layer in layers) != sorted(found):
            raise PerceptAlignError(
                f"sums hold layers {sorted(found)}, but layers {list(layers)} were requested."
            )
        first = sums[f"layer{layers[0]}.M_xy"]
        if first.dim() != 2:
            raise PerceptAlignError(
                f"layer{layers[0]}.M_xy must be 2-D (d×C), got shape {tuple(first.shape)}."
            )
        d, C = first.shape
        acc = cls(layers, int(d), int(C), compute_dtype=compute_dtype, device=device, block_pairs=block_pairs)
        for layer in layers:
            for key in STAT_KEYS:
                value = sums[f"layer{layer}.{key}"]
                expected = (d, C) if key == "M_xy" else (d, d)
                if tuple(value.shape) != expected:
                    raise PerceptAlignError(
                        f"layer{layer}.{key} has shape {tuple(value.shape)}, expected {expected}."
                    )
                acc._sums[layer][key] = value.detach().to(device=acc.device, dtype=torch.float64).clone()
        acc.n_texts = int(sums["n_texts"])
        acc.n_tokens = int(sums["n_tokens"])
        return acc

    def finalize(self) -> dict[int, LayerStatistics]:
        """Moments divided by N = number of texts (ntps.md §2 divides C0/C1 by N too)."""
        self.flush()
        if self.n_texts == 0:
            raise PerceptAlignError("no texts were accumulated; call update() with at least one batch first.")
        n = float(self.n_texts)
        out = {}
        for layer in self.layers:
            s = self._sums[layer]
            out[layer] = LayerStatistics(
                M_xx=_symmetric(s["M_xx"]) / n, M_xy=s["M_xy"] / n, C0=_symmetric(s["C0"]) / n, C1=s["C1"] / n
            )
        return out

    # ---- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> None:
        """Write the raw sums plus JSON-able ``extra`` (e.g. next batch index, fingerprint) atomically."""
        header = {
            "format_version": _FORMAT_VERSION,
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "n_classes": self.n_classes,
            "block_pairs": self.block_pairs,
            "extra": dict(extra or {}),
        }
        try:
            text = json.dumps(header)
        except TypeError as exc:
            raise PerceptAlignError(f"checkpoint extra must be JSON-serialisable: {exc}") from exc
        tensors = {k: v.cpu() for k, v in self.sums().items()}
        save_tensors_atomic(path, tensors, metadata={_CHECKPOINT_META_KEY: text})

    @classmethod
    def load_checkpoint(
        cls, path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
    ) -> tuple[StatisticsAccumulator, dict[str, Any]]:
        """Inverse of :meth:`save_checkpoint`: returns the accumulator and the ``extra`` dict."""
        path = Path(path)
        if not path.is_file():
            raise PerceptAlignError(f"no statistics checkpoint at {path}; start without resuming.")
        metadata = _safetensors_metadata(path)
        if _CHECKPOINT_META_KEY not in metadata:
            raise PerceptAlignError(
                f"{path} is not a statistics checkpoint (no {_CHECKPOINT_META_KEY} header); delete it or "
                "point the run at another checkpoint path."
            )
        header = json.loads(metadata[_CHECKPOINT_META_KEY])
        if header.get("format_version") != _FORMAT_VERSION:
            raise PerceptAlignError(
                f"checkpoint {path} has format {header.get('format_version')}, this version reads "
                f"{_FORMAT_VERSION}; delete it and restart the accumulation."
            )
        acc = cls.from_sums(
            load_tensors(path),
            layers=header["layers"],
            device=device,
            block_pairs=int(header.get("block_pairs", DEFAULT_BLOCK_PAIRS)),
        )
        if (
            acc.layers != header["layers"]
            or acc.hidden_size != header["hidden_size"]
            or (acc.n_classes != header["n_classes"])
        ):
            raise PerceptAlignError(
                f"checkpoint {path} is inconsistent with its header; delete it and restart."
            )
        return acc, header["extra"]


# --------------------------------------------------------------------------------------------------
# batch kernels


class _BatchPlan:
    """Indices shared by all layers of one batch (computed once, not per layer)."""

    def __init__(self, mask: Tensor, labels: Tensor, n_classes: int) -> None:
        B, T = mask.shape
        device = mask.device
        self.mask = mask
        self.T = T
        self.lengths = mask.sum(dim=1)
        # Scan chunk: among the chunk lengths that pad T least, the preferred one (padding rows cost
        # product flops, and T a multiple of the chunk allows the copy-free scan).
        self.chunk = _scan_chunk(T)
        self.padded_T = Tp = -(-T // self.chunk) * self.chunk
        pos = torch.arange(T, device=device)
        first = torch.where(mask, pos, T).amin(dim=1)
        last = torch.where(mask, pos, -1).amax(dim=1)
        pair_mask = mask & (pos[None, :] < last[:, None])  # has a next real token
        next_mask = mask & (pos[None, :] > first[:, None])  # has a previous real token
        self.n_pairs = int(pair_mask.sum())
        contiguous = bool((last - first + 1 == self.lengths).all())
        self.flat = contiguous and self.n_pairs >= _FLAT_MIN_FILL * B * Tp
        if self.flat:
            padded_pairs = torch.zeros(B, Tp, dtype=torch.bool, device=device)
            padded_pairs[:, :T] = pair_mask
            self.nonpair_index = torch.nonzero(~padded_pairs.flatten()).flatten()
        else:
            # Row numbers in the B×Tp scan buffer; both lists are text-major and position-ascending,
            # so the j-th prefix row pairs with the j-th next-token row (the NEXT REAL token).
            self.pair_index = _flat_rows(pair_mask, Tp)
            self.next_index = _flat_rows(next_mask, Tp)
        self.one_hot = torch.zeros(B, n_classes, dtype=torch.float64, device=device)
        self.one_hot[torch.arange(B, device=device), labels] = 1.0
        self._cache: dict[object, Tensor] = {}

    def tril(self, dtype: torch.dtype, n: int | None = None) -> Tensor:
        """n×n lower-triangular ones (n = the chunk by default): prefix sums as one small matmul."""
        n = self.chunk if n is None else n
        if (dtype, n) not in self._cache:
            ones = torch.ones(n, n, dtype=dtype, device=self.mask.device)
            self._cache[dtype, n] = torch.tril(ones)
        return self._cache[dtype, n]

    def lengths_column(self, dtype: torch.dtype) -> Tensor:
        """B×1 text lengths in ``dtype`` (the divisor of the text means, shared by all layers)."""
        key = ("lengths", dtype)
        if key not in self._cache:
            self._cache[key] = self.lengths.to(dtype)[:, None]
        return self._cache[key]

    def masked_tril(self, dtype: torch.dtype) -> Tensor:
        """B×(T/c)×c×c weights tril ⊙ mask of the source position (only when T is a multiple of c)."""
        key = ("masked", dtype)
        if key not in self._cache:
            B, c = self.mask.shape[0], self.chunk
            cols = self.mask.view(B, self.T // c, 1, c).to(dtype)
            self._cache[key] = self.tril(dtype) * cols
        return self._cache[key]


def _scan_chunk(T: int) -> int:
    """Chunk length of the prefix scan for a batch padded to T positions.

    The preferred chunks (16, 32, 8) when one divides T. Otherwise a divisor of T in [8, 64] nearest 16,
    or T itself when T ≤ 64: a chunk that divides T lets the scan read the hidden states in place, while
    padding T up to a chunk multiple forces a masked copy of the whole batch, which measured ~3× the cost
    of a c = 64 scan (1.6 ms vs 0.5 ms per layer at 40×51×576, 1 thread). Only T > 64 with no divisor in
    [8, 64] (e.g. a prime) falls back to padding.
    """
    best = min(_SCAN_CHUNKS, key=lambda c: (-(-T // c) * c, _SCAN_CHUNKS.index(c)))
    if T % best == 0:
        return best
    divisors = [c for c in range(8, 65) if T % c == 0]
    if divisors:
        return min(divisors, key=lambda c: (abs(c - 16), c))
    return T if T <= 64 else best


def _flat_rows(mask: Tensor, row_length: int) -> Tensor:
    """Row numbers b·row_length + t of the True entries of a B×T mask (T ≤ row_length), row-major."""
    b, t = torch.nonzero(mask, as_tuple=True)
    return b * row_length + t


class _Workspace:
    """Scratch buffers reused across batches: fresh multi-MB allocations page-fault on first touch,
    which measured as costly as the masking pass itself on the 2-core test machine."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}
        self._shapes: dict[tuple[str, torch.dtype, torch.device], tuple[int, ...]] = {}

    def get(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device | None = None,
        *,
        zeroed: bool = False,
    ) -> Tensor:
        """A view of ``shape`` on a kept buffer; ``zeroed`` zero-fills it when it is (re)allocated or its
        shape changes (callers that never write some entries rely on those staying zero)."""
        device = torch.device(device or "cpu")
        key = (name, dtype, device)
        numel = math.prod(shape)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel or (zeroed and self._shapes.get(key) != shape):
            buf = (
                torch.zeros(numel, dtype=dtype, device=device)
                if zeroed
                else torch.empty(numel, dtype=dtype, device=device)
            )
            self._buffers[key] = buf
            self._shapes[key] = shape
        return buf[:numel].view(shape)

    def clear(self) -> None:
        self._buffers.clear()
        self._shapes.clear()


def _finite(x: Tensor) -> bool:
    """One reduction: NaN/inf anywhere propagate into the sum."""
    return math.isfinite(x.sum().item())


def _pair_products(
    scan: tuple[Tensor, Tensor, Tensor],
    plan: _BatchPlan,
    c0: Tensor,
    c1: Tensor,
    ws: _Workspace,
    *,
    copied: bool,
    accumulate: bool,
) -> None:
    """The batch's Σ S_t S_tᵀ (upper block triangle) and Σ S_t x_{t+1}ᵀ over its token pairs, written
    into (or, with ``accumulate``, added to) ``c0`` and ``c1``. ``scan`` is :func:`_prefix_sums`' output
    (``copied``: its X is the masked workspace copy, not the caller's tensor); S is overwritten."""
    S, X, _ = scan
    d, dtype, device = S.shape[-1], S.dtype, S.device
    S_rows, X_rows = S.view(-1, d), X.reshape(-1, d)
    if plan.flat:
        # Contiguous texts, little padding: zero every row of S that is not a prefix with a next token;
        # then row r of S pairs with row r+1 of X (zero rows add nothing) and nothing is gathered.
        S_rows.index_fill_(0, plan.nonpair_index, 0.0)
        prefix, nxt = S_rows[:-1], X_rows[1:]
    else:
        # General masks (holes, heavy padding): gather the pairs. A masked copy X is dead once the
        # next-token rows are copied out, so the prefix rows reuse its buffer (3 buffers, not 4).
        nxt = ws.get("N", (plan.n_pairs, d), dtype, device)
        torch.index_select(X_rows, 0, plan.next_index, out=nxt)
        prefix_out = X_rows[: plan.n_pairs] if copied else ws.get("P", (plan.n_pairs, d), dtype, device)
        prefix = torch.index_select(S_rows, 0, plan.pair_index, out=prefix_out)
    if accumulate:
        c1.addmm_(prefix.T, nxt)
    else:
        torch.mm(prefix.T, nxt, out=c1)
    _upper_gram(prefix, c0, accumulate=accumulate)


def _prefix_sums(
    hidden: Tensor, plan: _BatchPlan, dtype: torch.dtype, ws: _Workspace, *, copy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Masked per-text prefix sums by a chunked scan.

    Returns S (B×T_pad×d in ``dtype``, a workspace view valid until the next call), the rows it was
    computed from (the masked copy, or ``hidden`` itself when ``copy=False``) and the per-text totals
    (B×d, float64). Within a chunk of ≤ 32 positions the prefix is a small triangular matmul; the chunk
    carries are summed in float64, so float32 prefix sums keep a relative error of a few ulps even for
    long texts, unlike a float32 ``cumsum`` (which is also 3-10× slower on CPU).
    """
    B, T, d = hidden.shape
    Tp, c = plan.padded_T, plan.chunk
    device = hidden.device
    S = ws.get("S", (B, Tp // c, c, d), dtype, device)
    if copy:
        X = ws.get("X", (B, Tp, d), dtype, device)
        if Tp > T:
            X[:, T:].zero_()
        # Select rather than multiply by the mask: padding rows may hold NaN and NaN·0 is NaN.
        keep = plan.mask[:, :, None]
        if hidden.dtype == dtype:
            torch.where(keep, hidden, torch.zeros((), dtype=dtype, device=device), out=X[:, :T])
        else:
            X[:, :T].copy_(hidden)
            X[:, :T].masked_fill_(~keep, 0.0)
        torch.matmul(plan.tril(dtype), X.view(B, Tp // c, c, d), out=S)  # within-chunk prefix sums
    else:
        # The mask folded into the triangular weights: padding columns get weight 0, no masked copy.
        X = hidden
        torch.matmul(plan.masked_tril(dtype), hidden.view(B, Tp // c, c, d), out=S)
    # Chunk totals in float64, copied: S is overwritten later (the pair products zero its non-pair rows).
    ends = S[:, :, -1].to(torch.float64, copy=True)
    if Tp == c:  # one chunk: nothing to carry
        return S.view(B, Tp, d), X, ends[:, 0]
    carry = _running_sum(ends, plan)  # totals at chunk ends
    S[:, 1:] += carry[:, :-1, None].to(dtype)
    return S.view(B, Tp, d), X, carry[:, -1]


def _running_sum(x: Tensor, plan: _BatchPlan) -> Tensor:
    """Inclusive cumulative sum over dim 1 of a B×n×d tensor; a small triangular matmul when n is small
    (torch's CPU cumsum measured several times slower than the matmul for these sizes)."""
    n = x.shape[1]
    if n > 64:
        return x.cumsum(dim=1)
    return torch.matmul(plan.tril(x.dtype, n), x)


def _gram_blocks(d: int) -> int:
    # Block-upper-triangular Gram: nb blocks cost (nb+1)/(2nb) of a full product; blocks much narrower
    # than ~96 columns lose BLAS efficiency. Measured at d = 576, K = 8192, 1 thread (CPU ms):
    # nb = 1: 29.7, 2: 24.2, 4: 20.4, 6: 18.7, 8: 19.3, 12: 18.4.
    return max(1, min(12, round(d / 96)))


@functools.cache
def _upper_spans(d: int) -> tuple[tuple[int, int], ...]:
    """Row spans [lo, hi) of the blocks of :func:`_upper_gram`; block i covers rows lo:hi, columns lo:."""
    nb = _gram_blocks(d)
    edges = [round(i * d / nb) for i in range(nb + 1)]
    return tuple(itertools.pairwise(edges))


def _upper_gram(A: Tensor, out: Tensor, *, accumulate: bool = False) -> Tensor:
    """AᵀA into ``out`` (added to it with ``accumulate``), computing only the upper block triangle; the
    lower blocks of ``out`` are not written, so a buffer zeroed once keeps them at zero."""
    for lo, hi in _upper_spans(A.shape[1]):
        if accumulate:
            out[lo:hi, lo:].addmm_(A[:, lo:hi].T, A[:, lo:])
        else:
            torch.mm(A[:, lo:hi].T, A[:, lo:], out=out[lo:hi, lo:])
    return out


def _symmetric(upper: Tensor) -> Tensor:
    """Full symmetric matrix from a matrix whose upper triangle (with diagonal) is valid."""
    return torch.triu(upper) + torch.triu(upper, diagonal=1).T


def _non_finite_error(layer: int, dtype: torch.dtype, what: str) -> PerceptAlignError:
    hint = (
        " The model ran in float16, whose range (±65504) hidden states often exceed: rerun with "
        "--dtype float32 or --dtype bfloat16."
        if dtype == torch.float16
        else " Check the model weights and inputs, or rerun with --dtype float32 if a reduced precision "
        "was used."
    )
    return PerceptAlignError(
        f"non-finite values (NaN/inf) in the {what} of layer {layer} (input dtype {dtype}).{hint}"
    )


# --------------------------------------------------------------------------------------------------
# the published dense formula (tests and benchmark baseline)


def dense_reference_statistics(
    hidden_per_text: Sequence[Tensor],
    labels: Sequence[int] | Tensor,
    n_classes: int,
    *,
    dtype: torch.dtype = torch.float64,
) -> LayerStatistics:
    """The published O(L²) per-text formula for ONE layer: triangular and shift matrices times H.

    ``hidden_per_text``: one L_n×d tensor of REAL rows per text. Kept deliberately literal (a Python loop
    that materialises the L×(L−1) matrices) so it is an independent check of the fast path and an honest
    benchmark baseline. ``dtype`` float64 by default; float32 reproduces the published precision.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(hidden_per_text) == 0 or labels.shape != (len(hidden_per_text),):
        raise PerceptAlignError("need one label per text and at least one text.")
    d = hidden_per_text[0].shape[1]
    M_xx = torch.zeros(d, d, dtype=dtype)
    M_xy = torch.zeros(d, n_classes, dtype=dtype)
    C0 = torch.zeros(d, d, dtype=dtype)
    C1 = torch.zeros(d, d, dtype=dtype)
    for H, y in zip(hidden_per_text, labels.tolist(), strict=True):
        H = H.to(dtype)
        L = H.shape[0]
        if L == 0:
            raise PerceptAlignError("a text with zero tokens has no mean; drop it.")
        x = H.mean(dim=0)
        M_xx += torch.outer(x, x)
        M_xy[:, y] += x
        if L > 1:
            prefix = torch.triu(torch.ones(L, L - 1, dtype=dtype))  # prefix[i, t] = 1 iff i ≤ t
            shift = torch.eye(L, dtype=dtype)[:, 1:]  # shift[i, t] = 1 iff i = t + 1
            S = prefix.T @ H
            H_next = shift.T @ H
            C0 += S.T @ S
            C1 += S.T @ H_next
    n = float(len(hidden_per_text))
    f64 = torch.float64
    return LayerStatistics(
        M_xx=(M_xx / n).to(f64), M_xy=(M_xy / n).to(f64), C0=(C0 / n).to(f64), C1=(C1 / n).to(f64)
    )


# --------------------------------------------------------------------------------------------------
# finished statistics on disk


def _resolve_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / "statistics.safetensors", path / "statistics.json"


def save_statistics(
    path_dir_or_file: str | os.PathLike[str],
    stats: Mapping[int, LayerStatistics],
    metadata: Mapping[str, Any],
) -> None:
    """Write ``layer{l}.{key}`` float64 tensors (safetensors) and the metadata (JSON) beside them.

    A directory gets ``statistics.safetensors`` + ``statistics.json``; a ``*.safetensors`` path gets a
    ``.json`` of the same stem. Each file is written atomically and both carry the same random write id,
    so a crash between the two writes is detected on load instead of pairing new tensors with old metadata.
    ``metadata["layers"]`` is set from ``stats``.
    """
    if not stats:
        raise PerceptAlignError("no layer statistics to save.")
    tensor_path, json_path = _resolve_paths(path_dir_or_file)
    tensors: dict[str, Tensor] = {}
    shape = None
    for layer in sorted(stats):
        layer_stats = stats[layer]
        for key in STAT_KEYS:
            value = getattr(layer_stats, key)
            tensors[f"layer{int(layer)}.{key}"] = value.detach().to("cpu", torch.float64)
        current = (tuple(layer_stats.M_xx.shape), tuple(layer_stats.M_xy.shape))
        if shape is not None and current != shape:
            raise PerceptAlignError(f"layer {layer} statistics have shapes {current}, other layers {shape}.")
        shape = current
    meta = _jsonable(dict(metadata))
    meta["layers"] = sorted(int(layer) for layer in stats)
    write_id = uuid.uuid4().hex
    meta[_WRITE_ID_KEY] = write_id
    meta["statistics_format"] = _FORMAT_VERSION
    save_tensors_atomic(tensor_path, tensors, metadata={_WRITE_ID_KEY: write_id})
    write_json_atomic(json_path, meta)


def load_statistics(
    path: str | os.PathLike[str], expected: Mapping[str, Any] | None = None
) -> tuple[dict[int, LayerStatistics], dict[str, Any]]:
    """Read statistics written by :func:`save_statistics`, refusing a cache made with other settings.

    ``expected``: the identity keys (model, fingerprint, dataset, split, max_length, padding side, dtype,
    n_classes, max_samples, tokenizer settings, …) are compared with the cached metadata;
    ``expected["layers"]`` may be a subset of the cached layers (only those are returned).
    """
    tensor_path, json_path = _resolve_paths(path)
    if not tensor_path.is_file() or not json_path.is_file():
        raise PerceptAlignError(
            f"no complete statistics cache at {path} (need {tensor_path.name} and {json_path.name}); "
            "compute the statistics first."
        )
    meta = read_json(json_path)
    write_id = _safetensors_metadata(tensor_path).get(_WRITE_ID_KEY)
    if write_id is None or write_id != meta.get(_WRITE_ID_KEY):
        raise PerceptAlignError(
            f"{tensor_path} and {json_path} were not written together (an interrupted save?); "
            "delete both files and recompute."
        )
    layers = [int(layer) for layer in meta["layers"]]
    if expected is not None:
        _check_identity(meta, expected, path)
        if expected.get("layers") is not None:
            requested = [int(layer) for layer in expected["layers"]]
            missing = sorted(set(requested) - set(layers))
            if missing:
                raise PerceptAlignError(
                    f"the statistics cache at {path} holds layers {layers} but layers {missing} were "
                    "requested; recompute with those layers (use another --out, or delete the cache)."
                )
            layers = requested
    tensors = load_tensors(tensor_path)
    out = {}
    for layer in layers:
        try:
            out[layer] = LayerStatistics(**{key: tensors[f"layer{layer}.{key}"] for key in STAT_KEYS})
        except KeyError as exc:
            raise PerceptAlignError(
                f"statistics cache {tensor_path} lacks {exc}; delete it and recompute."
            ) from exc
    return out, meta


def _is_identity_key(key: str) -> bool:
    return key in IDENTITY_KEYS or key.startswith(IDENTITY_PREFIXES) or key.endswith("fingerprint")


def _check_identity(
    meta: Mapping[str, Any], expected: Mapping[str, Any], path: str | os.PathLike[str]
) -> None:
    expected_json = _jsonable(dict(expected))
    differing = []
    for key, want in expected_json.items():
        if not _is_identity_key(key):
            continue
        have = meta.get(key)
        if have != want:
            differing.append(f"{key}: cached {have!r}, requested {want!r}")
    if differing:
        raise PerceptAlignError(
            f"the statistics cache at {path} was made with other settings (" + "; ".join(differing) + "). "
            "Use another --out directory for these settings, or delete the cache to recompute it."
        )


def _jsonable(obj: Any) -> Any:
    """Normalise metadata the way it will read back from JSON (tuples → lists, dtypes → 'float32')."""

    def default(value: Any) -> Any:
        if isinstance(value, torch.dtype):
            return str(value).removeprefix("torch.")
        if isinstance(value, Path):
            return str(value)
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable")

    try:
        return json.loads(json.dumps(obj, default=default))
    except (TypeError, ValueError) as exc:
        raise PerceptAlignError(f"statistics metadata must be JSON-serialisable: {exc}") from exc


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


__all__ = [
    "COUNT_KEYS",
    "IDENTITY_KEYS",
    "STAT_KEYS",
    "LayerStatistics",
    "StatisticsAccumulator",
    "dense_reference_statistics",
    "load_statistics",
    "save_statistics",
]
