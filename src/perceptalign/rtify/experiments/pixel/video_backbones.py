"""Video backbones for random-dot motion in plain ``torch.nn``: a causal 3-D conv net, a per-frame CNN + LSTM.

RT models need a *time series* of evidence, not one decision per clip, so both backbones are causal by
construction and return one logit per frame:

* :class:`C3DNet` — 3-D convolutions whose temporal padding is on the left only (a causal temporal
  conv), with batch norm and spatial-only pooling, so the feature map at frame ``t`` is a function of
  frames ``[t − R + 1 .. t]`` (``R`` = temporal receptive field). A shared linear read-out of the
  spatially pooled features gives the momentary evidence ``frame_logits[:, t]``; the clip logit that is
  trained with BCE is their mean over frames (global average pooling, then the same read-out). Because
  the read-out is linear, ``prefix_logits[:, t]`` = mean of ``frame_logits[:, :t+1]`` is *exactly* the
  clip logit of the clip prefix ``[0..t]`` (the net run on the first ``t + 1`` frames). Use the momentary
  ``frame_logits`` as the drive of an accumulator (WW, RTify), the prefix logits for "what would the
  network answer if the clip stopped at ``t``".
* :class:`FrameCNNLSTM` — a 2-D conv encoder applied to every frame, an LSTM over frames, and a linear
  read-out per step. A single RDM frame carries no motion at all (frame ``f`` shows dot group
  ``f mod 3``; motion exists only between frames ``f`` and ``f + 3``), so the encoder at frame ``t``
  sees the ``context_frames`` most recent frames ``[t − k + 1 .. t]`` stacked as channels (zeros before
  the first frame). ``context_frames=1`` gives the strict per-frame variant. Its LSTM states
  ``(B, F, H)`` are what an RTify RNN-accumulator head consumes.

Causality is exact in ``eval()`` mode. In ``train()`` mode batch norm normalises with statistics of the
whole batch (all frames), which is ordinary batch-norm training and irrelevant to cached outputs.

Default widths (C3D 8-16-16 channels, ~11k parameters; CNN 8-16 + LSTM 32, ~8k) are sized so that a
training step on 32 trials of 24 frames at 32×32 px costs ~0.25 CPU-seconds on one core.

Videos are ``(B, F, H, W)`` with lit pixels 1 (float or uint8), as produced by
:func:`perceptalign.rtify.experiments.pixel.stimuli.generate_rdm`. The logit is for "rightward" (label 1).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError, load_tensors, save_tensors_atomic

__all__ = [
    "BACKBONE_KINDS",
    "C3DNet",
    "CausalConv3d",
    "FrameCNNLSTM",
    "VideoBackbone",
    "VideoOutput",
    "build_backbone",
    "load_backbone",
    "recalibrate_batchnorm",
    "save_backbone",
    "weights_sha256",
]

BACKBONE_KINDS: tuple[str, ...] = ("c3d", "cnn-lstm")
_FILE_FORMAT = "perceptalign-video-backbone-v1"


@dataclass
class VideoOutput:
    """One forward pass: momentary per-frame logits ``(B, F)``, clip logit ``(B,)``, LSTM states or None."""

    frame_logits: Tensor
    clip_logit: Tensor
    hidden: Tensor | None = None


def _positive_int(name: str, value: object, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PerceptAlignError(f"{owner}: {name} must be a positive integer, got {value!r}.")
    return value


def _channels(value: object, owner: str) -> tuple[int, ...]:
    if isinstance(value, int) or not isinstance(value, Sequence) or len(value) == 0:
        raise PerceptAlignError(
            f"{owner}: channels must be a non-empty sequence of positive integers, e.g. (16, 32), "
            f"got {value!r}."
        )
    return tuple(_positive_int("each channel count", v, owner) for v in value)


class VideoBackbone(nn.Module):
    """Common interface: ``forward(videos) -> VideoOutput``, a JSON-able ``config()``, a training target."""

    kind: ClassVar[str]
    #: Which output the BCE loss is applied to by default: the clip logit, or every frame's logit.
    default_loss_on: ClassVar[Literal["clip", "frames"]]
    #: Smallest frame side the pooling stack accepts.
    min_size: int

    def config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, videos: Tensor) -> Tensor:
        """Validate ``(B, F, H, W)`` videos and return them as float32 on the model's device."""
        if not isinstance(videos, Tensor) or videos.ndim != 4:
            shape = tuple(videos.shape) if isinstance(videos, Tensor) else type(videos).__name__
            raise PerceptAlignError(
                f"{type(self).__name__}: videos must be a (batch, frames, height, width) tensor, "
                f"got {shape}; "
                "add a batch axis with videos[None] for a single clip."
            )
        if videos.shape[0] < 1 or videos.shape[1] < 1:
            raise PerceptAlignError(f"{type(self).__name__}: videos need ≥ 1 trial and ≥ 1 frame.")
        if min(videos.shape[2], videos.shape[3]) < self.min_size:
            raise PerceptAlignError(
                f"{type(self).__name__}: frames of {videos.shape[2]}×{videos.shape[3]} px are too small for "
                f"{len(self.config()['channels']) - 1} 2× poolings; use frames of at least "
                f"{self.min_size}×{self.min_size} px or fewer channel stages."
            )
        device = next(self.parameters()).device
        return videos.to(device=device, dtype=torch.float32)

    @staticmethod
    def prefix_logits(frame_logits: Tensor) -> Tensor:
        """Running mean of per-frame logits: for :class:`C3DNet` the clip logit of each prefix ``[0..t]``."""
        steps = torch.arange(1, frame_logits.shape[-1] + 1, device=frame_logits.device)
        return frame_logits.cumsum(dim=-1) / steps.to(frame_logits.dtype)


class CausalConv3d(nn.Module):
    """3-D convolution that pads time on the left only ("same" in space): output ``t`` sees inputs ``≤ t``."""

    def __init__(self, in_channels: int, out_channels: int, temporal: int, spatial: int) -> None:
        super().__init__()
        if spatial % 2 != 1:
            raise PerceptAlignError(f"spatial kernel must be odd to keep the frame centred, got {spatial}.")
        self.temporal_pad = temporal - 1
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            (temporal, spatial, spatial),
            padding=(0, spatial // 2, spatial // 2),
            bias=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        # F.pad's order is (W_left, W_right, H_left, H_right, T_left, T_right).
        return self.conv(F.pad(x, (0, 0, 0, 0, self.temporal_pad, 0)))


class C3DNet(VideoBackbone):
    """Causal 3-D conv net with batch norm; one momentary logit per frame, clip logit = their mean.

    Stage ``i``: causal Conv3d (temporal kernel ``temporal_kernel`` in the first stage — ≥ 4 lets a
    single stage correlate frame ``t`` with ``t − 3``, where the same dot group was last shown — and 3
    afterwards) → BatchNorm3d → ReLU → 2× spatial max-pool (not after the last stage). Time is never
    pooled, so every frame keeps its own output. Temporal receptive field:
    ``temporal_kernel + 2·(len(channels) − 1)`` frames.
    """

    kind = "c3d"
    default_loss_on = "clip"

    def __init__(
        self, channels: Sequence[int] = (8, 16, 16), temporal_kernel: int = 4, spatial_kernel: int = 3
    ) -> None:
        super().__init__()
        owner = "C3DNet"
        self.channels = _channels(channels, owner)
        self.temporal_kernel = _positive_int("temporal_kernel", temporal_kernel, owner)
        self.spatial_kernel = _positive_int("spatial_kernel", spatial_kernel, owner)
        self.min_size = 2 ** (len(self.channels) - 1)
        layers: list[nn.Module] = []
        prev = 1
        for i, ch in enumerate(self.channels):
            kt = self.temporal_kernel if i == 0 else 3
            layers += [CausalConv3d(prev, ch, kt, self.spatial_kernel), nn.BatchNorm3d(ch), nn.ReLU()]
            if i < len(self.channels) - 1:
                layers.append(nn.MaxPool3d((1, 2, 2)))
            prev = ch
        self.features = nn.Sequential(*layers)
        self.readout = nn.Linear(prev, 1)

    @property
    def receptive_field(self) -> int:
        """How many frames (the current one included) the output at frame ``t`` depends on."""
        return self.temporal_kernel + 2 * (len(self.channels) - 1)

    def config(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "temporal_kernel": self.temporal_kernel,
            "spatial_kernel": self.spatial_kernel,
        }

    def forward(self, videos: Tensor) -> VideoOutput:
        x = self.prepare(videos).unsqueeze(1)  # (B, 1, F, H, W)
        feats = self.features(x).mean(dim=(3, 4))  # (B, C, F): spatial average pooling only
        frame_logits = self.readout(feats.transpose(1, 2)).squeeze(-1)  # (B, F)
        return VideoOutput(frame_logits=frame_logits, clip_logit=frame_logits.mean(dim=1))


class FrameCNNLSTM(VideoBackbone):
    """Per-frame 2-D conv encoder (on the last ``context_frames`` frames) → LSTM → one logit per frame.

    Encoder stage ``i``: Conv2d (5×5 in the first stage, 3×3 after) → BatchNorm2d → ReLU → 2× max-pool
    (not after the last stage); then global average pooling gives one feature vector per frame. The
    clip logit is the last frame's logit (the LSTM has integrated the whole clip by then).
    """

    kind = "cnn-lstm"
    default_loss_on = "frames"

    def __init__(
        self, channels: Sequence[int] = (8, 16), context_frames: int = 4, hidden_size: int = 32
    ) -> None:
        super().__init__()
        owner = "FrameCNNLSTM"
        self.channels = _channels(channels, owner)
        self.context_frames = _positive_int("context_frames", context_frames, owner)
        self.hidden_size = _positive_int("hidden_size", hidden_size, owner)
        self.min_size = 2 ** (len(self.channels) - 1)
        layers: list[nn.Module] = []
        prev = self.context_frames
        for i, ch in enumerate(self.channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(prev, ch, k, padding=k // 2, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
            if i < len(self.channels) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = ch
        self.encoder = nn.Sequential(*layers)
        self.lstm = nn.LSTM(prev, self.hidden_size, batch_first=True)
        self.readout = nn.Linear(self.hidden_size, 1)

    def config(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "context_frames": self.context_frames,
            "hidden_size": self.hidden_size,
        }

    def frame_stacks(self, videos: Tensor) -> Tensor:
        """``(B·F, k, H, W)``: for each frame the ``k`` most recent frames, oldest first, zeros before 0."""
        b, f, h, w = videos.shape
        k = self.context_frames
        padded = F.pad(videos, (0, 0, 0, 0, k - 1, 0))  # (B, F + k − 1, H, W)
        stacks = padded.unfold(1, k, 1)  # (B, F, H, W, k)
        return stacks.permute(0, 1, 4, 2, 3).reshape(b * f, k, h, w)

    def forward(self, videos: Tensor) -> VideoOutput:
        x = self.prepare(videos)
        b, f = x.shape[:2]
        feats = self.encoder(self.frame_stacks(x)).mean(dim=(2, 3)).view(b, f, -1)
        hidden, _ = self.lstm(feats)  # (B, F, H)
        frame_logits = self.readout(hidden).squeeze(-1)
        return VideoOutput(frame_logits=frame_logits, clip_logit=frame_logits[:, -1], hidden=hidden)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace every batch-norm layer's running statistics by their exact average over ``batches``.

    "Precise BN" (Wu & Johnson 2021): during training the running statistics are an exponential moving
    average that lags the moving weights. On these sparse dot videos the lag biased the eval-mode logit
    of a trained C3D by ≈ +2.7 (every low-coherence trial answered "right") while train-mode outputs were
    centred; re-estimating the statistics with the final weights removes that. Each batch is run in
    train mode without gradients, so the statistics of layer ``k`` are those its input really has.
    Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [bn.momentum for bn in norms]
    was_training = model.training
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches seen since the reset
    model.train()
    count = 0
    try:
        for videos in batches:
            model(videos)
            count += 1
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    if count == 0:
        raise PerceptAlignError("recalibrate_batchnorm got no batches; pass at least one batch of videos.")
    return count


_REGISTRY: dict[str, type[VideoBackbone]] = {"c3d": C3DNet, "cnn-lstm": FrameCNNLSTM}


def build_backbone(kind: str, **kwargs: Any) -> VideoBackbone:
    """A fresh backbone of ``kind`` ('c3d' or 'cnn-lstm') with constructor arguments ``kwargs``."""
    if kind not in _REGISTRY:
        raise PerceptAlignError(f"unknown backbone kind {kind!r}; choose one of {list(BACKBONE_KINDS)}.")
    cls = _REGISTRY[kind]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise PerceptAlignError(f"bad arguments for the {kind!r} backbone {kwargs}: {exc}.") from exc


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the state dict (names, dtypes, shapes, bytes, batch-norm statistics included).

    The identity of a backbone for caches: unlike a file hash it ignores file metadata and layout.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_backbone(
    path: str | os.PathLike[str], model: VideoBackbone, metadata: Mapping[str, Any] | None = None
) -> str:
    """Write the weights as safetensors (atomic) with kind, config and hash; return the weights hash."""
    digest = weights_sha256(model)
    meta = {
        "format": _FILE_FORMAT,
        "kind": model.kind,
        "model_config": json.dumps(model.config()),
        "weights_sha256": digest,
        "extra": json.dumps(dict(metadata or {})),
    }
    save_tensors_atomic(path, model.state_dict(), meta)
    return digest


def load_backbone(path: str | os.PathLike[str]) -> VideoBackbone:
    """Rebuild a backbone saved by :func:`save_backbone`, in ``eval()`` mode, checking its hash."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise PerceptAlignError(
            f"no backbone file at {path}; train one with `perceptalign rtify train-backbone --out DIR`."
        )
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != _FILE_FORMAT:
        raise PerceptAlignError(
            f"{path} is not a video backbone file (format {meta.get('format')!r}, "
            f"expected {_FILE_FORMAT!r}); "
            "pass the backbone.safetensors written by `perceptalign rtify train-backbone`."
        )
    model = build_backbone(meta["kind"], **json.loads(meta["model_config"]))
    model.load_state_dict(load_tensors(path))
    if weights_sha256(model) != meta.get("weights_sha256"):
        raise PerceptAlignError(f"{path}: the weights do not match their recorded hash; the file is corrupt.")
    return model.eval()
