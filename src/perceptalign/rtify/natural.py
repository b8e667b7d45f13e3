"""RTify on natural images: a recurrent CNN, decision heads fitted to per-image RTs, self-penalised
training, a Wong–Wang race driven by the CNN's logits, and saliency of the class vs of the decision time.

Pipeline (rtify.md §3–4): train :class:`~perceptalign.rtify.backbones.RecurrentCNN` with cross-entropy
on EVERY step's readout (so an early decision reads a usable classifier; training on the last step only
leaves early readouts near chance and the head could only decide late); freeze it; then

* :func:`fit_item_rts` fits a multi-class RTify head (per-step features → accumulators → τ) or a
  :class:`LogitWongWang` race (|Linear(logits)| → n populations) to a per-image RT table with
  −Pearson r (+ a small CE that keeps the choice accurate), and reports r on held-out images against a
  control refitted on shuffled RTs;
* :func:`train_self_penalised` trains a head with CE + λ·mean(penalty·τ) and no human data;
* :func:`saliency` gives ∂(class logit)/∂image and ∂τ/∂image.

No per-image human RTs ship with the project (Kar et al. 2019 is not available), so
:func:`synthetic_item_rts` makes a table from a KNOWN process: RT = t₀ + a·difficulty + noise, the
difficulty being the predictive entropy of an independent teacher (logistic regression on pixels).
Recovering that ranking on held-out images is the end-to-end check; any real table plugs in instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError, cache_dir, load_tensors, save_tensors_atomic
from perceptalign.rtify.backbones import RecurrentCNN, RecurrentCNNOutput
from perceptalign.rtify.heads import RTifyHead, RTifyOutput
from perceptalign.rtify.images import ImageDataset, ImageSplit
from perceptalign.rtify.losses import neg_pearson, self_penalty_loss
from perceptalign.rtify.wongwang import WW_DEFAULTS, WongWangN, WWOutput

__all__ = [
    "BackboneConfig",
    "FeatureSet",
    "ItemRTFit",
    "LogitWongWang",
    "SaliencyMaps",
    "SelfPenalisedResult",
    "extract",
    "features_of",
    "fit_item_rts",
    "load_or_train_backbone",
    "make_item_head",
    "read_rt_table",
    "rt_scatter_figure",
    "saliency",
    "saliency_figure",
    "step_accuracy",
    "synthetic_item_rts",
    "teacher_difficulty",
    "train_backbone",
    "train_self_penalised",
]

Progress = Callable[[str, int, int], None]
Decider = Literal["rtify", "wong-wang"]
PenaltyKind = Literal["margin", "tau", "p_correct"]


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


# ---------------------------------------------------------------------------------------------------
# Backbone: training, evaluation, cache
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that determines a trained backbone (and hence its cache key).

    ``max_train`` caps the training images (first N of a fixed shuffle) to bound CPU time.
    """

    width: int = 16
    n_steps: int = 6
    pool: int = 2
    epochs: int = 2
    batch_size: int = 128
    lr: float = 3e-3
    max_train: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("width", "n_steps", "pool", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PerceptAlignError(f"BackboneConfig.{name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise PerceptAlignError(f"BackboneConfig.lr must be a positive number, got {self.lr!r}.")
        if self.max_train is not None and (not isinstance(self.max_train, int) or self.max_train < 1):
            raise PerceptAlignError(
                f"BackboneConfig.max_train must be a positive integer or None, got {self.max_train!r}."
            )

    def build(self, n_classes: int) -> RecurrentCNN:
        return RecurrentCNN(n_classes, width=self.width, n_steps=self.n_steps, pool=self.pool)

    def key(self, dataset_checksum: str) -> str:
        blob = json.dumps({"config": asdict(self), "data": dataset_checksum, "v": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_split(split: ImageSplit, name: str = "images") -> None:
    if not isinstance(split, ImageSplit):
        raise PerceptAlignError(f"{name} must be an ImageSplit (see perceptalign.rtify.images).")
    if len(split) == 0:
        raise PerceptAlignError(f"{name} is empty; pass at least one image.")


def train_backbone(
    split: ImageSplit, config: BackboneConfig, *, n_classes: int, progress: Progress | None = None
) -> RecurrentCNN:
    """Train a :class:`RecurrentCNN` with Adam on the mean cross-entropy over ALL steps' readouts.

    The learning rate follows a cosine decay to 0 over the run (a few epochs; a fixed rate leaves the
    last epochs noisy). Deterministic given ``config.seed`` (single-threaded CPU kernels).
    """
    _check_split(split, "training split")
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = config.build(n_classes)
    order = torch.randperm(len(split), generator=gen)
    if config.max_train is not None:
        order = order[: config.max_train]
    n = order.numel()
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * k / total)))
    model.train()
    done = 0
    for _ in range(config.epochs):
        perm = order[torch.randperm(n, generator=gen)]
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            out = model(split.images[idx])
            labels = split.labels[idx].repeat_interleave(config.n_steps)
            loss = F.cross_entropy(out.logits.flatten(0, 1), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            _report(progress, "train backbone", done, total)
    model.eval()
    return model


@torch.no_grad()
def extract(model: RecurrentCNN, images: Tensor, *, batch_size: int = 512) -> RecurrentCNNOutput:
    """Per-step features and logits of a frozen backbone, computed in batches without autograd."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise PerceptAlignError("images must be a non-empty (N, C, H, W) tensor.")
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        out = model(images[start : start + batch_size])
        feats.append(out.features)
        logits.append(out.logits)
    model.train(was_training)
    return RecurrentCNNOutput(features=torch.cat(feats), logits=torch.cat(logits))


@dataclass
class FeatureSet:
    """A frozen backbone's per-step features (N, T, H) and logits (N, T, C) with the labels (N,).

    Extract once with :func:`features_of` and reuse across fits and λ sweeps.
    """

    features: Tensor
    logits: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def features_of(model: RecurrentCNN, split: ImageSplit, *, batch_size: int = 512) -> FeatureSet:
    """Features and logits of every image of ``split`` under the frozen ``model``."""
    _check_split(split)
    out = extract(model, split.images, batch_size=batch_size)
    return FeatureSet(out.features, out.logits, split.labels)


def step_accuracy(model: RecurrentCNN, split: ImageSplit, *, batch_size: int = 512) -> np.ndarray:
    """Accuracy of the readout after each recurrent step, shape (T,)."""
    _check_split(split)
    out = extract(model, split.images, batch_size=batch_size)
    return (out.logits.argmax(-1) == split.labels.unsqueeze(1)).double().mean(0).numpy()


def load_or_train_backbone(
    dataset: ImageDataset,
    config: BackboneConfig,
    *,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> tuple[RecurrentCNN, Path, bool]:
    """Return (model, cache file, loaded_from_cache): trained weights are cached as safetensors.

    The cache key hashes the config and the dataset checksum, so other data or settings never reuse a
    stale network.
    """
    path = cache_dir("rtify", "images") / f"{dataset.name}-{config.key(dataset.checksum)}.safetensors"
    if use_cache and path.is_file():
        model = config.build(dataset.n_classes)
        tensors = load_tensors(path)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as exc:
            raise PerceptAlignError(
                f"cached backbone {path} does not match this version's network ({exc}); delete the file "
                "to retrain."
            ) from exc
        model.eval()
        return model, path, True
    model = train_backbone(dataset.train, config, n_classes=dataset.n_classes, progress=progress)
    meta = {"config": json.dumps(asdict(config)), "dataset": dataset.name, "checksum": dataset.checksum}
    save_tensors_atomic(path, model.state_dict(), metadata=meta)
    return model, path, False


# ---------------------------------------------------------------------------------------------------
# Per-image RT tables: reading, and generating from a known process
# ---------------------------------------------------------------------------------------------------


def read_rt_table(table: pd.DataFrame | str | os.PathLike[str]) -> pd.Series:
    """Per-image RT (s) indexed by ``image_id``, from a DataFrame or CSV with columns ``image_id, rt_s``.

    Several rows per image (one per subject or trial) are reduced to the MEDIAN, the per-item statistic
    RTify fits (rtify.md §2b), which is robust to the long right tail of RTs.
    """
    if not isinstance(table, pd.DataFrame):
        path = Path(table)
        if not path.is_file():
            raise PerceptAlignError(
                f"RT table {path} does not exist; pass a CSV with columns image_id, rt_s."
            )
        table = pd.read_csv(path, dtype={"image_id": str})
    missing = [c for c in ("image_id", "rt_s") if c not in table.columns]
    if missing:
        raise PerceptAlignError(
            f"RT table lacks column(s) {missing} (has {list(table.columns)}); it needs image_id (the "
            "dataset's image ids, e.g. test-00042) and rt_s (reaction time in seconds)."
        )
    if table.empty:
        raise PerceptAlignError("RT table has no rows.")
    rt = pd.to_numeric(table["rt_s"], errors="coerce")
    bad = ~np.isfinite(rt.to_numpy(dtype=float)) | (rt.to_numpy(dtype=float) <= 0)
    if bad.any():
        rows = table[bad].head(5).to_string()
        raise PerceptAlignError(
            f"RT table: rt_s must be a positive finite number of seconds; {int(bad.sum())} bad row(s):\n"
            f"{rows}\nFix or drop them."
        )
    if table["image_id"].isna().any():
        raise PerceptAlignError("RT table: image_id has missing values; every row needs an image id.")
    series = pd.Series(rt.to_numpy(dtype=float), index=table["image_id"].astype(str).to_numpy())
    return series.groupby(level=0).median().rename("rt_s")


def teacher_difficulty(
    teacher_train: ImageSplit, items: ImageSplit, *, max_train: int = 5000, seed: int = 0
) -> np.ndarray:
    """Difficulty of each item = predictive entropy (nats) of an independent teacher.

    The teacher is a multinomial logistic regression on 14×14 average-pooled pixels: a different model
    class from the CNN, so a head that recovers the teacher's ranking has learnt something about the
    images, not copied its own backbone's confidence.
    """
    from sklearn.linear_model import LogisticRegression

    _check_split(teacher_train, "teacher_train")
    _check_split(items, "items")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(teacher_train))[:max_train]

    def pixels(x: Tensor) -> np.ndarray:
        return F.avg_pool2d(x, 2).flatten(1).numpy().astype(np.float64)

    clf = LogisticRegression(C=0.5, max_iter=300)
    clf.fit(pixels(teacher_train.images[torch.as_tensor(pick)]), teacher_train.labels[pick].numpy())
    proba = np.clip(clf.predict_proba(pixels(items.images)), 1e-12, 1.0)
    return -(proba * np.log(proba)).sum(axis=1)


def synthetic_item_rts(
    ids: Sequence[str] | np.ndarray,
    difficulty: np.ndarray,
    *,
    t0_s: float = 0.35,
    scale_s: float = 0.3,
    noise_s: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Ground-truth table ``image_id, rt_s, difficulty`` with RT = t₀ + scale·difficulty + N(0, noise²).

    The noise bounds the best achievable correlation below 1, like between-subject noise in real data.
    RTs are floored at 0.05 s so the table stays valid for any parameters.
    """
    ids = np.asarray(ids).astype(str)
    difficulty = np.asarray(difficulty, dtype=float)
    if ids.ndim != 1 or difficulty.shape != ids.shape or ids.size < 2:
        raise PerceptAlignError("ids and difficulty must be 1-D, of equal length ≥ 2.")
    if not np.isfinite(difficulty).all():
        raise PerceptAlignError("difficulty contains NaN or infinite values.")
    if not (t0_s >= 0 and scale_s > 0 and noise_s >= 0):
        raise PerceptAlignError("synthetic RTs need t0_s ≥ 0, scale_s > 0 and noise_s ≥ 0.")
    rng = np.random.default_rng(seed)
    rt = t0_s + scale_s * difficulty + noise_s * rng.standard_normal(ids.size)
    return pd.DataFrame({"image_id": ids, "rt_s": np.maximum(rt, 0.05), "difficulty": difficulty})


# ---------------------------------------------------------------------------------------------------
# Deciders: the multi-class RTify head and a Wong–Wang race driven by logits
# ---------------------------------------------------------------------------------------------------


def make_item_head(
    backbone: RecurrentCNN,
    *,
    init: Literal["readout", "random"] = "readout",
    dt: float = 0.1,
    t0_init: float = 0.3,
) -> RTifyHead:
    """A multi-class RTify head on the backbone's per-step features; its classifier copies the readout.

    ``init="readout"`` also starts the evidence as the readout, so the untrained race is already a
    sensible decision process (confident images accumulate faster) and fitting refines it.
    ``init="random"`` starts the evidence at PyTorch's default random init: the race then knows nothing
    about difficulty, so any held-out correlation after fitting was learnt from the RTs. The threshold is
    set from data by the callers.
    """
    if init not in ("readout", "random"):
        raise PerceptAlignError(f"init must be 'readout' or 'random', got {init!r}.")
    head = RTifyHead(
        backbone.feature_size,
        backbone.n_classes,
        mode="multiclass",
        dt=dt,
        evidence="linear",
        classifier="linear",
        t0_init=t0_init,
    )
    with torch.no_grad():
        layers = (head.evidence, head.classifier) if init == "readout" else (head.classifier,)
        for layer in layers:
            assert isinstance(layer, nn.Linear)
            layer.weight.copy_(backbone.readout.weight)
            layer.bias.copy_(backbone.readout.bias)
    return head


def _set_threshold_from_data(head: RTifyHead, features: Tensor, quantile: float = 0.5) -> None:
    """θ := the ``quantile`` of max_c Φ at the middle step, so about half the items decide by then.

    A threshold far below every Φ makes all items decide at step 0 (no variance, no gradient); far above
    makes them all undecided (censored, zero gradient). The median puts the race where it can move.
    """
    with torch.no_grad():
        ev = head.evidence(features)
        phi = torch.cumsum(F.softplus(ev) if head.nonnegative else ev, dim=1)
        mid = (features.shape[1] - 1) // 2
        theta = torch.quantile(phi[:, mid].amax(dim=-1), quantile).clamp_min(1e-3)
        head.raw_threshold.copy_(torch.log(torch.expm1(theta)))


class LogitWongWang(nn.Module):
    """n-population Wong–Wang race whose inputs are |W·logits| (W learnable, initialised ``mix_init``·I).

    rtify.md §3 (CNN integration, multi-class): a frozen classifier's logits replace the coherence.
    ``logits`` (B, C) drive the populations for the whole stimulus; (B, T, C) per-step logits of a
    recurrent backbone are presented as a time series, one frame per step. Learnable: W and the
    Wong–Wang J, J_ext, I₀, σ, θ. ``dt_ms`` is coarse by default (10 ms) to keep fitting cheap; evaluate
    on a finer grid with ``forward(..., dt_ms=1.0)`` to check the dt-dependence.

    Default coupling: self-excitation 0.2609 and cross-inhibition 0.0497/(n − 1), so each population's
    TOTAL inhibition equals the two-population model's. With the full 0.0497 from each of 9 rivals the
    ten populations silence one another: on sklearn digits only 14% of trials decided within 2 s,
    against 100% with the scaled value. Pass ``J`` to override.
    """

    def __init__(
        self,
        n_classes: int,
        *,
        mix_init: float = 0.2,
        dt_ms: float = 10.0,
        max_time_s: float = 2.0,
        **ww_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise PerceptAlignError(f"n_classes must be an integer ≥ 2, got {n_classes!r}.")
        self.n_classes = n_classes
        self.mix = nn.Linear(n_classes, n_classes, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(mix_init * torch.eye(n_classes))
        if "J" not in ww_kwargs:
            J = torch.full((n_classes, n_classes), -WW_DEFAULTS["j_cross"] / (n_classes - 1))
            ww_kwargs = {**ww_kwargs, "J": J.fill_diagonal_(WW_DEFAULTS["j_self"])}
        self.ww = WongWangN(
            n_classes, dt_ms=dt_ms, max_time_s=max_time_s, stim_duration_s=max_time_s, **ww_kwargs
        )

    def drive(self, logits: Tensor) -> Tensor:
        if not isinstance(logits, Tensor) or logits.dim() not in (2, 3) or logits.shape[-1] != self.n_classes:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise PerceptAlignError(
                f"logits must be (B, {self.n_classes}) or (B, T, {self.n_classes}), got {shape}."
            )
        return self.mix(logits).abs()

    def forward(
        self, logits: Tensor, *, generator: torch.Generator | None = None, **kwargs: float
    ) -> WWOutput:
        return self.ww(self.drive(logits), generator=generator, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Fitting a decider to per-image RTs
# ---------------------------------------------------------------------------------------------------


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
        _set_threshold_from_data(head, fit.features)
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
        _report(progress, stage, epoch + 1, epochs)
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
    _check_split(images)
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
            f"(val_fraction={val_fraction}); give more images or set val_fraction=0."
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


# ---------------------------------------------------------------------------------------------------
# Self-penalised ("ideal observer") training
# ---------------------------------------------------------------------------------------------------


@dataclass
class SelfPenalisedResult:
    """A head trained with CE + λ·mean(penalty·τ); statistics on the evaluation images."""

    head: RTifyHead
    lam: float
    kind: str
    mean_tau: float
    mean_rt_s: float
    accuracy: float
    no_decision_rate: float

    def summary(self) -> dict[str, float | str]:
        return {k: v for k, v in asdict(self).items() if k != "head"}


def train_self_penalised(
    backbone: RecurrentCNN,
    train: ImageSplit | FeatureSet,
    evaluate: ImageSplit | FeatureSet,
    *,
    lam: float,
    kind: PenaltyKind = "margin",
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 256,
    finetune_backbone: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> SelfPenalisedResult:
    """Train an RTify head (optionally with the backbone) with CE + λ·mean(penalty·τ), no human data.

    τ is in steps (as in the published λ values). With a frozen backbone (default) the head trains on
    features, which may be passed precomputed (:func:`features_of`) to make a λ sweep cheap;
    ``finetune_backbone=True`` trains CNN + head jointly on the images (of a COPY of the backbone; the
    caller's stays frozen). The head starts from the backbone readout with θ set so that about half the
    training images decide by the middle step. Without speed pressure (λ = 0) CE alone rewards reading
    more steps, so θ rises until few or no images decide: expect a high no-decision rate there.
    """
    if not (isinstance(lam, (int, float)) and lam >= 0 and math.isfinite(lam)):
        raise PerceptAlignError(f"lam must be a finite number ≥ 0, got {lam!r}.")
    if kind not in ("margin", "tau", "p_correct"):
        raise PerceptAlignError(f"kind must be 'margin', 'tau' or 'p_correct', got {kind!r}.")
    if finetune_backbone and not (isinstance(train, ImageSplit) and isinstance(evaluate, ImageSplit)):
        raise PerceptAlignError("finetune_backbone=True trains on images: pass ImageSplits, not FeatureSets.")
    torch.manual_seed(seed)
    net = backbone
    if finetune_backbone:
        net = type(backbone)(
            backbone.n_classes,
            in_channels=backbone.in_channels,
            width=backbone.width,
            n_steps=backbone.n_steps,
            pool=backbone.pool,
        )
        net.load_state_dict(backbone.state_dict())
    train_set = train if isinstance(train, FeatureSet) else features_of(net, train)
    if len(train_set) == 0:
        raise PerceptAlignError("train is empty; pass at least one image.")
    head = make_item_head(net)
    _set_threshold_from_data(head, train_set.features)
    params = list(head.parameters()) + (list(net.parameters()) if finetune_backbone else [])
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(train_set)
    net.train(finetune_backbone)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if finetune_backbone:
                assert isinstance(train, ImageSplit)
                feats = net(train.images[idx]).features
            else:
                feats = train_set.features[idx]
            out = head(feats)
            tau = out.decision.tau
            loss = self_penalty_loss(out.choice_logits, train_set.labels[idx], tau, lam=lam, kind=kind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        _report(progress, f"self-penalised {kind} λ={lam:g}", epoch + 1, epochs)
    net.eval()
    eval_set = evaluate if isinstance(evaluate, FeatureSet) else features_of(net, evaluate)
    with torch.no_grad():
        out = head(eval_set.features)
    return SelfPenalisedResult(
        head=head,
        lam=float(lam),
        kind=kind,
        mean_tau=float(out.decision.tau.mean()),
        mean_rt_s=float(out.rt_s.mean()),
        accuracy=float((out.choice == eval_set.labels).double().mean()),
        no_decision_rate=out.decision.no_decision_rate,
    )


# ---------------------------------------------------------------------------------------------------
# Saliency and figures
# ---------------------------------------------------------------------------------------------------


@dataclass
class SaliencyMaps:
    """Signed input gradients (N, H, W) of the chosen class's read-out logit and of τ (summed over channels).

    For undecided images the τ-gradient is exactly zero (censored decisions carry no gradient).
    """

    images: Tensor
    class_gradient: Tensor
    tau_gradient: Tensor
    tau: Tensor
    decided: Tensor
    choice: Tensor


def saliency(backbone: RecurrentCNN, head: RTifyHead, images: Tensor) -> SaliencyMaps:
    """∂(choice logit)/∂image and ∂τ/∂image through a frozen backbone and an RTify head.

    Per-image gradients come from one backward pass of a SUM: GroupNorm statistics are per image and the
    backbone is in eval mode, so no image's output depends on another's pixels.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise PerceptAlignError("images must be a non-empty (N, C, H, W) tensor.")
    was_training = backbone.training
    backbone.eval()
    x = images.detach().clone().requires_grad_(True)
    out = head(backbone(x).features)
    choice = out.choice.detach()
    score = out.choice_logits.gather(1, choice.unsqueeze(1)).sum()
    (class_grad,) = torch.autograd.grad(score, x, retain_graph=True)
    (tau_grad,) = torch.autograd.grad(out.decision.tau.sum(), x)
    backbone.train(was_training)
    return SaliencyMaps(
        images=images.detach(),
        class_gradient=class_grad.sum(1),
        tau_gradient=tau_grad.sum(1),
        tau=out.decision.tau.detach(),
        decided=out.decision.decided.detach(),
        choice=choice,
    )


def saliency_figure(maps: SaliencyMaps, class_names: Sequence[str] | None = None) -> Figure:
    """One row per image: the image, |∂class/∂x| and |∂τ/∂x| (each map scaled to its own maximum)."""
    n = maps.images.shape[0]
    fig = Figure(figsize=(6.6, 2.2 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        label = class_names[int(maps.choice[i])] if class_names else str(int(maps.choice[i]))
        status = f"τ = step {int(maps.tau[i])}" if bool(maps.decided[i]) else "undecided"
        panels = (
            (maps.images[i].mean(0), "gray", f"choice: {label}"),
            (maps.class_gradient[i].abs(), "magma", "class saliency"),
            (maps.tau_gradient[i].abs(), "viridis", f"τ saliency ({status})"),
        )
        for ax, (img, cmap, title) in zip(axes[i], panels, strict=True):
            ax.imshow(img.numpy(), cmap=cmap)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def rt_scatter_figure(fits: Sequence[ItemRTFit], names: Sequence[str] | None = None) -> Figure:
    """Held-out model RT vs human RT per image, one panel per fit (errors in red), r in the title."""
    if not fits:
        raise PerceptAlignError("rt_scatter_figure needs at least one fit.")
    if names is not None and len(names) != len(fits):
        raise PerceptAlignError(f"names has {len(names)} entries for {len(fits)} fits.")
    labels = list(names) if names is not None else [f.decider for f in fits]
    fig = Figure(figsize=(4.2 * len(fits), 4.0))
    axes = fig.subplots(1, len(fits), squeeze=False)[0]
    for ax, fit, label in zip(axes, fits, labels, strict=True):
        held = fit.table[fit.table.split == "heldout"]
        ax.scatter(held.human_rt_s, held.model_rt_s, s=6, alpha=0.4, c=np.where(held.correct, "C0", "C3"))
        ax.set_xlabel("human RT (s)")
        ax.set_ylabel("model RT (s)")
        shuffled = "" if fit.r_shuffled_heldout is None else f", shuffled {fit.r_shuffled_heldout:.2f}"
        ax.set_title(f"{label}: held-out r = {fit.r_heldout:.2f}{shuffled}", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------
# The whole experiment (what `perceptalign rtify images` runs)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagesExperiment:
    """Settings of :func:`run_images_experiment`.

    ``items``: test images given generated RTs (ignored with ``rt_table``); ``self_penalised_train``:
    training images for the λ sweep (features of a frozen backbone, so cheap).
    """

    dataset: str = "fashion-mnist"
    data_path: str | None = None
    rt_table: str | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    items: int = 4000
    fit_epochs: int = 150
    ww_epochs: int = 40
    lambdas: tuple[float, ...] = (0.0, 0.001, 0.01, 0.1)
    penalties: tuple[str, ...] = ("tau", "margin", "p_correct")
    self_penalised_train: int = 10000
    saliency_images: int = 4
    use_cache: bool = True
    seed: int = 0


def run_images_experiment(
    config: ImagesExperiment, out: str | os.PathLike[str], *, progress: Progress | None = None
) -> dict[str, Any]:
    """Train/cache the backbone, fit RTify (readout and random init) and Wong–Wang to per-image RTs,
    sweep the self-penalised head, and write images.json, item_rts.csv, rt_scatter.png, saliency.png
    (and synthetic_rts.csv when the RTs are generated) into ``out``. Returns the JSON summary.
    """
    import time

    from perceptalign.io import write_json_atomic, write_text_atomic
    from perceptalign.rtify.figures import save_figure
    from perceptalign.rtify.images import load_image_dataset

    out = Path(out)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    dataset = load_image_dataset(config.dataset, config.data_path)
    lap("load_data_s")
    backbone, weights, cached = load_or_train_backbone(
        dataset, config.backbone, use_cache=config.use_cache, progress=progress
    )
    lap("backbone_s")
    accuracy = step_accuracy(backbone, dataset.test)
    lap("accuracy_s")

    if config.rt_table is not None:
        table = read_rt_table(config.rt_table)
        rt_source: dict[str, Any] = {"kind": "table", "path": str(config.rt_table), "n_images": len(table)}
        items = dataset.test
    else:
        rng = np.random.default_rng(config.seed)
        pick = np.sort(rng.permutation(len(dataset.test))[: min(config.items, len(dataset.test))])
        items = dataset.test.subset(pick)
        difficulty = teacher_difficulty(dataset.train, items, seed=config.seed)
        generated = synthetic_item_rts(items.ids, difficulty, seed=config.seed)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "synthetic_rts.csv", generated.to_csv(index=False))
        table = read_rt_table(generated)
        rt_source = {
            "kind": "synthetic",
            "process": "rt = 0.35 s + 0.3 s·entropy(teacher) + N(0, 0.05²); teacher = logistic regression "
            "on 14×14 pixels",
            "n_images": len(generated),
        }
    lap("rt_table_s")
    feats = features_of(backbone, items)
    fits = [
        fit_item_rts(
            backbone,
            items,
            table,
            decider="rtify",
            init="readout",
            epochs=config.fit_epochs,
            features=feats,
            seed=config.seed,
            progress=progress,
        ),
        fit_item_rts(
            backbone,
            items,
            table,
            decider="rtify",
            init="random",
            epochs=config.fit_epochs,
            features=feats,
            seed=config.seed,
            progress=progress,
        ),
    ]
    lap("fit_rtify_s")
    fits.append(
        fit_item_rts(
            backbone,
            items,
            table,
            decider="wong-wang",
            epochs=config.ww_epochs,
            features=feats,
            seed=config.seed,
            progress=progress,
        )
    )
    lap("fit_wong_wang_s")

    rng = np.random.default_rng(config.seed + 1)
    sp_pick = rng.permutation(len(dataset.train))[: config.self_penalised_train]
    sp_train = features_of(backbone, dataset.train.subset(np.sort(sp_pick)))
    sp_eval = features_of(backbone, dataset.test)
    sweep = [
        train_self_penalised(
            backbone, sp_train, sp_eval, lam=lam, kind=kind, seed=config.seed, progress=progress
        ).summary()
        for kind in config.penalties
        for lam in config.lambdas
    ]
    lap("self_penalised_s")

    head = fits[0].module
    assert isinstance(head, RTifyHead)
    n_sal = min(config.saliency_images, len(items))
    maps = saliency(backbone, head, items.images[:n_sal])
    out.mkdir(parents=True, exist_ok=True)
    names = ["rtify", "rtify_random_init", "wong_wang"]
    save_figure(saliency_figure(maps, dataset.class_names), out / "saliency.png")
    save_figure(rt_scatter_figure(fits, names), out / "rt_scatter.png")
    tables = [f.table.assign(decider=name) for f, name in zip(fits, names, strict=True)]
    write_text_atomic(out / "item_rts.csv", pd.concat(tables, ignore_index=True).to_csv(index=False))
    lap("figures_s")

    summary: dict[str, Any] = {
        "dataset": dataset.name,
        "n_train_images": len(dataset.train),
        "n_test_images": len(dataset.test),
        "backbone": {
            **asdict(config.backbone),
            "weights": str(weights),
            "loaded_from_cache": cached,
            "feature_size": backbone.feature_size,
        },
        "accuracy_per_step": [round(float(a), 4) for a in accuracy],
        "rt_source": rt_source,
        **{name: fit.summary() for name, fit in zip(names, fits, strict=True)},
        "self_penalised": sweep,
        "timings": timings,
        "total_s": round(sum(timings.values()), 2),
    }
    write_json_atomic(out / "images.json", summary)
    return summary
