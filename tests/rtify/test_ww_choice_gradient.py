"""The Wong–Wang fit's gradient for the dynamical parameters: common-random-number differences see the winner
switches that every pathwise estimator misses, and leave the objective's value untouched."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import first_passage
from perceptalign.rtify.experiments.rdm import HumanTargets
from perceptalign.rtify.experiments.rdm.wongwang_fit import (
    FD_STEPS,
    WWFitConfig,
    build_ww,
    coherence_trials,
    crn_gradients,
    dynamics_parameters,
    hard_loss,
    ww_objective,
    ww_sample,
)
from perceptalign.rtify.wongwang import WongWang2

COH = 6.4  # low coherence: the choice is settled by the noisy symmetry breaking


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _ww() -> WongWang2:
    # A 4 s window with the stimulus on throughout: every trial decides at 6.4 % (checked below).
    return WongWang2(dt_ms=5.0, max_time_s=4.0, stim_duration_s=4.0)


def _correct(model: WongWang2, n: int, seed: int) -> torch.Tensor:
    """Per-trial 0/1 correct (population 1 wins) of ``n`` hard trials with noise from ``seed``."""
    with torch.no_grad():
        out = model.simulate(COH, n, seed=seed)
    assert bool(out.decided.all())
    return (out.choice == 0).double()


def _per_trial_fd(model: WongWang2, n: int, seed: int, rel: float) -> torch.Tensor:
    """Per-trial central differences of the choice w.r.t. I₀ (the truth), written out independently."""
    i0 = float(model.I0.detach())
    h = rel * i0
    with torch.no_grad():
        model.I0.fill_(i0 + h)
        up = _correct(model, n, seed)
        model.I0.fill_(i0 - h)
        down = _correct(model, n, seed)
        model.I0.fill_(i0)
    return (up - down) / (2 * h)


def test_crn_accuracy_gradient_matches_independent_finite_differences() -> None:
    """dP(correct)/dI₀ at 6.4 %: the fit's estimator (``crn_gradients``, 2000 trials) against central
    differences written out here on other noise (4000 trials, half the step, so the estimator's step bias
    would show too: at 1 % it is ≈ 7 % of the value, from a 0.5/1/2 % scan). Both are means of per-trial
    differences, so their standard errors come from the per-trial spread; the tolerance is 3.5 joint
    standard errors (≈ 4 here, against a value of ≈ −6). The pathwise soft estimator on the same kind of
    trials is ≈ 0 (the winner switches are invisible to it), so this test fails for it."""
    model = _ww()
    truth = _per_trial_fd(model, 4000, seed=11, rel=0.005)
    estimate = crn_gradients({"I0": model.I0}, lambda: _correct(model, 2000, seed=12))["I0"]
    assert float(model.I0.detach()) == pytest.approx(0.3255)  # restored
    f, f_se = float(truth.mean()), float(truth.std()) / math.sqrt(len(truth))
    e, e_se = float(estimate.mean()), float(estimate.std()) / math.sqrt(len(estimate))
    joint = math.hypot(f_se, e_se)
    assert abs(e - f) < 3.5 * joint, (e, e_se, f, f_se)
    assert f < -3.5 * joint  # the truth is clearly non-zero: an estimator returning 0 fails above

    # The pathwise soft estimator (the former default for these parameters) sees nothing of it.
    params = dict(model.named_parameters())
    S = model.trajectories(COH, 600, seed=13)
    passage = first_passage(S, model.threshold, mode="race", temperature=0.2, initial=model.s0)
    p_correct = passage.mass[..., 0].sum() / S.shape[0]
    (pathwise,) = torch.autograd.grad(p_correct, params["I0"])
    assert abs(float(pathwise)) < 0.01 * abs(f)


def test_crn_gradients_shape_step_and_restore() -> None:
    """Each side moves the parameter by ±step·|p| exactly and puts it back bit for bit; a linear quantity
    gives its slope exactly, in the quantity's own shape."""
    a = torch.nn.Parameter(torch.tensor(0.5))
    b = torch.nn.Parameter(torch.tensor(-2.0))
    seen: list[tuple[float, float]] = []

    def quantity() -> torch.Tensor:
        seen.append((float(a.detach()), float(b.detach())))
        return torch.stack([3 * a + b, a * b]).detach()

    grads = crn_gradients({"a": a, "b": b}, quantity, steps={"a": 0.1, "b": 0.01})
    assert float(a.detach()) == 0.5 and float(b.detach()) == -2.0
    assert seen[0][0] == pytest.approx(0.55) and seen[1][0] == pytest.approx(0.45)
    assert seen[2][1] == pytest.approx(-1.98) and seen[3][1] == pytest.approx(-2.02)
    assert grads["a"].shape == (2,)
    assert grads["a"].tolist() == pytest.approx([3.0, -2.0])
    assert grads["b"].tolist() == pytest.approx([1.0, 0.5])
    with pytest.raises(PerceptAlignError, match="no finite-difference step"):
        crn_gradients({"c": a}, quantity)


def _targets(conds: list[float], config: WWFitConfig) -> HumanTargets:
    rng = np.random.default_rng(0)
    rows = [
        pd.DataFrame(
            {
                "condition": c,
                "rt_s": 0.3 + rng.gamma(2.0, 0.2, 200),
                "correct": rng.random(200) < 0.8,
                "split": "train",
            }
        )
        for c in conds
    ]
    return HumanTargets.from_table(pd.concat(rows, ignore_index=True), conds, config.hist_config())


def test_objective_value_is_the_plain_estimators_and_gradients_are_split() -> None:
    """``ww_objective`` (the fit's step) returns exactly the plain soft estimator's loss on the same noise
    (the forward is unchanged), gives θ and the motor delay the plain estimator's gradient, and gives
    every dynamical parameter the CRN differences of the hard objective on that noise."""
    conds = [6.4, 51.2]
    config = WWFitConfig(dt_ms=20.0, max_time_s=2.0)
    assert config.dynamics_gradient == "crn"  # the default
    trials = coherence_trials(conds, 60)
    targets = _targets(conds, config)
    seed = 5

    model = build_ww(config)
    loss, parts, no_decision = ww_objective(model, trials, targets, config, seed)
    loss.backward()

    plain = build_ww(config)
    sample, plain_no_decision = ww_sample(plain, trials, config, torch.Generator().manual_seed(seed))
    plain_loss, plain_parts = config.hist_config().rt_loss(sample, targets)
    plain_loss.backward()
    assert torch.equal(loss.detach(), plain_loss.detach())
    assert parts == plain_parts and no_decision == plain_no_decision

    for name in ("threshold", "motor_delay_s"):
        assert getattr(model, name).grad == pytest.approx(float(getattr(plain, name).grad), rel=1e-5)
    expected = crn_gradients(
        dynamics_parameters(plain), lambda: hard_loss(plain, trials, targets, config, seed)
    )
    assert set(expected) == {"J11", "J12", "J_ext", "I0", "sigma"}
    for name, value in expected.items():
        got = float(getattr(model, name).grad)
        assert got == pytest.approx(float(value), rel=1e-5), name
        assert got != pytest.approx(float(getattr(plain, name).grad), rel=1e-3), name  # not the pathwise one

    # "pathwise" keeps the former gradient (autograd through the adjoint) for every parameter.
    pathwise_config = WWFitConfig(dt_ms=20.0, max_time_s=2.0, dynamics_gradient="pathwise")
    pathwise = build_ww(pathwise_config)
    loss_p, _, _ = ww_objective(pathwise, trials, targets, pathwise_config, seed)
    loss_p.backward()
    assert torch.equal(loss_p.detach(), plain_loss.detach())
    for name in ("J11", "I0", "sigma", "threshold"):
        assert float(getattr(pathwise, name).grad) == pytest.approx(
            float(getattr(plain, name).grad), rel=1e-5
        )


def test_objective_with_hard_estimator_keeps_value_and_threshold_gradient() -> None:
    """With ``estimator="interpolated"`` the frozen dynamics still leave θ its interpolated-crossing
    gradient (the decision reads θ after the integration), and the value is the plain one."""
    conds = [6.4, 51.2]
    config = WWFitConfig(dt_ms=20.0, max_time_s=2.0, estimator="interpolated", learn=("I0", "threshold"))
    trials = coherence_trials(conds, 40)
    targets = _targets(conds, config)
    model = build_ww(config)
    loss, _, _ = ww_objective(model, trials, targets, config, 3)
    loss.backward()
    plain = build_ww(config)
    sample, _ = ww_sample(plain, trials, config, torch.Generator().manual_seed(3))
    plain_loss, _ = config.hist_config().rt_loss(sample, targets)
    plain_loss.backward()
    assert torch.equal(loss.detach(), plain_loss.detach())
    assert float(model.threshold.grad) == pytest.approx(float(plain.threshold.grad), rel=1e-5)
    assert model.J11.grad is None  # not learnt: no differences run for it
    expected = crn_gradients({"I0": plain.I0}, lambda: hard_loss(plain, trials, targets, config, 3))["I0"]
    assert float(model.I0.grad) == pytest.approx(float(expected), rel=1e-5)


def test_fd_steps_cover_every_dynamical_parameter_and_config_checks() -> None:
    assert set(FD_STEPS) == {"J11", "J12", "J_ext", "I0", "sigma", "w"}
    with pytest.raises(PerceptAlignError, match="dynamics_gradient"):
        WWFitConfig(dynamics_gradient="score")  # type: ignore[arg-type]
