"""Abstract random-dot-motion task and the small GRU that performs it (RTify §4, scaled to a 2-core CPU).

Instead of rendering dots, each trial is a stream of two opposing "motion energy" channels (rightward,
leftward), sampled every ``dt`` = 20 ms for ``n_steps`` = 100 steps (2 s, the published stimulus
duration). With direction d = ±1 (label 1 = right) and coherence c (in %):

    x_t = [ +g·(c/100)·d/2 + ε_R,  −g·(c/100)·d/2 + ε_L ],   ε ~ N(0, σ²) i.i.d. per step and channel,

so the channel difference carries a drift g·(c/100)·d per step under N(0, 2σ²) noise, as a drift-diffusion
model would assume. The default gain g = 1.2 gives the stream an information rate of 0.060 per % coherence
in unit-noise DDM units (:attr:`RDMTaskConfig.information_rate`), the order of magnitude of a *simple* DDM
fitted to the RDM training data. A DDM with drift variability fits a larger mean drift (k ≈ 0.097 with
sv ≈ 1.2), and by Wald's bound (:mod:`perceptalign.rtify.ideal_observer`) the humans' accuracy at 25.6 % on
this stream would leave them at most 0.24 s of mean non-decision time. A model that must match them there
needs a higher gain: ``FitConfig(fit_gain=True)`` fits it.

The GRU is trained with cross-entropy at EVERY step (averaged over time), on fresh noise each batch:
RTify reads the choice at an arbitrary decision time τ, and the entropy / evidential baselines read the
whole softmax trajectory, so the network's output must be a calibrated choice at every t — per-step
cross-entropy makes it estimate p(direction | x₁..x_t), the ideal observer's posterior, rather than only a
final answer. Trained weights are cached as safetensors, keyed by the task and training settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceptalign.callbacks import StepCallback
from perceptalign.io import PerceptAlignError, cache_dir, load_tensors, save_tensors_atomic
from perceptalign.rtify.trials import check_coherences

__all__ = [
    "HUMAN_COHERENCES",
    "GRUBackbone",
    "GRUTrainConfig",
    "RDMTaskConfig",
    "RDMTrials",
    "accuracy_by_condition",
    "load_or_train_gru",
    "make_trials",
    "motion_energy",
    "train_gru",
]

HUMAN_COHERENCES: tuple[float, ...] = (0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2)


@dataclass(frozen=True)
class RDMTaskConfig:
    """The abstract RDM evidence stream (see the module docstring for the generative model)."""

    coherences: tuple[float, ...] = HUMAN_COHERENCES
    dt: float = 0.02
    n_steps: int = 100
    gain: float = 1.2
    noise: float = 1.0

    def __post_init__(self) -> None:
        coh = tuple(check_coherences(self.coherences))
        object.__setattr__(self, "coherences", coh)
        if not coh:
            raise PerceptAlignError("coherences must be a non-empty list of percentages in [0, 100].")
        if len(set(coh)) != len(coh):
            raise PerceptAlignError(f"coherences must be distinct, got {coh}.")
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise PerceptAlignError(f"dt (seconds per step) must be positive, got {self.dt!r}.")
        if not (isinstance(self.n_steps, int) and self.n_steps >= 2):
            raise PerceptAlignError(f"n_steps must be an integer ≥ 2, got {self.n_steps!r}.")
        if not (math.isfinite(self.gain) and self.gain >= 0):
            raise PerceptAlignError(f"gain must be ≥ 0, got {self.gain!r}.")
        if not (math.isfinite(self.noise) and self.noise > 0):
            raise PerceptAlignError(f"noise (per-step standard deviation) must be > 0, got {self.noise!r}.")

    @property
    def duration_s(self) -> float:
        """Length of the evidence stream in seconds."""
        return self.dt * self.n_steps

    @property
    def information_rate(self) -> float:
        """The stream's drift per % coherence per second in unit-noise diffusion units: the channel
        difference drifts g·(c/100) per step under noise √2·σ per step, i.e. g/(100·√2·σ·√dt)·c per √s.
        An ideal observer of the stream is a DDM with this k (:mod:`perceptalign.rtify.ideal_observer`)."""
        return self.gain / (100.0 * math.sqrt(2.0) * self.noise * math.sqrt(self.dt))

    def to_dict(self) -> dict:
        return {**asdict(self), "coherences": list(self.coherences)}


@dataclass
class RDMTrials:
    """A batch of trials: inputs (N, T, 2), labels (N,) with 1 = rightward, coherence (N,) in %."""

    x: Tensor
    labels: Tensor
    coherence: Tensor
    signal: Tensor | None = None  # (N, 1, 2) the mean part of x at the task's gain
    noise: Tensor | None = None  # (N, T, 2) the noise part: x = signal + noise

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def motion_energy(
    coherence: Tensor, labels: Tensor, config: RDMTaskConfig, generator: torch.Generator
) -> Tensor:
    """Two-channel evidence streams (N, T, 2) for given coherences (%) and directions (1 = right)."""
    mean, noise = motion_energy_parts(coherence, labels, config, generator)
    return mean + noise


def motion_energy_parts(
    coherence: Tensor, labels: Tensor, config: RDMTaskConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The signal (N, 1, 2) and noise (N, T, 2) of :func:`motion_energy` (same draws): a stream at another
    gain is noise + (gain'/gain)·signal with the very same noise."""
    if coherence.shape != labels.shape or coherence.dim() != 1:
        raise PerceptAlignError(
            f"coherence {tuple(coherence.shape)} and labels {tuple(labels.shape)} must be matching 1-D "
            "tensors."
        )
    direction = labels.to(torch.float32) * 2.0 - 1.0
    signal = config.gain * coherence.to(torch.float32) / 100.0 * direction / 2.0
    mean = torch.stack([signal, -signal], dim=-1).unsqueeze(1)  # (N, 1, 2)
    noise = torch.randn((labels.shape[0], config.n_steps, 2), generator=generator) * config.noise
    return mean, noise


def make_trials(
    config: RDMTaskConfig,
    n_per_condition: int,
    *,
    seed: int,
    coherences: Sequence[float] | None = None,
) -> RDMTrials:
    """``n_per_condition`` trials at each coherence, half of them rightward (balanced), seeded."""
    if not (isinstance(n_per_condition, int) and n_per_condition >= 1):
        raise PerceptAlignError(f"n_per_condition must be a positive integer, got {n_per_condition!r}.")
    coh_values = config.coherences if coherences is None else tuple(float(c) for c in coherences)
    gen = torch.Generator().manual_seed(int(seed))
    coh = torch.tensor(coh_values, dtype=torch.float32).repeat_interleave(n_per_condition)
    # Alternate directions, then shuffle inside each condition: exactly balanced, random order.
    labels = torch.cat(
        [
            (torch.arange(n_per_condition) % 2)[torch.randperm(n_per_condition, generator=gen)]
            for _ in coh_values
        ]
    )
    signal, noise = motion_energy_parts(coh, labels, config, gen)
    return RDMTrials(x=signal + noise, labels=labels, coherence=coh, signal=signal, noise=noise)


class GRUBackbone(nn.Module):
    """One-layer GRU over the evidence stream with a per-step linear readout of the direction."""

    def __init__(self, input_size: int = 2, hidden_size: int = 32, n_classes: int = 2) -> None:
        super().__init__()
        if not (isinstance(hidden_size, int) and hidden_size > 0):
            raise PerceptAlignError(f"hidden_size must be a positive integer, got {hidden_size!r}.")
        self.input_size, self.hidden_size, self.n_classes = input_size, hidden_size, n_classes
        self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.readout = nn.Linear(hidden_size, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Hidden states (B, T, H) and per-step logits (B, T, C)."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise PerceptAlignError(f"GRU input must be (B, T, {self.input_size}), got {tuple(x.shape)}.")
        hidden, _ = self.gru(x)
        return hidden, self.readout(hidden)

    @torch.no_grad()
    def encode(self, x: Tensor, batch_size: int = 2048) -> tuple[Tensor, Tensor]:
        """Forward in batches without gradients (for frozen-backbone use)."""
        outs = [self(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return torch.cat([h for h, _ in outs]), torch.cat([z for _, z in outs])


@dataclass(frozen=True)
class GRUTrainConfig:
    """How the backbone is trained: Adam on per-step cross-entropy, fresh noise every batch."""

    hidden_size: int = 32
    steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "steps", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise PerceptAlignError(f"{name} must be a positive integer, got {value!r}.")
        if not self.lr > 0:
            raise PerceptAlignError(f"lr must be positive, got {self.lr!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


def train_gru(
    task: RDMTaskConfig, config: GRUTrainConfig, *, progress: StepCallback | None = None
) -> tuple[GRUBackbone, list[float]]:
    """Train a fresh GRU on the task; returns the model (eval mode) and the per-step loss history.

    Each batch draws coherences uniformly from ``task.coherences`` and directions at random, with new noise.
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    model = GRUBackbone(2, config.hidden_size, 2)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    coh_values = torch.tensor(task.coherences, dtype=torch.float32)
    history: list[float] = []
    for step in range(config.steps):
        idx = torch.randint(len(coh_values), (config.batch_size,), generator=gen)
        labels = torch.randint(2, (config.batch_size,), generator=gen)
        x = motion_energy(coh_values[idx], labels, task, gen)
        _, logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 2), labels.repeat_interleave(task.n_steps))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(float(loss.item()))
        if progress is not None:
            progress(step + 1, config.steps, history[-1])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, history


def _cache_key(task: RDMTaskConfig, config: GRUTrainConfig) -> str:
    # The thread count is part of the identity: training's parallel sums round differently with more
    # threads, and the trained weights (and every fit on them) differ with it.
    blob = json.dumps(
        {
            "task": task.to_dict(),
            "train": config.to_dict(),
            "torch_threads": torch.get_num_threads(),
            "version": 1,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train_gru(
    task: RDMTaskConfig,
    config: GRUTrainConfig,
    *,
    cache: Path | None = None,
    progress: StepCallback | None = None,
) -> tuple[GRUBackbone, dict]:
    """The trained GRU for these settings: loaded from ``cache`` (default: the toolkit cache) if present.

    Returns (model, info) with info = {cached, path, key, seconds, final_loss}. The file is keyed by a hash
    of the task and training settings and torch's thread count (training's result depends on it) and stores
    them as metadata, so a changed setting never silently reuses weights trained for another task.
    """
    key = _cache_key(task, config)
    folder = Path(cache) if cache is not None else cache_dir("rtify", "gru")
    path = folder / f"gru-{key}.safetensors"
    start = time.perf_counter()
    if path.is_file():
        try:
            tensors = load_tensors(path)
        except Exception as exc:  # a truncated or foreign file raises safetensors' own error types
            raise PerceptAlignError(
                f"cached GRU weights {path} cannot be read ({exc}); delete the file to retrain."
            ) from exc
        model = GRUBackbone(2, config.hidden_size, 2)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as exc:
            raise PerceptAlignError(
                f"cached GRU weights {path} do not match the settings; delete the file to retrain."
            ) from exc
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, {
            "cached": True,
            "path": str(path),
            "key": key,
            "seconds": time.perf_counter() - start,
            "final_loss": None,
        }
    model, history = train_gru(task, config, progress=progress)
    metadata = {
        "task": json.dumps(task.to_dict()),
        "train": json.dumps(config.to_dict()),
        "torch_threads": str(torch.get_num_threads()),
    }
    save_tensors_atomic(path, model.state_dict(), metadata)
    tail = history[-max(1, len(history) // 10) :]
    return model, {
        "cached": False,
        "path": str(path),
        "key": key,
        "seconds": time.perf_counter() - start,
        "final_loss": float(np.mean(tail)),
    }


@torch.no_grad()
def accuracy_by_condition(
    model: GRUBackbone, task: RDMTaskConfig, n_per_condition: int = 500, *, seed: int = 12345, step: int = -1
) -> dict[float, float]:
    """Accuracy of the readout's argmax at time ``step`` (default: the last) per coherence."""
    trials = make_trials(task, n_per_condition, seed=seed)
    _, logits = model.encode(trials.x)
    correct = (logits[:, step].argmax(-1) == trials.labels).float()
    return {c: float(correct[trials.coherence == c].mean()) for c in task.coherences}
