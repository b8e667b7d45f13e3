"""Fitting a decider on a frozen backbone to per-image RTs: :class:`ItemRTEstimator`.

One way to fit, as for the RDM estimators (:mod:`perceptalign.rtify.estimators`): a frozen, validated
:class:`ItemRTConfig`; ``fit(rt_table)`` decides the held-out images, fits the decider (and the shuffled
control) on the others with −Pearson r (+ a small CE) and returns ``self``; ``score()`` computes Pearson r
on the held-out images only, with a bootstrap interval over images and the Fisher-z difference from the
control fitted to shuffled RTs.

RTs follow the package convention: RT = t*·dt + t₀ with t* the continuous (interpolated) crossing time
(:mod:`perceptalign.rtify.heads`; the Wong–Wang race adds its motor delay the same way).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.estimators.base import check_int
from perceptalign.rtify.experiments.natural._common import (
    Decider,
    ItemEstimatorBase,
    Progress,
    check_bool,
    check_choice,
    check_number,
    report_progress,
)
from perceptalign.rtify.experiments.natural.cnn_training import FeatureSet, check_split, features_of
from perceptalign.rtify.experiments.natural.deciders import (
    LogitWongWang,
    make_item_head,
    set_threshold_from_data,
)
from perceptalign.rtify.experiments.natural.image_data import ImageSplit
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN
from perceptalign.rtify.experiments.natural.rt_tables import read_rt_table
from perceptalign.rtify.heads import RTifyHead, RTifyOutput
from perceptalign.rtify.losses import neg_pearson

__all__ = [
    "ItemRTConfig",
    "ItemRTEstimator",
    "ItemRTScore",
    "bootstrap_heldout_r",
    "fisher_z",
]

#: Confidence level of every interval :meth:`ItemRTEstimator.score` reports.
CI_LEVEL = 0.95
#: |r| is clipped here before the Fisher transform, so r = ±1 gives a finite z (±7.25).
_R_CLIP = 1.0 - 1e-6

RTTableLike = pd.DataFrame | pd.Series | str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------------
# Settings.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRTConfig:
    """Settings of a per-image RT fit (:class:`ItemRTEstimator`), validated on construction.

    - ``decider``: ``"rtify"``, a multi-class :class:`RTifyHead` on the per-step features (``init``:
      ``"readout"`` starts the evidence as the backbone's read-out, ``"random"`` at PyTorch's default
      init, see :func:`make_item_head`); ``"wong-wang"``, a :class:`LogitWongWang` race on the logits
      (the last step's with ``ww_input="last"``, all steps as a time series with ``"steps"``), its
      mixing matrix started at ``ww_mix_init``·I, integrated at ``ww_dt_ms`` up to ``ww_max_time_s``.
    - ``holdout_fraction`` of the images in the RT table are held out (never seen by the fit);
      ``val_fraction`` of the rest picks the best epoch (early stopping; 0 disables it).
    - ``epochs``/``lr``: Adam on −r + ``ce_weight``·CE in batches of ``batch_size`` images; None gives
      150 epochs at lr 0.005 (head) or 40 at lr 0.003 (Wong–Wang).
    - ``shuffled_control``: also fit the same procedure to RTs permuted across the fit images.
    - ``eval_repeats``: Wong–Wang RTs are averaged over this many noise draws when evaluated.
    - ``n_bootstrap``: replicates of the held-out images for the 95 % intervals of :meth:`score`.
    - ``seed``: the split, the initialisation, the batches, the noise and the bootstrap.
    """

    decider: Decider = "rtify"
    init: Literal["readout", "random"] = "readout"
    holdout_fraction: float = 0.5
    val_fraction: float = 0.25
    epochs: int | None = None
    lr: float | None = None
    ce_weight: float = 0.1
    batch_size: int = 1024
    shuffled_control: bool = True
    eval_repeats: int = 8
    ww_input: Literal["last", "steps"] = "last"
    ww_mix_init: float = 0.2
    ww_dt_ms: float = 10.0
    ww_max_time_s: float = 2.0
    n_bootstrap: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "decider", self.decider, ("rtify", "wong-wang"))
        check_choice(owner, "init", self.init, ("readout", "random"))
        check_number(owner, "holdout_fraction", self.holdout_fraction, lo=0, hi=1, lo_open=True)
        check_number(owner, "val_fraction", self.val_fraction, lo=0, hi=1)
        if self.epochs is not None:
            check_int(owner, "epochs", self.epochs, 0)
        if self.lr is not None:
            check_number(owner, "lr", self.lr, lo=0, lo_open=True)
        check_number(owner, "ce_weight", self.ce_weight, lo=0)
        # Pearson r is a batch statistic: a batch of fewer than 3 images has no usable r.
        check_int(owner, "batch_size", self.batch_size, 3)
        check_bool(owner, "shuffled_control", self.shuffled_control)
        check_int(owner, "eval_repeats", self.eval_repeats, 1)
        check_choice(owner, "ww_input", self.ww_input, ("last", "steps"))
        check_number(owner, "ww_mix_init", self.ww_mix_init, lo=0, lo_open=True)
        check_number(owner, "ww_dt_ms", self.ww_dt_ms, lo=0, lo_open=True)
        check_number(owner, "ww_max_time_s", self.ww_max_time_s, lo=self.ww_dt_ms / 1000, lo_open=True)
        # Fewer replicates make the 2.5 % and 97.5 % percentiles rest on a handful of values.
        check_int(owner, "n_bootstrap", self.n_bootstrap, 100)
        check_int(owner, "seed", self.seed, 0)

    @property
    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return int(self.epochs)
        return 150 if self.decider == "rtify" else 40

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 0.005 if self.decider == "rtify" else 0.003

    def to_dict(self) -> dict[str, Any]:
        """Every setting, with ``epochs`` and ``lr`` resolved (so the record states what was run)."""
        return {**asdict(self), "epochs": self.resolved_epochs, "lr": self.resolved_lr}


# --------------------------------------------------------------------------------------------------------
# Statistics.
# --------------------------------------------------------------------------------------------------------


def _pearson(x: np.ndarray | pd.Series, y: np.ndarray | pd.Series) -> float:
    """Pearson r; 0 when either side is constant (r undefined: no ranking is reproduced)."""
    x = np.asarray(x, dtype=float) - np.mean(x)
    y = np.asarray(y, dtype=float) - np.mean(y)
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def fisher_z(r: float | np.ndarray) -> float | np.ndarray:
    """arctanh(r), with |r| clipped to 1 − 10⁻⁶ so that a perfect correlation stays finite."""
    z = np.arctanh(np.clip(r, -_R_CLIP, _R_CLIP))
    return float(z) if np.ndim(z) == 0 else z


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of (B, n) arrays; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / den, np.nan)


def _interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(finite, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
    return (float(lo), float(hi))


def bootstrap_heldout_r(
    human: np.ndarray,
    model: np.ndarray,
    control: np.ndarray | None = None,
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile 95 % intervals of held-out Pearson r, resampling IMAGES with replacement.

    The unit of replication is the image: each replicate draws n of the n held-out images (with their
    human RT, model RT and control RT together), so the interval describes how r would vary over other
    image samples from the same population, for these fitted models. It does not include the
    fit-to-fit variation of the models themselves (one seed, one shuffle).

    With ``control`` (the shuffled-control model's RTs on the same images), the control's r and the
    PAIRED Fisher-z difference z(r) − z(r_control) are computed on the same replicates, so the
    image-sampling noise both share cancels. ``p_not_above_control`` = (1 + #{replicates with
    difference ≤ 0}) / (1 + replicates), a one-sided bootstrap p-value for "the fit beats the control".
    Constant replicates (r undefined) are dropped.
    """
    human = np.asarray(human, dtype=float)
    model = np.asarray(model, dtype=float)
    n = human.size
    if n < 3 or model.shape != human.shape or (control is not None and np.shape(control) != human.shape):
        raise PerceptAlignError(
            f"bootstrap_heldout_r needs ≥ 3 images and equal-length arrays, got {human.shape}, "
            f"{model.shape}" + ("" if control is None else f", {np.shape(control)}") + "."
        )
    check_int("bootstrap_heldout_r", "n_bootstrap", n_bootstrap, 1)
    rng = np.random.default_rng([int(seed), 0xB0075])
    r_model, r_ctrl = [], []
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_bootstrap, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
        h = human[idx]
        r_model.append(_rowwise_pearson(model[idx], h))
        if control is not None:
            r_ctrl.append(_rowwise_pearson(np.asarray(control, dtype=float)[idx], h))
    rb = np.concatenate(r_model)
    out: dict[str, Any] = {"r_ci95": _interval(rb), "n_bootstrap": int(n_bootstrap)}
    if control is not None:
        cb = np.concatenate(r_ctrl)
        diff = fisher_z(rb) - fisher_z(cb)
        finite = diff[np.isfinite(diff)]
        out["r_control_ci95"] = _interval(cb)
        out["z_diff_ci95"] = _interval(diff)
        out["p_not_above_control"] = float((1 + np.sum(finite <= 0)) / (1 + finite.size))
    return out


# --------------------------------------------------------------------------------------------------------
# Training and prediction of one decider.
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    features: Tensor
    logits: Tensor
    labels: Tensor
    rt: Tensor


def _sub(b: _Batch, t: Tensor) -> _Batch:
    return _Batch(b.features[t], b.logits[t], b.labels[t], b.rt[t])


def _run_decider(
    module: nn.Module, decider: Decider, batch: _Batch, generator: torch.Generator | None, ww_input: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(rt_s, decided, choice_logits) of either decider on a batch."""
    if decider == "rtify":
        assert isinstance(module, RTifyHead)
        out: RTifyOutput = module(batch.features)
        return out.rt_s, out.decision.decided, out.choice_logits
    assert isinstance(module, LogitWongWang)
    logits = batch.logits[:, -1] if ww_input == "last" else batch.logits
    ww_out = module(logits, generator=generator)
    drive = module.drive(batch.logits[:, -1])
    return ww_out.rt_s, ww_out.decided, drive


@torch.no_grad()
def _predict(
    module: nn.Module, decider: Decider, batch: _Batch, *, repeats: int, seed: int, ww_input: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model RT (mean over ``repeats`` noise draws for the stochastic WW), decided fraction, choice."""
    n_rep = repeats if decider == "wong-wang" else 1
    rts, decided, choices = [], [], []
    for k in range(n_rep):
        gen = torch.Generator().manual_seed(seed + 7919 * k)
        if decider == "wong-wang":
            assert isinstance(module, LogitWongWang)
            logits = batch.logits[:, -1] if ww_input == "last" else batch.logits
            out = module(logits, generator=gen)
            rt, dec, choice = out.rt_s, out.decided, out.choice
        else:
            rt, dec, logits_c = _run_decider(module, decider, batch, gen, ww_input)
            choice = logits_c.argmax(-1)
        rts.append(rt.numpy())
        decided.append(dec.numpy())
        choices.append(choice.numpy())
    # Choice of the first draw (a real trial); averaging choices has no meaning.
    return np.mean(rts, axis=0), np.mean(decided, axis=0), choices[0]


def _copy_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_decider(
    module: nn.Module,
    cfg: ItemRTConfig,
    train: _Batch,
    val: _Batch | None,
    *,
    progress: Progress | None,
    stage: str,
) -> list[float]:
    """Adam on −r(model RT, human RT) + ce_weight·CE over mini-batches of training images; early stopping.

    Batches are large (Pearson r is a batch statistic; a small batch gives a noisy, biased gradient).
    Gradients are clipped to norm 1: the implicit τ-gradient is 1/slope and can be large near a flat
    crossing. With ``val`` the parameters of the epoch with the best validation r are restored at the
    end: a few hundred items cannot pin down a head with ~1,000 weights, and without it the training r
    keeps rising while the held-out r falls. Returns the validation r per epoch (training loss without
    val).
    """
    decider, seed, epochs = cfg.decider, cfg.seed, cfg.resolved_epochs
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.resolved_lr)
    gen = torch.Generator().manual_seed(seed)
    n = train.rt.shape[0]
    history: list[float] = []
    best_r, best_state = -math.inf, None

    def val_r() -> float:
        assert val is not None
        rt, _, _ = _predict(module, decider, val, repeats=cfg.eval_repeats, seed=seed, ww_input=cfg.ww_input)
        return _pearson(rt, val.rt.numpy())

    if val is not None:
        best_r, best_state = val_r(), _copy_state(module)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            if idx.numel() < 3:
                continue
            part = _sub(train, idx)
            noise = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 9973 + start)
            rt, _, choice_logits = _run_decider(module, decider, part, noise, cfg.ww_input)
            loss = neg_pearson(rt, part.rt)
            if cfg.ce_weight > 0:
                loss = loss + cfg.ce_weight * F.cross_entropy(choice_logits, part.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        if val is None:
            history.append(total / max(count, 1))
        else:
            r = val_r()
            history.append(r)
            if r > best_r:
                best_r, best_state = r, _copy_state(module)
        report_progress(progress, stage, epoch + 1, epochs)
    if best_state is not None:
        module.load_state_dict(best_state)
    return history


# --------------------------------------------------------------------------------------------------------
# The score.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRTScore:
    """Held-out scores of an :class:`ItemRTEstimator` (:meth:`ItemRTEstimator.score`).

    ``table``: one row per scored (held-out) image: image_id, label, human_rt_s, model_rt_s, decided
    (fraction of noise draws that decided; 0/1 for the head), correct, initial_rt_s (the decider before
    fitting) and, with the control, shuffled_control_rt_s. ``r`` is Pearson r of model_rt_s and
    human_rt_s; ``r_ci95`` its bootstrap interval over images (:func:`bootstrap_heldout_r`);
    ``z_diff`` = arctanh(r) − arctanh(r_shuffled) with its paired interval ``z_diff_ci95``: the fit beats
    the control beyond image-sampling noise when the interval lies above 0 (:attr:`beats_control`).
    """

    decider: str
    table: pd.DataFrame = field(repr=False)
    r: float
    r_ci95: tuple[float, float]
    r_initial: float
    r_shuffled: float | None
    r_shuffled_ci95: tuple[float, float] | None
    z_diff: float | None
    z_diff_ci95: tuple[float, float] | None
    p_not_above_control: float | None
    accuracy: float
    no_decision_rate: float
    n_bootstrap: int

    @property
    def n_images(self) -> int:
        return len(self.table)

    @property
    def beats_control(self) -> bool | None:
        """True when the paired 95 % interval of the Fisher-z difference lies entirely above 0."""
        return None if self.z_diff_ci95 is None else bool(self.z_diff_ci95[0] > 0)

    def summary(self) -> dict[str, Any]:
        """The held-out numbers as ``images.json`` records them (keys documented in docs/rtify.md)."""

        def pair(x: tuple[float, float] | None) -> list[float] | None:
            return None if x is None else [float(x[0]), float(x[1])]

        return {
            "n_heldout": self.n_images,
            "r_heldout": self.r,
            "r_heldout_ci95": pair(self.r_ci95),
            "r_initial_heldout": self.r_initial,
            "r_shuffled_heldout": self.r_shuffled,
            "r_shuffled_heldout_ci95": pair(self.r_shuffled_ci95),
            "z_diff_vs_shuffled": self.z_diff,
            "z_diff_vs_shuffled_ci95": pair(self.z_diff_ci95),
            "p_bootstrap_not_above_shuffled": self.p_not_above_control,
            "beats_shuffled_control": self.beats_control,
            "n_bootstrap": self.n_bootstrap,
            "accuracy_heldout": self.accuracy,
            "no_decision_rate_heldout": self.no_decision_rate,
            "mean_model_rt_heldout_s": float(self.table["model_rt_s"].mean()),
        }


# --------------------------------------------------------------------------------------------------------
# The estimator.
# --------------------------------------------------------------------------------------------------------


def _as_rt_series(rt_table: RTTableLike) -> pd.Series:
    if isinstance(rt_table, pd.Series):
        return rt_table.set_axis(rt_table.index.astype(str))
    return read_rt_table(rt_table)


class ItemRTEstimator(ItemEstimatorBase):
    """A decider on a frozen backbone fitted to per-image RTs (``image_id``, ``rt_s``), scored on held-out
    images.

    ``ItemRTEstimator(config, backbone, images, features=None)``: ``images`` is the split whose ids the RT
    table uses; ``features`` (:func:`features_of` of that split) skips re-extraction when several deciders
    are fitted to one split.

    ``fit(rt_table)`` (a DataFrame or CSV for :func:`read_rt_table`, or a Series indexed by image id):
    of the split's images that the table names, a seeded ``holdout_fraction`` is held out — neither their
    RTs nor their features enter the fit — and the rest is split into training and validation images.
    After ``fit``: ``train_ids_``, ``val_ids_``, ``heldout_ids_``, ``decider_`` (the fitted module),
    ``control_`` (the shuffled control, or None), ``history_``, ``fit_table_`` (the fit images with their
    predictions; split "train"/"val") and ``r_fit_``.

    ``score()`` scores the held-out images; ``score(other_table)`` scores other RTs, refusing any image
    that was used to fit.
    """

    name = "item-rt"

    def __init__(
        self,
        config: ItemRTConfig,
        backbone: RecurrentCNN,
        images: ImageSplit,
        features: FeatureSet | None = None,
        *,
        progress: Progress | None = None,
    ) -> None:
        if not isinstance(config, ItemRTConfig):
            raise PerceptAlignError(f"ItemRTEstimator expects an ItemRTConfig, got {config!r}.")
        if not isinstance(backbone, RecurrentCNN):
            raise PerceptAlignError(
                f"ItemRTEstimator: `backbone` must be a RecurrentCNN, got {type(backbone).__name__}."
            )
        check_split(images)
        if features is not None:
            if not isinstance(features, FeatureSet):
                raise PerceptAlignError(
                    f"ItemRTEstimator: `features` must be a FeatureSet (features_of), got "
                    f"{type(features).__name__}."
                )
            if len(features) != len(images):
                raise PerceptAlignError(
                    f"ItemRTEstimator: `features` hold {len(features)} images but the split has "
                    f"{len(images)}; extract them from it."
                )
        super().__init__(config)
        self.backbone, self.images, self.progress = backbone, images, progress
        self._features = features
        self._ids = np.asarray(images.ids).astype(str)
        self._row_of = {image_id: row for row, image_id in enumerate(self._ids)}
        self.name = f"item-rt-{config.decider}"

    # ---------------------------------------------------------------- helpers

    @property
    def features(self) -> FeatureSet:
        if self._features is None:
            self._features = features_of(self.backbone, self.images)
        return self._features

    def _batch(self, rows: np.ndarray, rt: Tensor) -> _Batch:
        t = torch.as_tensor(rows)
        feats = self.features
        return _Batch(feats.features[t], feats.logits[t], self.images.labels[t], rt)

    def _build(self, fit: _Batch) -> nn.Module:
        cfg: ItemRTConfig = self.config
        if cfg.decider == "rtify":
            head = make_item_head(self.backbone, init=cfg.init)
            set_threshold_from_data(head, fit.features)
            return head
        return LogitWongWang(
            self.backbone.n_classes,
            mix_init=cfg.ww_mix_init,
            dt_ms=cfg.ww_dt_ms,
            max_time_s=cfg.ww_max_time_s,
        )

    def _predict(self, module: nn.Module, b: _Batch, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg: ItemRTConfig = self.config
        return _predict(module, cfg.decider, b, repeats=cfg.eval_repeats, seed=seed, ww_input=cfg.ww_input)

    # ---------------------------------------------------------------- fit

    def fit(self, rt_table: RTTableLike) -> Self:
        """Decide the held-out images, then fit the decider (and the shuffled control) on the others."""
        cfg: ItemRTConfig = self.config
        rts = _as_rt_series(rt_table)
        ids = self._ids
        known = np.isin(ids, rts.index.to_numpy(dtype=str))
        if known.sum() < 10:
            raise PerceptAlignError(
                f"only {int(known.sum())} of the RT table's images are in this split (need ≥ 10); table "
                f"ids look like {list(rts.index[:3])}, the split's like {list(ids[:3])}. Use the "
                "dataset's image ids."
            )
        # The split depends only on which images the table names and on the seed, never on RT values.
        rows = np.flatnonzero(known)
        rng = np.random.default_rng(cfg.seed)
        rows = rows[rng.permutation(rows.size)]
        n_held = max(3, round(cfg.holdout_fraction * rows.size))
        if rows.size - n_held < 3:
            raise PerceptAlignError(
                f"too few images ({rows.size}) to hold out {cfg.holdout_fraction:.0%} and fit."
            )
        held_rows, fit_rows = np.sort(rows[:n_held]), np.sort(rows[n_held:])
        # Only the fit images' RTs are read from here on; the held-out ones are kept for score().
        self._heldout_rts = rts.reindex(ids[held_rows])
        fit_rt = torch.tensor(rts.reindex(ids[fit_rows]).to_numpy(), dtype=torch.float32)
        if torch.all(fit_rt == fit_rt[0]):
            raise PerceptAlignError("the RT table's RTs are constant on the fit images; r is undefined.")
        n_val = round(cfg.val_fraction * fit_rows.size) if cfg.val_fraction > 0 else 0
        if 0 < n_val < 3 or fit_rows.size - n_val < 3:
            raise PerceptAlignError(
                f"{fit_rows.size} fit images cannot be split into training and validation "
                f"(validation fraction {cfg.val_fraction}); give more images (RT table rows), or no "
                "validation fraction (0)."
            )
        order = torch.as_tensor(rng.permutation(fit_rows.size))
        train_part, val_part = order[n_val:], order[:n_val]
        fit = self._batch(fit_rows, fit_rt)

        def split(b: _Batch) -> tuple[_Batch, _Batch | None]:
            return _sub(b, train_part), (_sub(b, val_part) if n_val else None)

        torch.manual_seed(cfg.seed)
        module = self._build(fit)
        self.initial_decider_ = copy.deepcopy(module)
        stage = f"fit {cfg.decider}"
        self.history_ = _train_decider(module, cfg, *split(fit), progress=self.progress, stage=stage)
        self.decider_ = module

        self.control_: nn.Module | None = None
        self.control_history_: list[float] | None = None
        if cfg.shuffled_control:
            perm = torch.as_tensor(rng.permutation(fit_rows.size))
            shuffled = self._batch(fit_rows, fit_rt[perm])
            torch.manual_seed(cfg.seed)
            control = self._build(shuffled)
            self.control_history_ = _train_decider(
                control, cfg, *split(shuffled), progress=self.progress, stage=f"{stage} (shuffled)"
            )
            self.control_ = control

        part = np.full(fit_rows.size, "train", dtype=object)
        part[val_part.numpy()] = "val"
        self.train_ids_ = ids[fit_rows[train_part.numpy()]]
        self.val_ids_ = ids[fit_rows[val_part.numpy()]]
        self.heldout_ids_ = ids[held_rows]
        rt, dec, choice = self._predict(module, fit, cfg.seed + 1)
        labels = fit.labels.numpy()
        self.fit_table_ = pd.DataFrame(
            {
                "image_id": ids[fit_rows],
                "split": part,
                "label": labels,
                "human_rt_s": fit_rt.numpy(),
                "model_rt_s": rt,
                "decided": dec,
                "correct": choice == labels,
            }
        )
        self.r_fit_ = _pearson(rt, fit_rt.numpy())
        self._mark_fitted()
        return self

    # ---------------------------------------------------------------- use

    def _rows(self, image_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        missing = [i for i in image_ids if i not in self._row_of]
        if missing:
            raise PerceptAlignError(f"{len(missing)} image id(s) are not in this split, e.g. {missing[:3]}.")
        return np.asarray([self._row_of[i] for i in image_ids], dtype=np.int64)

    def predict(self, image_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Model RT, decided fraction, choice and correctness of the fitted decider on ``image_ids``
        (default: every image of the split), predicted together in split order. No human RT is used."""
        self._check_fitted("predict()")
        ids = self._ids if image_ids is None else np.asarray([str(i) for i in image_ids])
        rows = np.sort(self._rows(ids))
        b = self._batch(rows, torch.zeros(rows.size))
        rt, dec, choice = self._predict(self.decider_, b, self.config.seed + 1)
        labels = b.labels.numpy()
        return pd.DataFrame(
            {
                "image_id": self._ids[rows],
                "label": labels,
                "model_rt_s": rt,
                "decided": dec,
                "choice": choice,
                "correct": choice == labels,
            }
        )

    def score(self, rt_table: RTTableLike | None = None) -> ItemRTScore:
        """Pearson r of model and human RT on held-out images, with the shuffled control and intervals.

        Without an argument: the held-out images of the table given to :meth:`fit`. With ``rt_table``: its
        images of this split, which must all be outside the fit (training and validation) images.
        """
        self._check_fitted("score()")
        cfg: ItemRTConfig = self.config
        if rt_table is None:
            human = self._heldout_rts
        else:
            rts = _as_rt_series(rt_table)
            human = rts[rts.index.isin(self._ids)]
            used = np.intersect1d(human.index.to_numpy(dtype=str), self.fit_table_["image_id"].to_numpy())
            if used.size:
                raise PerceptAlignError(
                    f"{used.size} of the images to score were used to fit (e.g. {list(used[:3])}); score "
                    "only held-out images, e.g. table[table.image_id.isin(estimator.heldout_ids_)]."
                )
            if len(human) < 3:
                raise PerceptAlignError(
                    f"only {len(human)} of the table's images are in this split; r needs at least 3."
                )
        rows = np.sort(self._rows(human.index.to_numpy(dtype=str)))
        human_rt = np.array(human.reindex(self._ids[rows]), dtype=float)  # a writable copy
        b = self._batch(rows, torch.as_tensor(human_rt))
        rt, dec, choice = self._predict(self.decider_, b, cfg.seed + 1)
        initial, _, _ = self._predict(self.initial_decider_, b, cfg.seed)
        labels = b.labels.numpy()
        table = pd.DataFrame(
            {
                "image_id": self._ids[rows],
                "label": labels,
                "human_rt_s": human_rt,
                "model_rt_s": rt,
                "decided": dec,
                "correct": choice == labels,
                "initial_rt_s": initial,
            }
        )
        control = None
        if self.control_ is not None:
            control, _, _ = self._predict(self.control_, b, cfg.seed)
            table["shuffled_control_rt_s"] = control
        boot = bootstrap_heldout_r(human_rt, rt, control, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        r = _pearson(rt, human_rt)
        r_ctrl = None if control is None else _pearson(control, human_rt)
        return ItemRTScore(
            decider=cfg.decider,
            table=table,
            r=r,
            r_ci95=boot["r_ci95"],
            r_initial=_pearson(initial, human_rt),
            r_shuffled=r_ctrl,
            r_shuffled_ci95=boot.get("r_control_ci95"),
            z_diff=None if r_ctrl is None else float(fisher_z(r) - fisher_z(r_ctrl)),
            z_diff_ci95=boot.get("z_diff_ci95"),
            p_not_above_control=boot.get("p_not_above_control"),
            accuracy=float(table["correct"].mean()),
            no_decision_rate=float(1.0 - table["decided"].mean()),
            n_bootstrap=cfg.n_bootstrap,
        )

    # ---------------------------------------------------------------- description

    @property
    def n_parameters(self) -> int:
        """Trainable scalars fitted to the RTs (the head's classifier only when the CE term trains it)."""
        self._check_fitted("n_parameters")
        module = self.decider_
        if isinstance(module, RTifyHead):
            return module.n_fitted_parameters(include_classifier=self.config.ce_weight > 0)
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    def params(self) -> dict[str, Any]:
        """The fitted decider's decision parameters (scalars; matrices summarised), JSON-ready."""
        self._check_fitted("params()")
        module = self.decider_
        if isinstance(module, RTifyHead):
            return {
                "threshold": float(module.threshold.detach()),
                "t0_s": float(module.t0.detach()),
                "dt_s": float(module.dt),
                "evidence_weight_norm": float(module.evidence.weight.detach().norm()),
            }
        assert isinstance(module, LogitWongWang)
        out = {name: float(p.detach()) for name, p in module.ww.named_parameters() if p.numel() == 1}
        for name, matrix in (("mix", module.mix.weight), ("J", module.ww.J)):
            m = matrix.detach()
            off = m[~torch.eye(m.shape[0], dtype=torch.bool)]
            out[f"{name}_diagonal_mean"] = float(m.diagonal().mean())
            out[f"{name}_offdiagonal_mean"] = float(off.mean())
        return out

    def _fitted_dict(self) -> dict[str, Any]:
        return {
            "n_train": len(self.train_ids_),
            "n_val": len(self.val_ids_),
            "n_heldout": len(self.heldout_ids_),
            "r_fit": self.r_fit_,
        }
