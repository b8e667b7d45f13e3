"""Self-penalised ("ideal observer") training: CE + λ·mean(penalty·τ), no human data."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.natural._common import PenaltyKind, Progress, report_progress
from perceptalign.rtify.experiments.natural.cnn_training import FeatureSet, features_of
from perceptalign.rtify.experiments.natural.deciders import make_item_head, set_threshold_from_data
from perceptalign.rtify.experiments.natural.image_data import ImageSplit
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.losses import self_penalty_objective


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
    set_threshold_from_data(head, train_set.features)
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
            loss = self_penalty_objective(out, train_set.labels[idx], lam=lam, kind=kind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        report_progress(progress, f"self-penalised {kind} λ={lam:g}", epoch + 1, epochs)
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
