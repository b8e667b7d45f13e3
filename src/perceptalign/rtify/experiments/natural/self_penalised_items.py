"""Self-penalised ("ideal observer") training on images, no human data: :class:`ItemSelfPenalisedEstimator`.

The objective is the one the RDM self-penalised head uses, :func:`perceptalign.rtify.losses.
self_penalty_objective` (expected error + λ·mean(penalty·E[t*]) with the soft estimator; the penalties
"tau", "margin" and "p_correct" are defined there once). Only the loop differs from
:func:`perceptalign.rtify.experiments.rdm.train_self_penalised_on`: epochs over a fixed image set instead
of fresh simulated trials, a multi-class head whose θ is set by :func:`set_threshold_from_data`, gradient
clipping, and optional fine-tuning of (a copy of) the backbone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np
import pandas as pd
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.estimators.base import check_int
from perceptalign.rtify.experiments.natural._common import (
    ItemEstimatorBase,
    PenaltyKind,
    Progress,
    check_bool,
    check_choice,
    check_number,
    report_progress,
)
from perceptalign.rtify.experiments.natural.cnn_training import FeatureSet, features_of
from perceptalign.rtify.experiments.natural.deciders import make_item_head, set_threshold_from_data
from perceptalign.rtify.experiments.natural.image_data import ImageSplit
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.losses import self_penalty_objective

__all__ = ["ItemSelfPenalisedEstimator", "ItemSelfPenaltyConfig", "ItemSelfPenaltyScore"]

Images = ImageSplit | FeatureSet


@dataclass(frozen=True)
class ItemSelfPenaltyConfig:
    """Settings of :class:`ItemSelfPenalisedEstimator`, validated on construction.

    ``lam`` (λ, τ in steps as in the published values) and ``penalty`` as in the RDM
    :class:`perceptalign.rtify.estimators.RTifyHeadConfig`; Adam at ``lr`` for ``epochs`` passes over the
    training images in batches of ``batch_size``; ``finetune_backbone`` trains a COPY of the CNN with the
    head (the caller's backbone stays frozen).
    """

    lam: float = 0.01
    penalty: PenaltyKind = "margin"
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 256
    finetune_backbone: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_number(owner, "lam", self.lam, lo=0)
        check_choice(owner, "penalty", self.penalty, ("margin", "tau", "p_correct"))
        check_int(owner, "epochs", self.epochs, 1)
        check_number(owner, "lr", self.lr, lo=0, lo_open=True)
        check_int(owner, "batch_size", self.batch_size, 1)
        check_bool(owner, "finetune_backbone", self.finetune_backbone)
        check_int(owner, "seed", self.seed, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ItemSelfPenaltyScore:
    """Decisions of a self-penalised head on evaluation images.

    ``table``: one row per image: image_id (None for a FeatureSet), label, tau (steps, continuous; T for
    undecided images), rt_s, decided, choice, correct.
    """

    lam: float
    penalty: str
    table: pd.DataFrame = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """The ``images.json`` row of the λ sweep (``kind`` is the penalty, as before)."""
        t = self.table
        return {
            "lam": self.lam,
            "kind": self.penalty,
            "n_images": len(t),
            "mean_tau": float(t["tau"].mean()),
            "mean_rt_s": float(t["rt_s"].mean()),
            "accuracy": float(t["correct"].mean()),
            "no_decision_rate": float(1.0 - t["decided"].mean()),
        }


class ItemSelfPenalisedEstimator(ItemEstimatorBase):
    """An RTify head on a (frozen) backbone trained with the self-penalised objective, no human data.

    ``fit(train)`` takes training images (an :class:`ImageSplit`, or precomputed :class:`FeatureSet` to
    make a λ sweep cheap; images are required with ``finetune_backbone``); the head starts from the
    backbone's read-out with θ set so that about half the training images decide by the middle step.
    Without speed pressure (λ = 0) nothing rewards deciding early, so θ rises until few or no images
    decide: expect a high no-decision rate there. ``score(evaluate)`` gives the per-image decisions.
    After ``fit``: ``head_`` and ``network_`` (the backbone, or its fine-tuned copy).
    """

    name = "rtify-self-penalty"

    def __init__(
        self, config: ItemSelfPenaltyConfig, backbone: RecurrentCNN, *, progress: Progress | None = None
    ) -> None:
        if not isinstance(config, ItemSelfPenaltyConfig):
            raise PerceptAlignError(
                f"ItemSelfPenalisedEstimator expects an ItemSelfPenaltyConfig, got {config!r}."
            )
        if not isinstance(backbone, RecurrentCNN):
            raise PerceptAlignError(
                "ItemSelfPenalisedEstimator: `backbone` must be a RecurrentCNN, got "
                f"{type(backbone).__name__}."
            )
        super().__init__(config)
        self.backbone, self.progress = backbone, progress

    def _check_images(self, what: str, images: Any) -> None:
        if not isinstance(images, (ImageSplit, FeatureSet)):
            raise PerceptAlignError(
                f"ItemSelfPenalisedEstimator: `{what}` must be an ImageSplit or a FeatureSet, got "
                f"{type(images).__name__}."
            )
        if len(images) == 0:
            raise PerceptAlignError(
                f"ItemSelfPenalisedEstimator: `{what}` is empty; pass at least one image."
            )
        if self.config.finetune_backbone and not isinstance(images, ImageSplit):
            raise PerceptAlignError(
                f"ItemSelfPenalisedEstimator: `finetune_backbone` trains on images: pass `{what}` as an "
                "ImageSplit, not a FeatureSet."
            )

    def fit(self, train: Images) -> Self:
        cfg: ItemSelfPenaltyConfig = self.config
        self._check_images("train", train)
        torch.manual_seed(cfg.seed)
        net = self.backbone
        if cfg.finetune_backbone:
            net = type(net)(
                net.n_classes,
                in_channels=net.in_channels,
                width=net.width,
                n_steps=net.n_steps,
                pool=net.pool,
            )
            net.load_state_dict(self.backbone.state_dict())
        train_set = train if isinstance(train, FeatureSet) else features_of(net, train)
        head = make_item_head(net)
        set_threshold_from_data(head, train_set.features)
        params = list(head.parameters()) + (list(net.parameters()) if cfg.finetune_backbone else [])
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        n = len(train_set)
        net.train(cfg.finetune_backbone)
        self.history_: list[float] = []
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = perm[start : start + cfg.batch_size]
                if cfg.finetune_backbone:
                    assert isinstance(train, ImageSplit)
                    feats = net(train.images[idx]).features
                else:
                    feats = train_set.features[idx]
                loss = self_penalty_objective(
                    head(feats), train_set.labels[idx], lam=cfg.lam, kind=cfg.penalty
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                total += float(loss.detach()) * idx.numel()
            self.history_.append(total / n)
            report_progress(
                self.progress, f"self-penalised {cfg.penalty} λ={cfg.lam:g}", epoch + 1, cfg.epochs
            )
        net.eval()
        self.head_: RTifyHead = head
        self.network_: RecurrentCNN = net
        self._mark_fitted()
        return self

    def score(self, evaluate: Images) -> ItemSelfPenaltyScore:
        """The head's decisions on ``evaluate`` (through the fine-tuned copy when there is one)."""
        self._check_fitted("score()")
        self._check_images("evaluate", evaluate)
        feats = evaluate if isinstance(evaluate, FeatureSet) else features_of(self.network_, evaluate)
        with torch.no_grad():
            out = self.head_(feats.features)
        labels = feats.labels.numpy()
        choice = out.choice.numpy()
        ids = np.asarray(evaluate.ids).astype(str) if isinstance(evaluate, ImageSplit) else None
        table = pd.DataFrame(
            {
                "image_id": ids,
                "label": labels,
                "tau": out.decision.tau.numpy(),
                "rt_s": out.rt_s.numpy(),
                "decided": out.decision.decided.numpy(),
                "choice": choice,
                "correct": choice == labels,
            }
        )
        return ItemSelfPenaltyScore(lam=float(self.config.lam), penalty=self.config.penalty, table=table)

    @property
    def n_parameters(self) -> int:
        """0: nothing is fitted to human data (as for the RDM self-penalised head)."""
        self._check_fitted("n_parameters")
        return 0

    def params(self) -> dict[str, Any]:
        self._check_fitted("params()")
        return {
            "threshold": float(self.head_.threshold.detach()),
            "t0_s": float(self.head_.t0.detach()),
            "trained_parameters": sum(p.numel() for p in self.head_.parameters() if p.requires_grad),
            "backbone_finetuned": self.config.finetune_backbone,
        }
