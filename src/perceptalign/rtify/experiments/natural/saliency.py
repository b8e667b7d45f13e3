"""Saliency of the class (∂logit/∂image) vs of the decision time (∂τ/∂image), and the figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.natural.item_fit import ItemRTScore
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN
from perceptalign.rtify.heads import RTifyHead


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


def rt_scatter_figure(scores: Sequence[ItemRTScore], names: Sequence[str] | None = None) -> Figure:
    """Held-out model RT vs human RT per image, one panel per score (errors in red); r with its 95 %
    interval and the shuffled control's r in the title."""
    if not scores:
        raise PerceptAlignError("rt_scatter_figure needs at least one score.")
    if names is not None and len(names) != len(scores):
        raise PerceptAlignError(f"names has {len(names)} entries for {len(scores)} scores.")
    labels = list(names) if names is not None else [s.decider for s in scores]
    fig = Figure(figsize=(4.2 * len(scores), 4.0))
    axes = fig.subplots(1, len(scores), squeeze=False)[0]
    for ax, score, label in zip(axes, scores, labels, strict=True):
        held = score.table
        ax.scatter(held.human_rt_s, held.model_rt_s, s=6, alpha=0.4, c=np.where(held.correct, "C0", "C3"))
        ax.set_xlabel("human RT (s)")
        ax.set_ylabel("model RT (s)")
        lo, hi = score.r_ci95
        shuffled = "" if score.r_shuffled is None else f"\nshuffled control r = {score.r_shuffled:.2f}"
        ax.set_title(f"{label}: held-out r = {score.r:.2f} [{lo:.2f}, {hi:.2f}]{shuffled}", fontsize=9)
    fig.tight_layout()
    return fig
