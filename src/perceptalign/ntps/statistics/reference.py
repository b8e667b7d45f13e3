"""The published dense per-text formula (triangular and shift matrices), float64: the reference the
streaming engine is tested and benchmarked against."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.statistics.common import LayerStatistics


def dense_reference_statistics(
    hidden_per_text: Sequence[Tensor],
    labels: Sequence[int] | Tensor,
    n_classes: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> LayerStatistics:
    """The published O(L²) per-text formula for ONE layer: triangular and shift matrices times H.

    ``hidden_per_text``: one L_n×d tensor of REAL rows per text. Kept deliberately literal (a Python loop
    that materialises the L×(L−1) matrices) so it is an independent check of the fast path and an honest
    benchmark baseline. ``dtype`` float64 by default; float32 reproduces the published precision.
    ``device``: where the sums and matrices are made (the hidden states are moved there), e.g. a GPU to
    time the published shape on it; the results are returned there too.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(hidden_per_text) == 0 or labels.shape != (len(hidden_per_text),):
        raise PerceptAlignError("need one label per text and at least one text.")
    d = hidden_per_text[0].shape[1]
    kw = {"dtype": dtype, "device": torch.device(device)}
    M_xx = torch.zeros(d, d, **kw)
    M_xy = torch.zeros(d, n_classes, **kw)
    C0 = torch.zeros(d, d, **kw)
    C1 = torch.zeros(d, d, **kw)
    for H, y in zip(hidden_per_text, labels.tolist(), strict=True):
        H = H.to(**kw)
        L = H.shape[0]
        if L == 0:
            raise PerceptAlignError("a text with zero tokens has no mean; drop it.")
        x = H.mean(dim=0)
        M_xx += torch.outer(x, x)
        M_xy[:, y] += x
        if L > 1:
            prefix = torch.triu(torch.ones(L, L - 1, **kw))  # prefix[i, t] = 1 iff i ≤ t
            shift = torch.eye(L, **kw)[:, 1:]  # shift[i, t] = 1 iff i = t + 1
            S = prefix.T @ H
            H_next = shift.T @ H
            C0 += S.T @ S
            C1 += S.T @ H_next
    n = float(len(hidden_per_text))
    f64 = torch.float64
    return LayerStatistics(
        M_xx=(M_xx / n).to(f64), M_xy=(M_xy / n).to(f64), C0=(C0 / n).to(f64), C1=(C1 / n).to(f64)
    )
