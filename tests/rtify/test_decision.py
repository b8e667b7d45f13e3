"""Decision-time autograd functions: closed forms, finite differences of the interpolated crossing,
censoring, slope clamping, ties, t = 0, and a slow reference implementation."""

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
    expected = torch.floor(1.37 / a.detach()) + 1
    assert torch.equal(d.tau.detach(), expected)
    assert d.decided.all() and d.n_clamped == 0 and d.no_decision_rate == 0.0
    d.tau.sum().backward()
    # implicit rule: dτ/dθ = 1/Φ̇ = 1/a; dτ/da = −(∂Φ_τ/∂a)/Φ̇ = −τ/a. Only float rounding separates them.
    torch.testing.assert_close(theta.grad, 1 / a.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(a.grad, -expected / a.detach(), rtol=1e-12, atol=0)


def test_scalar_threshold_gradient_is_sum_of_per_trial_gradients() -> None:
    a = torch.tensor([0.2, 0.3, 0.45])
    theta = torch.tensor(1.1, requires_grad=True)
    first_crossing(_ramp(a, 30), theta).tau.sum().backward()
    torch.testing.assert_close(theta.grad, (1 / a).sum(), rtol=1e-12, atol=0)


def test_crossing_is_strict() -> None:
    # Φ touches θ = 1 exactly at t = 1 and exceeds it at t = 2: touching is not deciding.
    d = first_crossing(torch.tensor([[0.0, 1.0, 2.0]]), 1.0)
    assert d.tau.item() == 2.0


def test_gradient_is_zero_except_at_tau() -> None:
    phi = torch.cumsum(torch.rand(4, 40) + 0.05, dim=1).requires_grad_(True)
    d = first_crossing(phi, 5.0)
    d.tau.sum().backward()
    idx = d.tau.long()
    slope = phi.detach().gather(1, idx[:, None]) - phi.detach().gather(1, idx[:, None] - 1)
    expected = torch.zeros_like(phi)
    expected.scatter_(1, idx[:, None], -1 / slope)
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
    """t* = τ − 1 + (θ − Φ_{τ−1})/(Φ_τ − Φ_{τ−1}): what the implicit rule differentiates."""
    out = []
    for row in phi:
        tau = int(torch.nonzero(row > theta)[0])
        prev = row[tau - 1] if tau > 0 else torch.tensor(0.0)
        out.append(tau - 1 + (theta - prev) / (row[tau] - prev))
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
        moved = first_crossing(torch.cumsum((w0 + sign * eps) * g + b, 1), theta0 + sign * eps).tau
        assert torch.equal(moved, d.tau.detach())
    fd_theta = (t_star(w0, theta0 + eps) - t_star(w0, theta0 - eps)) / (2 * eps)
    fd_w = (t_star(w0 + eps, theta0) - t_star(w0 - eps, theta0)) / (2 * eps)
    # w.r.t. θ the implicit rule IS the derivative of t*.
    torch.testing.assert_close(theta.grad, fd_theta, rtol=1e-6, atol=0)
    # w.r.t. w, t* uses ∂Φ/∂w interpolated between τ−1 and τ while the rule uses ∂Φ_τ/∂w; they differ by at
    # most (G_τ − G_{τ−1})/Φ̇ = g_τ/Φ̇ (G = cumsum g). Use that exact bound as the tolerance...
    idx = d.tau.long()
    bound = g.gather(1, idx[:, None]).squeeze(1) / (w0 * g + b).gather(1, idx[:, None]).squeeze(1)
    assert ((grad_w - fd_w).abs() <= bound + 1e-6).all()
    # ...and check the bound is tight enough to make the comparison meaningful (a few % of the gradient).
    assert (bound / fd_w.abs() < 0.05).all()


def test_never_crossing_trials_are_censored_with_exactly_zero_gradient() -> None:
    phi = torch.cumsum(torch.tensor([[0.5] * 10, [0.01] * 10, [0.3] * 10]), dim=1).requires_grad_(True)
    theta = torch.tensor(2.0, requires_grad=True)
    d = first_crossing(phi, theta)
    assert d.decided.tolist() == [True, False, True]
    assert d.tau[1].item() == 9.0
    assert math.isclose(d.no_decision_rate, 1 / 3)
    d.tau[1].backward()
    assert torch.count_nonzero(phi.grad) == 0 and theta.grad.item() == 0.0
    assert not torch.isnan(phi.grad).any()


def test_slope_is_clamped_and_counted() -> None:
    # Φ creeps across θ = 1 with a slope of 1e-6: the published −1/(Φ̇ + 1e−6) would give −5e5.
    phi = torch.tensor([[0.0, 0.9999995, 1.0000005, 2.0], [0.0, 0.5, 1.5, 2.5]], requires_grad=True)
    d = first_crossing(phi, 1.0, min_slope=1e-3)
    assert d.n_clamped == 1
    d.tau.sum().backward()
    assert phi.grad[0, 2].item() == pytest.approx(-1e3)
    assert phi.grad[1, 2].item() == pytest.approx(-1.0)


def test_crossing_at_t0_uses_empty_accumulator_as_previous_value() -> None:
    e = torch.tensor([[2.5, 0.1, 0.1], [0.4, 0.1, 3.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0], requires_grad=True)
    d = first_crossing(torch.cumsum(e, 1), theta)
    assert d.tau.tolist() == [0.0, 2.0]
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
    expected = torch.floor(1.23 / win) + 1
    assert torch.equal(d.tau.detach(), expected)
    d.tau.sum().backward()
    torch.testing.assert_close(theta.grad, (1 / win).sum(), rtol=1e-12, atol=0)
    expected_grad = torch.zeros(2, 3)
    expected_grad[0, 1] = -expected[0] / 0.35
    expected_grad[1, 0] = -expected[1] / 0.6
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
    assert d.choice.tolist() == [2, 1] and d.tau.tolist() == [2.0, 1.0] and d.n_ties == 2
    # Deterministic under reordering: reverse the classes and the same accumulator still wins.
    d_rev = first_crossing_multiclass(phi.flip(-1), 1.0)
    # trial 0: old class 2 is now index 0; trial 1: the equal pair is now (1, 0) → lowest index 0
    assert d_rev.choice.tolist() == [0, 0]


def test_multiclass_undecided_reports_leading_class_and_zero_gradient() -> None:
    phi = torch.tensor([[[0.1, 0.2], [0.3, 0.5]]], requires_grad=True)
    d = first_crossing_multiclass(phi, 5.0)
    assert not d.decided.any() and d.choice.tolist() == [1] and d.tau.tolist() == [1.0]
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
    idx = d.tau.long()
    bound = (g.gather(1, idx[:, None]) / (w0 * g + b).gather(1, idx[:, None])).sum()  # see single-class test
    assert abs(w.grad.item() - fd.item()) <= bound.item() + 1e-6


# ----------------------------------------------------------------------------- two bounds
def test_two_bound_linear_closed_form_both_signs() -> None:
    a = torch.tensor([0.11, -0.23, 0.4, -0.07], requires_grad=True)
    theta = torch.tensor(1.3, requires_grad=True)
    d = first_crossing_two_bound(_ramp(a, 40), theta)
    expected = torch.floor(1.3 / a.detach().abs()) + 1
    assert torch.equal(d.tau.detach(), expected)
    assert d.choice.tolist() == [1, 0, 1, 0]
    d.tau.sum().backward()
    # |Φ_τ| = |a|τ → dτ/da = −sign(a)·τ/|a| = −τ/a for either sign; dτ/dθ = 1/|a|.
    torch.testing.assert_close(a.grad, -expected / a.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(theta.grad, (1 / a.detach().abs()).sum(), rtol=1e-12, atol=0)


def test_two_bound_undecided_and_t0() -> None:
    phi = torch.tensor([[-2.0, -3.0], [0.1, -0.2]], requires_grad=True)
    d = first_crossing_two_bound(phi, 1.0)
    assert d.decided.tolist() == [True, False] and d.tau.tolist() == [0.0, 1.0]
    assert d.choice.tolist() == [0, 0]  # lower bound; undecided → sign of final Φ (negative)
    d.tau.sum().backward()
    # slope of |Φ| at τ = 0 is |Φ_0| − 0 = 2; dτ/dΦ_0 = −sign(Φ_0)/2 = +0.5
    assert phi.grad[0, 0].item() == pytest.approx(0.5)
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
    assert d.tau.tolist() == taus and d.choice.tolist() == choices and d.decided.tolist() == decided
    assert d.n_clamped == n_clamped and d.n_ties == n_ties
    assert n_ties > 0 and not all(decided)  # the random design exercises ties and censoring
    single = first_crossing(phi[:, :, 0], 2.0, min_slope=0.6)
    ref = _reference_multiclass(phi[:, :, :1], 2.0, 0.6)
    assert single.tau.tolist() == ref[0] and single.decided.tolist() == ref[2] and single.n_clamped == ref[3]


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
