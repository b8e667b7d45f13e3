"""The statistics of many overlapping text sets from one pass: every carved task by addition.

C0, C1 and M_xx depend on the texts only, and M_xy on per-class sums of the text means x̄, so the moments
of any set of texts are sums of the moments of its parts. :class:`GroupedStatistics` takes each text's
*memberships* — the (target, class) pairs it belongs to, e.g. (task half, class) — and adds each batch's
products once per distinct membership signature, then into every target of that signature. One forward
pass over the union of all targets' texts thus gives every target's statistics, with no second pass and
no per-target forward.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.statistics.accumulator import StatisticsAccumulator
from perceptalign.ntps.statistics.common import STAT_KEYS, LayerStatistics, _validate_layers

Membership = tuple[Hashable, int]  # (target, class index within that target)


class GroupedStatistics:
    """Float64 moment sums for many targets (text sets with their own labels) that share texts.

    ``targets`` maps each target to its number of classes. ``update`` receives, per text of the batch, the
    (target, class) pairs it belongs to (empty = the text feeds no target). Texts with the same signature
    are multiplied together once (``compute_dtype`` float64 by default, so a target's sums equal a direct
    float64 run up to the order of additions), and the result is added into each target of the signature.
    """

    def __init__(
        self,
        layers: Sequence[int],
        hidden_size: int,
        targets: Mapping[Hashable, int],
        *,
        compute_dtype: torch.dtype = torch.float64,
    ) -> None:
        self.layers = _validate_layers(layers)
        if not targets:
            raise PerceptAlignError("`targets` is empty: give at least one target and its number of classes.")
        bad = {t: c for t, c in targets.items() if not isinstance(c, int) or c < 1}
        if bad:
            raise PerceptAlignError(f"`targets` must map each target to a class count ≥ 1, got {bad}.")
        self.hidden_size = int(hidden_size)
        self.n_classes = dict(targets)
        self.compute_dtype = compute_dtype
        self._sums: dict[Hashable, dict[str, Tensor]] = {}

    def _target_sums(self, target: Hashable) -> dict[str, Tensor]:
        if target not in self._sums:
            d, f64 = self.hidden_size, torch.float64
            sums: dict[str, Tensor] = {"n_texts": torch.zeros((), dtype=torch.int64)}
            sums["n_tokens"] = torch.zeros((), dtype=torch.int64)
            for layer in self.layers:
                sums[f"layer{layer}.M_xx"] = torch.zeros(d, d, dtype=f64)
                sums[f"layer{layer}.M_xy"] = torch.zeros(d, self.n_classes[target], dtype=f64)
                sums[f"layer{layer}.C0"] = torch.zeros(d, d, dtype=f64)
                sums[f"layer{layer}.C1"] = torch.zeros(d, d, dtype=f64)
            self._sums[target] = sums
        return self._sums[target]

    def update(
        self,
        hidden_states: Sequence[Tensor],
        attention_mask: Tensor,
        memberships: Sequence[Iterable[Membership]],
    ) -> None:
        """Add one padded batch (one B×T×d tensor per layer); ``memberships[i]`` lists text i's targets."""
        if len(memberships) != attention_mask.shape[0]:
            raise PerceptAlignError(
                f"got {len(memberships)} membership lists for a batch of {attention_mask.shape[0]} texts; "
                "pass one (possibly empty) list per text."
            )
        groups: dict[tuple[Membership, ...], list[int]] = {}
        for row, member in enumerate(memberships):
            signature = tuple(sorted(set(member), key=repr))
            for target, c in signature:
                if target not in self.n_classes:
                    raise PerceptAlignError(f"text {row} names unknown target {target!r}.")
                if not 0 <= c < self.n_classes[target]:
                    raise PerceptAlignError(
                        f"text {row}: class {c} is outside [0, {self.n_classes[target]}) "
                        f"for target {target!r}."
                    )
            if signature:
                groups.setdefault(signature, []).append(row)
        for signature, rows in groups.items():
            index = torch.as_tensor(rows, dtype=torch.long)
            part = StatisticsAccumulator(
                self.layers, self.hidden_size, 1, compute_dtype=self.compute_dtype, block_pairs=0
            )
            part.update(
                [hidden[index] for hidden in hidden_states],
                attention_mask[index],
                torch.zeros(len(rows), dtype=torch.long),
            )
            sums = part.sums()
            for target, c in signature:
                into = self._target_sums(target)
                into["n_texts"] += sums["n_texts"]
                into["n_tokens"] += sums["n_tokens"]
                for layer in self.layers:
                    for key in ("M_xx", "C0", "C1"):
                        into[f"layer{layer}.{key}"] += sums[f"layer{layer}.{key}"]
                    into[f"layer{layer}.M_xy"][:, c] += sums[f"layer{layer}.M_xy"][:, 0]

    def add_sums(self, target: Hashable, sums: Mapping[str, Tensor]) -> None:
        """Add raw sums (the output of :meth:`sums` for one target, e.g. saved or from another shard)."""
        into = self._target_sums(target)
        if set(sums) != set(into):
            raise PerceptAlignError(
                f"sums for {target!r} have keys {sorted(sums)}, expected {sorted(into)}; "
                "pass the output of GroupedStatistics.sums() for the same layers."
            )
        for key, value in sums.items():
            if value.shape != into[key].shape:
                raise PerceptAlignError(
                    f"{key} of {target!r} has shape {tuple(value.shape)}, expected {tuple(into[key].shape)}."
                )
            into[key] += value.to(into[key].dtype)

    @property
    def targets(self) -> list[Hashable]:
        """The targets that received at least one text."""
        return list(self._sums)

    def sums(self, *targets: Hashable) -> dict[str, Tensor]:
        """Raw sums of the union of ``targets`` (texts must not overlap between them: they are added)."""
        if not targets:
            raise PerceptAlignError("name at least one target.")
        missing = [t for t in targets if t not in self._sums]
        if missing:
            raise PerceptAlignError(f"targets {missing} received no texts.")
        classes = {self.n_classes[t] for t in targets}
        if len(classes) != 1:
            raise PerceptAlignError(f"targets {list(targets)} have different class counts {sorted(classes)}.")
        out = {key: value.clone() for key, value in self._sums[targets[0]].items()}
        for target in targets[1:]:
            for key, value in self._sums[target].items():
                out[key] += value
        return out

    def finalize(self, *targets: Hashable) -> dict[int, LayerStatistics]:
        """Per-layer moments (divided by N) of the union of ``targets``."""
        return StatisticsAccumulator.from_sums(self.sums(*targets), layers=self.layers).finalize()


__all__ = ["STAT_KEYS", "GroupedStatistics", "Membership"]
