"""RT losses: soft histogram properties, Wasserstein vs scipy, Pearson vs scipy, parameter recovery with
the shared objective (RTLoss), self-penalties against hand-computed formulas, and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import first_crossing
from perceptalign.rtify.losses import (
    histogram_mse,
    neg_pearson,
    self_penalty_loss,
    signed_rt,
    soft_histogram,
    wasserstein1_from_histograms,
)
from perceptalign.rtify.objective import RTLoss, RTSample


def _rts(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rt = 0.25 + shift + torch.distributions.Gamma(3.0, 6.0).sample((n,)) * 1.0
    sign = torch.where(torch.rand(n, generator=gen) < 0.8, 1.0, -1.0)
    return (rt * sign).double()


def test_soft_histogram_sums_to_one_and_is_differentiable() -> None:
    r = _rts(300, 0).requires_grad_(True)
    h = soft_histogram(r)
    assert h.shape == (500,) and (h >= 0).all()
    assert h.sum().item() == pytest.approx(1.0, abs=1e-12)  # normalised by construction; float64 rounding
    h[260].backward()
    assert torch.isfinite(r.grad).all() and r.grad.abs().sum() > 0


def test_soft_histogram_matches_formula_with_centres() -> None:
    # independent evaluation of the §2 formula written with bin centres c_j and half-width Δ/2
    r = torch.tensor([-0.42, 0.013, 0.5, 1.7], dtype=torch.float64)
    lo, hi, n_bins, sigma = -1.0, 2.0, 30, 25.0
    delta = (hi - lo) / n_bins
    c = lo + delta * (torch.arange(n_bins, dtype=torch.float64) + 0.5)
    raw = (
        torch.sigmoid(sigma * (r[:, None] - c + delta / 2))
        - torch.sigmoid(sigma * (r[:, None] - c - delta / 2))
    ).sum(0)
    torch.testing.assert_close(soft_histogram(r, lo=lo, hi=hi, n_bins=n_bins, sigma=sigma), raw / raw.sum())


def test_soft_histogram_approaches_hard_histogram_as_sigma_grows() -> None:
    r = _rts(2000, 1)
    hard, _ = np.histogram(r.numpy(), bins=500, range=(-2.5, 2.5))
    hard = torch.from_numpy(hard / hard.sum())
    errors = [(soft_histogram(r, sigma=s) - hard).abs().sum().item() for s in (40.0, 400.0, 4000.0, 1e6)]
    # total-variation error shrinks monotonically; at σ = 1e6 (kernel scale 1 µs ≪ 10 ms bins) only samples
    # within microseconds of an edge are split, so the error is ~0.
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-3 and errors[0] > 0.1


def test_weights_drop_trials_and_zero_weights_give_zeros() -> None:
    r = _rts(50, 2)
    w = torch.zeros(50, dtype=torch.float64)
    w[:20] = 1.0
    torch.testing.assert_close(soft_histogram(r, weights=w), soft_histogram(r[:20]))
    assert torch.count_nonzero(soft_histogram(r, weights=torch.zeros(50, dtype=torch.float64))) == 0


def test_signed_rt() -> None:
    out = signed_rt(torch.tensor([0.5, 0.7, 0.9]), torch.tensor([True, False, True]))
    assert out.tolist() == pytest.approx([0.5, -0.7, 0.9])


def test_wasserstein_matches_scipy_within_bin_width() -> None:
    a, b = _rts(1500, 3), _rts(1200, 4, shift=0.15)
    lo, hi, n_bins = -2.5, 3.0, 550
    delta = (hi - lo) / n_bins
    # σ = 1e6 makes the soft histogram the hard one; binning moves each sample by < Δ, so by the triangle
    # inequality the binned W1 differs from the exact one by < 2Δ.
    ha = soft_histogram(a, lo=lo, hi=hi, n_bins=n_bins, sigma=1e6)
    hb = soft_histogram(b, lo=lo, hi=hi, n_bins=n_bins, sigma=1e6)
    w = wasserstein1_from_histograms(ha, hb, bin_width=delta).item()
    exact = stats.wasserstein_distance(a.numpy(), b.numpy())
    assert abs(w - exact) < 2 * delta
    assert exact > 10 * delta  # the distributions really differ, so the comparison is informative


def test_histogram_mse_is_mean_square() -> None:
    a, b = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.5, 0.5, 0.0])
    assert histogram_mse(a, b).item() == pytest.approx((0.09 + 0.04 + 0.25) / 3)


def test_neg_pearson_matches_scipy_and_constant_model_is_finite() -> None:
    gen = torch.Generator().manual_seed(0)
    human = torch.rand(40, generator=gen, dtype=torch.float64)
    model = 0.5 * human + 0.3 * torch.rand(40, generator=gen, dtype=torch.float64)
    r = stats.pearsonr(model.numpy(), human.numpy()).statistic
    assert neg_pearson(model, human).item() == pytest.approx(-r, rel=1e-12)
    flat = torch.full((40,), 0.6, dtype=torch.float64, requires_grad=True)
    loss = neg_pearson(flat, human)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(flat.grad).all()


def test_self_penalty_kinds_match_hand_formulas() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    tau = torch.tensor([10.0, 30.0], dtype=torch.float64)
    ce = F.cross_entropy(logits, labels)
    margin = torch.tensor([2.0 - 0.5, 0.3 - 1.2], dtype=torch.float64)
    p_y = torch.softmax(logits, 1)[[0, 1], labels]
    lam = 0.0035
    for kind, penalty in (
        ("margin", margin),
        ("tau", torch.ones(2, dtype=torch.float64)),
        ("p_correct", p_y),
    ):
        got = self_penalty_loss(logits, labels, tau, lam=lam, kind=kind)
        torch.testing.assert_close(got, ce + lam * (penalty * tau).mean())


def test_margin_penalty_rewards_slow_errors_but_tau_penalty_does_not() -> None:
    logits = torch.tensor([[0.0, 1.0]], dtype=torch.float64)  # an error: label 0, model prefers 1
    labels = torch.tensor([0])
    tau = torch.tensor([20.0], dtype=torch.float64, requires_grad=True)
    self_penalty_loss(logits, labels, tau, lam=0.01, kind="margin").backward()
    assert tau.grad.item() < 0  # the loss decreases as the error gets slower (the documented defect)
    tau.grad = None
    self_penalty_loss(logits, labels, tau, lam=0.01, kind="tau").backward()
    assert tau.grad.item() > 0


# ----------------------------------------------------------------------------- parameter recovery
V_TRUE, THETA_TRUE, T0_TRUE, NOISE, DT = (0.01, 0.02, 0.04), 1.0, 0.3, 0.05, 0.01


def _simulate(
    v: torch.Tensor, theta: torch.Tensor, t0: torch.Tensor, noise: torch.Tensor, cond: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulator with drift v[cond] and Gaussian evidence noise per 10 ms step; RT = τ·dt + t₀."""
    phi = torch.cumsum(v[cond].unsqueeze(1) + NOISE * noise, dim=1)
    d = first_crossing(phi, theta)
    return d.tau * DT + t0, d.decided


def _recover(
    n_per_cond: int, steps: int, distance: str, iters: int, seed: int
) -> tuple[torch.Tensor, float, float]:
    """Simulate 'human' trials from known parameters, then fit drift/threshold/t₀ by Adam from a far start.

    The model gets its OWN noise draws (fixed across iterations: common random numbers make the loss a
    deterministic function of the parameters), so the fit faces real sampling error.
    """
    gen = torch.Generator().manual_seed(seed)
    cond = torch.arange(3).repeat_interleave(n_per_cond)
    v_true = torch.tensor(V_TRUE)
    human_rt, _ = _simulate(
        v_true,
        torch.tensor(THETA_TRUE),
        torch.tensor(T0_TRUE),
        torch.randn(3 * n_per_cond, steps, generator=gen),
        cond,
    )
    model_noise = torch.randn(3 * n_per_cond, steps, generator=gen)
    # The shared objective (RTLoss) without its accuracy term: every trial here is correct.
    loss_fn = RTLoss(kind=distance, acc_weight=0.0)
    human = pd.DataFrame(
        {"condition": cond.double().numpy(), "rt_s": human_rt.double().numpy(), "correct": True}
    )
    targets = loss_fn.targets(human, [0.0, 1.0, 2.0])
    # log-parametrised so one Adam learning rate suits drifts (~0.01) and t₀ (~0.3 s) alike
    log_v = torch.nn.Parameter(torch.log(torch.tensor([0.03, 0.03, 0.03])))
    log_theta = torch.nn.Parameter(torch.log(torch.tensor(0.6)))
    log_t0 = torch.nn.Parameter(torch.log(torch.tensor(0.15)))
    opt = torch.optim.Adam([log_v, log_theta, log_t0], lr=0.05)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        rt, decided = _simulate(log_v.exp(), log_theta.exp(), log_t0.exp(), model_noise, cond)
        sample = RTSample.from_decisions(rt, torch.ones_like(rt), decided, cond, 3)
        loss, _ = loss_fn(sample, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return log_v.exp().detach() / v_true, log_theta.exp().item(), log_t0.exp().item()


def test_parameter_recovery_fast_quantile_objective() -> None:
    # Starts at drift ratios (3, 1.5, 0.75), θ = 0.6, t₀ = 0.15 s. With 400 trials per condition, seeds 1–3
    # gave worst errors of 24 % (drift), 18 % (θ) and 0.035 s (t₀): sampling error plus a systematic +5–8 %
    # on θ (the implicit gradient is local: under per-step noise a raised bound can also push the crossing to
    # a LATER excursion, which 1/Φ̇ does not see). Tolerances are ~1.5× those worst cases.
    v_ratio, theta, t0 = _recover(n_per_cond=400, steps=250, distance="quantile", iters=300, seed=1)
    assert ((v_ratio - 1).abs() < 0.35).all(), v_ratio
    assert abs(theta - THETA_TRUE) < 0.3, theta
    assert abs(t0 - T0_TRUE) < 0.06, t0


@pytest.mark.slow
@pytest.mark.parametrize("distance", ["wasserstein", "mse"])
def test_parameter_recovery_histogram_loss(distance: str) -> None:
    # 1000 trials per condition: over seeds 1–2 (Wasserstein) and seed 2 (MSE) the worst errors were 15 %
    # (drift), 9 % (θ) and 0.017 s (t₀), from sampling error and the θ bias noted above. Tolerances ≈ 1.5×.
    v_ratio, theta, t0 = _recover(n_per_cond=1000, steps=300, distance=distance, iters=300, seed=2)
    assert ((v_ratio - 1).abs() < 0.2).all(), v_ratio
    assert abs(theta - THETA_TRUE) < 0.15, theta
    assert abs(t0 - T0_TRUE) < 0.03, t0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: soft_histogram(torch.zeros(2, 2)), "1-D"),
        (lambda: soft_histogram(torch.zeros(0)), "at least 1"),
        (lambda: soft_histogram(torch.tensor([float("nan")])), "NaN"),
        (lambda: soft_histogram(torch.zeros(3), sigma=0.0), "sigma"),
        (lambda: soft_histogram(torch.zeros(3), lo=1.0, hi=0.0), "lo < hi"),
        (lambda: soft_histogram(torch.zeros(3), n_bins=0), "n_bins"),
        (lambda: soft_histogram(torch.zeros(3), weights=-torch.ones(3)), "non-negative"),
        (lambda: soft_histogram(torch.zeros(3), weights=torch.ones(2)), "must match"),
        (lambda: histogram_mse(torch.zeros(3), torch.zeros(4)), "share bins"),
        (lambda: wasserstein1_from_histograms(torch.zeros(3), torch.zeros(3), bin_width=0.0), "bin_width"),
        (lambda: signed_rt(torch.zeros(3), torch.ones(2, dtype=torch.bool)), "must match"),
        (lambda: neg_pearson(torch.zeros(3), torch.ones(3)), "constant"),
        (lambda: neg_pearson(torch.zeros(1), torch.ones(1)), "at least 2"),
        (lambda: neg_pearson(torch.zeros(3), torch.arange(4.0)), "must match"),
        (
            lambda: self_penalty_loss(torch.zeros(2, 3), torch.tensor([0, 3]), torch.zeros(2), lam=0.1),
            "labels",
        ),
        (
            lambda: self_penalty_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(3), lam=0.1),
            "trials",
        ),
        (lambda: self_penalty_loss(torch.zeros(2), torch.tensor([0, 1]), torch.zeros(2), lam=0.1), r"\(B, C"),
        (lambda: self_penalty_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2), lam=-1.0), "lam"),
        (
            lambda: self_penalty_loss(
                torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2), lam=1.0, kind="x"
            ),
            "kind",
        ),
    ],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        call()
