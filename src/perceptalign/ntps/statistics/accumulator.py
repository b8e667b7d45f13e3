"""The streaming accumulator: running float64 sums of the NTPS moments, product blocks that span
batches, merging, raw sums for all-reduce, and atomic checkpoints that resume bit for bit."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from perceptalign.io import (
    PerceptAlignError,
    load_tensors,
    save_tensors_atomic,
)
from perceptalign.ntps.statistics.common import (
    _FORMAT_VERSION,
    _SYMMETRIC,
    COUNT_KEYS,
    STAT_KEYS,
    LayerStatistics,
    _layers_in_keys,
    _safetensors_metadata,
    _symmetric,
    _validate_layers,
)
from perceptalign.ntps.statistics.kernels import (
    _BatchPlan,
    _finite,
    _non_finite_error,
    _pair_products,
    _prefix_sums,
    _upper_gram,
    _upper_spans,
    _Workspace,
)
from perceptalign.ntps.statistics.precision import tf32_disabled

_BLOCK_KEYS = ("C0", "C1")  # the token-pair products, kept in compute-dtype blocks between flushes

_CHECKPOINT_META_KEY = "perceptalign_statistics_checkpoint"
#: Token pairs per float32 product block (see :class:`StatisticsAccumulator`): consecutive small batches
#: share one block before it is added into the float64 sums, so each float32 partial sum covers about
#: as many pairs as one batch at a 4k-token budget. Larger blocks flush less but round more: on smollm2
#: (vader-movie, 35k pairs) the worst NTPS change against float64 products was 1.1e-4 at 4096 pairs,
#: 4.5e-4 at 16384 and 7.7e-4 at 65536, for ~3 % less statistics time at 16384.
DEFAULT_BLOCK_PAIRS = 4096
# Text means buffered per layer before their float64 M_xx product (256·d·8 bytes per layer).
_MEANS_ROWS = 256


class StatisticsAccumulator:
    """Running float64 sums of the NTPS moments for a fixed set of layers.

    ``compute_dtype`` forces the dtype of the batch products (e.g. ``torch.float64`` for maximal precision
    on float32 models at about twice the cost); by default the input dtype is used (float16/bfloat16 →
    float32). Sums live on ``device`` (CPU by default); products run on the device of the hidden states.
    ``wide_device``: where the float64 work of an update happens (prefix-sum carries, text totals and
    means, M_xx); None (default) = the device of the hidden states. The CPU for MPS hidden states, as MPS
    has no float64 (:func:`~perceptalign.ntps.statistics.precision.precision_policy`).
    ``allow_tf32`` False (default): :meth:`update` runs with TF32 switched off for CUDA matmuls (a 10-bit
    mantissa, ~5e-4 relative error per product) and restores the previous setting afterwards.

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
    block first. ``block_pairs=0`` adds every batch at once, each layer's products through one block
    shared by all layers (2·d² values per layer less memory).
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
        wide_device: torch.device | str | None = None,
        allow_tf32: bool = False,
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
        self.wide_device = torch.device(wide_device) if wide_device is not None else None
        self.allow_tf32 = bool(allow_tf32)
        self.block_pairs = block_pairs
        self.n_texts = 0
        self.n_tokens = 0
        self._broken: str | None = None
        self._workspace = _Workspace()
        # Per-layer C0/C1 product blocks not yet added into the float64 sums (compute dtype, on the device
        # of the hidden states); ``_live`` holds the layers whose block has data. With block_pairs=0 every
        # layer uses the one block of ``_shared`` for its dtype and device, added as soon as it is made.
        self._blocks: dict[int, dict[str, Tensor]] = {}
        self._shared: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}
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
        with self._precision():
            for position, (layer, hidden) in enumerate(zip(self.layers, hidden_states, strict=True)):
                if hidden.device not in plans:
                    plans[hidden.device] = _BatchPlan(
                        mask.to(hidden.device), labels.to(hidden.device), self.n_classes, self.wide_device
                    )
                try:
                    self._add_layer(layer, hidden, plans[hidden.device])
                except PerceptAlignError as exc:
                    if position > 0:
                        self._broken = (
                            f"a previous update() failed at layer {layer} after layers "
                            f"{self.layers[:position]} had been added ({exc})"
                        )
                    raise
        self.n_texts += int(mask.shape[0])
        self.n_tokens += int(mask.sum())
        self._means_rows += int(mask.shape[0])
        self._block_pairs_seen += next(iter(plans.values())).n_pairs
        if self._block_pairs_seen >= self.block_pairs:
            self.flush()

    def _precision(self) -> contextlib.AbstractContextManager[None]:
        """The float32 products of an update run without TF32 unless ``allow_tf32`` (see the class)."""
        return contextlib.nullcontext() if self.allow_tf32 else tf32_disabled()

    @property
    def at_block_boundary(self) -> bool:
        """True when no batch products wait outside the float64 sums (a checkpoint here changes nothing)."""
        return not self._live and not self._means_rows

    def flush(self) -> None:
        """Add every layer's pending product block and buffered text means into the float64 sums (called by
        the readers)."""
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
        # once per block rather than per batch (a d×d reduction per product, layer and batch measured ~3 %
        # of the update). The block's batches are lost with it, so the accumulator refuses further use.
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
                    if part.device.type not in ("cpu", "cuda"):  # MPS: to the host before widening
                        part = part.to(self.device)
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
        self._shared.clear()
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
        # Text means from the float64 totals (on the wide device), kept in float64 for M_xx (see the class
        # docstring).
        first, batch_size = self._means_rows, totals.shape[0]
        means = self._means_buffer(layer, batch_size, totals.device)[first : first + batch_size]
        torch.div(totals, plan.lengths_column(totals.dtype), out=means)
        self._sums[layer]["M_xy"].addmm_(means.T.to(self.device), plan.one_hot.to(self.device))
        self._live.add(layer)
        if self.block_pairs == 0:
            self._flush_layer(layer)  # the shared block is reused by the next layer

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
        if self.block_pairs == 0:
            # Every layer is flushed right after its products, so one block per dtype and device serves
            # them all; C0's lower blocks are never written, so the once-zeroed buffer keeps them zero.
            key = (dtype, device)
            if key not in self._shared:
                d = self.hidden_size
                self._shared[key] = {k: torch.zeros(d, d, dtype=dtype, device=device) for k in _BLOCK_KEYS}
            self._blocks[layer] = self._shared[key]
            return self._shared[key]
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

    def _settings(self, **overrides: Any) -> dict[str, Any]:
        """This accumulator's construction settings (all but layers, sizes and sums), with ``overrides``:
        what a copy, a move or a join keeps."""
        settings = {
            "compute_dtype": self.compute_dtype,
            "device": self.device,
            "block_pairs": self.block_pairs,
            "wide_device": self.wide_device,
            "allow_tf32": self.allow_tf32,
        }
        return {**settings, **overrides}

    def copy(self) -> StatisticsAccumulator:
        return type(self).from_sums(self.sums(), layers=self.layers, **self._settings())

    def to(self, device: torch.device | str) -> StatisticsAccumulator:
        """This accumulator's sums on ``device`` (itself when they are there already): e.g. statistics made
        on a GPU, moved to the host to be solved and saved."""
        device = torch.device(device)
        if device == self.device:
            return self
        wide_device = None if device.type == "cpu" else self.wide_device
        return type(self).from_sums(
            self.sums(), layers=self.layers, **self._settings(device=device, wide_device=wide_device)
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
        wide_device: torch.device | str | None = None,
        allow_tf32: bool = False,
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
        acc = cls(
            layers,
            int(d),
            int(C),
            compute_dtype=compute_dtype,
            device=device,
            block_pairs=block_pairs,
            wide_device=wide_device,
            allow_tf32=allow_tf32,
        )
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

    @classmethod
    def join_layers(cls, parts: Sequence[StatisticsAccumulator]) -> StatisticsAccumulator:
        """One accumulator over the layers of ``parts``: accumulators of disjoint layer sets over the same
        texts (layer groups measured in separate passes), in the order of ``parts``.

        The parts' float64 sums are taken over, not copied (a 7B model's sums are ~13 GB; a copy would
        double that), so the parts must not be used afterwards. All must be on the same device.
        """
        if not parts:
            raise PerceptAlignError("no accumulators to join; pass at least one.")
        first = parts[0]
        layers = [layer for part in parts for layer in part.layers]
        mismatch = [
            f"{name}: {getattr(part, name)!r} vs {getattr(first, name)!r}"
            for part in parts[1:]
            for name in ("hidden_size", "n_classes", "n_texts", "n_tokens", "device")
            if getattr(part, name) != getattr(first, name)
        ]
        if mismatch or len(set(layers)) != len(layers):
            raise PerceptAlignError(
                "cannot join accumulators of different texts, models or devices, or of shared layers ("
                + ("; ".join(mismatch) or f"layers {layers}")
                + "); join only layer groups of one pass plan, moved to one device."
            )
        for part in parts:
            part.flush()
        joined = cls(first.layers, first.hidden_size, first.n_classes, **first._settings())
        joined.layers = layers
        joined._sums = {layer: part._sums[layer] for part in parts for layer in part.layers}
        joined.n_texts, joined.n_tokens = first.n_texts, first.n_tokens
        return joined

    def finalize(self) -> dict[int, LayerStatistics]:
        """Moments divided by N = number of texts (docs/ntps.md, "Definitions" divides C0/C1 by N too)."""
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
        cls,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        wide_device: torch.device | str | None = None,
        allow_tf32: bool = False,
    ) -> tuple[StatisticsAccumulator, dict[str, Any]]:
        """Inverse of :meth:`save_checkpoint`: returns the accumulator (its sums on ``device``) and the
        ``extra`` dict."""
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
            wide_device=wide_device,
            allow_tf32=allow_tf32,
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
