"""Tests of the random-dot-motion generator: geometry, coherence statistics, motion energy, seeding, errors.

Statistical assertions use fixed seeds (so they are deterministic) and a tolerance of 4 standard errors,
chosen so that the assertion would still pass for ≥ 99.99 % of other seeds: a real bug moves the statistic
by many SEs, a lucky seed does not.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.pixel.stimuli import (
    PAPER_COHERENCES,
    PAPER_COHERENCES_PCT,
    RDMBatch,
    RDMConfig,
    RDMStream,
    easy_to_hard_curriculum,
    generate_rdm,
    generate_rdm_loop,
    make_rdm_batch,
    opponent_motion_energy,
    render_dots,
    simulate_rdm_positions,
)

Z = 4.0  # tolerance in standard errors (see module docstring)
SMALL = RDMConfig(size=42, n_frames=15, dots_per_group=6)


def _loop_positions(coherence, direction=None, config=SMALL, *, angle=None, seed=0):
    _, pos = generate_rdm_loop(coherence, direction, config, angle=angle, seed=seed, return_positions=True)
    return pos


def _vec_positions(coherence, direction=None, config=SMALL, *, angle=None, seed=0):
    return simulate_rdm_positions(coherence, direction, config, angle=angle, seed=seed)


POSITION_MAKERS = {"vectorised": _vec_positions, "loop": _loop_positions}


def _slow_render(positions: torch.Tensor, config: RDMConfig) -> torch.Tensor:
    """Independent rasteriser: one dot at a time, block of pixels nearest the dot centre."""
    batch, frames, _, _ = positions.shape
    s, size = config.dot_size, config.size
    out = torch.zeros(batch, frames, size, size)
    for b in range(batch):
        for f in range(frames):
            for x, y in positions[b, f].tolist():
                c0, r0 = math.floor(x - s / 2 + 0.5), math.floor(y - s / 2 + 0.5)
                out[b, f, max(r0, 0) : max(r0 + s, 0), max(c0, 0) : max(c0 + s, 0)] = 1.0
    return out


def _motion_coordinates(positions: torch.Tensor, theta: torch.Tensor, config: RDMConfig):
    """(u along the motion, v across it) relative to the aperture centre, in float64."""
    p = positions.to(torch.float64) - config.size / 2.0
    cos_t = theta.to(torch.float64).cos().view(-1, 1, 1)
    sin_t = theta.to(torch.float64).sin().view(-1, 1, 1)
    u = p[..., 0] * cos_t - p[..., 1] * sin_t
    v = p[..., 0] * sin_t + p[..., 1] * cos_t
    return u, v


def _coherent_moves(positions: torch.Tensor, theta: torch.Tensor, config: RDMConfig) -> torch.Tensor:
    """Per (trial, frame pair, dot): did the dot make exactly one coherent step (wrapped along its chord)?

    Tolerance 1e-3 px: float32 positions of magnitude ≤ 21 carry ~1e-5 px of rounding, while a replotted
    dot lands within 1e-3 px of the predicted spot with probability ~1e-8.
    """
    u, v = _motion_coordinates(positions, theta, config)
    lag = config.n_groups
    u0, v0, u1, v1 = u[:, :-lag], v[:, :-lag], u[:, lag:], v[:, lag:]
    half = (config.dot_radius_limit**2 - v0**2).clamp_min(0).sqrt()
    offset = torch.remainder(u1 - u0 - config.speed_px + half, 2 * half) - half
    return ((v1 - v0).abs() < 1e-3) & (offset.abs() < 1e-3)


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.to(torch.float64)
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


# ------------------------------------------------------------------------------------------ geometry


def test_shapes_dtypes_and_binary_values() -> None:
    v = generate_rdm([0.5, 0.1, 0.0], [1, -1, 1], SMALL, seed=0)
    assert v.shape == (3, SMALL.n_frames, SMALL.size, SMALL.size) and v.dtype == torch.float32
    assert set(v.unique().tolist()) == {0.0, 1.0}
    loop = generate_rdm_loop([0.5, 0.1, 0.0], [1, -1, 1], SMALL, seed=0)
    for dtype in (torch.uint8, torch.float16, torch.bfloat16, torch.float64):
        other = generate_rdm([0.5, 0.1, 0.0], [1, -1, 1], SMALL, seed=0, dtype=dtype)
        assert other.dtype == dtype and torch.equal(other.float(), v)
        other_loop = generate_rdm_loop([0.5, 0.1, 0.0], [1, -1, 1], SMALL, seed=0, dtype=dtype)
        assert other_loop.dtype == dtype and torch.equal(other_loop.float(), loop)


@pytest.mark.parametrize("dot_size", [1, 3])
def test_rendering_matches_an_independent_rasteriser(dot_size: int) -> None:
    cfg = RDMConfig(size=30, n_frames=7, dots_per_group=9, dot_size=dot_size, speed_px=2.5)
    pos = simulate_rdm_positions(torch.rand(4), torch.tensor([1, -1, 1, -1]), cfg, seed=3)
    assert torch.equal(render_dots(pos, cfg), _slow_render(pos, cfg))
    # The loop implementation rasterises on its own; both rasterisers must agree on its positions too.
    video, pos_loop = generate_rdm_loop([0.3, 0.9], [1, -1], cfg, seed=4, return_positions=True)
    assert torch.equal(render_dots(pos_loop, cfg), video)


@pytest.mark.parametrize("impl", ["vectorised", "loop"])
def test_lit_pixels_equal_visible_dots_up_to_collisions(impl: str) -> None:
    """Each frame lights exactly one pixel per distinct dot pixel: dots_per_group minus collisions."""
    cfg = RDMConfig(size=42, n_frames=12, dots_per_group=6)
    pos = POSITION_MAKERS[impl]([0.5] * 20, [1] * 20, cfg, seed=1)
    if impl == "vectorised":
        video = generate_rdm([0.5] * 20, [1] * 20, cfg, seed=1)
    else:
        video = generate_rdm_loop([0.5] * 20, [1] * 20, cfg, seed=1)
    assert pos.shape == (20, cfg.n_frames, cfg.dots_per_group, 2)
    lit = video.sum(dim=(2, 3))
    pixel = torch.floor(pos).to(torch.long)
    key = pixel[..., 1] * cfg.size + pixel[..., 0]
    distinct = torch.tensor([[len(set(key[b, f].tolist())) for f in range(cfg.n_frames)] for b in range(20)])
    assert torch.equal(lit, distinct.float())
    assert (distinct <= cfg.dots_per_group).all() and (distinct == cfg.dots_per_group).float().mean() > 0.9


@pytest.mark.parametrize("impl", ["vectorised", "loop"])
@pytest.mark.parametrize("dot_size", [1, 3])
def test_all_dots_stay_inside_the_aperture(impl: str, dot_size: int) -> None:
    # A speed larger than the aperture diameter exercises repeated wraps in a single step.
    cfg = RDMConfig(
        size=40, aperture_radius=17.0, n_frames=18, dots_per_group=8, dot_size=dot_size, speed_px=37.3
    )
    angles = torch.linspace(0, 2 * math.pi, 12)
    pos = POSITION_MAKERS[impl]([1.0] * 6 + [0.5] * 6, None, cfg, angle=angles, seed=2)
    centre = cfg.size / 2
    r = ((pos - centre) ** 2).sum(-1).sqrt()
    assert (r < cfg.dot_radius_limit + 1e-4).all()  # 1e-4: float32 rounding of coordinates ~20 px
    video = render_dots(pos, cfg)
    rows, cols = torch.meshgrid(torch.arange(cfg.size), torch.arange(cfg.size), indexing="ij")
    # Nearest point of each pixel square to the centre; for dot_size ≤ 3 every lit pixel touches the disc.
    nx = (centre - cols.double()).clamp(0, 1) + cols - centre
    ny = (centre - rows.double()).clamp(0, 1) + rows - centre
    outside = (nx**2 + ny**2).sqrt() >= cfg.radius
    assert video[..., outside].sum() == 0


@pytest.mark.parametrize("impl", ["vectorised", "loop"])
def test_wrapping_keeps_the_dot_density_uniform(impl: str) -> None:
    """At 100 % coherence dots only move and wrap; a uniform disc must stay uniform (no edge pile-up)."""
    cfg = RDMConfig(n_frames=60, speed_px=4.0)
    pos = POSITION_MAKERS[impl]([1.0] * 40, [1] * 40, cfg, seed=5)
    late = pos[:, -3:].reshape(-1, 2).double() - cfg.size / 2
    r2 = (late**2).sum(-1) / cfg.dot_radius_limit**2
    n = r2.numel()
    # Uniform disc: r²/R² ~ U(0, 1), so P(r² < R²/2) = 1/2 and E[x] = 0 with SD R/2.
    inner = float((r2 < 0.5).double().mean())
    assert abs(inner - 0.5) < Z * math.sqrt(0.25 / n)
    assert abs(float(late[:, 0].mean())) < Z * (cfg.dot_radius_limit / 2) / math.sqrt(n)


# ------------------------------------------------------------------------------------ coherence


@pytest.mark.parametrize("impl", ["vectorised", "loop"])
@pytest.mark.parametrize("coherence", [0.0, 0.3, 1.0])
def test_fraction_of_coherent_steps_equals_coherence(impl: str, coherence: float) -> None:
    cfg = RDMConfig(size=42, n_frames=21, dots_per_group=6, speed_px=5.0 / 3.0)
    angles = torch.tensor([0.0, math.pi, 0.7, -2.1, math.pi / 2, 3.9] * 5)
    pos = POSITION_MAKERS[impl]([coherence] * angles.numel(), None, cfg, angle=angles, seed=6)
    moves = _coherent_moves(pos, angles, cfg)
    frac, n = float(moves.double().mean()), moves.numel()
    assert abs(frac - coherence) <= Z * math.sqrt(coherence * (1 - coherence) / n) + 1e-12
    if impl == "vectorised" and coherence == 1.0:
        # Some of these steps crossed the edge, so the chord wrap was exercised, not just straight moves.
        u, _ = _motion_coordinates(pos, angles, cfg)
        assert ((u[:, cfg.n_groups :] - u[:, : -cfg.n_groups]) < 0).any()


def test_direction_and_angle_agree() -> None:
    a = generate_rdm([0.4, 0.7], [1, -1], SMALL, seed=9)
    b = generate_rdm([0.4, 0.7], None, SMALL, angle=[0.0, math.pi], seed=9)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------- motion energy


def test_motion_energy_closed_form_on_a_single_dot() -> None:
    """One dot moving 2 px per lag: energy is +1 at speed 2, −1 if it moves left, 2/3 at speed 5/3.

    For speed 5/3 the shifted frame is (1/3)·shift-by-1 + (2/3)·shift-by-2, so a 2-px displacement matches
    with weight 2/3 and the opposite shift has no overlap.
    """
    video = torch.zeros(1, 4, 20, 20)
    for f in range(4):
        video[0, f, 10, 4 + 2 * f] = 1.0
    assert opponent_motion_energy(video, 2.0, 1).item() == pytest.approx(1.0, abs=1e-6)
    assert opponent_motion_energy(video.flip(-1), 2.0, 1).item() == pytest.approx(-1.0, abs=1e-6)
    assert opponent_motion_energy(video, 5.0 / 3.0, 1).item() == pytest.approx(2.0 / 3.0, abs=1e-6)
    up = video.transpose(-1, -2).flip(-2)  # the same dot moving upward on screen
    assert opponent_motion_energy(up, 2.0, 1, axis="y").item() == pytest.approx(1.0, abs=1e-6)


def test_motion_energy_is_antisymmetric_under_mirroring() -> None:
    video = generate_rdm(torch.rand(8), torch.tensor([1, -1] * 4), SMALL, seed=10)
    e = opponent_motion_energy(video, SMALL.speed_px, SMALL.n_groups)
    e_mirror = opponent_motion_energy(video.flip(-1), SMALL.speed_px, SMALL.n_groups)
    torch.testing.assert_close(e_mirror, -e, atol=1e-6, rtol=0)  # exact up to float32 summation order


def test_motion_energy_grows_with_coherence_and_flips_with_direction() -> None:
    cfg = RDMConfig(n_frames=24)
    levels = [0.0, 0.1, 0.25, 0.5, 1.0]
    n = 96
    stats = {}
    for sign in (1, -1):
        coh = torch.tensor(levels).repeat_interleave(n)
        video = generate_rdm(coh, torch.full((coh.numel(),), sign), cfg, seed=11 + sign)
        energy = opponent_motion_energy(video, cfg.speed_px, cfg.n_groups).view(len(levels), n)
        stats[sign] = [_mean_se(energy[i]) for i in range(len(levels))]
    for sign in (1, -1):
        means = [sign * m for m, _ in stats[sign]]
        ses = [s for _, s in stats[sign]]
        assert abs(means[0]) < Z * ses[0]  # zero coherence: no net motion in expectation
        for i in range(1, len(levels)):
            assert means[i] - means[i - 1] > Z * math.hypot(ses[i], ses[i - 1])
    for i in range(len(levels)):  # mirror images: rightward energy = −leftward energy
        (mr, sr), (ml, sl) = stats[1][i], stats[-1][i]
        assert abs(mr + ml) < Z * math.hypot(sr, sl)


def test_loop_and_vectorised_versions_agree_statistically() -> None:
    cfg = RDMConfig(n_frames=21)
    n = 160
    coh = [0.6] * n
    direction = [1, -1] * (n // 2)
    sign = torch.tensor(direction, dtype=torch.float64)
    e_vec = opponent_motion_energy(generate_rdm(coh, direction, cfg, seed=12), cfg.speed_px, 3) * sign
    e_loop = opponent_motion_energy(generate_rdm_loop(coh, direction, cfg, seed=13), cfg.speed_px, 3) * sign
    (m1, s1), (m2, s2) = _mean_se(e_vec), _mean_se(e_loop)
    assert m1 > 10 * s1  # there is a signal to compare
    assert abs(m1 - m2) < Z * math.hypot(s1, s2)
    # Same number of lit pixels on average (collision rates agree).
    lit_vec = generate_rdm(coh, direction, cfg, seed=14).sum(dim=(2, 3)).flatten()
    lit_loop = generate_rdm_loop(coh, direction, cfg, seed=15).sum(dim=(2, 3)).flatten()
    (l1, t1), (l2, t2) = _mean_se(lit_vec), _mean_se(lit_loop)
    assert abs(l1 - l2) < Z * math.hypot(t1, t2) + 1e-12


# ------------------------------------------------------------------------------------------ seeding


def test_same_seed_same_video_and_generator_equivalence() -> None:
    coh, direction = [0.2, 0.8, 0.5], [1, -1, -1]
    a = generate_rdm(coh, direction, SMALL, seed=21)
    assert torch.equal(a, generate_rdm(coh, direction, SMALL, seed=21))
    assert not torch.equal(a, generate_rdm(coh, direction, SMALL, seed=22))
    g = torch.Generator().manual_seed(21)
    assert torch.equal(a, generate_rdm(coh, direction, SMALL, generator=g))
    assert not torch.equal(a, generate_rdm(coh, direction, SMALL, generator=g))  # the stream advanced
    loop = generate_rdm_loop(coh, direction, SMALL, seed=21)
    assert torch.equal(loop, generate_rdm_loop(coh, direction, SMALL, seed=21))


def test_trials_in_a_batch_are_independent() -> None:
    n = 200
    video = generate_rdm([0.5] * n, [1] * n, SMALL, seed=23)
    flat = video.flatten(1)
    assert len({tuple(row.nonzero().flatten().tolist()) for row in flat}) == n  # no two trials alike
    energy = opponent_motion_energy(video, SMALL.speed_px, SMALL.n_groups).double()
    r = float(torch.corrcoef(torch.stack((energy[0::2], energy[1::2])))[0, 1])
    assert abs(r) < Z / math.sqrt(n // 2)  # null SD of Pearson r ≈ 1/sqrt(pairs)


# ---------------------------------------------------------------------------- training batches


def test_make_rdm_batch_labels_coherences_and_reproducibility() -> None:
    levels = (0.128, 0.512, 1.0)
    batch = make_rdm_batch(300, levels, SMALL, seed=30)
    assert isinstance(batch, RDMBatch) and batch.videos.shape == (300, SMALL.n_frames, 42, 42)
    assert all(any(abs(c - x) < 1e-6 for x in levels) for c in batch.coherence.tolist())
    assert torch.equal(batch.direction, 2 * batch.label - 1)
    assert abs(float(batch.label.double().mean()) - 0.5) < Z * math.sqrt(0.25 / 300)
    for level in levels:  # each level appears about 1/3 of the time
        share = float((batch.coherence - level).abs().lt(1e-6).double().mean())
        assert abs(share - 1 / 3) < Z * math.sqrt((1 / 3) * (2 / 3) / 300)
    # At full coherence the direction is readable from the pixels on every trial.
    energy = opponent_motion_energy(batch.videos, SMALL.speed_px, SMALL.n_groups)
    full = (batch.coherence - 1.0).abs() < 1e-6
    assert torch.equal(torch.sign(energy[full]).long(), batch.direction[full])
    again = make_rdm_batch(300, levels, SMALL, seed=30)
    assert torch.equal(again.videos, batch.videos) and torch.equal(again.label, batch.label)


def test_stream_gives_fresh_reproducible_epochs_and_follows_the_curriculum() -> None:
    stream = RDMStream(SMALL, (1.0,), batch_size=4, batches_per_epoch=2, seed=7)
    first = list(stream)
    second = list(stream)
    assert len(first) == len(stream) == 2
    assert not torch.equal(first[0].videos, second[0].videos)  # fresh stimuli every epoch
    it_a, it_b = iter(stream), iter(stream)  # each iter() call is its own epoch, even before consuming
    assert not torch.equal(next(it_a).videos, next(it_b).videos)
    replay = RDMStream(SMALL, (1.0,), batch_size=4, batches_per_epoch=2, seed=7)
    assert all(torch.equal(a.videos, b.videos) for a, b in zip(first, list(replay), strict=True))
    stages = easy_to_hard_curriculum(PAPER_COHERENCES, 3)
    stream.set_coherences(stages[0])
    seen = torch.cat([b.coherence for b in stream])
    assert float(seen.min()) >= min(stages[0]) - 1e-6


def test_curriculum_is_nested_from_easy_to_hard() -> None:
    levels = (*PAPER_COHERENCES, 0.999)
    stages = easy_to_hard_curriculum(levels, 4)
    assert len(stages) == 4 and stages[0][0] == 0.999 and set(stages[-1]) == set(levels)
    for a, b in itertools.pairwise(stages):
        assert set(a) < set(b) and min(b) < min(a)
    assert pytest.approx([p / 100 for p in PAPER_COHERENCES_PCT]) == PAPER_COHERENCES


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 3}, "too small"),
        ({"size": 42.0}, "integer"),
        ({"n_frames": 0}, "n_frames"),
        ({"dots_per_group": 0}, "dots_per_group"),
        ({"n_groups": 0}, "n_groups"),
        ({"dot_size": 0}, "dot_size"),
        ({"dot_size": 11}, "dot_size"),
        ({"speed_px": -1.0}, "speed_px"),
        ({"speed_px": float("nan")}, "speed_px"),
        ({"aperture_radius": 22.0}, "aperture_radius"),
        ({"aperture_radius": 0.4}, "aperture_radius"),
        ({"frame_rate_hz": 0.0}, "frame_rate_hz"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        RDMConfig(**kwargs)


@pytest.mark.parametrize("fn", [generate_rdm, generate_rdm_loop])
@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([51.2], [1]), {}, "divide by 100"),
        (([-0.1], [1]), {}, "fraction"),
        (([float("nan")], [1]), {}, "fraction"),
        (([[0.1, 0.2]], [1]), {}, "1-D"),
        (([], []), {}, "1-D"),
        (([0.5], [0]), {}, "direction"),
        (([0.5], [0.5]), {}, "angle="),
        (([0.5, 0.5], [1, -1, 1]), {}, "shape"),
        (([0.5], None), {}, "exactly one"),
        (([0.5], [1]), {"angle": [0.0]}, "exactly one"),
        (([0.5], None), {"angle": [float("inf")]}, "finite"),
        (([0.5], [1]), {"dtype": torch.int64}, "dtype"),
        (([0.5], [1]), {"seed": -1}, "seed"),
    ],
)
def test_generators_reject_bad_input(fn, args, kwargs, match) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        fn(*args, SMALL, **kwargs)


def test_other_bad_inputs() -> None:
    with pytest.raises(PerceptAlignError, match="not both"):
        generate_rdm([0.5], [1], SMALL, seed=1, generator=torch.Generator())
    with pytest.raises(PerceptAlignError, match="not both"):
        generate_rdm_loop([0.5], [1], SMALL, seed=1, rng=np.random.default_rng(1))
    with pytest.raises(PerceptAlignError, match="shape"):
        render_dots(torch.zeros(2, 3, 4), SMALL)
    video = torch.zeros(2, 5, 10, 10)
    with pytest.raises(PerceptAlignError, match="lag"):
        opponent_motion_energy(video, 1.0, 5)
    with pytest.raises(PerceptAlignError, match="speed_px"):
        opponent_motion_energy(video, 0.0, 1)
    with pytest.raises(PerceptAlignError, match="axis"):
        opponent_motion_energy(video, 1.0, 1, axis="z")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="shape"):
        opponent_motion_energy(torch.zeros(5, 10, 10), 1.0, 1)
    with pytest.raises(PerceptAlignError, match="batch_size"):
        make_rdm_batch(0, (0.5,), SMALL, seed=0)
    with pytest.raises(PerceptAlignError, match="empty"):
        make_rdm_batch(4, (), SMALL, seed=0)
    with pytest.raises(PerceptAlignError, match="divide by 100"):
        make_rdm_batch(4, PAPER_COHERENCES_PCT, SMALL, seed=0)
    with pytest.raises(PerceptAlignError, match="n_stages"):
        easy_to_hard_curriculum((0.1, 0.2), 3)
    with pytest.raises(PerceptAlignError, match="batches_per_epoch"):
        RDMStream(SMALL, (0.5,), batch_size=2, batches_per_epoch=0)
    with pytest.raises(PerceptAlignError, match="batch_size"):
        RDMStream(SMALL, (0.5,), batch_size=True, batches_per_epoch=1)
    with pytest.raises(PerceptAlignError, match="seed"):
        RDMStream(SMALL, (0.5,), batch_size=2, batches_per_epoch=1, seed=-3)
    with pytest.raises(PerceptAlignError, match="same device"):
        generate_rdm([0.5], [1], SMALL, generator=torch.Generator(), device="meta")
