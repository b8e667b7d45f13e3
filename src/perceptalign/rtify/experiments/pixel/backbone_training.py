"""Training video backbones on random-dot motion with an easy-to-hard curriculum, and caching their outputs.

Training (docs/rtify.md, "Experiments"): BCE on "rightward", Adam, fresh stimuli every epoch
(:class:`RDMStream`, seeded by
``(seed, epoch)`` so a rerun or a resumed run sees the same videos), and a curriculum that starts with
the near-perfect 99.9 % coherence alone and adds 51.2, 25.6, … 0.8 % one stage at a time (easy trials stay,
so the clean signal is not forgotten). A checkpoint after every epoch makes training resumable with a
result identical to an uninterrupted run.

Default scale, sized for a 2-core CPU: 32×32 px frames, 24 frames, 6 dots per group, 3 groups, speed
5/3 px per group update, 1-px dots (the paper's training display shrunk from 42 to 32 px). The 24 frames
stand for the 2 s stimulus window of the human task, so one frame is ``2 s / 24 ≈ 83 ms``
(``frame_rate_hz = 12``): the per-frame dot dynamics are those of the 75 Hz display, only the time
assigned to a frame is stretched so that a model's per-frame evidence spans the same 2 s as human RTs.
The paper's Adam learning rate of 1e-4 is too slow for the ~10³ steps affordable here; 1e-3 is the default.

Caching: :func:`compute_backbone_outputs` runs a frozen backbone on a fixed, seeded evaluation set of
``N`` trials per coherence × direction (a stream disjoint from the training stimuli) and keeps per-frame
logits (and LSTM states); :func:`save_backbone_outputs` / :func:`load_backbone_outputs` store them as
safetensors with JSON metadata (weights hash, stimulus, seed), and loading refuses a cache that does not
match what the caller expects. RTify and Wong–Wang heads are then fitted on the cache, with no videos.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from perceptalign.io import PerceptAlignError, load_tensors, save_tensors_atomic
from perceptalign.rtify.experiments.pixel.stimuli import (
    CURRICULUM_EASY_COHERENCE,
    PAPER_COHERENCES,
    RDMConfig,
    RDMStream,
    easy_to_hard_curriculum,
    generate_rdm,
)
from perceptalign.rtify.experiments.pixel.video_backbones import (
    BACKBONE_KINDS,
    VideoBackbone,
    build_backbone,
    recalibrate_batchnorm,
    weights_sha256,
)

__all__ = [
    "BackboneOutputs",
    "BackboneTrainingConfig",
    "TrainingProgress",
    "TrainingResult",
    "compute_backbone_outputs",
    "load_backbone_outputs",
    "plot_psychometric",
    "plot_training_history",
    "psychometric_table",
    "save_backbone_outputs",
    "train_backbone",
    "training_stimulus",
]

_CHECKPOINT_FORMAT = "perceptalign-backbone-checkpoint-v1"
_OUTPUTS_FORMAT = "perceptalign-backbone-outputs-v1"
_EVAL_STREAM = 0x5EED_E7A1  # separates evaluation seeds from the (seed, epoch) training seeds
_CALIBRATION_STREAM = 0xCA1B  # and batch-norm calibration seeds from both
_EVAL_CHUNK = 32  # trials generated per seed: the evaluation set does not depend on any batch size


def training_stimulus(
    size: int = 32, n_frames: int = 24, *, duration_s: float = 2.0, dots_per_group: int = 6
) -> RDMConfig:
    """The training display: ``n_frames`` frames standing for ``duration_s`` seconds (see module docs)."""
    if not (isinstance(duration_s, int | float) and math.isfinite(duration_s) and duration_s > 0):
        raise PerceptAlignError(f"duration_s={duration_s!r} must be a positive number of seconds, e.g. 2.0.")
    if not isinstance(n_frames, int) or isinstance(n_frames, bool) or n_frames < 1:
        raise PerceptAlignError(f"n_frames must be a positive integer, got {n_frames!r}.")
    return RDMConfig(
        size=size,
        n_frames=n_frames,
        dots_per_group=dots_per_group,
        n_groups=3,
        speed_px=5.0 / 3.0,
        dot_size=1,
        frame_rate_hz=n_frames / float(duration_s),
    )


def _stimulus_to_dict(config: RDMConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _stimulus_from_dict(data: Mapping[str, Any]) -> RDMConfig:
    try:
        return RDMConfig(**data)
    except TypeError as exc:
        raise PerceptAlignError(f"stimulus settings {dict(data)} are not an RDMConfig: {exc}.") from exc


# --------------------------------------------------------------------------------------------------
# Configuration and curriculum
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneTrainingConfig:
    """Everything that determines a training run (and so must match to resume from a checkpoint).

    ``epochs_per_stage`` epochs are spent in each curriculum stage but the last, which runs for the
    remaining epochs; ``loss_on=None`` uses the backbone's default ('clip' for C3D: BCE on the clip
    logit; 'frames' for the CNN + LSTM: BCE averaged over every frame's logit, so that its evidence is
    readable at every step). ``grad_clip`` bounds the global gradient norm (None: off).
    ``bn_calibration_batches`` fresh batches of the final stage re-estimate the batch-norm statistics
    after training (:func:`~perceptalign.rtify.experiments.pixel.video_backbones.recalibrate_batchnorm`;
    0: keep the running averages).
    """

    kind: str = "c3d"
    stimulus: RDMConfig = field(default_factory=training_stimulus)
    model: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 24
    batches_per_epoch: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    coherences: tuple[float, ...] = PAPER_COHERENCES
    easy_coherence: float = CURRICULUM_EASY_COHERENCE
    epochs_per_stage: int = 1
    loss_on: Literal["clip", "frames"] | None = None
    grad_clip: float | None = 1.0
    bn_calibration_batches: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BACKBONE_KINDS:
            raise PerceptAlignError(
                f"backbone kind {self.kind!r} is unknown; choose one of {list(BACKBONE_KINDS)}."
            )
        if not isinstance(self.stimulus, RDMConfig):
            raise PerceptAlignError(
                "stimulus must be an RDMConfig, e.g. training_stimulus(size=32, n_frames=24)."
            )
        for name in ("epochs", "batches_per_epoch", "batch_size", "epochs_per_stage"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PerceptAlignError(f"{name} must be a positive integer, got {value!r}.")
        if self.batch_size < 2:
            raise PerceptAlignError("batch_size must be ≥ 2: batch norm needs more than one trial per batch.")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise PerceptAlignError(f"lr must be a positive number (e.g. 1e-3), got {self.lr!r}.")
        calib = self.bn_calibration_batches
        if not isinstance(calib, int) or isinstance(calib, bool) or calib < 0:
            raise PerceptAlignError(f"bn_calibration_batches must be an integer ≥ 0, got {calib!r}.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise PerceptAlignError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.loss_on not in (None, "clip", "frames"):
            raise PerceptAlignError(f"loss_on must be 'clip', 'frames' or None, got {self.loss_on!r}.")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise PerceptAlignError(f"grad_clip must be positive or None, got {self.grad_clip!r}.")
        values = tuple(float(c) for c in self.coherences)
        if not values or any(not (0 < c <= 1) for c in (*values, self.easy_coherence)):
            hint = " They look like percent: divide by 100." if any(c > 1 for c in values) else ""
            raise PerceptAlignError(
                f"coherences and easy_coherence must be fractions in (0, 1], got {values} and "
                f"{self.easy_coherence}.{hint}"
            )
        object.__setattr__(self, "coherences", values)
        object.__setattr__(self, "model", dict(self.model))
        build_backbone(self.kind, **self.model)  # validates the model arguments now, not mid-run

    @property
    def stages(self) -> list[tuple[float, ...]]:
        """Nested coherence sets: the easy coherence alone, then one harder coherence added per stage."""
        values = sorted({self.easy_coherence, *self.coherences}, reverse=True)
        return easy_to_hard_curriculum(values, len(values))

    def stage_of_epoch(self, epoch: int) -> int:
        """Curriculum stage used in (0-based) ``epoch``."""
        return min(epoch // self.epochs_per_stage, len(self.stages) - 1)

    @property
    def resolved_loss_on(self) -> Literal["clip", "frames"]:
        if self.loss_on is not None:
            return self.loss_on
        return build_backbone(self.kind, **self.model).default_loss_on

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists), so a saved config compares equal to a fresh one."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneTrainingConfig:
        data = dict(data)
        data["stimulus"] = _stimulus_from_dict(data["stimulus"])
        data["coherences"] = tuple(data["coherences"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise PerceptAlignError(
                f"unknown training settings {sorted(unknown)}; this file is from another version."
            )
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingProgress:
    """Passed to the progress callback after every batch; ``epoch_done`` marks the last batch of an epoch."""

    epoch: int
    batch: int
    epochs: int
    batches_per_epoch: int
    stage: int
    loss: float
    accuracy: float
    epoch_done: bool


@dataclass
class TrainingResult:
    """The trained backbone (in eval mode), its per-epoch history and the run's settings."""

    model: VideoBackbone
    history: pd.DataFrame
    config: BackboneTrainingConfig
    resumed_from_epoch: int
    weights_sha256: str


def _new_model(config: BackboneTrainingConfig) -> VideoBackbone:
    """The initial weights depend only on the seed; the global RNG of the caller is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_backbone(config.kind, **config.model)


def _loss(model: VideoBackbone, videos: Tensor, label: Tensor, loss_on: str) -> tuple[Tensor, Tensor]:
    out = model(videos)
    target = label.to(torch.float32)
    if loss_on == "clip":
        loss = F.binary_cross_entropy_with_logits(out.clip_logit, target)
    else:
        frames = out.frame_logits
        loss = F.binary_cross_entropy_with_logits(frames, target[:, None].expand_as(frames))
    correct = ((out.clip_logit > 0).long() == label).to(torch.float32).mean()
    return loss, correct


def train_backbone(
    kind: str,
    config: BackboneTrainingConfig | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> TrainingResult:
    """Train a backbone with the curriculum; with ``checkpoint``, save after every epoch and resume from it.

    Resuming needs the same settings except ``epochs`` (a finished run can be extended). Stimuli are
    reseeded per epoch and nothing else is random, so a resumed run ends with the same weights as an
    uninterrupted one. ``kind`` ('c3d' or 'cnn-lstm') overrides ``config.kind``; ``config=None`` uses
    the documented default scale. Batch-norm statistics of the returned model are re-estimated after
    the last epoch (``config.bn_calibration_batches``).
    """
    if config is None:
        config = BackboneTrainingConfig(kind=kind)
    elif config.kind != kind:
        config = dataclasses.replace(config, kind=kind)
    model = _new_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.exists():
        start, history = _load_checkpoint(ckpt, config, model, optimizer)
        if start > config.epochs:
            raise PerceptAlignError(
                f"checkpoint {ckpt} already holds {start} epochs, more than the {config.epochs} asked for; "
                f"ask for at least {start} epochs, or start over without resuming (command line: "
                "--no-resume)."
            )
    stream = RDMStream(
        config.stimulus, config.stages[0], config.batch_size, config.batches_per_epoch, seed=config.seed
    )
    loss_on = config.resolved_loss_on
    stages = config.stages
    for epoch in range(start, config.epochs):
        stage = config.stage_of_epoch(epoch)
        stream.epoch = epoch
        stream.set_coherences(stages[stage])
        model.train()
        t0 = time.perf_counter()
        losses, accs = [], []
        for i, batch in enumerate(stream):
            loss, acc = _loss(model, batch.videos, batch.label, loss_on)
            if not torch.isfinite(loss):
                raise PerceptAlignError(
                    f"training diverged at epoch {epoch}, batch {i} (loss {loss.item()}); lower the learning "
                    f"rate (now {config.lr}) or keep gradient clipping on."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            accs.append(acc.item())
            if progress is not None:
                progress(
                    TrainingProgress(
                        epoch=epoch,
                        batch=i,
                        epochs=config.epochs,
                        batches_per_epoch=config.batches_per_epoch,
                        stage=stage,
                        loss=losses[-1],
                        accuracy=accs[-1],
                        epoch_done=i == config.batches_per_epoch - 1,
                    )
                )
        history.append(
            {
                "epoch": epoch,
                "stage": stage,
                "hardest_coherence_pct": 100.0 * min(stages[stage]),
                "loss": float(np.mean(losses)),
                "accuracy": float(np.mean(accs)),
                "trials": config.batch_size * config.batches_per_epoch,
                "seconds": time.perf_counter() - t0,
            }
        )
        if ckpt is not None:
            _save_checkpoint(ckpt, config, model, optimizer, epoch + 1, history)
    # The checkpoint keeps the running averages (so that training can be extended exactly); the
    # returned model gets statistics re-estimated with its final weights.
    _calibrate(model, config)
    model.eval()
    return TrainingResult(
        model=model,
        history=pd.DataFrame(history, columns=_HISTORY_COLUMNS),
        config=config,
        resumed_from_epoch=start,
        weights_sha256=weights_sha256(model),
    )


def _calibrate(model: VideoBackbone, config: BackboneTrainingConfig) -> None:
    if config.bn_calibration_batches == 0:
        return
    stream = RDMStream(
        config.stimulus,
        config.stages[config.stage_of_epoch(config.epochs - 1)],
        config.batch_size,
        config.bn_calibration_batches,
        seed=config.seed,
        epoch=_CALIBRATION_STREAM + config.epochs,
    )
    recalibrate_batchnorm(model, (batch.videos for batch in stream))


_HISTORY_COLUMNS = ["epoch", "stage", "hardest_coherence_pct", "loss", "accuracy", "trials", "seconds"]


def _save_checkpoint(
    path: Path,
    config: BackboneTrainingConfig,
    model: VideoBackbone,
    optimizer: torch.optim.Optimizer,
    epochs_done: int,
    history: list[dict[str, Any]],
) -> None:
    """Model and Adam state as safetensors (no pickles), scalars as JSON metadata."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value)
    meta = {
        "format": _CHECKPOINT_FORMAT,
        "config": json.dumps(config.to_dict()),
        "epochs_done": str(epochs_done),
        "history": json.dumps(history),
    }
    save_tensors_atomic(path, tensors, meta)


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated/foreign files
        raise PerceptAlignError(
            f"{path} is not a readable safetensors file ({exc}); delete it and rerun."
        ) from exc


def _config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: set[str]) -> list[str]:
    keys = sorted((set(saved) | set(current)) - ignore)
    return [
        f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def _load_checkpoint(
    path: Path, config: BackboneTrainingConfig, model: VideoBackbone, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, Any]]]:
    meta = _read_metadata(path)
    if meta.get("format") != _CHECKPOINT_FORMAT:
        raise PerceptAlignError(
            f"{path} is not a backbone training checkpoint (format {meta.get('format')!r}); "
            "delete the file, or write the checkpoint elsewhere (another output folder)."
        )
    saved = json.loads(meta["config"])
    diffs = _config_differences(saved, config.to_dict(), ignore={"epochs"})
    if diffs:
        raise PerceptAlignError(
            f"checkpoint {path} was written with other settings ({'; '.join(diffs)}); rerun with the same "
            "settings, or start over without resuming (command line: --no-resume)."
        )
    tensors = load_tensors(path)
    model.load_state_dict({k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return int(meta["epochs_done"]), list(json.loads(meta["history"]))


# --------------------------------------------------------------------------------------------------
# Evaluation set and cached outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class BackboneOutputs:
    """A frozen backbone's outputs on the fixed evaluation set: everything RT heads are fitted on.

    ``frame_logits`` (N, F) are momentary per-frame logits ("rightward"), ``clip_logit`` (N,) the clip
    decision, ``hidden`` (N, F, H) the LSTM states (None for C3D). Trials are ordered by coherence
    (as given), then direction (left, right), then trial index. ``metadata`` names the backbone
    (``backbone_sha256``), the stimulus and the seed; ``frame_s`` converts frames to seconds.

    Typical use: an RTify head consumes ``hidden`` (or ``frame_logits[..., None]`` for C3D) with
    ``dt = frame_s``; the Wong–Wang head is driven by ``w · frame_logits`` as a (N, F) input series held
    for ``frame_s`` per frame.
    """

    frame_logits: Tensor
    clip_logit: Tensor
    coherence: Tensor
    direction: Tensor
    hidden: Tensor | None
    metadata: dict[str, Any]

    @property
    def label(self) -> Tensor:
        return (self.direction > 0).long()

    @property
    def correct(self) -> Tensor:
        return (self.clip_logit > 0).long() == self.label

    @property
    def prefix_logits(self) -> Tensor:
        """Running mean of frame logits: the C3D clip logit of every prefix ``[0..t]``."""
        return VideoBackbone.prefix_logits(self.frame_logits)

    @property
    def frame_s(self) -> float:
        return float(self.metadata["frame_s"])

    def __len__(self) -> int:
        return int(self.clip_logit.shape[0])


def _eval_trials(
    stimulus: RDMConfig, coherences: Sequence[float], trials: int, seed: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Evaluation chunks (videos, coherence, direction); each chunk's seed depends only on its cell and index.

    Seeding per (coherence, direction, chunk) makes a cell's trials the same whatever other coherences
    are requested and whatever batch size evaluates them.
    """
    for c in coherences:
        for direction in (-1, 1):
            for chunk, lo in enumerate(range(0, trials, _EVAL_CHUNK)):
                n = min(_EVAL_CHUNK, trials - lo)
                entropy = [int(seed), _EVAL_STREAM, round(c * 1_000_000), direction + 1, chunk]
                state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
                gen = torch.Generator().manual_seed(int(state))
                coh = torch.full((n,), float(c), dtype=torch.float32)
                dirs = torch.full((n,), direction, dtype=torch.long)
                yield generate_rdm(coh, dirs, stimulus, generator=gen), coh, dirs


def _check_eval_args(coherences: Sequence[float], trials: int, seed: int) -> tuple[float, ...]:
    values = tuple(float(c) for c in coherences)
    if not values or any(not (0 <= c <= 1) for c in values):
        raise PerceptAlignError(f"coherences must be fractions in [0, 1] (percent / 100), got {values}.")
    if len(set(values)) != len(values):
        raise PerceptAlignError(f"coherences {values} contain duplicates; give each coherence once.")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise PerceptAlignError(f"trials_per_condition must be a positive integer, got {trials!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise PerceptAlignError(f"seed must be a non-negative integer, got {seed!r}.")
    return values


@torch.no_grad()
def compute_backbone_outputs(
    model: VideoBackbone,
    stimulus: RDMConfig,
    *,
    coherences: Sequence[float] = (*PAPER_COHERENCES, CURRICULUM_EASY_COHERENCE),
    trials_per_condition: int = 100,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BackboneOutputs:
    """Run ``model`` (in eval mode) on ``trials_per_condition`` fresh trials per coherence × direction."""
    values = _check_eval_args(coherences, trials_per_condition, seed)
    was_training = model.training
    model.eval()
    frames, clips, cohs, dirs, hiddens = [], [], [], [], []
    total = len(values) * 2 * trials_per_condition
    try:
        for videos, coh, direction in _eval_trials(stimulus, values, trials_per_condition, seed):
            out = model(videos)
            frames.append(out.frame_logits.float().cpu())
            clips.append(out.clip_logit.float().cpu())
            if out.hidden is not None:
                hiddens.append(out.hidden.float().cpu())
            cohs.append(coh)
            dirs.append(direction)
            if progress is not None:
                progress(sum(len(c) for c in cohs), total)
    finally:
        model.train(was_training)
    metadata = {
        "format": _OUTPUTS_FORMAT,
        "kind": model.kind,
        "model_config": model.config(),
        "backbone_sha256": weights_sha256(model),
        "stimulus": _stimulus_to_dict(stimulus),
        "seed": seed,
        "coherences": list(values),
        "trials_per_condition": trials_per_condition,
        "frame_s": 1.0 / stimulus.frame_rate_hz,
    }
    return BackboneOutputs(
        frame_logits=torch.cat(frames),
        clip_logit=torch.cat(clips),
        coherence=torch.cat(cohs),
        direction=torch.cat(dirs),
        hidden=torch.cat(hiddens) if hiddens else None,
        metadata=metadata,
    )


def save_backbone_outputs(path: str | os.PathLike[str], outputs: BackboneOutputs) -> None:
    """Write the cache as safetensors (atomic) with its metadata as one JSON string."""
    tensors = {
        "frame_logits": outputs.frame_logits,
        "clip_logit": outputs.clip_logit,
        "coherence": outputs.coherence,
        "direction": outputs.direction,
    }
    if outputs.hidden is not None:
        tensors["hidden"] = outputs.hidden
    save_tensors_atomic(path, tensors, {"format": _OUTPUTS_FORMAT, "meta": json.dumps(outputs.metadata)})


def load_backbone_outputs(
    path: str | os.PathLike[str],
    *,
    backbone: VideoBackbone | None = None,
    backbone_sha256: str | None = None,
    stimulus: RDMConfig | None = None,
    seed: int | None = None,
    coherences: Sequence[float] | None = None,
    trials_per_condition: int | None = None,
) -> BackboneOutputs:
    """Load a cache and refuse it unless it matches every expectation given (backbone, stimulus, seed, …).

    ``backbone`` is checked by its weights hash (:func:`weights_sha256`), so a cache from a retrained or
    different network is never silently reused.
    """
    path = Path(path)
    if not path.is_file():
        raise PerceptAlignError(
            f"no backbone-output cache at {path}; create it with "
            "`perceptalign rtify train-backbone --out DIR` (DIR/outputs.safetensors) or "
            "compute_backbone_outputs + save_backbone_outputs."
        )
    raw = _read_metadata(path)
    if raw.get("format") != _OUTPUTS_FORMAT:
        raise PerceptAlignError(
            f"{path} is not a backbone-output cache (format {raw.get('format')!r}, expected "
            f"{_OUTPUTS_FORMAT!r}); pass the outputs.safetensors written by `rtify train-backbone`."
        )
    meta = json.loads(raw["meta"])
    expected: dict[str, Any] = {}
    if backbone is not None:
        expected["backbone_sha256"] = weights_sha256(backbone)
        expected["kind"] = backbone.kind
    if backbone_sha256 is not None:
        expected["backbone_sha256"] = backbone_sha256
    if stimulus is not None:
        expected["stimulus"] = _stimulus_to_dict(stimulus)
    if seed is not None:
        expected["seed"] = seed
    if coherences is not None:
        expected["coherences"] = [float(c) for c in coherences]
    if trials_per_condition is not None:
        expected["trials_per_condition"] = trials_per_condition
    diffs = [
        f"{key}: cache has {meta.get(key)!r}, expected {value!r}"
        for key, value in expected.items()
        if meta.get(key) != value
    ]
    if diffs:
        raise PerceptAlignError(
            f"backbone-output cache {path} does not match ({'; '.join(diffs)}); recompute it for this "
            "backbone and settings with compute_backbone_outputs (or rerun `rtify train-backbone`)."
        )
    tensors = load_tensors(path)
    outputs = BackboneOutputs(
        frame_logits=tensors["frame_logits"],
        clip_logit=tensors["clip_logit"],
        coherence=tensors["coherence"],
        direction=tensors["direction"],
        hidden=tensors.get("hidden"),
        metadata=meta,
    )
    n = len(meta["coherences"]) * 2 * int(meta["trials_per_condition"])
    if outputs.frame_logits.shape[0] != n or outputs.clip_logit.shape != (n,):
        raise PerceptAlignError(
            f"{path} holds {outputs.frame_logits.shape[0]} trials, its metadata says {n}; "
            "the file is corrupt: recompute it."
        )
    return outputs


def psychometric_table(outputs: BackboneOutputs) -> pd.DataFrame:
    """Accuracy per coherence of the clip decision, with its binomial standard error."""
    # Coherences are stored as float32: round so that 12.8 % is not reported as 12.800001 %.
    pct = (100.0 * outputs.coherence.double().numpy()).round(4)
    frame = pd.DataFrame({"coherence_pct": pct, "correct": outputs.correct.numpy()})
    table = frame.groupby("coherence_pct", sort=True)["correct"].agg(["size", "mean"]).reset_index()
    table.columns = ["coherence_pct", "n", "accuracy"]
    table["accuracy_se"] = np.sqrt(table["accuracy"] * (1 - table["accuracy"]) / table["n"])
    return table


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def plot_psychometric(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """Accuracy vs coherence on a log axis, one line per labelled table, with ±1 SE bars and chance."""
    fig = Figure(figsize=(5.0, 3.6), constrained_layout=True)
    ax = fig.add_subplot()
    for label, table in tables.items():
        ax.errorbar(
            table["coherence_pct"],
            table["accuracy"],
            yerr=table["accuracy_se"],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.axhline(0.5, color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.set_xscale("log")
    ticks = sorted({float(c) for table in tables.values() for c in table["coherence_pct"]})
    ax.set_xticks(ticks, [f"{c:g}" for c in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("motion coherence (%)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.4, 1.02)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("backbone psychometric curve (fresh test stimuli)", fontsize=9)
    return fig


def plot_training_history(history: pd.DataFrame) -> Figure:
    """Training loss and accuracy per epoch, with the start of each curriculum stage marked."""
    fig = Figure(figsize=(7.0, 3.2), constrained_layout=True)
    ax_loss, ax_acc = fig.subplots(1, 2)
    x = history["epoch"] + 1
    ax_loss.plot(x, history["loss"], marker=".")
    ax_acc.plot(x, history["accuracy"], marker=".")
    starts = history.loc[history["stage"].diff().fillna(1) != 0]
    for ax in (ax_loss, ax_acc):
        for _, row in starts.iterrows():
            ax.axvline(row["epoch"] + 0.5, color="0.8", linewidth=1)
            ax.annotate(
                f"{row['hardest_coherence_pct']:g}%",
                (row["epoch"] + 0.6, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=6,
                va="top",
                rotation=90,
                color="0.4",
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_ylabel("BCE loss")
    ax_acc.set_ylabel("training accuracy")
    ax_acc.axhline(0.5, color="0.6", linestyle="--", linewidth=1)
    fig.suptitle("training (grey lines: a harder coherence enters the curriculum)", fontsize=9)
    return fig
