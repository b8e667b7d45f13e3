"""Evidential baseline: the evidential loss (Sensoy et al. 2018) against independent Dirichlet formulas, its
annealing, the trained read-out's uncertainty, the interpolated decision time and the choice at decision."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import dirichlet

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.baselines import (
    EvidentialReadout,
    EvidentialRT,
    dirichlet_kl_to_uniform,
    evidential_decisions,
    evidential_mse_loss,
    evidential_uncertainty,
    kl_annealing,
    train_evidential_readout,
)

# ---------------------------------------------------------------- loss


def test_loss_matches_dirichlet_moments_and_entropy() -> None:
    rng = np.random.default_rng(0)
    alpha = 1 + rng.gamma(1.5, 2.0, size=(12, 3))
    labels = rng.integers(0, 3, 12)
    for lam in (0.0, 0.4, 1.0):
        got = evidential_mse_loss(torch.tensor(alpha), torch.tensor(labels), lam).numpy()
        expected = []
        for a, y in zip(alpha, labels, strict=True):
            onehot = np.eye(3)[y]
            # E‖y − p‖² under p ~ Dir(α) = ‖y − E p‖² + Σ Var p_j (scipy's moments).
            mse = np.sum((onehot - dirichlet.mean(a)) ** 2 + dirichlet.var(a))
            # KL(Dir(α̃) ‖ Dir(1)) = −H(Dir(α̃)) − ln Γ(K): Dir(1) has constant density Γ(K) on the simplex.
            a_tilde = onehot + (1 - onehot) * a
            kl = -dirichlet.entropy(a_tilde) - math.lgamma(3)
            expected.append(mse + lam * kl)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_kl_known_values() -> None:
    assert float(dirichlet_kl_to_uniform(torch.ones(4, dtype=torch.float64))) == pytest.approx(0, abs=1e-12)
    # K = 2, α = (1, a): KL = ln a − 1 + 1/a (Dir(1, a) is Beta(1, a)).
    for a in (1.0, 1.5, 4.0, 30.0):
        kl = float(dirichlet_kl_to_uniform(torch.tensor([1.0, a], dtype=torch.float64)))
        assert kl == pytest.approx(math.log(a) - 1 + 1 / a, rel=1e-10, abs=1e-12)
    rng = np.random.default_rng(1)
    assert (dirichlet_kl_to_uniform(torch.tensor(1 + rng.gamma(1.0, 3.0, (50, 4)))) >= 0).all()


def test_loss_is_minimised_by_large_correct_evidence() -> None:
    evidence = torch.tensor([0.0, 0.5, 2.0, 10.0, 100.0, 1e4], dtype=torch.float64)
    ones = torch.ones_like(evidence)
    labels = torch.zeros(len(evidence), dtype=torch.long)
    correct = evidential_mse_loss(torch.stack([1 + evidence, ones], -1), labels, 1.0)
    wrong = evidential_mse_loss(torch.stack([ones, 1 + evidence], -1), labels, 1.0)
    assert (correct.diff() < 0).all() and float(correct[-1]) < 1e-3  # → 0 as correct evidence grows
    assert (wrong.diff() > 0).all()  # misleading evidence costs more the larger it is
    assert float(correct[0]) == pytest.approx(float(wrong[0]))  # no evidence: same loss either way


def test_kl_annealing() -> None:
    assert [kl_annealing(e) for e in (0, 1, 5, 10, 11, 100)] == [0.0, 0.1, 0.5, 1.0, 1.0, 1.0]
    assert kl_annealing(3, annealing_epochs=4) == 0.75
    for bad in (-1, 1.5, "2"):
        with pytest.raises(PerceptAlignError, match="epoch"):
            kl_annealing(bad)  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="annealing_epochs"):
        kl_annealing(1, annealing_epochs=0)


# ---------------------------------------------------------------- decisions


def _alpha_from_u(u: list[float], favoured: list[int] | None = None) -> np.ndarray:
    """One two-class trial whose uncertainty 2/Σα follows ``u``, all evidence on the ``favoured`` class."""
    favoured = favoured or [0] * len(u)
    alpha = np.ones((1, len(u), 2))
    for t, (ut, k) in enumerate(zip(u, favoured, strict=True)):
        alpha[0, t, k] = 2 / ut - 1
    return alpha


def test_decision_time_interpolates_between_steps() -> None:
    # First u_s < 0.5 at s = 2; u_1 = 0.7, u_2 = 0.4: t* = 2 + (0.7 − 0.5)/(0.7 − 0.4) = 2 + 2/3.
    t_star, step, decided, choice = evidential_decisions(_alpha_from_u([0.9, 0.7, 0.4, 0.2]), 0.5)
    assert (t_star[0], step[0], decided[0], choice[0]) == (pytest.approx(2 + 2 / 3), 2, True, 0)
    # Decision at s = 0 interpolates from u_{−1} = 1: t* = (1 − 0.8)/(1 − 0.6) = 0.5.
    assert evidential_decisions(_alpha_from_u([0.6, 0.5, 0.3]), 0.8)[0][0] == pytest.approx(0.5)
    # u equal to θ is not below it: the decision is the next step, at its start (t* = s).
    assert evidential_decisions(_alpha_from_u([0.9, 0.5, 0.2]), 0.5)[0][0] == pytest.approx(2.0)
    # Never below θ: kept as undecided, t* = T, last step.
    t_star, step, decided, _ = evidential_decisions(_alpha_from_u([0.9, 0.8, 0.7]), 0.5)
    assert (t_star[0], step[0], decided[0]) == (3.0, 2, False)
    u = evidential_uncertainty(_alpha_from_u([0.9, 0.7, 0.4]))
    np.testing.assert_allclose(u, [[0.9, 0.7, 0.4]])


def test_choice_is_read_at_the_decision_step_not_the_last() -> None:
    # Evidence for class 0 takes u below θ = 0.5 at step 1; afterwards the evidence flips to class 1.
    alpha = _alpha_from_u([0.8, 0.3, 0.6, 0.2, 0.1], favoured=[0, 0, 1, 1, 1])
    _, step, decided, choice = evidential_decisions(alpha, 0.5)
    assert decided[0] and step[0] == 1 and choice[0] == 0
    assert alpha[0, -1].argmax() == 1
    # The same through EvidentialRT.predict, with a hand-set read-out α = softplus(h) + 1 (W = I, b = 0).
    model = EvidentialRT(dt=0.1)
    model.readout_ = EvidentialReadout(2)
    with torch.no_grad():
        model.readout_.linear.weight.copy_(torch.eye(2))
        model.readout_.linear.bias.zero_()
    model.theta_, model.t0_ = 0.5, 0.2
    hidden = np.log(np.expm1(alpha - 1 + 1e-300))  # softplus⁻¹(α − 1); 0 evidence → a very negative drive
    table = model.predict({3.2: hidden}, {3.2: np.array([0])})
    assert bool(table["correct"].iloc[0]) and bool(table["decided"].iloc[0])
    expected_t = 1 + (0.8 - 0.5) / (0.8 - 0.3)
    assert table["rt_s"].iloc[0] == pytest.approx(expected_t * 0.1 + 0.2, rel=1e-5)
    assert not bool(model.predict({3.2: hidden}, {3.2: np.array([1])})["correct"].iloc[0])


# ---------------------------------------------------------------- trained read-out and fit


def _synthetic(strengths: tuple[float, ...], n: int, steps: int, seed: int) -> tuple[dict, dict]:
    """Hidden states of an ideal integrator: tanh of the accumulated signed evidence, plus a noise unit."""
    rng = np.random.default_rng(seed)
    hidden, labels = {}, {}
    for c in strengths:
        y = rng.integers(0, 2, n)
        x = np.cumsum((2 * y - 1)[:, None] * c + rng.normal(0, 1, (n, steps)), axis=1)
        hidden[c] = np.stack([np.tanh(x / 6), rng.normal(0, 0.1, (n, steps))], -1)
        labels[c] = y
    return hidden, labels


STRENGTHS = (0.1, 0.3, 1.0)
TRAIN = {"epochs": 12, "batch_size": 512, "lr": 0.05}  # enough Adam steps on a small training set


def test_trained_uncertainty_falls_with_evidence_strength() -> None:
    hidden, labels = _synthetic(STRENGTHS, 100, 30, seed=2)
    readout, final = train_evidential_readout(
        np.concatenate(list(hidden.values())), np.concatenate(list(labels.values())), **TRAIN
    )
    assert math.isfinite(final) and final < 0.5
    last_u, mean_t, decided_rate = [], [], []
    for c in STRENGTHS:
        with torch.no_grad():
            alpha = readout(torch.tensor(hidden[c], dtype=torch.float32)).double().numpy()
        u = evidential_uncertainty(alpha)
        last_u.append(u[:, -1].mean())
        t_star, _, decided, choice = evidential_decisions(alpha, 0.5)
        mean_t.append(t_star.mean())  # undecided trials count at t* = T
        decided_rate.append(decided.mean())
        if c == STRENGTHS[-1]:
            assert u[:, -1].mean() < u[:, 0].mean() - 0.2  # uncertainty falls as evidence accumulates
            assert (choice == labels[c])[decided].mean() > 0.95
    assert np.all(np.diff(last_u) < 0) and np.all(np.diff(mean_t) < 0) and np.all(np.diff(decided_rate) > 0)


def test_fit_recovers_threshold_and_t0() -> None:
    hidden, labels = _synthetic(STRENGTHS, 100, 30, seed=3)
    settings = {**TRAIN, "seed": 5}
    # The fit retrains the read-out with the same data, settings and seed, so it gets this exact read-out.
    readout, _ = train_evidential_readout(
        np.concatenate(list(hidden.values())), np.concatenate(list(labels.values())), **settings
    )
    dt, theta, t0 = 0.05, 0.55, 0.3
    tables = []
    for c in STRENGTHS:
        with torch.no_grad():
            alpha = readout(torch.tensor(hidden[c], dtype=torch.float32)).double().numpy()
        t_star, _, decided, choice = evidential_decisions(alpha, theta)
        tables.append(
            pd.DataFrame(
                {"condition": c, "rt_s": t_star * dt + t0, "correct": choice == labels[c], "decided": decided}
            )
        )
    human = pd.concat(tables, ignore_index=True)
    model = EvidentialRT(dt, t0_max=0.5, **settings).fit(hidden, human, labels)
    assert model.theta_ == pytest.approx(theta, abs=0.02) and model.t0_ == pytest.approx(t0, abs=0.02)
    assert 0 <= model.t0_ <= 0.5 and model.n_params == 2
    assert EvidentialRT(dt, fit_t0=False, t0=0.3).n_params == 1
    summary = model.training_summary_
    assert summary["evidence"] == "softplus" and math.isfinite(summary["final_loss"])
    assert set(summary["accuracy_last_step"]) == set(STRENGTHS)
    assert summary["accuracy_last_step"][1.0] > summary["accuracy_last_step"][0.1]
    table = model.predict(hidden, labels)
    assert list(table.columns) == ["condition", "rt_s", "correct", "decided"]
    undecided = ~table["decided"].to_numpy()
    assert len(table) == len(human) and undecided.sum() > 0  # undecided trials are kept, not dropped
    assert undecided.mean() == pytest.approx(1 - human["decided"].mean(), abs=0.02)
    np.testing.assert_allclose(table["rt_s"].to_numpy()[undecided], 30 * dt + model.t0_)  # end of stimulus


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs() -> None:
    good = _alpha_from_u([0.9, 0.5])
    for alpha, match in ((good - 0.5, "≥ 1"), (good * np.nan, "finite"), (good[0], "shape")):
        with pytest.raises(PerceptAlignError, match=match):
            evidential_decisions(alpha, 0.5)
    for theta in (0.0, 1.5, float("nan"), "0.5"):
        with pytest.raises(PerceptAlignError, match="theta"):
            evidential_decisions(good, theta)  # type: ignore[arg-type]
    alpha = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(PerceptAlignError, match="labels"):
        evidential_mse_loss(alpha, torch.zeros(3), 1.0)  # float labels
    with pytest.raises(PerceptAlignError, match="labels"):
        evidential_mse_loss(alpha, torch.tensor([0, 1, 2]), 1.0)  # out of range
    with pytest.raises(PerceptAlignError, match="labels"):
        evidential_mse_loss(alpha, torch.zeros(2, dtype=torch.long), 1.0)
    with pytest.raises(PerceptAlignError, match="≥ 1"):
        evidential_mse_loss(alpha * 0.5, torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(PerceptAlignError, match="annealing"):
        evidential_mse_loss(alpha, torch.zeros(3, dtype=torch.long), -0.1)
    with pytest.raises(PerceptAlignError, match="dt"):
        EvidentialRT(dt=0)
    with pytest.raises(PerceptAlignError, match="epochs"):
        EvidentialRT(dt=0.02, epochs=0)
    with pytest.raises(PerceptAlignError, match="lr"):
        EvidentialRT(dt=0.02, lr=0)
    with pytest.raises(PerceptAlignError, match="n_classes"):
        EvidentialRT(dt=0.02, n_classes=1)
    with pytest.raises(PerceptAlignError, match="hidden states"):
        train_evidential_readout(np.full((2, 3, 4), np.nan), np.zeros(2, dtype=int))
    with pytest.raises(PerceptAlignError, match="labels"):
        train_evidential_readout(np.zeros((2, 3, 4)), np.array([0, 2]))
    hidden, labels = _synthetic((0.5,), 8, 5, seed=0)
    model = EvidentialRT(dt=0.02)
    with pytest.raises(PerceptAlignError, match="not fitted"):
        model.predict(hidden, labels)
    with pytest.raises(PerceptAlignError, match="same conditions"):
        model.fit(hidden, pd.DataFrame(), {0.7: labels[0.5]})
    with pytest.raises(PerceptAlignError, match="same"):
        model.fit(
            {1.0: np.zeros((4, 5, 2)), 2.0: np.zeros((4, 6, 2))}, pd.DataFrame(), {1.0: [0] * 4, 2.0: [0] * 4}
        )
    human = pd.DataFrame({"condition": 0.5, "rt_s": [0.5, 0.6], "correct": [True, False]})
    model.fit(hidden, human, labels)
    with pytest.raises(PerceptAlignError, match="hidden size"):
        model.predict({0.5: np.zeros((8, 5, 3))}, labels)
