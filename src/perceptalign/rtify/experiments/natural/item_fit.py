"""Fitting a decider to per-image RTs with −Pearson r (+ a small CE), scored on held-out images
against a control refitted on shuffled RTs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.natural._common import Decider, Progress, report_progress
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


@dataclass
class ItemRTFit:
    """Outcome of :func:`fit_item_rts`.

    ``table`` has one row per image: image_id, split ("fit" / "heldout"), human_rt_s, model_rt_s,
    decided, correct. ``r_shuffled_heldout`` is the held-out r of the same procedure fitted to RTs
    permuted across the fit images (the control: what fitting achieves with no item information).
    """

    decider: str
    module: nn.Module
    table: pd.DataFrame
    r_fit: float
    r_heldout: float
    r_initial_heldout: float
    r_shuffled_heldout: float | None
    accuracy_heldout: float
    no_decision_rate_heldout: float
    history: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | str | None]:
        held = self.table["split"] == "heldout"
        return {
            "decider": self.decider,
            "n_fit": int((~held).sum()),
            "n_heldout": int(held.sum()),
            "r_fit": self.r_fit,
            "r_heldout": self.r_heldout,
            "r_initial_heldout": self.r_initial_heldout,
            "r_shuffled_heldout": self.r_shuffled_heldout,
            "accuracy_heldout": self.accuracy_heldout,
            "no_decision_rate_heldout": self.no_decision_rate_heldout,
            "mean_model_rt_heldout_s": float(self.table.loc[held, "model_rt_s"].mean()),
        }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=float) - np.mean(x)
    y = np.asarray(y, dtype=float) - np.mean(y)
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0


@dataclass
class _Batch:
    features: Tensor
    logits: Tensor
    labels: Tensor
    rt: Tensor


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
    rt_mean = np.mean(rts, axis=0)
    decided_frac = np.mean(decided, axis=0)
    # Choice of the first draw (a real trial); averaging choices has no meaning.
    return rt_mean, decided_frac, choices[0]


def _build_decider(
    backbone: RecurrentCNN, decider: Decider, fit: _Batch, ww_kwargs: dict, init: str
) -> nn.Module:
    if decider == "rtify":
        head = make_item_head(backbone, init=init)  # type: ignore[arg-type]
        set_threshold_from_data(head, fit.features)
        return head
    return LogitWongWang(backbone.n_classes, **ww_kwargs)


def _train_decider(
    module: nn.Module,
    decider: Decider,
    fit: _Batch,
    val: _Batch | None,
    *,
    epochs: int,
    lr: float,
    ce_weight: float,
    batch_size: int,
    seed: int,
    ww_input: str,
    eval_repeats: int,
    progress: Progress | None,
    stage: str,
) -> list[float]:
    """Adam on −r(model RT, human RT) + ce_weight·CE over mini-batches of fit images; early stopping.

    Batches are large (Pearson r is a batch statistic; a small batch gives a noisy, biased gradient).
    Gradients are clipped to norm 1: the implicit τ-gradient is 1/slope and can be large near a flat
    crossing. With ``val`` the parameters of the epoch with the best validation r are restored at the
    end: a few hundred items cannot pin down a head with ~1,000 weights, and without it the fit r keeps
    rising while the held-out r falls. Returns the validation r per epoch (training loss without val).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = fit.rt.shape[0]
    history: list[float] = []
    best_r, best_state = -math.inf, None
    if val is not None:
        rt0, _, _ = _predict(module, decider, val, repeats=eval_repeats, seed=seed, ww_input=ww_input)
        best_r, best_state = _pearson(rt0, val.rt.numpy()), _copy_state(module)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() < 3:
                continue
            part = _Batch(fit.features[idx], fit.logits[idx], fit.labels[idx], fit.rt[idx])
            noise = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 9973 + start)
            rt, _, choice_logits = _run_decider(module, decider, part, noise, ww_input)
            loss = neg_pearson(rt, part.rt)
            if ce_weight > 0:
                loss = loss + ce_weight * F.cross_entropy(choice_logits, part.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        if val is None:
            history.append(total / max(count, 1))
        else:
            rt_v, _, _ = _predict(module, decider, val, repeats=eval_repeats, seed=seed, ww_input=ww_input)
            r_val = _pearson(rt_v, val.rt.numpy())
            history.append(r_val)
            if r_val > best_r:
                best_r, best_state = r_val, _copy_state(module)
        report_progress(progress, stage, epoch + 1, epochs)
    if best_state is not None:
        module.load_state_dict(best_state)
    return history


def _copy_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit_item_rts(
    backbone: RecurrentCNN,
    images: ImageSplit,
    rt_table: pd.DataFrame | pd.Series | str | os.PathLike[str],
    *,
    decider: Decider = "rtify",
    init: Literal["readout", "random"] = "readout",
    holdout_fraction: float = 0.5,
    val_fraction: float = 0.25,
    epochs: int | None = None,
    lr: float | None = None,
    ce_weight: float = 0.1,
    batch_size: int = 1024,
    shuffled_control: bool = True,
    eval_repeats: int = 8,
    ww_input: Literal["last", "steps"] = "last",
    ww_kwargs: dict | None = None,
    features: FeatureSet | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> ItemRTFit:
    """Fit a decider on a frozen backbone to per-image RTs; report Pearson r on held-out images.

    ``rt_table``: a table/CSV with ``image_id, rt_s`` (see :func:`read_rt_table`) or a Series indexed by
    image id. Only images of ``images`` that appear in the table are used; a random ``holdout_fraction``
    of them is never seen by the fit, and ``val_fraction`` of the rest picks the best epoch (early
    stopping; 0 disables it).

    ``decider="rtify"`` fits a multi-class :class:`RTifyHead` on the per-step features (``init``: see
    :func:`make_item_head`); ``"wong-wang"`` a :class:`LogitWongWang` on the logits (the last step's, or
    all steps as a time series with ``ww_input="steps"``), whose RTs are averaged over ``eval_repeats``
    noise draws when evaluated. ``features`` (from :func:`features_of` on the same split) skips
    re-extraction when several deciders are fitted to one split. Defaults: 150 epochs at lr 0.005
    (head) or 40 epochs at lr 0.003 (Wong–Wang).
    """
    check_split(images)
    if decider not in ("rtify", "wong-wang"):
        raise PerceptAlignError(f"decider must be 'rtify' or 'wong-wang', got {decider!r}.")
    if ww_input not in ("last", "steps"):
        raise PerceptAlignError(f"ww_input must be 'last' or 'steps', got {ww_input!r}.")
    if not 0 < holdout_fraction < 1:
        raise PerceptAlignError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}.")
    if not 0 <= val_fraction < 1:
        raise PerceptAlignError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    if not ce_weight >= 0:
        raise PerceptAlignError(f"ce_weight must be ≥ 0, got {ce_weight!r}.")
    epochs = (150 if decider == "rtify" else 40) if epochs is None else epochs
    lr = (0.005 if decider == "rtify" else 0.003) if lr is None else lr
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise PerceptAlignError(f"epochs must be a non-negative integer, got {epochs!r}.")
    for name, value in (("batch_size", batch_size), ("eval_repeats", eval_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PerceptAlignError(f"{name} must be a positive integer, got {value!r}.")
    rts = rt_table if isinstance(rt_table, pd.Series) else read_rt_table(rt_table)
    ids = np.asarray(images.ids).astype(str)
    known = np.isin(ids, rts.index.to_numpy(dtype=str))
    if known.sum() < 10:
        unknown = [i for i in rts.index[:3]]
        raise PerceptAlignError(
            f"only {int(known.sum())} of the RT table's images are in this split (need ≥ 10); table ids "
            f"look like {unknown}, the split's like {list(ids[:3])}. Use the dataset's image ids."
        )
    rows = np.flatnonzero(known)
    rng = np.random.default_rng(seed)
    rows = rows[rng.permutation(rows.size)]
    n_held = max(3, round(holdout_fraction * rows.size))
    if rows.size - n_held < 3:
        raise PerceptAlignError(f"too few images ({rows.size}) to hold out {holdout_fraction:.0%} and fit.")
    held_rows, fit_rows = np.sort(rows[:n_held]), np.sort(rows[n_held:])
    human = torch.tensor(rts.reindex(ids).to_numpy(), dtype=torch.float32)  # NaN rows are never used
    if torch.all(human[torch.as_tensor(fit_rows)] == human[torch.as_tensor(fit_rows)][0]):
        raise PerceptAlignError("the RT table's RTs are constant on the fit images; r is undefined.")

    if features is None:
        features = features_of(backbone, images)
    elif len(features) != len(images):
        raise PerceptAlignError(
            f"features hold {len(features)} images but the split has {len(images)}; extract them from it."
        )
    out = features

    def batch(r: np.ndarray, rt: Tensor | None = None) -> _Batch:
        t = torch.as_tensor(r)
        return _Batch(out.features[t], out.logits[t], images.labels[t], human[t] if rt is None else rt)

    fit, held = batch(fit_rows), batch(held_rows)
    n_val = round(val_fraction * fit_rows.size) if val_fraction > 0 else 0
    if 0 < n_val < 3 or fit_rows.size - n_val < 3:
        raise PerceptAlignError(
            f"{fit_rows.size} fit images cannot be split into training and validation "
            f"(validation fraction {val_fraction}); give more images (RT table rows), or no validation "
            "fraction (0)."
        )
    order = torch.as_tensor(rng.permutation(fit_rows.size))
    train_part, val_part = order[n_val:], order[:n_val]

    def split_fit(b: _Batch) -> tuple[_Batch, _Batch | None]:
        def sub(t: Tensor) -> _Batch:
            return _Batch(b.features[t], b.logits[t], b.labels[t], b.rt[t])

        return sub(train_part), (sub(val_part) if n_val else None)

    ww_kwargs = dict(ww_kwargs or {})
    torch.manual_seed(seed)
    module = _build_decider(backbone, decider, fit, ww_kwargs, init)
    init_rt, _, _ = _predict(module, decider, held, repeats=eval_repeats, seed=seed, ww_input=ww_input)
    r_initial = _pearson(init_rt, held.rt.numpy())
    common = {
        "epochs": epochs,
        "lr": lr,
        "ce_weight": ce_weight,
        "batch_size": batch_size,
        "seed": seed,
        "ww_input": ww_input,
        "eval_repeats": eval_repeats,
        "progress": progress,
    }
    history = _train_decider(module, decider, *split_fit(fit), stage=f"fit {decider}", **common)

    r_shuffled = None
    if shuffled_control:
        perm = torch.as_tensor(rng.permutation(fit_rows.size))
        shuffled = batch(fit_rows, fit.rt[perm])
        torch.manual_seed(seed)
        control = _build_decider(backbone, decider, shuffled, ww_kwargs, init)
        _train_decider(control, decider, *split_fit(shuffled), stage=f"fit {decider} (shuffled)", **common)
        ctrl_rt, _, _ = _predict(control, decider, held, repeats=eval_repeats, seed=seed, ww_input=ww_input)
        r_shuffled = _pearson(ctrl_rt, held.rt.numpy())

    parts = []
    for name, r, b in (("fit", fit_rows, fit), ("heldout", held_rows, held)):
        rt, dec, choice = _predict(module, decider, b, repeats=eval_repeats, seed=seed + 1, ww_input=ww_input)
        parts.append(
            pd.DataFrame(
                {
                    "image_id": ids[r],
                    "split": name,
                    "label": b.labels.numpy(),
                    "human_rt_s": b.rt.numpy(),
                    "model_rt_s": rt,
                    "decided": dec,
                    "correct": choice == b.labels.numpy(),
                }
            )
        )
    table = pd.concat(parts, ignore_index=True)
    f_rows, h_rows = table[table.split == "fit"], table[table.split == "heldout"]
    return ItemRTFit(
        decider=decider,
        module=module,
        table=table,
        r_fit=_pearson(f_rows.model_rt_s, f_rows.human_rt_s),
        r_heldout=_pearson(h_rows.model_rt_s, h_rows.human_rt_s),
        r_initial_heldout=r_initial,
        r_shuffled_heldout=r_shuffled,
        accuracy_heldout=float(h_rows.correct.mean()),
        no_decision_rate_heldout=float(1.0 - h_rows.decided.mean()),
        history=history,
    )
