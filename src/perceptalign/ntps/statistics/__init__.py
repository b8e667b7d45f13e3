"""Streaming per-layer second moments for NTPS (docs/ntps.md, "Definitions"): M_xx, M_xy, C0, C1.

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
``compute_dtype=torch.float64`` forces float64 products. The sums live on the device they are given and the
products run where the hidden states are; what each kind of device does (TF32 off on CUDA, every float64
part on the CPU for MPS) is the policy of :mod:`~perceptalign.ntps.statistics.precision`.

Pairs: for each text, the prefix sum at each real token is paired with the NEXT REAL token, whatever the
padding side; a mask with holes is read as "these positions are not part of the text", i.e. the real rows
are compacted first, exactly as the per-text definition with L_n real rows. (For masks without holes this
is the same as the weight w_t = m_t·m_{t+1} of the masked-sum formula.)

Modules: ``common`` (keys, :class:`LayerStatistics`), ``kernels`` (scan, pair products, block-upper
Gram), ``accumulator`` (:class:`StatisticsAccumulator`, checkpoints), ``precision`` (the per-device
precision policy), ``cache`` (save/load with identity checks), ``reference`` (the dense per-text formula
the engine is tested against).
"""

from __future__ import annotations

from perceptalign.ntps.statistics.accumulator import DEFAULT_BLOCK_PAIRS, StatisticsAccumulator
from perceptalign.ntps.statistics.cache import (
    load_statistics,
    save_statistics,
)
from perceptalign.ntps.statistics.common import COUNT_KEYS, STAT_KEYS, LayerStatistics
from perceptalign.ntps.statistics.reference import dense_reference_statistics

__all__ = [
    "COUNT_KEYS",
    "DEFAULT_BLOCK_PAIRS",
    "STAT_KEYS",
    "LayerStatistics",
    "StatisticsAccumulator",
    "dense_reference_statistics",
    "load_statistics",
    "save_statistics",
]
