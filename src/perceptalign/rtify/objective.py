"""One objective for every RT fit: a model's weighted RT sample against human targets, per condition.

Every method hands the objective the same thing, an :class:`RTSample`: per model trial (or per cell of a
soft first-passage distribution) an RT, a probability mass of a correct and of an error response at that
RT, and its condition. A hard trials table has masses 0/1; an RTify head trained with the soft estimator
has the first-passage mass of each (step, choice) cell, so histogram, quantile and accuracy terms are
smooth in every parameter. :class:`RTLoss` holds the settings (distance, accuracy weight, histogram
window) in one frozen object that all fits share, and builds the human :class:`RTTargets` the same way
for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.losses import histogram_mse, soft_histogram, wasserstein1_from_histograms
from perceptalign.rtify.metrics import QUANTILES
from perceptalign.rtify.trials import validate_trials

__all__ = ["RTLoss", "RTSample", "RTTargets", "weighted_quantiles"]

LossKind = Literal["mse", "wasserstein", "quantile"]


def _hazen(values: np.ndarray) -> np.ndarray:
    """Human RT quantiles defined exactly like :func:`weighted_quantiles` with equal weights."""
    return np.quantile(values, QUANTILES, method="hazen")


@dataclass
class RTSample:
    """A model's RTs as a weighted sample per condition (see the module docstring).

    ``rt_s``, ``w_correct``, ``w_error`` and ``cond_idx`` are (N,); ``n_trials`` (K,) is the number of
    model trials of each condition, the denominator of every histogram and accuracy: mass that never
    decides (undecided trials, censored first-passage mass) is missing mass, as in ``fit_quality``.
    """

    rt_s: Tensor
    w_correct: Tensor
    w_error: Tensor
    cond_idx: Tensor
    n_trials: Tensor
    #: (K,) correct and error mass per condition over ALL cells, when entries were pruned: the accuracy
    #: term must see the tiny masses too (a choice's gradient grows from them), the histograms need not.
    mass_correct: Tensor | None = None
    mass_error: Tensor | None = None

    def condition_masses(self) -> tuple[Tensor, Tensor]:
        """(K,) correct and (K,) error mass per condition."""
        if self.mass_correct is not None and self.mass_error is not None:
            return self.mass_correct, self.mass_error
        k = len(self.n_trials)
        zeros = torch.zeros(k, dtype=self.rt_s.dtype, device=self.rt_s.device)
        return (
            zeros.index_add(0, self.cond_idx, self.w_correct.to(zeros.dtype)),
            zeros.index_add(0, self.cond_idx, self.w_error.to(zeros.dtype)),
        )

    @classmethod
    def from_decisions(
        cls, rt_s: Tensor, p_correct: Tensor, decided: Tensor, cond_idx: Tensor, n_conditions: int
    ) -> RTSample:
        """One entry per trial: mass ``p_correct`` correct (0/1 for a hard choice), the rest an error."""
        d = decided.to(rt_s.dtype)
        counts = torch.bincount(cond_idx, minlength=n_conditions).to(rt_s.dtype)
        return cls(rt_s, p_correct * d, (1 - p_correct) * d, cond_idx, counts)

    @classmethod
    def from_passage(
        cls,
        rt_s: Tensor,
        mass: Tensor,
        labels: Tensor,
        cond_idx: Tensor,
        n_conditions: int,
        *,
        min_mass: float = 1e-7,
    ) -> RTSample:
        """One entry per first-passage cell: ``rt_s`` and ``mass`` are (B, T, C).

        Cells whose mass is below ``min_mass`` are left out of the histogram and quantile terms (selected
        on detached values): at a small temperature a trial's mass sits on a few steps, so this keeps them
        at a few entries per trial instead of T·C. The accuracy term keeps every cell (``mass_correct``,
        ``mass_error``): the gradient that makes a rare choice more frequent comes from its tiny masses.
        The last step's cells are always kept (with whatever mass they have), so every trial, even one that
        never decides, has an entry.
        """
        batch, steps, n_choices = mass.shape
        correct = torch.nn.functional.one_hot(labels, n_choices).to(mass.dtype).unsqueeze(1)  # (B, 1, C)
        counts = torch.bincount(cond_idx, minlength=n_conditions).to(mass.dtype)
        cells = cond_idx.view(-1, 1, 1).expand(batch, steps, n_choices).reshape(-1)
        keep = mass.detach() > min_mass
        keep[:, -1] = True  # every trial keeps its last cells, so no condition is ever left without entries
        keep = keep.reshape(-1)
        flat_mass = mass.reshape(-1)[keep]
        flat_correct = correct.expand(batch, steps, n_choices).reshape(-1)[keep]
        all_correct = (mass * correct).sum(dim=(1, 2))
        all_error = (mass * (1 - correct)).sum(dim=(1, 2))
        zeros = torch.zeros(n_conditions, dtype=mass.dtype, device=mass.device)
        return cls(
            rt_s.reshape(-1)[keep],
            flat_mass * flat_correct,
            flat_mass * (1 - flat_correct),
            cells[keep],
            counts,
            mass_correct=zeros.index_add(0, cond_idx, all_correct),
            mass_error=zeros.index_add(0, cond_idx, all_error),
        )

    @classmethod
    def from_table(cls, table: pd.DataFrame, conditions: Sequence[Any]) -> RTSample:
        """A hard trials table (condition, rt_s, correct, optional decided) in the order of ``conditions``."""
        table = validate_trials(table, required_conditions=list(conditions), name="model trials")
        index = {c: k for k, c in enumerate(conditions)}
        table = table[table["condition"].isin(list(index))]
        decided = table["decided"].to_numpy(bool) if "decided" in table.columns else np.ones(len(table), bool)
        return cls.from_decisions(
            torch.tensor(table["rt_s"].to_numpy(float), dtype=torch.float64),
            torch.tensor(table["correct"].to_numpy(bool), dtype=torch.float64),
            torch.tensor(decided),
            torch.tensor([index[c] for c in table["condition"]], dtype=torch.long),
            len(conditions),
        )


@dataclass
class RTTargets:
    """Per-condition human statistics, rows in the order of ``conditions``."""

    conditions: list[Any]
    hist: Tensor  # (K, n_bins) soft signed-RT histograms, built exactly like the model's
    accuracy: Tensor  # (K,)
    q_correct: Tensor  # (K, Q)
    q_error: Tensor  # (K, Q); NaN where a condition has no errors
    median_rt: float


def weighted_quantiles(values: Tensor, weights: Tensor, qs: Sequence[float]) -> Tensor:
    """Quantiles of a weighted sample, differentiable in the values and the weights.

    Sorted values sit at the midpoints of their weight intervals (the Hazen plotting positions, i.e.
    numpy's ``method="hazen"`` for equal weights) and quantiles interpolate linearly between them; samples
    of weight exactly 0 are dropped (otherwise they would occupy a plotting position).
    """
    if values.dim() != 1 or values.shape != weights.shape or values.numel() == 0:
        raise PerceptAlignError("values and weights must be matching non-empty 1-D tensors.")
    keep = weights.detach() > 0  # zero-weight samples (e.g. undecided trials) are not part of the sample
    if not keep.any():
        raise PerceptAlignError("all weights are zero: the weighted sample is empty.")
    values, weights = values[keep], weights[keep]
    order = torch.argsort(values.detach())
    v, w = values[order], weights[order]
    total = w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    pos = (torch.cumsum(w, 0) - 0.5 * w) / total
    q = torch.as_tensor(list(qs), dtype=v.dtype)
    if len(v) == 1:
        return v.expand(len(q))
    hi = torch.searchsorted(pos.detach(), q).clamp(1, len(v) - 1)
    lo = hi - 1
    span = (pos[hi] - pos[lo]).clamp_min(1e-12)
    frac = ((q - pos[lo]) / span).clamp(0, 1)
    return v[lo] + frac * (v[hi] - v[lo])


def _bernoulli_kl(target: Tensor, p: Tensor) -> Tensor:
    """KL(Bernoulli(target) ‖ Bernoulli(p)), zero when p matches the human accuracy."""
    p = p.clamp(1e-6, 1 - 1e-6)
    t = target.clamp(1e-6, 1 - 1e-6)
    return t * torch.log(t / p) + (1 - t) * torch.log((1 - t) / (1 - p))


@dataclass(frozen=True)
class RTLoss:
    """The fitting objective Σ_conditions distance + ``acc_weight``·Σ_conditions KL(acc_human ‖ acc_model).

    ``kind``: "wasserstein" (W1 between soft signed-RT histograms), "mse" (the published histogram MSE)
    or "quantile" (MSE of correct- and error-RT quantiles). Histograms live on [``lo``, ``hi``] s in
    ``n_bins`` bins, each RT spread by a logistic kernel of sharpness ``sigma`` (1/s; ``soft_histogram``).
    """

    kind: LossKind = "wasserstein"
    acc_weight: float = 1.0
    lo: float = -2.5
    hi: float = 2.5
    n_bins: int = 500
    sigma: float = 40.0

    def __post_init__(self) -> None:
        if self.kind not in ("mse", "wasserstein", "quantile"):
            raise PerceptAlignError(
                f"`loss` must be one of ['mse', 'wasserstein', 'quantile'], got {self.kind!r}."
            )
        if not (math.isfinite(self.acc_weight) and self.acc_weight >= 0):
            raise PerceptAlignError(f"`acc_weight` must be ≥ 0, got {self.acc_weight!r}.")
        if not (isinstance(self.n_bins, int) and self.n_bins >= 1):
            raise PerceptAlignError(f"`n_bins` must be a positive integer, got {self.n_bins!r}.")
        if not (self.sigma > 0 and self.lo < 0 < self.hi):
            raise PerceptAlignError("need `sigma` > 0 and a histogram window `lo` < 0 < `hi` (signed RTs).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _hist(self, values: Tensor, weights: Tensor | None = None) -> Tensor:
        return soft_histogram(
            values, lo=self.lo, hi=self.hi, n_bins=self.n_bins, sigma=self.sigma, weights=weights
        )

    def targets(
        self, human: pd.DataFrame, conditions: Sequence[Any], *, name: str = "human trials"
    ) -> RTTargets:
        """Human targets of ``conditions`` from a trials table (histograms built like the model's)."""
        human = validate_trials(human, required_conditions=list(conditions), name=name)
        hists, accs, qc, qe = [], [], [], []
        for cond in conditions:
            sub = human[human["condition"] == cond]
            correct = sub["correct"].to_numpy(dtype=bool)
            rt = sub["rt_s"].to_numpy(dtype=float)
            signed = torch.tensor(np.where(correct, rt, -rt), dtype=torch.float32)
            hists.append(self._hist(signed))
            accs.append(float(correct.mean()))
            qc.append(_hazen(rt[correct]) if correct.any() else np.full(len(QUANTILES), np.nan))
            qe.append(_hazen(rt[~correct]) if (~correct).any() else np.full(len(QUANTILES), np.nan))
        return RTTargets(
            conditions=list(conditions),
            hist=torch.stack(hists),
            accuracy=torch.tensor(accs, dtype=torch.float32),
            q_correct=torch.tensor(np.array(qc), dtype=torch.float32),
            q_error=torch.tensor(np.array(qe), dtype=torch.float32),
            median_rt=float(human["rt_s"].median()),
        )

    def histograms(self, sample: RTSample) -> Tensor:
        """(K, n_bins) expected signed-RT histograms, each normalised by its condition's trial count."""
        rows = []
        for k in range(len(sample.n_trials)):
            mask = sample.cond_idx == k
            if not bool(mask.any()) or float(sample.n_trials[k]) == 0:
                raise PerceptAlignError(f"no model trials for condition index {k}; simulate every condition.")
            r, wc, we = sample.rt_s[mask], sample.w_correct[mask], sample.w_error[mask]
            total = (wc + we).sum()
            hist = self._hist(torch.cat([r, -r]), torch.cat([wc, we]))
            # soft_histogram normalises by the weights' sum; rescale to mass per model trial
            rows.append(hist * total / sample.n_trials[k])
        return torch.stack(rows)

    def __call__(self, sample: RTSample, targets: RTTargets) -> tuple[Tensor, dict[str, float]]:
        """(loss, {"distance", "accuracy_kl"}) of a model sample against human targets."""
        n_cond = len(targets.conditions)
        if len(sample.n_trials) != n_cond:
            raise PerceptAlignError(
                f"the model sample has {len(sample.n_trials)} conditions, the targets {n_cond}."
            )
        rt = sample.rt_s
        if self.kind in ("mse", "wasserstein"):
            hist = self.histograms(sample)
            width = (self.hi - self.lo) / self.n_bins
            target = targets.hist.to(hist.dtype)
            parts = [
                histogram_mse(hist[k], target[k])
                if self.kind == "mse"
                else wasserstein1_from_histograms(hist[k], target[k], bin_width=width)
                for k in range(n_cond)
            ]
            distance = torch.stack(parts).sum()
        else:
            terms = []
            for k in range(n_cond):
                mask = sample.cond_idx == k
                r = rt[mask]
                for w, target in (
                    (sample.w_correct[mask], targets.q_correct[k]),
                    (sample.w_error[mask], targets.q_error[k]),
                ):
                    if torch.isnan(target).any() or float(w.detach().sum()) <= 0:
                        continue
                    q = weighted_quantiles(r, w, QUANTILES)
                    terms.append(torch.mean((q - target.to(q.dtype)) ** 2))
            distance = torch.stack(terms).sum() if terms else rt.new_zeros(())
        correct_mass, error_mass = sample.condition_masses()
        accuracy = correct_mass / (correct_mass + error_mass).clamp_min(1e-12)
        kl = _bernoulli_kl(targets.accuracy.to(rt.dtype), accuracy).sum()
        total = distance + self.acc_weight * kl
        return total, {"distance": float(distance.detach()), "accuracy_kl": float(kl.detach())}
