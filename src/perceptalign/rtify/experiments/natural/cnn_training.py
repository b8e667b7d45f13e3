"""The recurrent CNN backbone of the natural-image pipeline: training on every step's readout,
feature extraction, per-step accuracy and a content-addressed weight cache."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perceptalign.io import PerceptAlignError, cache_dir, load_tensors, save_tensors_atomic
from perceptalign.rtify.experiments.natural._common import Progress, report_progress
from perceptalign.rtify.experiments.natural.image_data import ImageDataset, ImageSplit
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN, RecurrentCNNOutput


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


def check_split(split: ImageSplit, name: str = "images") -> None:
    if not isinstance(split, ImageSplit):
        raise PerceptAlignError(
            f"{name} must be an ImageSplit (see perceptalign.rtify.experiments.natural.image_data)."
        )
    if len(split) == 0:
        raise PerceptAlignError(f"{name} is empty; pass at least one image.")


def train_backbone(
    split: ImageSplit, config: BackboneConfig, *, n_classes: int, progress: Progress | None = None
) -> RecurrentCNN:
    """Train a :class:`RecurrentCNN` with Adam on the mean cross-entropy over ALL steps' readouts.

    The learning rate follows a cosine decay to 0 over the run (a few epochs; a fixed rate leaves the
    last epochs noisy). Deterministic given ``config.seed`` (single-threaded CPU kernels).
    """
    check_split(split, "training split")
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
            report_progress(progress, "train backbone", done, total)
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
    check_split(split)
    out = extract(model, split.images, batch_size=batch_size)
    return FeatureSet(out.features, out.logits, split.labels)


def step_accuracy(model: RecurrentCNN, split: ImageSplit, *, batch_size: int = 512) -> np.ndarray:
    """Accuracy of the readout after each recurrent step, shape (T,)."""
    check_split(split)
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
