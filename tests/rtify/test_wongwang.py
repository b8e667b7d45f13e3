"""Tests of the Wong–Wang module: rate function, OU noise, adjoint gradients, decisions, behaviour."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import first_crossing_multiclass
from perceptalign.rtify.wongwang import (
    WW_DEFAULTS,
    WongWang2,
    WongWangN,
    _g_stable,
    wong_wang_rate,
)
from perceptalign.rtify.wongwang_engine import slope_from_gain_ as _slope_from_gain_

A, B_, D = WW_DEFAULTS["a"], WW_DEFAULTS["b"], WW_DEFAULTS["d"]


def _g_reference(v: float) -> float:
    """g(v) = v/(1 − e^{−v}) with Python's expm1 (accurate to ~1 ulp away from v = 0), limit 1 at 0."""
    return 1.0 if v == 0 else v / (-math.expm1(-v))


def _slope_reference(v: float) -> float:
    """g'(v) = (1 − e^{−v}(1 + v))/(1 − e^{−v})² via expm1; used only for |v| ≥ 0.5 (no cancellation)."""
    em = -math.expm1(-v)
    return (em - v * math.exp(-v)) / (em * em)


# ---------------------------------------------------------------------------------------------- H(x)
V_GRID = [
    0.0,
    1e-300,
    -1e-300,
    1e-12,
    -1e-12,
    1e-6,
    -1e-6,
    0.0199,
    -0.0201,
    0.05,
    -0.05,
    0.0999,
    0.1,
    -0.1,
    0.1001,
    0.5,
    -0.5,
    1.0,
    -1.0,
    3.0,
    -3.0,
    30.0,
    -30.0,
    300.0,
    -300.0,
]


def test_rate_matches_closed_form_and_limit_in_float64() -> None:
    v = torch.tensor(V_GRID, dtype=torch.float64)
    got = _g_stable(v)
    want = torch.tensor([_g_reference(x) for x in V_GRID], dtype=torch.float64)
    # float64 closed form is accurate to a few ulp; the series' truncation error is < 1e-14 for |v| < 0.1.
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-300)
    # H itself: limit 1/d at a x = b, in Hz.
    x = torch.tensor([B_ / A], dtype=torch.float64)
    assert wong_wang_rate(x).item() == pytest.approx(1.0 / D, rel=1e-12)


def test_rate_gradient_finite_and_matches_derivative() -> None:
    v = torch.tensor([*V_GRID, 1e4, -1e4, 700.0, -700.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_g_stable(v).sum(), v)
    assert torch.isfinite(grad).all()
    for x, gx in zip(v.tolist(), grad.tolist(), strict=True):
        if abs(x) >= 0.5:
            want = _slope_reference(x) if x > -700 else 0.0
            assert gx == pytest.approx(want, rel=1e-12, abs=1e-290)
        else:  # series 1/2 + v/6 − v³/180 + v⁵/5040, truncation < v⁷/151200 < 1e-12
            assert gx == pytest.approx(0.5 + x / 6 - x**3 / 180 + x**5 / 5040, rel=1e-10, abs=1e-12)
    # The naive formula has NaN value at 0 and NaN gradient at very negative v: this one does not.
    x = torch.tensor([B_ / A, -10.0, 10.0], dtype=torch.float32, requires_grad=True)
    (gx,) = torch.autograd.grad(wong_wang_rate(x).sum(), x)
    assert torch.isfinite(gx).all() and torch.isfinite(wong_wang_rate(x)).all()


def test_rate_continuous_and_monotone_across_the_singular_point() -> None:
    x = torch.linspace(B_ / A - 1e-3, B_ / A + 1e-3, 20001, dtype=torch.float64)
    h = wong_wang_rate(x)
    diffs = h.diff()
    assert (diffs > 0).all()  # H is strictly increasing
    # A jump would show as a step much larger than slope·Δx (slope = a·g'·… ≈ a/2 near the point).
    assert diffs.max().item() < 1.01 * (A / 2) * (x[1] - x[0]).item() * 1.05


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 3e-5)])
def test_adjoint_slope_matches_autograd_of_rate(dtype: torch.dtype, rtol: float) -> None:
    # Tolerances: float64 — series truncation < 1e-12; float32 — the closed form loses eps/0.02 ≈ 6e-6
    # to cancellation just outside the series region.
    v = torch.tensor(
        [*V_GRID[:-4], 0.02, -0.02, 0.0201, -0.0199, 2.5e-3, -7e-3], dtype=torch.float64, requires_grad=True
    )
    (want,) = torch.autograd.grad(_g_stable(v).sum(), v)
    u = (-v.detach()).to(dtype)
    g = (u / torch.expm1(u)).nan_to_num_(nan=1.0)
    out, *scratch = (torch.empty_like(u) for _ in range(4))
    got = _slope_from_gain_(u, g, out, *scratch)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol)


# -------------------------------------------------------------------------------------------- noise
def test_ou_noise_variance_follows_the_exact_update() -> None:
    # z_k = ρ z_{k−1} + √((1−ρ²)/2) ξ_k, z_{−1} = 0  ⇒  Var z_k = (1 − ρ^{2(k+1)})/2 → 1/2, so the
    # noise current σz has stationary variance σ²/2 whatever dt is; lag-1 correlation is ρ.
    # With sub-steps the output sample t is z at internal step (t + 1)·m − 1, and ρ_h^m = e^{−dt/τ_A}: the
    # same variances and lag-1 correlation on the output grid.
    sigma, batch = 0.02, 8000
    for dt in (1.0, 26.67):
        m = WongWang2(dt_ms=dt, max_time_s=0.3 if dt == 1.0 else 1.5)
        with torch.no_grad():
            traj = m.inference(
                torch.zeros(batch), generator=torch.Generator().manual_seed(0), return_noise=True
            )
        noise = traj.noise.double()  # (B, T, 2)
        rho = math.exp(-dt / 2.0)
        var_t = noise.var(dim=0).mean(dim=1)  # per step, over trials and both populations
        for k in range(3):
            # 2·8000 samples: relative s.e. of a variance √(2/16000) ≈ 1.1%; 5 % is > 4 s.e.
            assert var_t[k].item() == pytest.approx(sigma**2 * (1 - rho ** (2 * (k + 1))) / 2, rel=0.05)
        late = noise[:, 20:]
        assert late.var().item() == pytest.approx(sigma**2 / 2, rel=0.03)  # many steps pooled: s.e. < 1%
        lag1 = (late[:, 1:] * late[:, :-1]).mean() / late.var()
        assert lag1.item() == pytest.approx(rho, abs=0.02)


def test_deterministic_with_seed_and_identical_across_paths() -> None:
    m = WongWang2(dt_ms=5.0, max_time_s=1.0)
    a = m.simulate(6.4, 300, seed=11)
    b = m.simulate(6.4, 300, seed=11)
    c = m.simulate(6.4, 300, seed=12)
    assert torch.equal(a.rt_s, b.rt_s) and torch.equal(a.choice, b.choice)
    assert not torch.equal(a.rt_s, c.rt_s)
    # The training path (adjoint Function), the autograd reference and the no-grad path see the same noise.
    coh = torch.full((300,), 6.4)
    for mode in ("adjoint", "autograd"):
        mg = WongWang2(dt_ms=5.0, max_time_s=1.0, backward=mode)
        out = mg(coh, generator=torch.Generator().manual_seed(11))
        ref = mg.simulate(6.4, 300, seed=11)
        assert out.rt_s.requires_grad
        if mode == "adjoint":  # the same float ops in the same order: bit-identical
            assert torch.equal(out.rt_s.detach(), ref.rt_s) and torch.equal(out.choice, ref.choice)
        else:
            # The reference evaluates H with a different (equally exact) formula, so float32 round-off
            # differs; a trial near a tie may flip, but the same noise keeps almost all decisions equal.
            same = (out.choice == ref.choice) & ((out.rt_s.detach() - ref.rt_s).abs() < 0.0051)
            assert same.double().mean().item() > 0.97


# -------------------------------------------------------------------------------------------- gradients
def _grads(model: torch.nn.Module, coh: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
    coh = coh.clone().requires_grad_(True)
    out = model(coh, generator=torch.Generator().manual_seed(seed))
    weights = torch.linspace(0.5, 1.5, coh.shape[0], dtype=coh.dtype)
    ((out.rt_s * weights) ** 2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.rt_s.detach(), grads, coh.grad.clone()


@pytest.mark.parametrize("series", [False, True])
def test_adjoint_gradients_equal_autograd_reference(series: bool) -> None:
    torch.manual_seed(0)
    coh = torch.tensor([0.0, 3.2, 12.8, 51.2] * 6, dtype=torch.float64)
    if series:  # a time-series input (B, T_in) with frames shorter than the step, then stimulus off
        coh = coh[:, None] + torch.randn(coh.shape[0], 7, dtype=torch.float64) * 5
    kwargs = {"dt_ms": 5.0, "max_time_s": 1.2, "stim_duration_s": 0.8}
    results = []
    for mode in ("adjoint", "autograd"):
        m = WongWang2(backward=mode, **kwargs).double()
        results.append(_grads(m, coh, seed=3))
    (rt_a, g_a, c_a), (rt_r, g_r, c_r) = results
    torch.testing.assert_close(rt_a, rt_r, rtol=0, atol=1e-12)
    for name in g_a:
        # Same recursion, different float64 summation order (and series cut-offs of 1e-12 relative).
        torch.testing.assert_close(g_a[name], g_r[name], rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(c_a, c_r, rtol=1e-9, atol=1e-12)
    assert g_a["threshold"].abs() > 0 and g_a["J11"].abs() > 0


def test_n_population_gradients_equal_autograd_reference() -> None:
    drive = torch.tensor([[1.2, 1.0, 0.9], [1.0, 1.0, 1.0], [0.8, 1.3, 1.0]] * 5, dtype=torch.float64)
    res = []
    for mode in ("adjoint", "autograd"):
        m = WongWangN(3, dt_ms=5.0, max_time_s=1.5, backward=mode).double()
        d = drive.clone().requires_grad_(True)
        out = m(d, generator=torch.Generator().manual_seed(5))
        out.rt_s.pow(2).sum().backward()
        res.append((m.J.grad.clone(), m.sigma.grad.clone(), d.grad.clone()))
    for a, b in zip(*res, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gradient_matches_finite_differences_with_noise_fixed() -> None:
    # Smooth functional of the whole trajectory (no threshold): central differences in float64 with the
    # noise stream fixed by re-seeding. Step 1e-6 relative: truncation O(h²) ≈ 1e-12, round-off ≈ 1e-10.
    m = WongWang2(dt_ms=2.0, max_time_s=0.6).double()
    coh = torch.tensor([0.0, 6.4, 25.6, -12.8], dtype=torch.float64, requires_grad=True)
    w = torch.linspace(0, 1, 300, dtype=torch.float64)[None, :, None]

    def functional() -> torch.Tensor:
        traj = m.inference(coh, generator=torch.Generator().manual_seed(9))
        return (traj.S * w).sum() + traj.S[:, :, 0].pow(2).sum()

    functional().backward()
    params = {"J11": m.J11, "J12": m.J12, "J_ext": m.J_ext, "I0": m.I0, "sigma": m.sigma}
    with torch.no_grad():
        for name, p in params.items():
            h = 1e-6 * max(abs(p.item()), 1e-3)
            p += h
            up = functional().item()
            p -= 2 * h
            down = functional().item()
            p += h
            assert p.grad.item() == pytest.approx((up - down) / (2 * h), rel=1e-5), name
        i = 2
        h = 1e-4
        coh[i] += h
        up = functional().item()
        coh[i] -= 2 * h
        down = functional().item()
        coh[i] += h
        assert coh.grad[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5)


# -------------------------------------------------------------------------------------------- decisions
def test_window_decision_equals_full_trajectory_decision() -> None:
    m = WongWang2(dt_ms=10.0, max_time_s=1.0).double()
    coh = torch.tensor([0.0, 3.2, 12.8, 51.2] * 10, dtype=torch.float64)
    out = m(coh, generator=torch.Generator().manual_seed(2), return_trajectories=True)
    full = first_crossing_multiclass(out.trajectories, m.threshold, initial=m.s0)
    # t* = s + f: the window path adds s − 1 to (1 + f), the full search adds f to s, so the two can
    # differ by one rounding of a number ≈ T (1e-13 relative in float64); steps and choices are equal.
    torch.testing.assert_close(out.decision.tau.detach(), full.tau.detach(), rtol=1e-14, atol=0)
    assert torch.equal(out.decision.step, full.step)
    assert torch.equal(out.choice, full.choice) and torch.equal(out.decided, full.decided)
    assert out.decision.n_clamped == full.n_clamped and out.decision.n_ties == full.n_ties
    (g_win,) = torch.autograd.grad(out.decision.tau.sum(), m.threshold, retain_graph=True)
    (g_full,) = torch.autograd.grad(full.tau.sum(), m.threshold)
    torch.testing.assert_close(g_win, g_full, rtol=1e-12, atol=0)


def test_early_stop_does_not_change_decisions() -> None:
    m = WongWang2(dt_ms=2.0, max_time_s=3.0)
    coh = torch.full((64,), 51.2)
    stopped = m(coh, generator=torch.Generator().manual_seed(4))
    full = m(coh, generator=torch.Generator().manual_seed(4), return_trajectories=True)
    assert stopped.decided.all()
    assert torch.equal(stopped.rt_s, full.rt_s) and torch.equal(stopped.choice, full.choice)
    # RT convention (changed from the integer (s + 1)·dt): trajectory index t holds time (t + 1)·dt, the
    # decision time t* ∈ [s, s + 1] interpolates the crossing linearly, RT = t*·dt + motor delay.
    t_star, step = full.decision.tau, full.decision.step
    torch.testing.assert_close(full.rt_s, t_star * 0.002 + 0.1)
    first = (full.trajectories.amax(dim=2) > 0.5).float().argmax(dim=1)
    assert torch.equal(step, first)
    assert ((t_star >= step) & (t_star <= step + 1)).all()


def test_unreachable_threshold_is_reported_not_dropped() -> None:
    m = WongWang2(dt_ms=10.0, max_time_s=1.0, threshold=0.99)
    out = m(torch.tensor([0.0, 12.8, 51.2]), generator=torch.Generator().manual_seed(0))
    assert out.no_decision_rate == 1.0 and not out.decided.any()
    assert out.rt_s.shape == (3,)
    torch.testing.assert_close(out.rt_s, torch.full((3,), 1.0 + 0.1))  # censored at T·dt + delay
    out.rt_s.sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.parameters())


def test_n_population_with_two_equals_two_population_model() -> None:
    j11, j12 = 0.27, 0.06
    m2 = WongWang2(j11=j11, j12=j12, dt_ms=5.0, max_time_s=1.5).double()
    J = torch.tensor([[j11, -j12], [-j12, j11]], dtype=torch.float64)
    mn = WongWangN(2, J=J, dt_ms=5.0, max_time_s=1.5).double()
    coh = torch.tensor([0.0, 3.2, 12.8, 51.2] * 8, dtype=torch.float64)
    drive = torch.stack([1 + coh / 100, 1 - coh / 100], dim=1)
    o2 = m2(coh, generator=torch.Generator().manual_seed(8))
    on = mn(drive, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(o2.rt_s, on.rt_s, rtol=0, atol=1e-12)
    assert torch.equal(o2.choice, on.choice)
    o2.rt_s.sum().backward()
    on.rt_s.sum().backward()
    # x₁ = J₁₁S₁ − J₁₂S₂: ∂/∂J₁₁ = ∂/∂J[0,0] + ∂/∂J[1,1], ∂/∂J₁₂ = −(∂/∂J[0,1] + ∂/∂J[1,0]).
    gj = mn.J.grad
    torch.testing.assert_close(m2.J11.grad, gj[0, 0] + gj[1, 1], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(m2.J12.grad, -(gj[0, 1] + gj[1, 0]), rtol=1e-10, atol=1e-14)


def test_three_populations_favour_the_strongest_drive() -> None:
    m = WongWangN(3, dt_ms=5.0)
    out = m.simulate(torch.tensor([1.0, 1.3, 1.0]), 400, seed=1)
    counts = torch.bincount(out.choice[out.decided], minlength=3)
    assert counts.argmax().item() == 1 and counts[1] > 0.6 * out.decided.sum()


def test_constant_series_equals_constant_input_and_stimulus_switches_off() -> None:
    m = WongWang2(dt_ms=26.67, max_time_s=2.0)
    coh = torch.tensor([3.2, 12.8, 51.2] * 10)
    const = m(coh, generator=torch.Generator().manual_seed(1))
    series = m(coh[:, None].expand(-1, 150), generator=torch.Generator().manual_seed(1))
    assert torch.equal(const.rt_s, series.rt_s) and torch.equal(const.choice, series.choice)
    # 150 frames at 75 Hz over 2 s and dt = 2 frames, each output step integrated in 27 internal steps of
    # 0.988 ms: the first internal step of output step j reads frame 2j, the last internal step (starting
    # at 1999.0 ms) frame 149; an internal step reads the frame its start falls in.
    grid = m._grid(26.67, 2.0, 150, None)
    assert grid.n_steps == 75 and grid.n_sub == 27 and grid.n_internal == 75 * 27
    assert grid.frame_of_step[::27][:4] == [0, 2, 4, 6] and grid.frame_of_step[-1] == 149
    h = 26.67 / 27
    assert all(f == min(149, int(k * h // (2000 / 150))) for k, f in enumerate(grid.frame_of_step))
    off = WongWang2(dt_ms=5.0, max_time_s=1.0, stim_duration_s=0.0)
    a = off(torch.zeros(50), generator=torch.Generator().manual_seed(3))
    b = off(torch.full((50,), 51.2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.rt_s, b.rt_s)  # no stimulus ⇒ the coherence cannot matter


def test_inference_returns_rates_consistent_with_the_update() -> None:
    m = WongWang2(dt_ms=1.0, max_time_s=0.2).double()
    traj = m.inference(
        torch.tensor([12.8, -3.2], dtype=torch.float64),
        generator=torch.Generator().manual_seed(0),
        return_noise=True,
        return_rate=True,
    )
    s = torch.cat([torch.full_like(traj.S[:, :1], 0.1), traj.S], dim=1)
    # Euler: S_{k+1} − S_k = dt(−S_k/τ_S + (1 − S_k)γH_k/1000) — checks H, the noise and the grid at once.
    step = s[:, 1:] - s[:, :-1]
    want = 1.0 * (-s[:, :-1] / 100.0 + (1 - s[:, :-1]) * 0.641 * traj.H / 1000.0)
    torch.testing.assert_close(step, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(traj.time_s[:3], torch.tensor([0.001, 0.002, 0.003], dtype=torch.float64))


# -------------------------------------------------------------------------------------------- behaviour
def _summary(m: WongWang2, c: float, n: int, seed: int, dt: float) -> tuple[float, float, float]:
    out = m.simulate(c, n, seed=seed, dt_ms=dt)
    d = out.decided
    correct = d & (out.choice == 0)
    error = d & (out.choice == 1)
    acc = correct.sum().item() / d.sum().item()
    return acc, out.rt_s[correct].mean().item(), out.rt_s[error].mean().item() if error.any() else math.nan


def test_classic_behaviour_at_fine_dt_fast() -> None:
    m = WongWang2(dt_ms=1.0)
    acc32, rt32, err32 = _summary(m, 3.2, 1000, 0, 1.0)
    acc128, rt128, _ = _summary(m, 12.8, 600, 1, 1.0)
    acc512, rt512, _ = _summary(m, 51.2, 400, 2, 1.0)
    # Expected ≈ .72 / .99 / 1.0; binomial s.e. ≤ .015, so these margins are > 5 s.e.
    assert acc32 < acc128 - 0.15 and acc512 >= 0.99 and acc128 > 0.95
    # Mean correct RT ≈ .79 / .63 / .40 s, s.e. ≈ .01.
    assert rt32 > rt128 + 0.08 > rt512 + 0.16
    # Errors slower than correct (≈ .88 vs .79 s at 3.2 %; s.e. of the difference ≈ .02).
    assert err32 > rt32 + 0.03


def test_published_single_step_loses_accuracy_at_coarse_dt_but_sub_steps_do_not() -> None:
    # With one Euler step per dt (the published scheme, max_substep_ms=None) each noise sample is held for
    # 26.67 ms instead of τ_A = 2 ms, inflating the integrated noise ~7×: accuracy at 12.8 % drops from
    # ≈ .99 to ≈ .82. With the default sub-steps (h ≤ 1 ms) dt is only the output grid. s.e. ≈ .012 here.
    published = WongWang2(max_substep_ms=None)
    fine, _, _ = _summary(published, 12.8, 800, 0, 1.0)
    coarse, _, _ = _summary(published, 12.8, 800, 0, 26.67)
    assert fine - coarse > 0.1
    sub_stepped, _, _ = _summary(WongWang2(), 12.8, 800, 0, 26.67)
    assert abs(sub_stepped - fine) < 0.05


def _accuracy_and_decision_time(m: WongWang2, c: float, n: int, seed: int, dt: float) -> tuple[float, ...]:
    """Accuracy and mean decision time (RT − motor delay, s) of decided trials, with their standard errors."""
    out = m.simulate(c, n, seed=seed, dt_ms=dt)
    d = out.decided
    correct = (out.choice[d] == 0).double()
    dtime = (out.rt_s[d] - m.motor_delay_s).double()
    k = int(d.sum())
    acc = correct.mean().item()
    return acc, math.sqrt(acc * (1 - acc) / k), dtime.mean().item(), dtime.std().item() / math.sqrt(k)


@pytest.mark.parametrize("coherence", [6.4, 51.2])
def test_output_dt_of_10_ms_and_1_ms_agree_within_sampling_error(coherence: float) -> None:
    # Independent seeds, 4000 trials each: the difference of two estimates has s.e. √(se₁² + se₂²) and must
    # stay within 4 of them (two-sided false-alarm rate 6e-5 per comparison; s.e. ≈ .007 for accuracy and
    # ≈ 4 ms for the mean decision time at 6.4 %, 0 and ≈ 1 ms at 51.2 %). The floor of 1e-3 on the
    # accuracy tolerance covers 51.2 %, where both accuracies are 1 and the s.e. is 0. Output dt = 10 ms
    # reads the crossing off a 10-ms grid (interpolated), which biases the decision time by < 1 ms.
    m = WongWang2()
    n = 4000
    a10, sa10, t10, st10 = _accuracy_and_decision_time(m, coherence, n, 1, 10.0)
    a1, sa1, t1, st1 = _accuracy_and_decision_time(m, coherence, n, 2, 1.0)
    assert abs(a10 - a1) < max(4 * math.hypot(sa10, sa1), 1e-3)
    assert abs(t10 - t1) < 4 * math.hypot(st10, st1)
    # Before sub-stepping (one Euler step per output dt; dt = 1 ms is the same model either way) the two
    # disagreed far beyond that: accuracy .77 at 10 ms against .87 at 1 ms at 6.4 % (15 s.e.), the mean
    # decision time 301.5 against 294.4 ms at 51.2 % (8.6 s.e.).
    old = WongWang2(max_substep_ms=None)
    o10, so10, u10, su10 = _accuracy_and_decision_time(old, coherence, n, 1, 10.0)
    if coherence == 6.4:
        assert a1 - o10 > 8 * math.hypot(so10, sa1)
    else:
        assert u10 - t1 > 5 * math.hypot(su10, st1)


def test_same_seed_gives_the_same_internal_trajectory_at_any_output_dt() -> None:
    # dt = 10 ms and dt = 1 ms both integrate with h = 1 ms and the same noise stream: the coarse output
    # rows are exactly every tenth fine row, and both runs make the same choices.
    fine = WongWang2(dt_ms=1.0).trajectories(6.4, 40, seed=5, grad=False)
    coarse = WongWang2(dt_ms=10.0).trajectories(6.4, 40, seed=5, grad=False)
    assert coarse.shape == (40, 200, 2) and torch.equal(coarse, fine[:, 9::10])
    a = WongWang2(dt_ms=1.0).simulate(6.4, 40, seed=5)
    b = WongWang2(dt_ms=10.0).simulate(6.4, 40, seed=5)
    assert torch.equal(a.choice, b.choice) and torch.equal(a.decided, b.decided)
    # The coarse grid samples the same path, so it sees a crossing no earlier than the fine grid (it can see
    # it later when S dips back below θ between two coarse samples), and the interpolated decision times
    # (in ms) differ by less than one coarse step here.
    fine_ms = a.decision.step + 1  # the first fine sample past θ is at (s_fine + 1) ms
    assert (fine_ms <= (b.decision.step + 1) * 10).all()
    assert (b.decision.tau * 10 - a.decision.tau).abs().max() < 10


def test_classic_behaviour_full_sweep_and_dt_convergence() -> None:
    # 7 × 4000 trials at dt = 1 ms take ~2 s thanks to early stopping, so this runs by default.
    m = WongWang2()
    coh = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2]
    rows = [_summary(m, c, 4000, i, 1.0) for i, c in enumerate(coh)]
    accs = [r[0] for r in rows]
    rts = [r[1] for r in rows]
    # Neighbouring coherences differ by ≥ .03 in expectation except at the top (.98 → 1.0); s.e. ≤ .008.
    assert all(b > a - 0.02 for a, b in itertools.pairwise(accs))
    assert accs[0] < 0.6 and accs[-1] >= 0.995
    assert all(b < a + 0.01 for a, b in itertools.pairwise(rts)) and rts[0] > rts[-1] + 0.3
    assert all(r[2] > r[1] for r in rows[:5])  # errors slower wherever there are enough errors
    # Halving dt changes accuracy at 12.8 % by < .02 (Euler is converged at 1 ms); s.e. of the diff. ≈ .003.
    acc_half, _, _ = _summary(m, 12.8, 4000, 4, 0.5)
    assert abs(acc_half - accs[4]) < 0.02


# -------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dt_ms": 0.0}, "dt_ms"),
        ({"dt_ms": -1.0}, "dt_ms"),
        ({"dt_ms": 120.0}, "dt_ms"),
        ({"max_time_s": 0.0}, "max_time_s"),
        ({"stim_duration_s": -1.0}, "stim_duration_s"),
        ({"backward": "euler"}, "backward"),
    ],
)
def test_bad_construction_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        WongWang2(**kwargs)


def test_bad_inputs_raise() -> None:
    m = WongWang2(dt_ms=10.0, max_time_s=0.5)
    with pytest.raises(PerceptAlignError, match=r"torch\.Tensor"):
        m([1.0, 2.0])
    with pytest.raises(PerceptAlignError, match="floating-point"):
        m(torch.tensor([1, 2]))
    with pytest.raises(PerceptAlignError, match="NaN"):
        m(torch.tensor([1.0, math.nan]))
    with pytest.raises(PerceptAlignError, match="shape"):
        m(torch.zeros(2, 3, 4))
    with pytest.raises(PerceptAlignError, match="empty batch"):
        m(torch.zeros(0))
    with pytest.raises(PerceptAlignError, match="n_trials"):
        m.simulate(3.2, 0)
    with pytest.raises(PerceptAlignError, match="coherence_pct"):
        m.simulate(math.inf, 10)
    with pytest.raises(PerceptAlignError, match="seed"):
        m.simulate(3.2, 10, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="dt_ms"):
        m.simulate(3.2, 10, dt_ms=0.0)
    with torch.no_grad():
        m.sigma.fill_(math.nan)
    with pytest.raises(PerceptAlignError, match="sigma"):
        m(torch.zeros(3))
    n = WongWangN(3)
    with pytest.raises(PerceptAlignError, match=r"\(B, 3\)"):
        n(torch.zeros(4, 2))
    with pytest.raises(PerceptAlignError, match="one condition"):
        n.simulate(torch.ones(2, 3), 5)
    with pytest.raises(PerceptAlignError, match="n_pop"):
        WongWangN(0)
    with pytest.raises(PerceptAlignError, match=r"\(3, 3\)"):
        WongWangN(3, J=torch.zeros(2, 2))


# ------------------------------------------------------------------------------ fast-path equivalences
# The hot loop avoids redundant work (rolling buffer, pre-scaled noise, chunked draws, NaN replay,
# patched slope, elementwise window decision); each shortcut must give exactly what the plain ordering
# of the same float operations gives, so these tests compare with equality, not tolerances.


def _reference_noise(n_steps: int, shape: tuple[int, int], cn: float, rho: float, seed: int) -> torch.Tensor:
    """Unit OU noise as specified: one randn per 64-step block, z_k = cn·ξ_k + ρ·z_{k−1}, z_{−1} = 0."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty((n_steps, *shape))
    prev = torch.zeros(shape)
    for k0 in range(0, n_steps, 64):
        xi = torch.randn((min(64, n_steps - k0), *shape), generator=gen)
        for j, x in enumerate(xi):
            prev = (x * cn).add_(prev, alpha=rho)
            out[k0 + j] = prev
    return out


@pytest.mark.parametrize("batch,dt", [(7, 1.0), (300, 26.67), (1, 3.0), (10, 0.5)])
def test_noise_stream_is_one_randn_per_block_then_exact_ou(batch: int, dt: float) -> None:
    # The stream lives on the internal grid (h = dt/m ≤ 1 ms); the returned noise is that of the last
    # internal step of each output step.
    m = WongWang2(dt_ms=dt, max_time_s=0.5 if dt < 5 else 3.0)
    traj = m.inference(torch.zeros(batch), generator=torch.Generator().manual_seed(5), return_noise=True)
    sub = m.substeps()
    assert sub == max(1, math.ceil(dt))
    rho = math.exp(-dt / sub / 2.0)
    n_int = traj.noise.shape[1] * sub
    want = _reference_noise(n_int, (2, batch), math.sqrt((1 - rho * rho) / 2), rho, 5)[sub - 1 :: sub]
    z = (traj.noise / m.sigma.detach()).permute(1, 2, 0)
    # σz / σ is z up to one rounding of the product and one of the quotient (≤ 2 ulp).
    torch.testing.assert_close(z, want, rtol=3e-7, atol=0)


@pytest.mark.parametrize("per_step", [1, 2, 7, 14, 16, 20_000])
@pytest.mark.parametrize("steps", [1, 5, 16, 17, 33, 64])
def test_chunked_prescaled_draws_reproduce_one_randn_times_scale(per_step: int, steps: int) -> None:
    from perceptalign.rtify.wongwang_engine import draw_scaled_noise as _draw_scaled_noise
    from perceptalign.rtify.wongwang_engine import noise_pieces as _noise_pieces

    scale = 0.4321
    ref = torch.Generator().manual_seed(3)
    want = torch.randn((steps, per_step), generator=ref) * scale
    got = torch.empty_like(want)
    gen = torch.Generator().manual_seed(3)
    pieces = _noise_pieces(0, steps, per_step, split=True)
    assert pieces[0][0] == 0 and pieces[-1][1] == steps
    assert all(a2 == b1 for (_, b1), (a2, _) in itertools.pairwise(pieces))
    for a, b in pieces:
        _draw_scaled_noise(got[a:b], scale, gen)
    assert torch.equal(got, want)  # same stream, same rounding: the installed torch's normal_ layout
    assert torch.equal(gen.get_state(), ref.get_state())  # and the generator ends where one call leaves it


def _decisions(out) -> tuple:
    d = out.decision
    return (out.rt_s.detach(), out.choice, out.decided, d.n_ties, d.n_clamped)


def _assert_same_decisions(a, b) -> None:
    for x, y in zip(_decisions(a), _decisions(b), strict=True):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


@pytest.mark.parametrize(
    "n_pop,dt,tmax,threshold",
    [(2, 1.0, 0.7, 0.5), (2, 26.67, 2.0, 0.5), (3, 5.0, 1.0, 0.5), (1, 2.0, 0.2, 0.3), (2, 1.0, 0.05, 0.1)],
)
def test_decision_only_run_equals_full_trajectory_and_training_paths(
    n_pop: int, dt: float, tmax: float, threshold: float
) -> None:
    # Mixed batch: fast and slow deciders, undecided trials (short tmax), τ = 0 crossings (θ = 0.1 is
    # exceeded at the first step), an odd batch size and a partial last chunk.
    torch.manual_seed(0)
    drive = 1.0 + 0.3 * torch.rand(301, n_pop)
    m = WongWangN(n_pop, dt_ms=dt, max_time_s=tmax, threshold=threshold)
    with torch.no_grad():
        rolling = m(drive, generator=torch.Generator().manual_seed(1))
        full = m(drive, generator=torch.Generator().manual_seed(1), return_trajectories=True)
    trained = m(drive, generator=torch.Generator().manual_seed(1))  # adjoint path, full store
    assert trained.rt_s.requires_grad
    _assert_same_decisions(rolling, full)
    _assert_same_decisions(rolling, trained)
    ref = first_crossing_multiclass(full.trajectories, m.threshold.detach(), initial=m.s0)
    # Same steps and choices; t* equal up to one float32 rounding of a number ≈ T (see the window test).
    assert torch.equal(rolling.decision.step, ref.step) and torch.equal(rolling.choice, ref.choice)
    torch.testing.assert_close(rolling.decision.tau, ref.tau, rtol=2.5e-7, atol=0)
    assert rolling.decision.n_ties == ref.n_ties and rolling.decision.n_clamped == ref.n_clamped
    if threshold == 0.1:
        assert (rolling.decision.step == 0).any()
    elif tmax < 1.0:
        assert 0 < rolling.no_decision_rate < 1


def test_ties_and_overshoot_rule_match_the_decision_module() -> None:
    # σ = 0 and two equally driven populations per trial: both cross θ at the same step (a tie); the
    # larger overshoot wins (they can differ by an ulp through the coupling's summation order), then the
    # lower index. The weaker third population never wins.
    m = WongWangN(3, dt_ms=5.0, max_time_s=1.5, sigma=0.0, threshold=0.3)
    drive = torch.tensor([[1.5, 1.5, 1.0], [1.0, 1.5, 1.5], [1.5, 1.0, 1.5]]).repeat(5, 1)
    with torch.no_grad():
        out = m(drive, generator=torch.Generator().manual_seed(0))
        full = m(drive, generator=torch.Generator().manual_seed(0), return_trajectories=True)
    ref = first_crossing_multiclass(full.trajectories, m.threshold.detach(), initial=m.s0)
    assert out.decided.all() and out.decision.n_ties == ref.n_ties == 15
    assert torch.equal(out.choice, ref.choice) and torch.equal(out.decision.step, ref.step)
    assert all(drive[i, c] == 1.5 for i, c in enumerate(out.choice.tolist()))


def test_first_argmax_keeps_the_first_maximum() -> None:
    from perceptalign.rtify.wongwang_engine import first_argmax as _first_argmax

    for n in (2, 3, 9):
        values = torch.randint(0, 3, (n, 500)).float()
        values[:, :5] = -math.inf
        assert torch.equal(_first_argmax(values), values.argmax(dim=0))  # argmax: first maximal index


def test_early_stop_leaves_the_generator_where_full_block_draws_would() -> None:
    # Later calls sharing the generator must see the same stream whatever the stopping point.
    m = WongWang2(dt_ms=1.0, max_time_s=2.0)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        out = m(torch.full((50,), 51.2), generator=gen)
    blocks = int(out.decision.step.max()) // 64 + 1
    assert out.decided.all() and blocks < 2000 // 64  # it did stop early
    ref = torch.Generator().manual_seed(9)
    for _ in range(blocks):
        torch.randn(64 * 2 * 50, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def _zero_input_current_i0() -> float:
    """An I₀ (float64) with −(a d I₀ − b d) == 0 exactly, so u = 0 every step when J = σ = 0, no input."""
    ad, bd = A * D, B_ * D
    i0 = bd / ad
    for _ in range(1000):
        v = i0 * -ad + bd
        if v == 0.0:
            return i0
        i0 = math.nextafter(i0, math.inf if v > 0 else -math.inf)
    raise AssertionError("no exact zero found")


def test_exact_zero_input_is_replayed_with_the_limit_rate() -> None:
    # u = 0 exactly makes g = u/expm1(u) = 0/0; the loop does not screen it per step but replays the
    # chunk with the limit g = 1 (H = 1/d). S then follows the deterministic Euler recursion below.
    # Output dt = 2 ms: two internal steps of 1 ms each; the output rows are every second internal state.
    dt, h = 2.0, 1.0
    m = WongWangN(1, J=torch.zeros(1, 1), dt_ms=dt, max_time_s=0.4, stim_duration_s=0.0, sigma=0.0)
    m = m.double()
    with torch.no_grad():
        m.I0.fill_(_zero_input_current_i0())
    traj = m.inference(torch.zeros(4, 1, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    s, want = 0.1, []
    for _ in range(2 * traj.S.shape[1]):
        s = s + h * (-s / 100.0 + (1 - s) * 0.641 * (1 / D) / 1000.0)
        want.append(s)
    want_t = torch.tensor(want[1::2], dtype=torch.float64).expand(4, -1)
    torch.testing.assert_close(traj.S[..., 0], want_t, rtol=1e-12, atol=0)  # float64 round-off only
    with torch.no_grad():
        out = m(torch.zeros(4, 1, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    first = int((want_t[0] > 0.5).nonzero()[0]) if (want_t[0] > 0.5).any() else None
    assert torch.isfinite(out.rt_s).all()
    assert (
        (out.decided.all() and int(out.decision.step[0]) == first)
        if first is not None
        else not out.decided.any()
    )
    # The training path stores g and must see the same replayed values.
    mg = WongWangN(1, J=torch.zeros(1, 1), dt_ms=dt, max_time_s=0.4, stim_duration_s=0.0, sigma=0.0).double()
    with torch.no_grad():
        mg.I0.fill_(m.I0.item())
    tr = mg.inference(torch.zeros(4, 1, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert tr.S.requires_grad and torch.equal(tr.S.detach(), traj.S)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_patched_slope_is_bit_identical_to_the_blended_one(dtype: torch.dtype) -> None:
    from perceptalign.rtify.wongwang_engine import SlopePatch as _SlopePatch
    from perceptalign.rtify.wongwang_engine import slope_closed_ as _slope_closed_

    torch.manual_seed(0)
    u = torch.cat([torch.randn(3000, dtype=dtype) * 0.03, torch.randn(3000, dtype=dtype) * 3]).view(
        3, 2, 1000
    )
    u.view(-1)[:7] = torch.tensor([0.0, -0.0, 0.0199, -0.0199, 0.02, -0.02, 1e-30], dtype=dtype)
    g = (u / torch.expm1(u)).nan_to_num_(nan=1.0)
    patch = _SlopePatch(u, g)
    one = torch.tensor(1.0, dtype=dtype)
    for k in range(3):
        got = torch.empty_like(u[k])
        _slope_closed_(u[k], g[k], got, one)
        patch.apply_(k, got)
        want = torch.empty_like(u[k])
        scratch = [torch.empty_like(u[k]) for _ in range(3)]
        _slope_from_gain_(u[k], g[k], want, *scratch)
        assert torch.equal(got, want)
    assert len(patch.values) > 100  # the series region was exercised


def test_bad_min_slope_raises() -> None:
    for bad in (0.0, -1e-3, math.inf, math.nan):
        with pytest.raises(PerceptAlignError, match="min_slope"):
            WongWang2(min_slope=bad)


# ------------------------------------------------------------------------ decision-time convention
def test_decision_time_gradient_is_the_derivative_of_the_interpolated_crossing() -> None:
    # t* = s + (θ − S_{s−1})/(S_s − S_{s−1}) with S_{−1} = s0: with the noise fixed by the seed, a step
    # in θ or a parameter small enough to leave every decision step s unchanged moves t* smoothly, and
    # central differences (float64, h = 1e-6 relative: truncation ≈ 1e-12) equal the backward pass.
    m = WongWang2(dt_ms=10.0, max_time_s=1.5).double()
    coh = torch.tensor([0.0, 3.2, 12.8, 51.2] * 5, dtype=torch.float64)
    w = torch.linspace(0.5, 1.5, coh.shape[0], dtype=torch.float64)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        out = m(coh, generator=torch.Generator().manual_seed(6))
        return (out.rt_s * w).sum(), out.decision.step

    value, step = run()
    value.backward()
    assert 0 < int((step < 149).sum()) < len(coh) + 1
    with torch.no_grad():
        for name in ("threshold", "I0", "J_ext", "J11", "sigma"):
            p = getattr(m, name)
            h = 1e-6 * abs(p.item())
            p += h
            up, s_up = run()
            p -= 2 * h
            down, s_down = run()
            p += h
            assert torch.equal(s_up, step) and torch.equal(s_down, step), name
            assert p.grad.item() == pytest.approx((up - down).item() / (2 * h), rel=1e-6), name
    # ∂t*/∂θ = 1/Δ exactly (dt = 10 ms: ∂RT/∂θ = 0.01/Δ), Δ the winner's last-step rise.
    out = m(coh, generator=torch.Generator().manual_seed(6), return_trajectories=True)
    (g,) = torch.autograd.grad(out.rt_s[0], m.threshold)
    s = int(out.decision.step[0])
    level = out.trajectories[0, :, int(out.choice[0])].detach()
    before = level[s - 1] if s > 0 else torch.tensor(m.s0, dtype=torch.float64)
    assert g.item() == pytest.approx(0.01 / (level[s] - before).item(), rel=1e-12)


def test_first_step_crossing_interpolates_from_the_initial_state() -> None:
    # θ = 0.1005 just above s0 = 0.1: trials cross at the first output step, and t* interpolates from
    # S_{−1} = s0 (not from 0), so t* = (θ − s0)/(S_0 − s0) ∈ (0, 1].
    m = WongWang2(dt_ms=5.0, max_time_s=0.5, threshold=0.1005, sigma=0.0)
    out = m(torch.full((4,), 51.2), generator=torch.Generator().manual_seed(0), return_trajectories=True)
    assert (out.decision.step == 0).all()
    s_first = out.trajectories[:, 0, 0]
    want = (0.1005 - 0.1) / (s_first - 0.1)
    torch.testing.assert_close(out.decision.tau, want)
    torch.testing.assert_close(out.rt_s, want * 0.005 + 0.1)


# ----------------------------------------------------------------------- differentiable trajectories
@pytest.mark.parametrize("dt", [1.0, 10.0])
def test_trajectories_are_differentiable_and_equal_the_fast_path(dt: float) -> None:
    m = WongWang2(dt_ms=dt, max_time_s=0.8)
    S = m.trajectories(12.8, 30, seed=4)
    assert S.shape == (30, round(800 / dt), 2) and S.requires_grad
    fast = m.trajectories(12.8, 30, seed=4, grad=False)
    decided = m.simulate(12.8, 30, seed=4, return_trajectories=True)
    assert not fast.requires_grad
    assert torch.equal(S.detach(), fast) and torch.equal(decided.trajectories, fast)  # same seed, same S
    (S[:, :, 0] - S[:, :, 1]).pow(2).sum().backward()
    for name in ("I0", "J_ext", "sigma", "J11", "J12"):
        assert getattr(m, name).grad is not None and getattr(m, name).grad.abs() > 0, name
    assert m.threshold.grad is None  # θ does not enter S
    # The plain-autograd reference path integrates the same recursion and noise.
    ref = WongWang2(dt_ms=dt, max_time_s=0.8, backward="autograd").trajectories(12.8, 30, seed=4)
    torch.testing.assert_close(ref, S, rtol=0, atol=2e-5)


def test_trajectories_feed_a_soft_first_passage_estimator() -> None:
    from perceptalign.rtify.decision import first_passage, rt_seconds

    m = WongWang2(dt_ms=10.0, max_time_s=1.5)
    S = m.trajectories(torch.tensor([6.4, 25.6] * 20), generator=torch.Generator().manual_seed(1))
    passage = first_passage(S, m.threshold, mode="race", temperature=0.2, initial=m.s0)
    rt = rt_seconds(passage.time, 0.01, m.motor_delay_s)
    mean_rt = (passage.mass * rt).sum() / passage.mass.sum()
    mean_rt.backward()
    for name in ("threshold", "I0", "J_ext", "sigma"):
        assert torch.isfinite(getattr(m, name).grad) and getattr(m, name).grad.abs() > 0, name
    # At this temperature the soft distribution sits on the hard decisions.
    hard = m(torch.tensor([6.4, 25.6] * 20), generator=torch.Generator().manual_seed(1))
    soft_rt = (passage.mass * rt).sum(dim=(1, 2)) / passage.decided_mass
    torch.testing.assert_close(soft_rt.detach(), hard.rt_s.detach(), rtol=0, atol=0.01)
    with pytest.raises(PerceptAlignError, match="n_trials"):
        m.trajectories(6.4)
