"""Decision times: closed forms of the interpolated crossing t* and its two gradient rules, finite
differences, censoring, slope clamping, ties, t = 0, a slow reference implementation, and the soft
first-passage estimator (its T → 0 limit, its autograd, its unbiasedness where pathwise rules fail)."""

from __future__ import annotations

import math

import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import (
    Decision,
    first_crossing,
    first_crossing_multiclass,
    first_crossing_two_bound,
    first_passage,
    rt_seconds,
)


@pytest.fixture(autouse=True)
def _float64():
    """float64 so that finite differences below are accurate to ~1e-9; restored for other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _ramp(slopes: torch.Tensor, steps: int) -> torch.Tensor:
    """Φ_t = a·t for t = 0..T−1, one row per slope."""
    return slopes.unsqueeze(-1) * torch.arange(steps, dtype=slopes.dtype)


# ----------------------------------------------------------------------------- single accumulator
def test_linear_accumulator_matches_closed_form() -> None:
    a = torch.tensor([0.07, 0.13, 0.31, 0.5, 0.9], requires_grad=True)
    theta = torch.full((5,), 1.37, requires_grad=True)
    d = first_crossing(_ramp(a, 60), theta)
    # first t with a·t > θ (strict) is floor(θ/a) + 1 when θ/a is not an integer (true for these values)
    step = torch.floor(1.37 / a.detach()) + 1
    assert torch.equal(d.step.double(), step)
    # index t is the state at time t + 1, so Φ(u) = a(u − 1) crosses θ at u = θ/a + 1 exactly
    torch.testing.assert_close(d.tau.detach(), 1.37 / a.detach() + 1, rtol=1e-12, atol=0)
    assert d.decided.all() and d.n_clamped == 0 and d.no_decision_rate == 0.0
    d.tau.sum().backward()
    # interpolated rule = the exact derivative of t* = θ/a + 1: 1/a and −θ/a² (float rounding only)
    torch.testing.assert_close(theta.grad, 1 / a.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(a.grad, -1.37 / a.detach() ** 2, rtol=1e-12, atol=0)
    # the published implicit rule: dτ/dθ = 1/Φ̇ too, but dτ/da = −(∂Φ_s/∂a)/Φ̇ = −s/a
    a2 = a.detach().clone().requires_grad_(True)
    first_crossing(_ramp(a2, 60), 1.37, gradient="implicit").tau.sum().backward()
    torch.testing.assert_close(a2.grad, -step / a.detach(), rtol=1e-12, atol=0)


def test_scalar_threshold_gradient_is_sum_of_per_trial_gradients() -> None:
    a = torch.tensor([0.2, 0.3, 0.45])
    theta = torch.tensor(1.1, requires_grad=True)
    first_crossing(_ramp(a, 30), theta).tau.sum().backward()
    torch.testing.assert_close(theta.grad, (1 / a).sum(), rtol=1e-12, atol=0)


def test_crossing_is_strict() -> None:
    # Φ touches θ = 1 exactly at t = 1 and exceeds it at t = 2: touching is not deciding.
    d = first_crossing(torch.tensor([[0.0, 1.0, 2.0]]), 1.0)
    assert d.step.item() == 2 and d.tau.item() == 2.0  # interpolation from Φ_1 = θ: f = 0


@pytest.mark.parametrize("gradient", ["interpolated", "implicit"])
def test_gradient_is_zero_except_at_the_bracketing_samples(gradient: str) -> None:
    phi = torch.cumsum(torch.rand(4, 40) + 0.05, dim=1).requires_grad_(True)
    d = first_crossing(phi, 5.0, gradient=gradient)
    d.tau.sum().backward()
    idx = d.step[:, None]
    at, before = phi.detach().gather(1, idx), phi.detach().gather(1, idx - 1)
    slope, frac = at - before, (5.0 - before) / (at - before)
    expected = torch.zeros_like(phi)
    if gradient == "implicit":  # the published rule: everything on Φ_s
        expected.scatter_(1, idx, -1 / slope)
    else:  # ∂t*/∂Φ_s = −f/Δ, ∂t*/∂Φ_{s−1} = −(1 − f)/Δ
        expected.scatter_(1, idx, -frac / slope)
        expected.scatter_(1, idx - 1, -(1 - frac) / slope)
    torch.testing.assert_close(phi.grad, expected, rtol=1e-12, atol=0)


def _smooth_increments(n_trials: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth positive per-step series g_t (scaled by w) and b_t: e_t(w) = w·g_t + b_t."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float64)

    def series() -> torch.Tensor:
        amp = torch.rand(n_trials, 3, 1, generator=gen) * 0.3
        freq = torch.rand(n_trials, 3, 1, generator=gen) * 0.05
        phase = torch.rand(n_trials, 3, 1, generator=gen) * 6.3
        return 1.0 + (amp * torch.sin(freq * t + phase)).sum(1)  # in [0.1, 1.9]: positive, slowly varying

    return series() * 0.02, series() * 0.02


def _interpolated_crossing(phi: torch.Tensor, theta: float) -> torch.Tensor:
    """t* = s + (θ − Φ_{s−1})/(Φ_s − Φ_{s−1}), written directly from the documented convention."""
    out = []
    for row in phi:
        s = int(torch.nonzero(row > theta)[0])
        prev = row[s - 1] if s > 0 else torch.tensor(0.0)
        out.append(s + (theta - prev) / (row[s] - prev))
    return torch.stack(out)


def test_gradients_agree_with_finite_differences_of_interpolated_crossing() -> None:
    g, b = _smooth_increments(8, 400, seed=3)
    w0, theta0, eps = 1.3, 2.0, 1e-6
    w = torch.tensor(w0, requires_grad=True)
    theta = torch.full((8,), theta0, requires_grad=True)
    phi = torch.cumsum(w * g + b, dim=1)
    d = first_crossing(phi, theta)
    assert d.decided.all()
    grad_w = torch.stack([torch.autograd.grad(d.tau[i], w, retain_graph=True)[0] for i in range(8)])
    d.tau.sum().backward(inputs=[theta])

    def t_star(w_val: float, th_val: float) -> torch.Tensor:
        return _interpolated_crossing(torch.cumsum(w_val * g + b, dim=1), th_val)

    # ε = 1e-6 never moves the integer crossing here (checked below), so central differences of the smooth
    # t* are accurate to O(ε²·t*''') + rounding ~1e-9 relative.
    for sign in (1, -1):
        moved = first_crossing(torch.cumsum((w0 + sign * eps) * g + b, 1), theta0 + sign * eps).step
        assert torch.equal(moved, d.step)
    torch.testing.assert_close(d.tau.detach(), t_star(w0, theta0), rtol=1e-12, atol=0)
    fd_theta = (t_star(w0, theta0 + eps) - t_star(w0, theta0 - eps)) / (2 * eps)
    fd_w = (t_star(w0 + eps, theta0) - t_star(w0 - eps, theta0)) / (2 * eps)
    # The interpolated rule IS the derivative of t* w.r.t. θ and w: only the FD error (~1e-9) remains.
    torch.testing.assert_close(theta.grad, fd_theta, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_w, fd_w, rtol=1e-6, atol=1e-9)


def test_never_crossing_trials_are_censored_with_exactly_zero_gradient() -> None:
    phi = torch.cumsum(torch.tensor([[0.5] * 10, [0.01] * 10, [0.3] * 10]), dim=1).requires_grad_(True)
    theta = torch.tensor(2.0, requires_grad=True)
    d = first_crossing(phi, theta)
    assert d.decided.tolist() == [True, False, True]
    assert d.tau[1].item() == 10.0 and d.step[1].item() == 9  # censored at the end of the window (T)
    assert math.isclose(d.no_decision_rate, 1 / 3)
    d.tau[1].backward()
    assert torch.count_nonzero(phi.grad) == 0 and theta.grad.item() == 0.0
    assert not torch.isnan(phi.grad).any()


def test_slope_is_clamped_and_counted() -> None:
    # Φ creeps across θ = 1 with a slope of 1e-6: the published −1/(Φ̇ + 1e−6) would give −5e5.
    phi = torch.tensor([[0.0, 0.9999995, 1.0000005, 2.0], [0.0, 0.5, 1.5, 2.5]], requires_grad=True)
    d = first_crossing(phi, 1.0, min_slope=1e-3, gradient="implicit")
    assert d.n_clamped == 1
    d.tau.sum().backward()
    assert phi.grad[0, 2].item() == pytest.approx(-1e3)
    assert phi.grad[1, 2].item() == pytest.approx(-1.0)
    # interpolated: f = (θ − Φ_1)/1e-3 = 5e-4 on the clamped row, 0.5 on the other
    phi.grad = None
    first_crossing(phi, 1.0, min_slope=1e-3).tau.sum().backward()
    assert phi.grad[0, 2].item() == pytest.approx(-0.5) and phi.grad[0, 1].item() == pytest.approx(-999.5)
    assert phi.grad[1, 2].item() == pytest.approx(-0.5) and phi.grad[1, 1].item() == pytest.approx(-0.5)


def test_crossing_at_t0_uses_empty_accumulator_as_previous_value() -> None:
    e = torch.tensor([[2.5, 0.1, 0.1], [0.4, 0.1, 3.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0], requires_grad=True)
    d = first_crossing(torch.cumsum(e, 1), theta)
    assert d.step.tolist() == [0, 2]
    # from Φ_{−1} = 0 at time 0: t* = 1/2.5; second row from Φ_1 = 0.5 to Φ_2 = 3.5: 2 + 0.5/3
    torch.testing.assert_close(d.tau.detach(), torch.tensor([0.4, 2 + 0.5 / 3]), rtol=1e-12, atol=0)
    d.tau.sum().backward()
    # Φ_{−1} := 0, so the slope at τ = 0 is Φ_0 = e_0 and dτ/dθ = 1/e_0 — as for any other step, 1/e_τ.
    torch.testing.assert_close(theta.grad, torch.tensor([1 / 2.5, 1 / 3.0]), rtol=1e-12, atol=0)


def test_negative_slope_at_t0_is_clamped_to_positive() -> None:
    # θ = −1 < Φ_0 = −0.5 < 0: crossed at t = 0 with slope Φ_0 − 0 < 0; the gradient must keep the right sign.
    theta = torch.tensor(-1.0, requires_grad=True)
    d = first_crossing(torch.tensor([[-0.5, -0.2]]), theta, min_slope=0.01)
    assert d.tau.item() == 0.0 and d.n_clamped == 1
    d.tau.sum().backward()
    assert theta.grad.item() == pytest.approx(100.0)


# ----------------------------------------------------------------------------- multi-class race
def test_multiclass_linear_race_closed_form_and_winner_only_gradient() -> None:
    a = torch.tensor([[0.1, 0.35, 0.2], [0.6, 0.15, 0.05]], requires_grad=True)
    theta = torch.tensor(1.23, requires_grad=True)
    phi = a.unsqueeze(1) * torch.arange(50.0).view(1, -1, 1)
    d = first_crossing_multiclass(phi, theta)
    assert d.choice.tolist() == [1, 0] and d.n_ties == 0
    win = torch.tensor([0.35, 0.6])
    assert torch.equal(d.step.double(), torch.floor(1.23 / win) + 1)
    torch.testing.assert_close(d.tau.detach(), 1.23 / win + 1, rtol=1e-12, atol=0)
    d.tau.sum().backward()
    torch.testing.assert_close(theta.grad, (1 / win).sum(), rtol=1e-12, atol=0)
    expected_grad = torch.zeros(2, 3)
    expected_grad[0, 1] = -1.23 / 0.35**2  # d(θ/a + 1)/da, the winner only
    expected_grad[1, 0] = -1.23 / 0.6**2
    torch.testing.assert_close(a.grad, expected_grad, rtol=1e-12, atol=0)


def test_multiclass_ties_resolve_by_overshoot_then_lowest_index() -> None:
    # trial 0: classes 0 and 2 both first cross at t = 2, class 2 overshoots more → 2.
    # trial 1: classes 1 and 2 cross at t = 1 with the same value → lowest index 1.
    phi = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [0.5, 0.1, 0.8], [1.2, 0.3, 1.6]],
            [[0.0, 0.2, 0.2], [0.1, 1.5, 1.5], [0.2, 2.0, 2.0]],
        ]
    )
    d = first_crossing_multiclass(phi, 1.0)
    assert d.choice.tolist() == [2, 1] and d.step.tolist() == [2, 1] and d.n_ties == 2
    # t* interpolates the WINNER's trajectory: 2 + (1 − 0.8)/0.8 and 1 + (1 − 0.2)/1.3
    torch.testing.assert_close(d.tau, torch.tensor([2.25, 1 + 0.8 / 1.3]), rtol=1e-12, atol=0)
    # Deterministic under reordering: reverse the classes and the same accumulator still wins.
    d_rev = first_crossing_multiclass(phi.flip(-1), 1.0)
    # trial 0: old class 2 is now index 0; trial 1: the equal pair is now (1, 0) → lowest index 0
    assert d_rev.choice.tolist() == [0, 0]


def test_multiclass_undecided_reports_leading_class_and_zero_gradient() -> None:
    phi = torch.tensor([[[0.1, 0.2], [0.3, 0.5]]], requires_grad=True)
    d = first_crossing_multiclass(phi, 5.0)
    assert not d.decided.any() and d.choice.tolist() == [1] and d.tau.tolist() == [2.0]
    d.tau.sum().backward()
    assert torch.count_nonzero(phi.grad) == 0


def test_multiclass_gradient_matches_finite_differences_of_winner_crossing() -> None:
    g, b = _smooth_increments(6, 300, seed=5)
    w0 = 1.1
    w = torch.tensor(w0, requires_grad=True)
    # class 0 driven by w·g + b, class 1 by a fixed slower series: class 0 wins everywhere.
    e = torch.stack([w * g + b, 0.5 * b], dim=-1)
    d = first_crossing_multiclass(torch.cumsum(e, 1), 1.5)
    assert (d.choice == 0).all()
    d.tau.sum().backward()
    eps = 1e-6
    fd = (
        _interpolated_crossing(torch.cumsum((w0 + eps) * g + b, 1), 1.5)
        - _interpolated_crossing(torch.cumsum((w0 - eps) * g + b, 1), 1.5)
    ).sum() / (2 * eps)
    assert w.grad.item() == pytest.approx(fd.item(), rel=1e-6)  # exact derivative up to the FD error


# ----------------------------------------------------------------------------- two bounds
def test_two_bound_linear_closed_form_both_signs() -> None:
    a = torch.tensor([0.11, -0.23, 0.4, -0.07], requires_grad=True)
    theta = torch.tensor(1.3, requires_grad=True)
    d = first_crossing_two_bound(_ramp(a, 40), theta)
    abs_a = a.detach().abs()
    assert torch.equal(d.step.double(), torch.floor(1.3 / abs_a) + 1)
    torch.testing.assert_close(d.tau.detach(), 1.3 / abs_a + 1, rtol=1e-12, atol=0)
    assert d.choice.tolist() == [1, 0, 1, 0]
    d.tau.sum().backward()
    # t* = θ/|a| + 1 → dt*/da = −θ·sign(a)/a² for either sign; dt*/dθ = 1/|a|.
    torch.testing.assert_close(a.grad, -1.3 * a.detach().sign() / a.detach() ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(theta.grad, (1 / a.detach().abs()).sum(), rtol=1e-12, atol=0)


def test_two_bound_undecided_and_t0() -> None:
    phi = torch.tensor([[-2.0, -3.0], [0.1, -0.2]], requires_grad=True)
    d = first_crossing_two_bound(phi, 1.0)
    assert d.decided.tolist() == [True, False] and d.tau.tolist() == [0.5, 2.0]
    assert d.choice.tolist() == [0, 0]  # lower bound; undecided → sign of final Φ (negative)
    d.tau.sum().backward()
    # |Φ| goes 0 → 2 in the first step: f = 1/2, dt*/d|Φ_0| = −f/2, dt*/dΦ_0 = −sign(Φ_0)·f/2 = +0.25
    assert phi.grad[0, 0].item() == pytest.approx(0.25)
    assert torch.count_nonzero(phi.grad[1]) == 0 and torch.count_nonzero(phi.grad[0, 1]) == 0


def test_two_bound_rejects_negative_threshold() -> None:
    with pytest.raises(PerceptAlignError, match="non-negative"):
        first_crossing_two_bound(torch.ones(2, 3), -0.5)


# ----------------------------------------------------------------------------- reference implementation
def _reference_multiclass(
    phi: torch.Tensor, theta: float, min_slope: float
) -> tuple[list, list, list, int, int]:
    """Slow per-trial loop written directly from the documented rules."""
    taus, choices, decided, n_clamped, n_ties = [], [], [], 0, 0
    n_steps, n_cls = phi.shape[1], phi.shape[2]
    for trial in phi:
        crossings = {}
        for c in range(n_cls):
            hits = [t for t in range(n_steps) if trial[t, c] > theta]
            if hits:
                crossings[c] = hits[0]
        if not crossings:
            taus.append(n_steps - 1)
            choices.append(int(trial[-1].argmax()))
            decided.append(False)
            continue
        first = min(crossings.values())
        tied = [c for c, t in crossings.items() if t == first]
        n_ties += len(tied) > 1
        best = max(tied, key=lambda c: (float(trial[first, c]), -c))
        prev = float(trial[first - 1, best]) if first > 0 else 0.0
        n_clamped += float(trial[first, best]) - prev < min_slope
        taus.append(first)
        choices.append(best)
        decided.append(True)
    return taus, choices, decided, n_clamped, n_ties


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_race_equals_reference_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # coarse integer-valued increments make ties, zero slopes and non-crossings common
    e = torch.randint(-2, 3, (200, 12, 3), generator=gen).double() * 0.5
    phi = torch.cumsum(e, 1)
    d = first_crossing_multiclass(phi, 2.0, min_slope=0.6)
    taus, choices, decided, n_clamped, n_ties = _reference_multiclass(phi, 2.0, 0.6)
    assert d.step.tolist() == taus and d.choice.tolist() == choices and d.decided.tolist() == decided
    assert d.n_clamped == n_clamped and d.n_ties == n_ties
    assert n_ties > 0 and not all(decided)  # the random design exercises ties and censoring
    single = first_crossing(phi[:, :, 0], 2.0, min_slope=0.6)
    ref = _reference_multiclass(phi[:, :, :1], 2.0, 0.6)
    assert single.step.tolist() == ref[0] and single.decided.tolist() == ref[2]
    assert single.n_clamped == ref[3]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("fn", "phi", "threshold", "match"),
    [
        (first_crossing, [[0.0, 1.0]], 1.0, "torch.Tensor"),
        (first_crossing, torch.zeros(3), 1.0, r"shape \(B, T\)"),
        (first_crossing, torch.zeros(2, 0), 1.0, "T = 0"),
        (first_crossing, torch.zeros(0, 4), 1.0, "B = 0"),
        (first_crossing, torch.tensor([[0.0, float("nan")]]), 1.0, "NaN"),
        (first_crossing, torch.tensor([[0.0, float("inf")]]), 1.0, "infinite"),
        (first_crossing, torch.zeros(2, 3, dtype=torch.long), 1.0, "floating-point"),
        (first_crossing, torch.zeros(2, 3), torch.ones(3), r"shape \(B,\)"),
        (first_crossing, torch.zeros(2, 3), torch.tensor(float("nan")), "threshold contains NaN"),
        (first_crossing, torch.zeros(2, 3), "1.0", "threshold must be"),
        (first_crossing_multiclass, torch.zeros(2, 3), 1.0, r"shape \(B, T, C\)"),
        (first_crossing_multiclass, torch.zeros(2, 3, 0), 1.0, "C = 0"),
        (first_crossing_two_bound, torch.zeros(2, 3, 2), 1.0, r"shape \(B, T\)"),
    ],
)
def test_bad_input_raises(fn, phi, threshold, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        fn(phi, threshold)


@pytest.mark.parametrize("min_slope", [0.0, -1.0, float("inf")])
def test_bad_min_slope_raises(min_slope: float) -> None:
    with pytest.raises(PerceptAlignError, match="min_slope"):
        first_crossing(torch.zeros(1, 2), 1.0, min_slope=min_slope)


def test_decision_dataclass_rate() -> None:
    d = Decision(
        tau=torch.zeros(4),
        choice=torch.zeros(4, dtype=torch.long),
        decided=torch.tensor([True, False, False, True]),
        n_clamped=0,
    )
    assert d.no_decision_rate == 0.5 and d.n_ties == 0


# ----------------------------------------------------------------------------- soft first passage
def _walk(n: int, steps: int, seed: int, drift: torch.Tensor | float) -> torch.Tensor:
    noise = torch.randn(n, steps, generator=torch.Generator().manual_seed(seed))
    return torch.cumsum(drift + noise, dim=1)


@pytest.mark.parametrize("mode", ["single", "two_bound", "race"])
def test_first_passage_converges_to_the_hard_crossing(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    if mode == "race":
        phi = torch.cumsum(torch.rand(50, 80, 3, generator=gen), dim=1)
        hard = first_crossing_multiclass(phi, 6.0)
    else:
        phi = _walk(50, 80, 1, 0.3)
        hard = (first_crossing if mode == "single" else first_crossing_two_bound)(phi, 6.0)
    soft = first_passage(phi, 6.0, mode=mode, temperature=1e-7)
    # every hazard is within σ(−|Φ − θ|/T) of 0 or 1; checked: no sample sits within 30 T of θ (or −θ)
    levels = phi.abs() if mode == "two_bound" else phi
    assert ((levels - 6.0).abs() > 30 * soft.temperature).all()
    assert hard.decided.all()
    mass = soft.mass.sum(-1)
    assert torch.allclose(mass.gather(1, hard.step[:, None]).squeeze(1), torch.ones(50), atol=1e-6)
    cell_time = soft.time.gather(1, hard.step.view(-1, 1, 1).expand(-1, 1, soft.time.shape[2])).squeeze(1)
    chosen_time = cell_time.gather(
        1, (hard.choice if mode != "single" else hard.choice * 0)[:, None]
    ).squeeze(1)
    torch.testing.assert_close(chosen_time, hard.tau.detach(), rtol=0, atol=1e-9)
    if mode != "single":
        choice_p = soft.choice_probability.gather(1, hard.choice[:, None]).squeeze(1)
        assert torch.allclose(choice_p, torch.ones(50), atol=1e-6)


def test_first_passage_mass_is_a_subprobability_and_two_bound_is_symmetric() -> None:
    phi = _walk(200, 60, 2, 0.1)
    soft = first_passage(phi, 5.0, mode="two_bound", temperature=0.5)
    assert (soft.mass >= 0).all() and (soft.decided_mass <= 1 + 1e-12).all()
    assert (
        (soft.time >= torch.arange(60).view(1, -1, 1)) & (soft.time <= torch.arange(1, 61).view(1, -1, 1))
    ).all()
    mirrored = first_passage(-phi, 5.0, mode="two_bound", temperature=0.5)
    torch.testing.assert_close(mirrored.mass, soft.mass.flip(-1), rtol=1e-12, atol=1e-15)


def test_first_passage_autograd_matches_finite_differences_of_its_own_value() -> None:
    # The soft expectation is a smooth function of θ and the drift: its autograd gradient must match
    # central differences of the same function (float64, ε = 1e-6 → agreement to ~1e-8 relative).
    noise = torch.randn(100, 120, generator=torch.Generator().manual_seed(3))

    def expected_rt(theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        fp = first_passage(
            torch.cumsum(v + noise, 1), theta, mode="two_bound", temperature=0.3, relative=False
        )
        return (fp.mass * rt_seconds(fp.time, 0.01, 0.2)).sum() / fp.mass.sum()

    theta = torch.tensor(6.0, requires_grad=True)
    v = torch.tensor(0.2, requires_grad=True)
    expected_rt(theta, v).backward()
    eps = 1e-6
    for param, grad, base in ((theta, theta.grad, (6.0, 0.2)), (v, v.grad, (6.0, 0.2))):
        hi = [torch.tensor(x) for x in base]
        lo = [torch.tensor(x) for x in base]
        k = 0 if param is theta else 1
        hi[k] += eps
        lo[k] -= eps
        fd = (expected_rt(*hi) - expected_rt(*lo)) / (2 * eps)
        assert grad.item() == pytest.approx(fd.item(), rel=1e-6)


def test_soft_gradient_of_mean_rt_is_unbiased_where_pathwise_rules_are_not() -> None:
    # Two-bound random walk (v = 0.3, σ = 1, θ = 8): the truth is the finite difference of the HARD
    # process's E[t*] on common random numbers. With 4000 trials its standard error is ~3 % (measured);
    # the soft estimator must agree within 4 joint standard errors, the pathwise rules are ~70 % low
    # (benchmarks/rtify_gradients.py shows 0.0098 vs 0.035 at 40 000 trials).
    noise = torch.randn(4000, 400, generator=torch.Generator().manual_seed(11))
    h = 0.4
    with torch.no_grad():
        up = first_crossing_two_bound(torch.cumsum(0.3 + noise, 1), 8.0 + h)
        down = first_crossing_two_bound(torch.cumsum(0.3 + noise, 1), 8.0 - h)
    assert up.decided.all() and down.decided.all()
    diff = (up.tau - down.tau) / (2 * h)
    fd, fd_se = diff.mean().item(), diff.std().item() / math.sqrt(len(diff))
    theta = torch.tensor(8.0, requires_grad=True)
    fp = first_passage(torch.cumsum(0.3 + noise, 1), theta, mode="two_bound", temperature=0.2)
    ((fp.mass * fp.time).sum() / fp.mass.sum()).backward()
    assert abs(theta.grad.item() - fd) < 4 * math.hypot(fd_se, 0.03 * fd)
    theta_p = torch.tensor(8.0, requires_grad=True)
    first_crossing_two_bound(torch.cumsum(0.3 + noise, 1), theta_p).tau.mean().backward()
    assert theta_p.grad.item() < 0.5 * fd  # the pathwise rule misses the mass that jumps between steps


def test_first_passage_bad_input() -> None:
    with pytest.raises(PerceptAlignError, match="temperature"):
        first_passage(torch.zeros(2, 3), 1.0, mode="single", temperature=0.0)
    with pytest.raises(PerceptAlignError, match="mode"):
        first_passage(torch.zeros(2, 3), 1.0, mode="bounds")
    with pytest.raises(PerceptAlignError, match=r"shape \(B, T, C\)"):
        first_passage(torch.zeros(2, 3), 1.0, mode="race")
    with pytest.raises(PerceptAlignError, match="non-negative"):
        first_passage(torch.zeros(2, 3), -1.0, mode="two_bound")
