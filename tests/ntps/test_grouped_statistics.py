"""GroupedStatistics: the moments of any target assembled from one pass equal a direct run on its texts."""

from __future__ import annotations

import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.statistics import StatisticsAccumulator
from perceptalign.ntps.statistics.grouped import GroupedStatistics


def _batches(n_batches=4, B=6, T=9, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        hidden = [torch.randn(B, T, d, generator=g, dtype=torch.float64) for _ in range(2)]
        lengths = torch.randint(2, T + 1, (B,), generator=g)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        yield hidden, mask


def test_targets_equal_direct_runs_on_their_texts():
    # Three overlapping targets; each text belongs to a random subset with a random class.
    g = torch.Generator().manual_seed(1)
    grouped = GroupedStatistics([3, 7], 5, {"a": 2, "b": 3, "c": 2})
    direct = {
        t: StatisticsAccumulator([3, 7], 5, k, compute_dtype=torch.float64)
        for t, k in grouped.n_classes.items()
    }
    for hidden, mask in _batches():
        memberships = []
        for _ in range(mask.shape[0]):
            member = []
            for target, k in grouped.n_classes.items():
                if torch.rand((), generator=g) < 0.6:
                    member.append((target, int(torch.randint(k, (), generator=g))))
            memberships.append(member)
        grouped.update(hidden, mask, memberships)
        for target in direct:
            rows = [i for i, m in enumerate(memberships) if any(t == target for t, _ in m)]
            if rows:
                labels = torch.tensor([c for i in rows for t, c in memberships[i] if t == target])
                direct[target].update([h[rows] for h in hidden], mask[rows], labels)
    for target, acc in direct.items():
        expected = acc.finalize()
        got = grouped.finalize(target)
        for layer in (3, 7):
            for key in ("M_xx", "M_xy", "C0", "C1"):
                # Same float64 products summed in another order: agreement to ~1e-15 relative.
                torch.testing.assert_close(
                    getattr(got[layer], key), getattr(expected[layer], key), rtol=1e-12, atol=1e-12
                )


def test_union_of_disjoint_targets_is_their_sum():
    grouped = GroupedStatistics([0], 5, {"h0": 2, "h1": 2})
    whole = StatisticsAccumulator([0], 5, 2, compute_dtype=torch.float64)
    for b, (hidden, mask) in enumerate(_batches(n_batches=3)):
        hidden = hidden[:1]
        halves = [("h0" if i % 2 else "h1", (i + b) % 2) for i in range(mask.shape[0])]
        grouped.update(hidden, mask, [[m] for m in halves])
        whole.update(hidden, mask, torch.tensor([c for _, c in halves]))
    union = grouped.finalize("h0", "h1")[0]
    expected = whole.finalize()[0]
    torch.testing.assert_close(union.C1, expected.C1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(union.M_xy, expected.M_xy, rtol=1e-12, atol=1e-12)


def test_bad_memberships_are_refused():
    grouped = GroupedStatistics([0], 5, {"a": 2})
    hidden, mask = next(_batches(n_batches=1))
    with pytest.raises(PerceptAlignError, match=r"one .* list per text"):
        grouped.update(hidden[:1], mask, [[("a", 0)]])
    with pytest.raises(PerceptAlignError, match="unknown target"):
        grouped.update(hidden[:1], mask, [[("z", 0)]] * mask.shape[0])
    with pytest.raises(PerceptAlignError, match="outside"):
        grouped.update(hidden[:1], mask, [[("a", 2)]] * mask.shape[0])
    with pytest.raises(PerceptAlignError, match="received no texts"):
        grouped.finalize("a")
