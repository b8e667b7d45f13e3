"""Deciders read out from frozen CNN features: the multi-class RTify head and a Wong–Wang race
driven by the CNN's logits."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.wongwang import WW_DEFAULTS, WongWangN, WWOutput


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


def set_threshold_from_data(head: RTifyHead, features: Tensor, quantile: float = 0.5) -> None:
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

    docs/rtify.md, "The Wong–Wang model" (a network's logit as input): a frozen classifier's logits
    replace the coherence.
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
