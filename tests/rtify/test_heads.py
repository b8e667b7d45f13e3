"""RTify head: RT = t*·dt + t₀ against the decision functions, causal read-out, gradients, modes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import first_crossing_multiclass, first_crossing_two_bound
from perceptalign.rtify.heads import RTifyHead, inverse_softplus


def _ramp_hidden(batch: int, steps: int) -> torch.Tensor:
    """Hidden states whose only feature is constant 1, so a linear evidence map gives e_t = bias + weight."""
    return torch.ones(batch, steps, 1)


def _set_linear(layer: nn.Linear, weight: list[float], bias: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight).view(-1, 1))
        layer.bias.copy_(torch.tensor(bias))


def test_positive_parameters_start_where_asked() -> None:
    head = RTifyHead(4, 3, threshold_init=2.5, t0_init=0.27)
    assert head.threshold.item() == pytest.approx(2.5, rel=1e-6)
    assert head.t0.item() == pytest.approx(0.27, rel=1e-6)
    assert inverse_softplus(1e-3) < 0  # softplus(x) = 1e-3 needs a negative x


def test_multiclass_rt_matches_closed_form_and_gradients() -> None:
    head = RTifyHead(1, 2, dt=0.02, nonnegative=False, threshold_init=1.3, t0_init=0.2)
    _set_linear(head.evidence, [0.0, 0.0], [0.3, 0.1])  # e = (0.3, 0.1) every step → class 0 wins
    out = head(_ramp_hidden(2, 40))
    # Φ_t = 0.3·(t + 1) is the state at time t + 1 steps: Φ(u) = 0.3u crosses 1.3 at u = 1.3/0.3 (step 4)
    t_star = 1.3 / 0.3
    assert out.decision.step.tolist() == [4, 4] and out.decision.choice.tolist() == [0, 0]
    torch.testing.assert_close(out.decision.tau, torch.full((2,), t_star))
    torch.testing.assert_close(out.rt_s, torch.full((2,), t_star * 0.02 + 0.2))
    out.rt_s.sum().backward()
    # dRT/draw_θ = dt·(1/Φ̇)·softplus'(raw) with Φ̇ = 0.3; dRT/draw_t₀ = softplus'(raw_t₀); two trials each.
    sig = torch.sigmoid
    assert head.raw_threshold.grad.item() == pytest.approx(
        2 * 0.02 / 0.3 * sig(head.raw_threshold).item(), rel=1e-5
    )
    assert head.raw_t0.grad.item() == pytest.approx(2 * sig(head.raw_t0).item(), rel=1e-6)
    # evidence bias of the winning class: t* = θ/b → dt*/db = −θ/b² (exact); the losing class gets 0.
    assert head.evidence.bias.grad[0].item() == pytest.approx(-2 * 0.02 * 1.3 / 0.3**2, rel=1e-5)
    assert head.evidence.bias.grad[1].item() == 0.0


def test_head_agrees_with_direct_decision_call() -> None:
    torch.manual_seed(0)
    head = RTifyHead(6, 3, evidence="mlp")
    hidden = torch.randn(16, 30, 6)
    out = head(hidden)
    direct = first_crossing_multiclass(
        torch.cumsum(nn.functional.softplus(head.evidence(hidden)), 1), head.threshold
    )
    assert torch.equal(out.decision.tau, direct.tau) and torch.equal(out.decision.choice, direct.choice)
    assert torch.equal(out.choice, direct.choice)  # the choice IS the race winner
    assert (out.phi.diff(dim=1) >= 0).all()  # non-negative evidence: every race accumulator is monotone
    assert out.choice_logits.shape == (16, 3) and out.phi.shape == (16, 30, 3)


@pytest.mark.parametrize("readout", ["soft_mask", "gaussian"])
def test_readout_formula_and_its_dependence_on_tau(readout: str) -> None:
    torch.manual_seed(1)
    head = RTifyHead(5, 3, readout=readout, readout_sharpness=2.0, readout_width=1.5, threshold_init=2.0)
    hidden = torch.randn(4, 25, 5)
    out = head(hidden)
    steps = torch.arange(25.0)
    step = out.decision.step

    def readout_of(tau: torch.Tensor) -> torch.Tensor:  # written from the spec, independently of the head
        offset = tau[:, None] - (steps + 1)  # index t is the state at time t + 1
        if readout == "soft_mask":
            w = torch.sigmoid(2.0 * (offset + 0.5))
        else:  # one-sided window ending at the decision
            w = torch.exp(-(offset.clamp_min(0) ** 2) / (2 * 1.5**2))
        w = w * (steps[None, :] <= step[:, None])  # causal: nothing after the decision step
        z = head.classifier(hidden).detach()
        return (w[:, :, None] * z).sum(1) / w.sum(1, keepdim=True)

    tau = out.decision.tau.detach()
    torch.testing.assert_close(out.choice_logits.detach(), readout_of(tau), rtol=1e-5, atol=1e-6)
    # The choice depends on τ: d(logit)/dθ = d(readout)/dτ · dτ/dθ. Compare with a central difference of the
    # smooth read-out in τ (step 1e-3; float32 → ~1e-3 relative accuracy) times the implicit 1/Φ̇·softplus'.
    decided = out.decision.decided
    assert decided.any()
    grads = torch.autograd.grad(out.choice_logits[:, 0].sum(), head.raw_threshold)[0]
    eps = 1e-3
    d_read = (readout_of(tau + eps)[:, 0] - readout_of(tau - eps)[:, 0]) / (2 * eps)
    idx = step
    phi_w = out.phi.detach()[torch.arange(4), :, out.decision.choice]
    prev = torch.where(idx > 0, phi_w.gather(1, (idx - 1).clamp_min(0)[:, None]).squeeze(1), torch.zeros(4))
    slope = (phi_w.gather(1, idx[:, None]).squeeze(1) - prev).clamp_min(1e-3)
    expected = (d_read / slope * decided).sum() * torch.sigmoid(head.raw_threshold.detach())
    assert grads.item() == pytest.approx(expected.item(), rel=5e-3, abs=1e-6)


def test_readout_never_reads_states_after_the_decision() -> None:
    torch.manual_seed(4)
    head = RTifyHead(3, 2, mode="two_bound", threshold_init=1.5)
    hidden = torch.randn(8, 40, 3)
    out = head(hidden)
    assert out.decision.decided.all()
    later = hidden.clone()
    for i, s in enumerate(out.decision.step.tolist()):
        later[i, s + 1 :] = torch.randn(40 - s - 1, 3) * 5  # rewrite the future after each decision step
    again = head(later)
    # the evidence up to the decision is unchanged, so the decision is; and nothing else may move
    assert torch.equal(again.decision.step, out.decision.step)
    torch.testing.assert_close(again.choice_logits, out.choice_logits, rtol=0, atol=0)
    assert torch.equal(again.choice, out.choice)


def test_soft_estimator_returns_a_first_passage_that_agrees_with_the_hard_decision() -> None:
    torch.manual_seed(5)
    hidden = torch.randn(64, 60, 3)
    soft = RTifyHead(3, 2, mode="two_bound", threshold_init=2.0, temperature=1e-6)
    out = soft(hidden)
    assert out.passage is not None and out.passage.mass.shape == (64, 60, 2)
    # with a vanishing temperature, each trial's mass sits on its hard (step, choice) at its RT
    decided = out.decision.decided
    p_choice = out.passage.choice_probability.gather(1, out.choice[:, None]).squeeze(1)
    torch.testing.assert_close(p_choice[decided], torch.ones(int(decided.sum())), rtol=0, atol=1e-4)
    rt_cells = out.passage_rt_s(soft.dt, soft.t0)
    expected = (out.passage.mass * rt_cells).sum((1, 2))[decided] / out.passage.decided_mass[decided]
    torch.testing.assert_close(expected, out.rt_s[decided], rtol=0, atol=1e-4)
    implicit = RTifyHead(3, 2, mode="two_bound", estimator="implicit")
    assert implicit(hidden).passage is None
    with pytest.raises(PerceptAlignError, match="estimator"):
        RTifyHead(3, 2, estimator="score-function")


def test_two_bound_mode_choice_is_the_bound_hit() -> None:
    head = RTifyHead(1, 2, mode="two_bound", threshold_init=1.0, classifier="evidence")
    hidden = torch.cat([torch.ones(1, 20, 1), -torch.ones(1, 20, 1)])
    _set_linear(head.evidence, [0.25], [0.0])  # +0.25 per step for trial 0, −0.25 for trial 1
    out = head(hidden)
    assert out.phi.shape == (2, 20)
    direct = first_crossing_two_bound(out.phi, head.threshold)
    assert torch.equal(out.decision.tau, direct.tau)
    assert out.decision.choice.tolist() == [1, 0] and out.choice.tolist() == [1, 0]
    preds = head.predict_trials(hidden, choice_from="accumulator")
    assert preds.choice.tolist() == [1, 0] and preds.decided.all()


def test_predict_trials_batches_agree_and_are_numpy() -> None:
    torch.manual_seed(2)
    head = RTifyHead(3, 2, dt=0.01)
    hidden = torch.randn(11, 50, 3)
    full = head.predict_trials(hidden)
    parts = head.predict_trials(hidden, batch_size=4)
    assert isinstance(full.rt_s, np.ndarray) and full.rt_s.shape == (11,) and full.decided.dtype == bool
    np.testing.assert_array_equal(full.rt_s, parts.rt_s)
    np.testing.assert_array_equal(full.choice, parts.choice)
    assert (full.rt_s >= head.t0.item()).all()  # RT can never undercut the non-decision time


def test_gradient_descent_moves_rt_to_a_target() -> None:
    # End-to-end differentiability: fit θ, t₀ and the evidence so every trial's RT hits 0.6 s.
    torch.manual_seed(3)
    head = RTifyHead(4, 2, dt=0.01, threshold_init=1.0, t0_init=0.25)
    hidden = torch.rand(32, 120, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    start = (head(hidden).rt_s - 0.6).abs().mean().item()
    for _ in range(150):
        loss = ((head(hidden).rt_s - 0.6) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = head(hidden)
    err = (out.rt_s - 0.6).abs().mean().item()
    assert out.decision.decided.all()
    assert err < 0.05 < start  # within 5 steps of 10 ms on average, from well outside that


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"n_classes": 1}, "n_classes"),
        ({"mode": "race"}, "mode"),
        ({"mode": "two_bound", "n_classes": 3}, "2-choice"),
        ({"mode": "two_bound", "nonnegative": True}, "one-sided"),
        ({"dt": -0.01}, "dt"),
        ({"dt": 0.0}, "dt"),
        ({"t0_init": -0.1}, "t0_init"),
        ({"threshold_init": 0.0}, "start positive"),
        ({"readout": "max"}, "readout"),
        ({"classifier": "mlp"}, "classifier"),
        ({"evidence": "rnn"}, "evidence"),
        ({"readout_width": 0.0}, "positive"),
    ],
)
def test_bad_construction_raises(kwargs: dict, match: str) -> None:
    params = {"hidden_size": 4, "n_classes": 2} | kwargs
    with pytest.raises(PerceptAlignError, match=match):
        RTifyHead(**params)


@pytest.mark.parametrize(
    ("hidden", "match"),
    [
        (torch.zeros(2, 5), r"\(B, T, H\)"),
        (torch.zeros(2, 0, 4), "T = 0"),
        (torch.zeros(2, 5, 3), "H = 4"),
        (torch.full((2, 5, 4), float("nan")), "NaN"),
    ],
)
def test_bad_hidden_raises(hidden: torch.Tensor, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        RTifyHead(4, 2)(hidden)


def test_bad_evidence_module_and_predict_args_raise() -> None:
    with pytest.raises(PerceptAlignError, match="evidence module"):
        RTifyHead(4, 3, evidence=nn.Linear(4, 2))(torch.zeros(1, 5, 4))
    head = RTifyHead(4, 2)
    with pytest.raises(PerceptAlignError, match="choice_from"):
        head.predict_trials(torch.zeros(1, 5, 4), choice_from="both")
    with pytest.raises(PerceptAlignError, match="batch_size"):
        head.predict_trials(torch.zeros(1, 5, 4), batch_size=0)


# ---------------------------------------------------------------- urgency (collapsing bound)


def _identity_head(dt: float = 0.05, **options: object) -> RTifyHead:
    """A two-bound head whose evidence is the (1-d) hidden state itself, θ = 1.5, with RTifyHead
    ``options`` (urgency, drift variability)."""
    head = RTifyHead(1, 2, mode="two_bound", dt=dt, threshold_init=1.5, **options)  # type: ignore[arg-type]
    with torch.no_grad():
        head.evidence.weight.fill_(1.0)
        head.evidence.bias.zero_()
    return head


def _identity_two_bound(urgency: bool, rate: float = 0.5) -> RTifyHead:
    """:func:`_identity_head` at dt = 0.05 s, with urgency at collapse rate ``rate`` when asked."""
    return _identity_head(urgency=urgency, urgency_init=rate)


def test_urgency_is_the_crossing_of_the_gain_weighted_accumulator() -> None:
    """Independent construction: a head WITHOUT urgency fed increments of Φ_t·exp(r·t) must decide exactly
    like the urgency head fed the raw evidence (hard crossing, RT and the soft first passage)."""
    rate = 0.8
    gen = torch.Generator().manual_seed(3)
    evidence = 0.05 + 0.3 * torch.randn(64, 40, 1, generator=gen)
    time_s = (torch.arange(40, dtype=torch.float32) + 1.0) * 0.05
    phi_gain = torch.cumsum(evidence, 1) * torch.exp(rate * time_s).view(1, -1, 1)
    increments = torch.diff(phi_gain, dim=1, prepend=torch.zeros(64, 1, 1))
    urgent, plain = _identity_two_bound(True, rate), _identity_two_bound(False)
    a, b = urgent(evidence), plain(increments)
    assert float(urgent.urgency_rate.detach()) == pytest.approx(rate, rel=1e-6)
    assert torch.equal(a.decision.choice, b.decision.choice)
    # float32 cumsum of the increments vs the direct product: ~1e-6 relative
    torch.testing.assert_close(a.rt_s, b.rt_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.passage.mass, b.passage.mass, rtol=1e-4, atol=1e-6)


def test_urgency_shortens_the_right_tail_and_has_a_gradient() -> None:
    """A faster collapse can only make each trial decide earlier (the gain is ≥ 1 and grows with r), so the
    90 % RT quantile falls monotonically with r; the rate gets a gradient from the RTs."""
    gen = torch.Generator().manual_seed(4)
    evidence = 0.02 + 0.2 * torch.randn(2000, 80, 1, generator=gen)
    q90 = []
    for rate in (0.01, 0.5, 2.0):
        out = _identity_two_bound(True, rate)(evidence)
        q90.append(float(torch.quantile(out.rt_s[out.decision.decided], 0.9)))
    assert q90[0] > q90[1] > q90[2]
    head = _identity_two_bound(True, 0.5)
    head(evidence).rt_s.mean().backward()
    assert head.raw_urgency.grad is not None and float(head.raw_urgency.grad) < 0  # faster collapse → faster


def test_urgency_counts_one_parameter_and_is_validated() -> None:
    with_urgency, without = _identity_two_bound(True), _identity_two_bound(False)
    assert with_urgency.n_fitted_parameters() == without.n_fitted_parameters() + 1
    assert without.urgency_rate is None
    with pytest.raises(PerceptAlignError, match="urgency_init"):
        RTifyHead(1, 2, mode="two_bound", urgency=True, urgency_init=0.0)
    with pytest.raises(PerceptAlignError, match="urgency"):
        RTifyHead(1, 2, mode="two_bound", urgency="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- drift variability (slow errors)


def _identity_variable(drift_sd: float | None, dt: float = 0.05) -> RTifyHead:
    """:func:`_identity_head` with drift variability s_v = ``drift_sd`` when given (noise seed 7)."""
    return _identity_head(
        dt, drift_variability=drift_sd is not None, drift_sd_init=drift_sd or 0.5, noise_seed=7
    )


def test_drift_variability_is_a_per_trial_constant_offset_of_the_evidence() -> None:
    """Independent construction: a head WITHOUT variability fed evidence + s_v·dt·z (z the trial's draw,
    constant over the trial) must decide exactly like the variable head fed the raw evidence."""
    sd, dt = 2.0, 0.05
    gen = torch.Generator().manual_seed(5)
    evidence = 0.05 + 0.3 * torch.randn(64, 40, 1, generator=gen)
    variable, plain = _identity_variable(sd, dt), _identity_variable(None, dt)
    z = variable.trial_noise(64)
    a, b = variable(evidence), plain(evidence + sd * dt * z.view(64, 1, 1))
    assert float(variable.drift_sd.detach()) == pytest.approx(sd, rel=1e-6)
    assert torch.equal(a.decision.choice, b.decision.choice)
    # the same float32 additions in the same order: equal up to the softplus round trip of s_v (~1e-7)
    torch.testing.assert_close(a.rt_s, b.rt_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.passage.mass, b.passage.mass, rtol=1e-4, atol=1e-6)
    # an explicit draw overrides the seeded one, and a wrong shape is refused
    c = variable(evidence, torch.zeros(64, 1))
    torch.testing.assert_close(c.rt_s, plain(evidence).rt_s, rtol=1e-6, atol=1e-6)
    with pytest.raises(PerceptAlignError, match="trial_noise"):
        variable(evidence, torch.zeros(63, 1))
    with pytest.raises(PerceptAlignError, match="no drift variability"):
        plain(evidence, z)


def test_drift_draws_are_fixed_per_trial_and_not_repeated_across_chunks() -> None:
    """Common random numbers: two calls give the same draws (a deterministic loss); predicting in chunks
    slices one draw instead of restarting it per chunk (which would give trial i and i + chunk the same z)."""
    head = _identity_variable(3.0)
    torch.testing.assert_close(head.trial_noise(50), head.trial_noise(50), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(6)
    evidence = 0.05 + 0.3 * torch.randn(50, 40, 1, generator=gen)
    whole, chunked = head.predict_trials(evidence), head.predict_trials(evidence, batch_size=7)
    np.testing.assert_array_equal(whole.choice, chunked.choice)
    np.testing.assert_allclose(whole.rt_s, chunked.rt_s, rtol=0, atol=0)


def test_drift_variability_makes_errors_slower_and_has_a_gradient() -> None:
    """The DDM's signature of drift variability: with s_v = 0 a symmetric random walk's errors and correct
    responses have the same RT distribution; with large s_v errors come from low-drift trials and are slower.
    4000 trials (200–800 errors): the error-minus-correct mean RT has a standard error of ~0.02–0.03 s, so
    |gap| < 0.08 s without s_v is ~3 se, and the measured effect with s_v = 3/s (~0.19 s) is ≥ 0.1 s by
    ~2.5 se of the difference."""
    gen = torch.Generator().manual_seed(8)
    dt, n = 0.01, 4000
    evidence = 0.03 + 0.18 * torch.randn(n, 400, 1, generator=gen)  # upper bound = correct

    def slow_error_gap(head: RTifyHead) -> float:
        out = head(evidence)
        decided, correct = out.decision.decided, out.decision.choice == 1
        rt = out.rt_s.detach()
        return float(rt[decided & ~correct].mean() - rt[decided & correct].mean())

    without, with_sv = (
        slow_error_gap(_identity_variable(None, dt)),
        slow_error_gap(_identity_variable(3.0, dt)),
    )
    assert abs(without) < 0.08
    assert with_sv > without + 0.1
    head = _identity_variable(2.0, dt)
    out = head(evidence)
    out.passage.mass.sum(1)[:, 0].mean().backward()  # P(lower bound), the error probability
    assert head.raw_drift_sd.grad is not None and float(head.raw_drift_sd.grad) > 0  # more sv → more errors


def test_drift_variability_counts_one_parameter_and_is_validated() -> None:
    assert _identity_variable(1.0).n_fitted_parameters() == _identity_variable(None).n_fitted_parameters() + 1
    assert _identity_variable(None).drift_sd is None
    with pytest.raises(PerceptAlignError, match="drift_sd_init"):
        RTifyHead(1, 2, mode="two_bound", drift_variability=True, drift_sd_init=-1.0)
    with pytest.raises(PerceptAlignError, match="drift_variability"):
        RTifyHead(1, 2, mode="two_bound", drift_variability=1)  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="noise_seed"):
        RTifyHead(1, 2, mode="two_bound", noise_seed=-1)
