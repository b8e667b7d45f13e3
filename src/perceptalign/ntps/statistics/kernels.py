"""Batch kernels of the accumulator: the masked chunked prefix scan, the (prefix, next token) pair
products, C0's block-upper Gram and the scratch buffers they reuse between batches."""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError

# Chunk lengths of the blocked prefix scan, in order of preference (CPU ms for the scan of 32×64×576
# float32, 1 thread: c = 8: 0.45, 16: 0.42, 32: 0.56, 64: 0.89; torch.cumsum 1.27); the chunk that pads
# the batch least wins, so the scan needs no padded copy whenever T is a multiple of 8.
_SCAN_CHUNKS = (16, 32, 8)
# Use the shifted-row products (no gathered copies) when at least this fraction of the padded rows
# are pairs; below it, the product flops spent on zero rows cost more than gathering the pairs
# (measured at d = 576, B×T = 32×64: the gathered path wins below a fill of ~0.9).
_FLAT_MIN_FILL = 0.9


class _BatchPlan:
    """Indices shared by all layers of one batch (computed once, not per layer).

    ``wide_device``: where the float64 parts of the batch live (one-hot labels, text lengths, chunk
    carries); default the mask's device. MPS has no float64, so there they live on the CPU.
    """

    def __init__(
        self, mask: Tensor, labels: Tensor, n_classes: int, wide_device: torch.device | None = None
    ) -> None:
        B, T = mask.shape
        device = mask.device
        self.wide = torch.device(wide_device) if wide_device is not None else device
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
        self.one_hot = torch.zeros(B, n_classes, dtype=torch.float64, device=self.wide)
        self.one_hot[torch.arange(B, device=self.wide), labels.to(self.wide)] = 1.0
        self._cache: dict[object, Tensor] = {}

    def tril(self, dtype: torch.dtype, n: int | None = None, device: torch.device | None = None) -> Tensor:
        """n×n lower-triangular ones (n = the chunk by default) on ``device`` (the mask's by default):
        prefix sums as one small matmul."""
        n = self.chunk if n is None else n
        device = self.mask.device if device is None else device
        if (dtype, n, device) not in self._cache:
            ones = torch.ones(n, n, dtype=dtype, device=device)
            self._cache[dtype, n, device] = torch.tril(ones)
        return self._cache[dtype, n, device]

    def lengths_column(self, dtype: torch.dtype) -> Tensor:
        """B×1 text lengths in ``dtype`` on the wide device (the divisor of the text means, shared by all
        layers)."""
        key = ("lengths", dtype)
        if key not in self._cache:
            self._cache[key] = self.lengths.to(device=self.wide, dtype=dtype)[:, None]
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
    (B×d, float64, on ``plan.wide``). Within a chunk of ≤ 32 positions the prefix is a small triangular
    matmul; the chunk carries are summed in float64 (on ``plan.wide``: the CPU for MPS, which has no
    float64), so float32 prefix sums keep a relative error of a few ulps even for long texts, unlike a
    float32 ``cumsum`` (which is also 3-10× slower on CPU).
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
    # On MPS (no float64) the float32 ends move to the wide device first and are widened there.
    ends = S[:, :, -1] if plan.wide == device else S[:, :, -1].to(plan.wide)
    ends = ends.to(torch.float64, copy=True)
    if Tp == c:  # one chunk: nothing to carry
        return S.view(B, Tp, d), X, ends[:, 0]
    carry = _running_sum(ends, plan)  # totals at chunk ends
    S[:, 1:] += carry[:, :-1, None].to(dtype).to(device)  # narrowed where float64 exists, then moved
    return S.view(B, Tp, d), X, carry[:, -1]


def _running_sum(x: Tensor, plan: _BatchPlan) -> Tensor:
    """Inclusive cumulative sum over dim 1 of a B×n×d tensor; a small triangular matmul when n is small
    (torch's CPU cumsum measured several times slower than the matmul for these sizes)."""
    n = x.shape[1]
    if n > 64:
        return x.cumsum(dim=1)
    return torch.matmul(plan.tril(x.dtype, n, x.device), x)


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


def _non_finite_error(layer: int, dtype: torch.dtype, what: str) -> PerceptAlignError:
    hint = (
        " The model ran in float16, whose range (±65504) hidden states often exceed: rerun with "
        "`dtype` float32 or `dtype` bfloat16."
        if dtype == torch.float16
        else " Check the model weights and inputs, or rerun with `dtype` float32 if a reduced precision "
        "was used."
    )
    return PerceptAlignError(
        f"non-finite values (NaN/inf) in the {what} of layer {layer} (input dtype {dtype}).{hint}"
    )
