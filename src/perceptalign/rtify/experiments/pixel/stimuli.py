"""Random-dot-motion (RDM) stimuli: a seeded, fully vectorised generator and a per-frame reference loop.

Semantics follow the Shadlen-lab dot display that the RTify experiments use (docs/rtify.md, "Experiments"):

* Dots live in a circular aperture. They are split into ``n_groups`` interleaved groups; frame ``f``
  shows only group ``f mod n_groups``, so a group reappears every ``n_groups`` frames.
* The first time a group is shown its dots are uniform in the aperture. At every later appearance each
  dot independently is *coherent* with probability ``c`` (it moves ``speed_px`` along the motion
  direction) or is *replotted* at a fresh uniform position. Motion is therefore only visible between
  frames ``f`` and ``f + n_groups``, which is what makes the display hard at low coherence.
* Wrapping inside the circle: a coherent dot that leaves the aperture re-enters on the opposite side of
  the same chord (the chord through the dot parallel to the motion). Along that chord its coordinate
  moves modulo the chord length, so the wrap is a rotation of each chord. That map preserves the uniform
  density of the disc — a wrap rule that re-entered dots elsewhere would pile dots up near the edge and
  leak a position cue — and it never changes the dot's coordinate across the motion axis.

Coordinates: pixel ``(row, col)`` covers ``[col, col+1) × [row, row+1)``; ``x`` grows to the right, ``y``
downwards; the aperture centre is ``(size/2, size/2)``. Angles are radians counter-clockwise on screen
from rightward (0 = right, π = left, π/2 = up). Dot centres are confined to the disc of radius
``aperture_radius − dot_size/2`` so that a whole square dot lies in the aperture.

Coherence is a *fraction* in [0, 1] everywhere in this module (the paper quotes percentages: 51.2 % is
0.512 here). Videos are ``(B, F, H, W)`` with lit pixels 1 and background 0 (also for ``uint8``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError

PAPER_COHERENCES_PCT: tuple[float, ...] = (0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2)
"""The seven coherences of the RTify RDM experiment, in percent."""
PAPER_COHERENCES: tuple[float, ...] = tuple(c / 100.0 for c in PAPER_COHERENCES_PCT)
"""The same coherences as fractions, the unit this module uses."""
CURRICULUM_EASY_COHERENCE: float = 0.999
"""The near-perfect coherence the paper adds at the start of its training curriculum."""

_VIDEO_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8)
_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.uint8: np.uint8,
}
_MIN_SIZE = 4


@dataclass(frozen=True)
class RDMConfig:
    """Geometry and timing of one RDM display; defaults are the paper's training scale (42 px, 1 px dots).

    ``speed_px`` is the displacement per *update of a group*, i.e. between frames ``f`` and
    ``f + n_groups`` (the original's "5 px per 3 frames" is ``speed_px = 5`` with ``n_groups = 3``).
    ``frame_rate_hz`` does not change the pixels; it converts frames to seconds for decision models.
    """

    size: int = 42
    aperture_radius: float | None = None
    n_frames: int = 30
    dots_per_group: int = 6
    n_groups: int = 3
    speed_px: float = 5.0 / 3.0
    dot_size: int = 1
    frame_rate_hz: float = 75.0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise PerceptAlignError(f"RDMConfig: {message}")

        for name in ("size", "n_frames", "dots_per_group", "n_groups", "dot_size"):
            value = getattr(self, name)
            need(
                isinstance(value, int | np.integer) and not isinstance(value, bool),
                f"{name} must be an integer, got {value!r}; pass e.g. {name}={int(_default(name))}.",
            )
        need(self.size >= _MIN_SIZE, f"frames of {self.size} px are too small; use at least {_MIN_SIZE} px.")
        need(self.n_frames >= 1, f"n_frames={self.n_frames} must be ≥ 1.")
        need(self.dots_per_group >= 1, f"dots_per_group={self.dots_per_group} must be ≥ 1.")
        need(self.n_groups >= 1, f"n_groups={self.n_groups} must be ≥ 1 (the original display uses 3).")
        need(
            1 <= self.dot_size <= self.size // 4,
            f"dot_size={self.dot_size} must be between 1 and size//4 = {self.size // 4}; "
            "use smaller dots or a larger frame.",
        )
        need(
            math.isfinite(float(self.speed_px)) and self.speed_px >= 0,
            f"speed_px={self.speed_px} must be a finite number ≥ 0.",
        )
        need(
            math.isfinite(float(self.frame_rate_hz)) and self.frame_rate_hz > 0,
            f"frame_rate_hz={self.frame_rate_hz} must be a positive number.",
        )
        if self.aperture_radius is not None:
            r = float(self.aperture_radius)
            need(
                math.isfinite(r) and self.dot_size / 2 < r <= self.size / 2,
                f"aperture_radius={self.aperture_radius} must lie in (dot_size/2, size/2] = "
                f"({self.dot_size / 2}, {self.size / 2}]; leave it None for size/2.",
            )

    @property
    def radius(self) -> float:
        """Aperture radius in pixels (``size/2`` unless set)."""
        return float(self.size) / 2.0 if self.aperture_radius is None else float(self.aperture_radius)

    @property
    def dot_radius_limit(self) -> float:
        """Radius of the disc that dot centres are confined to, so that square dots stay in the aperture."""
        return self.radius - self.dot_size / 2.0

    @property
    def duration_s(self) -> float:
        return self.n_frames / float(self.frame_rate_hz)

    @property
    def n_updates(self) -> int:
        """How many appearances each group needs to cover ``n_frames`` (the last may be partly unused)."""
        return -(-self.n_frames // self.n_groups)

    @classmethod
    def original_scale(cls, *, dots_per_group: int = 6, n_frames: int = 150) -> RDMConfig:
        """The original display: 125 px aperture, 3 px dots, 5 px per 3 frames, 150 frames at 75 Hz (2 s).

        The method notes do not fix the dot count of the original; it defaults to the training scale's.
        """
        return cls(
            size=125,
            n_frames=n_frames,
            dots_per_group=dots_per_group,
            n_groups=3,
            speed_px=5.0,
            dot_size=3,
            frame_rate_hz=75.0,
        )


def _default(name: str) -> object:
    return RDMConfig.__dataclass_fields__[name].default


# --------------------------------------------------------------------------------------------------
# Input validation shared by both implementations
# --------------------------------------------------------------------------------------------------


def _as_coherence(coherence: Tensor | Sequence[float] | float) -> Tensor:
    c = torch.as_tensor(coherence, dtype=torch.float64).detach().cpu()
    if c.ndim == 0:
        c = c.reshape(1)
    if c.ndim != 1 or c.numel() == 0:
        raise PerceptAlignError(
            f"coherence must be a non-empty 1-D sequence (one value per trial), got shape {tuple(c.shape)}."
        )
    if not torch.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        bad = c[~(torch.isfinite(c) & (c >= 0) & (c <= 1))][:3].tolist()
        hint = " It looks like percent: divide by 100." if bool((c > 1).any() & (c <= 100).all()) else ""
        raise PerceptAlignError(f"coherence must be a fraction in [0, 1]; got {bad}.{hint}")
    return c


def _as_angle(
    direction: Tensor | Sequence[int] | int | None,
    angle: Tensor | Sequence[float] | float | None,
    batch: int,
) -> Tensor:
    """Motion angle per trial (radians, float64) from either ±1 directions or explicit angles."""
    if (direction is None) == (angle is None):
        raise PerceptAlignError(
            "give exactly one of direction (±1: +1 right, −1 left) and angle (radians, 0 = right)."
        )
    if direction is not None:
        d = torch.as_tensor(direction).detach().cpu()
        if d.is_floating_point() and not torch.equal(d, d.round()):
            raise PerceptAlignError(
                "direction must be −1 (left) or +1 (right); for arbitrary directions pass angle= in radians."
            )
        d = d.to(torch.float64)
        if not ((d == 1) | (d == -1)).all():
            bad = d[~((d == 1) | (d == -1))][:3].tolist()
            raise PerceptAlignError(
                f"direction must be −1 (left) or +1 (right), got {bad}; labels 0/1 convert as 2·label − 1, "
                "and arbitrary directions go in angle= (radians)."
            )
        theta = torch.where(d > 0, 0.0, math.pi).to(torch.float64)
        name = "direction"
    else:
        theta = torch.as_tensor(angle, dtype=torch.float64).detach().cpu()
        if not torch.isfinite(theta).all():
            raise PerceptAlignError("angle must be finite (radians, 0 = rightward, π/2 = upward).")
        name = "angle"
    if theta.ndim == 0:
        theta = theta.expand(batch).clone()
    if theta.shape != (batch,):
        raise PerceptAlignError(
            f"{name} has shape {tuple(theta.shape)} but coherence has {batch} trials; give one value per "
            "trial or a single scalar."
        )
    return theta


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _VIDEO_DTYPES:
        raise PerceptAlignError(
            f"dtype {dtype} is not supported for videos; use one of {list(_VIDEO_DTYPES)}."
        )


def _check_seed(seed: object) -> None:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise PerceptAlignError(f"seed must be a non-negative integer, got {seed!r}.")


def _make_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise PerceptAlignError("pass either generator= or seed=, not both.")
    if seed is not None:
        _check_seed(seed)
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        return g
    if generator is not None and torch.device(generator.device).type != device.type:
        raise PerceptAlignError(
            f"generator lives on {generator.device} but the stimuli are built on {device}; "
            "create the generator with torch.Generator(device=...) on the same device."
        )
    return generator


# --------------------------------------------------------------------------------------------------
# Vectorised generator
# --------------------------------------------------------------------------------------------------


def simulate_rdm_positions(
    coherence: Tensor | Sequence[float] | float,
    direction: Tensor | Sequence[int] | int | None = None,
    config: RDMConfig | None = None,
    *,
    angle: Tensor | Sequence[float] | float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Dot centres shown on every frame, ``(B, F, dots_per_group, 2)`` as ``(x, y)`` pixels (float32).

    No loop over time: every replot position and coherence coin is drawn at once, then each dot's state
    at update ``k`` is its position at its last replot plus ``speed · (k − last_replot)`` taken modulo
    its chord length (coherent moves never change the across-motion coordinate, so the chord is fixed
    between replots and the repeated wrap collapses to one ``remainder``).
    """
    config = RDMConfig() if config is None else config
    dev = torch.device(device) if device is not None else torch.device("cpu")
    c = _as_coherence(coherence)
    batch = c.numel()
    theta = _as_angle(direction, angle, batch)
    gen = _make_generator(generator, seed, dev)

    k_up, g_n, d_n = config.n_updates, config.n_groups, config.dots_per_group
    r_lim = config.dot_radius_limit
    shape = (batch, k_up, g_n, d_n)
    # Uniform positions in the disc, written in the motion-aligned frame (u along motion, v across it).
    rad = r_lim * torch.rand(shape, generator=gen, device=dev).sqrt()
    phi = (2.0 * math.pi) * torch.rand(shape, generator=gen, device=dev)
    u_new, v_new = rad * phi.cos(), rad * phi.sin()
    coin = torch.rand(shape, generator=gen, device=dev)
    coherent = coin < c.to(device=dev, dtype=torch.float32).view(batch, 1, 1, 1)
    coherent[:, 0] = False  # the first appearance of a group is always a fresh plot

    steps = torch.arange(k_up, device=dev).view(1, k_up, 1, 1).expand(shape)
    last = torch.where(coherent, torch.zeros_like(steps), steps).cummax(dim=1).values
    u0 = torch.gather(u_new, 1, last)
    v = torch.gather(v_new, 1, last)
    moved = (steps - last).to(torch.float32) * float(config.speed_px)
    half_chord = (r_lim * r_lim - v * v).clamp_min(1e-12).sqrt()
    u = torch.remainder(u0 + moved + half_chord, 2.0 * half_chord) - half_chord

    cos_t = theta.to(device=dev, dtype=torch.float32).cos().view(batch, 1, 1, 1)
    sin_t = theta.to(device=dev, dtype=torch.float32).sin().view(batch, 1, 1, 1)
    centre = config.size / 2.0
    x = centre + u * cos_t + v * sin_t
    y = centre - u * sin_t + v * cos_t
    # (B, K, G, D) → frames ordered k·G + g, then cut to n_frames.
    pos = torch.stack((x, y), dim=-1).reshape(batch, k_up * g_n, d_n, 2)
    return pos[:, : config.n_frames].contiguous()


def render_dots(positions: Tensor, config: RDMConfig, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Rasterise dot centres ``(B, F, N, 2)`` into videos ``(B, F, size, size)`` with one flat ``index_put_``.

    A dot covers the ``dot_size × dot_size`` block of pixels whose centre is nearest its own centre
    (for 1-px dots: the pixel containing it). Overlapping dots light a pixel once (no summing), as on
    a screen; pixels falling outside the frame are dropped.
    """
    _check_dtype(dtype)
    if positions.ndim != 4 or positions.shape[-1] != 2:
        raise PerceptAlignError(f"positions must have shape (B, F, N, 2), got {tuple(positions.shape)}.")
    batch, frames, n_dots, _ = positions.shape
    size, s = config.size, config.dot_size
    dev = positions.device
    corner = torch.floor(positions - s / 2.0 + 0.5).to(torch.long)  # (B, F, N, 2): (col0, row0)
    offs = torch.arange(s, device=dev)
    cols = (corner[..., 0, None, None] + offs.view(1, s)).expand(batch, frames, n_dots, s, s)
    rows = (corner[..., 1, None, None] + offs.view(s, 1)).expand(batch, frames, n_dots, s, s)
    frame_id = torch.arange(batch * frames, device=dev).view(batch, frames, 1, 1, 1)
    flat = (frame_id * size + rows) * size + cols
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    video = _zeros(batch * frames * size * size, dtype, dev)
    idx = flat[inside] if not bool(inside.all()) else flat.reshape(-1)
    video.index_put_((idx,), torch.ones((), dtype=dtype, device=dev))
    return video.view(batch, frames, size, size)


def _zeros(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero-filled flat tensor; on CPU taken from numpy's calloc so the OS maps zero pages lazily.

    Videos are mostly background and rendering is bound by memory, not arithmetic: ``torch.zeros``
    memsets every page up front, which made rendering 1.5–3× slower in ``benchmarks/rdm_stimuli.py``;
    a calloc'd buffer only faults in the pages that dots land on.
    """
    if device.type != "cpu":
        return torch.zeros(numel, dtype=dtype, device=device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return torch.from_numpy(np.zeros(numel * itemsize, dtype=np.uint8)).view(dtype)


def generate_rdm(
    coherence: Tensor | Sequence[float] | float,
    direction: Tensor | Sequence[int] | int | None = None,
    config: RDMConfig | None = None,
    *,
    angle: Tensor | Sequence[float] | float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """A batch of RDM videos ``(B, F, size, size)`` in [0, 1]; trial ``b`` has coherence ``coherence[b]``.

    ``coherence`` is a fraction in [0, 1] (percent / 100). Give the motion either as ``direction`` ±1
    (+1 right, −1 left; labels 0/1 convert as ``2·label − 1``) or as ``angle`` in radians. The same
    ``seed`` (or an identically seeded ``generator``) gives identical videos; trials are independent.
    """
    config = RDMConfig() if config is None else config
    _check_dtype(dtype)
    pos = simulate_rdm_positions(
        coherence, direction, config, angle=angle, generator=generator, seed=seed, device=device
    )
    return render_dots(pos, config, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Reference loop implementation
# --------------------------------------------------------------------------------------------------


@overload
def generate_rdm_loop(
    coherence: Tensor | Sequence[float] | float,
    direction: Tensor | Sequence[int] | int | None = ...,
    config: RDMConfig | None = ...,
    *,
    angle: Tensor | Sequence[float] | float | None = ...,
    seed: int | None = ...,
    rng: np.random.Generator | None = ...,
    dtype: torch.dtype = ...,
    return_positions: Literal[False] = ...,
) -> Tensor: ...


@overload
def generate_rdm_loop(
    coherence: Tensor | Sequence[float] | float,
    direction: Tensor | Sequence[int] | int | None = ...,
    config: RDMConfig | None = ...,
    *,
    angle: Tensor | Sequence[float] | float | None = ...,
    seed: int | None = ...,
    rng: np.random.Generator | None = ...,
    dtype: torch.dtype = ...,
    return_positions: Literal[True],
) -> tuple[Tensor, Tensor]: ...


def generate_rdm_loop(
    coherence: Tensor | Sequence[float] | float,
    direction: Tensor | Sequence[int] | int | None = None,
    config: RDMConfig | None = None,
    *,
    angle: Tensor | Sequence[float] | float | None = None,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    return_positions: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The same stimulus written the obvious way: loop over trials and frames, move dots step by step.

    It is the benchmark's baseline and the tests' independent reference: it samples the disc by
    rejection, works in screen coordinates, and wraps each step geometrically (a dot that left the
    circle goes back by the chord length), so agreement with :func:`generate_rdm` is statistical, not
    pixel-for-pixel (different random streams).
    """
    config = RDMConfig() if config is None else config
    _check_dtype(dtype)
    c = _as_coherence(coherence)
    batch = c.numel()
    theta = _as_angle(direction, angle, batch)
    if rng is not None and seed is not None:
        raise PerceptAlignError("pass either rng= or seed=, not both.")
    if seed is not None:
        _check_seed(seed)
    rng = rng if rng is not None else np.random.default_rng(seed)

    size, s, r_lim = config.size, config.dot_size, config.dot_radius_limit
    centre = size / 2.0
    n_dots, n_groups = config.dots_per_group, config.n_groups
    np_dtype = _NUMPY_DTYPES.get(dtype, np.float32)  # bfloat16 has no numpy type: converted at the end
    video = np.zeros((batch, config.n_frames, size, size), dtype=np_dtype)
    positions = np.zeros((batch, config.n_frames, n_dots, 2), dtype=np.float64)

    def uniform_disc(n: int) -> np.ndarray:
        out = np.empty((n, 2))
        filled = 0
        while filled < n:
            p = rng.uniform(-r_lim, r_lim, size=(n, 2))
            p = p[(p**2).sum(axis=1) < r_lim * r_lim]
            take = min(len(p), n - filled)
            out[filled : filled + take] = p[:take]
            filled += take
        return out

    thetas, cohs = theta.tolist(), c.tolist()
    for b in range(batch):
        step = np.array([math.cos(thetas[b]), -math.sin(thetas[b])])  # screen: y points down
        across = np.array([step[1] * -1.0, step[0]])  # unit vector perpendicular to the motion
        groups: list[np.ndarray | None] = [None] * n_groups
        for f in range(config.n_frames):
            g = f % n_groups
            dots = groups[g]
            if dots is None:
                dots = uniform_disc(n_dots)
            else:
                is_coherent = rng.random(n_dots) < cohs[b]
                fresh = uniform_disc(n_dots)
                dots = dots.copy()
                for i in range(n_dots):
                    if not is_coherent[i]:
                        dots[i] = fresh[i]
                        continue
                    p = dots[i] + config.speed_px * step
                    v = float(p @ across)
                    chord = 2.0 * math.sqrt(max(r_lim * r_lim - v * v, 0.0))
                    while float(p @ step) >= chord / 2.0 and chord > 0:
                        p = p - chord * step
                    dots[i] = p
            groups[g] = dots
            for i in range(n_dots):
                x, y = centre + dots[i, 0], centre + dots[i, 1]
                positions[b, f, i] = (x, y)
                col0, row0 = math.floor(x - s / 2.0 + 0.5), math.floor(y - s / 2.0 + 0.5)
                for row in range(row0, row0 + s):
                    for col in range(col0, col0 + s):
                        if 0 <= row < size and 0 <= col < size:
                            video[b, f, row, col] = 1.0
    out = torch.from_numpy(video).to(dtype)
    if return_positions:
        return out, torch.from_numpy(positions).to(torch.float32)
    return out


# --------------------------------------------------------------------------------------------------
# A motion-energy read-out (diagnostics and tests)
# --------------------------------------------------------------------------------------------------


def opponent_motion_energy(
    videos: Tensor,
    speed_px: float,
    lag: int,
    *,
    axis: Literal["x", "y"] = "x",
    chunk: int = 64,
) -> Tensor:
    """Rightward-minus-leftward (or up-minus-down for ``axis="y"``) motion energy per trial, ``(B,)``.

    A Reichardt-style opponent correlator matched to the display: frame ``f + lag`` is correlated with
    frame ``f`` shifted by ``+speed`` and by ``−speed`` (linear interpolation for fractional shifts),
    and the difference is normalised by the lit mass of the later frames. With 1-px dots it estimates
    ``≈ κ · coherence · direction`` with κ ≤ 1 set by the rasterisation; by left/right symmetry of the
    display its expectation is exactly 0 at zero coherence. The function is exactly antisymmetric under
    mirroring the video along ``axis``.
    """
    if videos.ndim != 4:
        raise PerceptAlignError(f"videos must have shape (B, F, H, W), got {tuple(videos.shape)}.")
    if not (isinstance(lag, int) and 1 <= lag < videos.shape[1]):
        raise PerceptAlignError(
            f"lag={lag!r} must be an integer in [1, n_frames − 1 = {videos.shape[1] - 1}]."
        )
    if not (math.isfinite(speed_px) and speed_px > 0):
        raise PerceptAlignError(f"speed_px={speed_px} must be a positive finite number.")
    if axis not in ("x", "y"):
        raise PerceptAlignError(f"axis must be 'x' or 'y', got {axis!r}.")
    out = []
    for start in range(0, videos.shape[0], chunk):
        v = videos[start : start + chunk].to(torch.float32)
        if axis == "y":
            v = v.flip(-2).transpose(-1, -2)  # upward motion becomes rightward
        before, after = v[:, :-lag], v[:, lag:]
        right = _shift_last(before, speed_px)
        left = _shift_last(before, -speed_px)
        num = (after * (right - left)).sum(dim=(1, 2, 3))
        den = after.sum(dim=(1, 2, 3)).clamp_min(1.0)
        out.append(num / den)
    return torch.cat(out)


def _shift_last(x: Tensor, shift: float) -> Tensor:
    """``y[..., j] = x[..., j − shift]`` with linear interpolation and zeros shifted in."""
    lo = math.floor(shift)
    frac = shift - lo
    return (1.0 - frac) * _shift_int(x, lo) + frac * _shift_int(x, lo + 1)


def _shift_int(x: Tensor, k: int) -> Tensor:
    if k == 0:
        return x
    width = x.shape[-1]
    out = torch.zeros_like(x)
    if abs(k) >= width:
        return out
    if k > 0:
        out[..., k:] = x[..., : width - k]
    else:
        out[..., : width + k] = x[..., -k:]
    return out


# --------------------------------------------------------------------------------------------------
# Training batches with fresh stimuli
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RDMBatch:
    """One training batch: videos ``(B, F, H, W)``, coherence fractions, direction ±1 and label 0/1."""

    videos: Tensor
    coherence: Tensor
    direction: Tensor
    label: Tensor  # 1 = rightward, 0 = leftward (the BCE target)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PerceptAlignError(f"{name} must be a positive integer, got {value!r}.")


def _check_coherence_set(coherences: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(x) for x in coherences)
    if not values:
        raise PerceptAlignError("coherences is empty; give at least one coherence fraction, e.g. (0.512,).")
    _as_coherence(values)
    return values


def make_rdm_batch(
    batch_size: int,
    coherences: Sequence[float],
    config: RDMConfig | None = None,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> RDMBatch:
    """Fresh trials with coherences drawn uniformly from ``coherences`` and directions left/right at 50 %."""
    _check_positive_int("batch_size", batch_size)
    values = _check_coherence_set(coherences)
    config = RDMConfig() if config is None else config
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = _make_generator(generator, seed, dev)
    pick = torch.randint(len(values), (batch_size,), generator=gen, device=dev)
    coh = torch.tensor(values, dtype=torch.float32, device=dev)[pick]
    label = torch.randint(2, (batch_size,), generator=gen, device=dev)
    direction = 2 * label - 1
    videos = generate_rdm(coh, direction, config, generator=gen, device=dev, dtype=dtype)
    return RDMBatch(videos=videos, coherence=coh, direction=direction, label=label)


def easy_to_hard_curriculum(coherences: Sequence[float], n_stages: int) -> list[tuple[float, ...]]:
    """Nested coherence sets for a curriculum: stage 0 holds the easiest, the last stage holds them all.

    Easy trials stay in later stages so that the network does not forget the clean signal.
    """
    values = sorted(set(_check_coherence_set(coherences)), reverse=True)
    if not isinstance(n_stages, int) or isinstance(n_stages, bool) or not 1 <= n_stages <= len(values):
        raise PerceptAlignError(
            f"n_stages={n_stages!r} must be an integer between 1 and the number of distinct coherences "
            f"({len(values)})."
        )
    return [tuple(values[: math.ceil((k + 1) * len(values) / n_stages)]) for k in range(n_stages)]


@dataclass
class RDMStream:
    """Iterable of :class:`RDMBatch` with new stimuli every epoch, reproducible from ``seed``.

    Each ``iter()`` call is one epoch of ``batches_per_epoch`` batches, seeded by ``(seed, epoch)``, so
    training never sees the same videos twice yet a rerun sees the same sequence. Change
    ``coherences`` between epochs (e.g. from :func:`easy_to_hard_curriculum`) to run a curriculum.
    """

    config: RDMConfig
    coherences: Sequence[float]
    batch_size: int
    batches_per_epoch: int
    seed: int = 0
    device: torch.device | str | None = None
    dtype: torch.dtype = torch.float32
    epoch: int = field(default=0)

    def __post_init__(self) -> None:
        self.coherences = _check_coherence_set(self.coherences)
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("batches_per_epoch", self.batches_per_epoch)
        _check_seed(self.seed)
        _check_dtype(self.dtype)

    def set_coherences(self, coherences: Sequence[float]) -> None:
        self.coherences = _check_coherence_set(coherences)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[RDMBatch]:
        # Seed and advance the epoch now, not at the first next(), so each iter() call is one epoch.
        sequence = np.random.SeedSequence([int(self.seed), int(self.epoch)])
        state = sequence.generate_state(1, dtype=np.uint64)[0]
        dev = torch.device(self.device) if self.device is not None else torch.device("cpu")
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(state))
        self.epoch += 1
        return self._batches(tuple(self.coherences), gen, dev)

    def _batches(
        self, coherences: tuple[float, ...], gen: torch.Generator, dev: torch.device
    ) -> Iterator[RDMBatch]:
        for _ in range(self.batches_per_epoch):
            yield make_rdm_batch(self.batch_size, coherences, self.config, gen, device=dev, dtype=self.dtype)
