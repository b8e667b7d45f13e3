"""Baselines: entropy threshold, evidential uncertainty and drift-diffusion (PyDDM), each checked against
an independent formula or by recovering the parameters that generated synthetic data."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.baselines import (
    DDMBaseline,
    EntropyThresholdRT,
    entropy_crossing_steps,
    softmax_entropy,
)
from perceptalign.rtify.metrics import fit_quality
from perceptalign.rtify.trials import conditions, packaged_data_path

HUMAN_CSV = packaged_data_path("rdm_human_rt.csv.gz")  # ships with the package


# ---------------------------------------------------------------- entropy threshold


def _binary_probs(evidence: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Two-class probabilities from a signed evidence trace (positive favours the label)."""
    p_label = expit(evidence)
    probs = np.empty((*evidence.shape, 2))
    probs[..., 0] = np.where(labels[:, None] == 0, p_label, 1 - p_label)
    probs[..., 1] = 1 - probs[..., 0]
    return probs


def _diffusion_probs(
    rng: np.random.Generator, drift: float, n: int, n_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random walk of evidence turned into softmax trajectories: the entropy threshold becomes a DDM."""
    labels = rng.integers(0, 2, size=n)
    evidence = np.cumsum(drift + rng.normal(0.0, 0.35, size=(n, n_steps)), axis=1)
    return _binary_probs(evidence, labels), labels


def test_softmax_entropy_matches_formula() -> None:
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    expected = [math.log(2), 0.0, -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))]
    np.testing.assert_allclose(softmax_entropy(p), expected, rtol=1e-12)


def test_crossing_steps_against_direct_loop() -> None:
    rng = np.random.default_rng(0)
    entropy = rng.random((40, 25))  # not monotone: crossings must be found on the raw sequence
    thetas = np.array([0.02, 0.1, 0.3, 0.9, 1.5])
    steps = entropy_crossing_steps(entropy, thetas)
    for n in range(40):
        for g, theta in enumerate(thetas):
            below = [t for t in range(25) if entropy[n, t] < theta]
            assert steps[n, g] == (below[0] if below else 25)


def test_known_crossing_on_linear_evidence() -> None:
    # Evidence a·t for the label: entropy falls monotonically; the crossing of θ is at evidence L* with
    # H(sigmoid(L*)) = θ, so the first step is the smallest t with a·t > L* (closed form).
    slopes = np.array([0.05, 0.1, 0.2, 0.0])
    labels = np.array([0, 1, 1, 0])
    n_steps, theta = 60, 0.3
    probs = _binary_probs(slopes[:, None] * np.arange(n_steps)[None, :], labels)
    l_star = brentq(lambda x: softmax_entropy(np.array([expit(x), 1 - expit(x)])) - theta, 0.0, 20.0)
    model = EntropyThresholdRT(dt=0.01)
    steps, decided, choice = model.decision_steps(probs, theta=theta)
    for i, a in enumerate(slopes[:3]):
        assert steps[i] == math.floor(l_star / a) + 1 and decided[i]
    assert steps[3] == n_steps - 1 and not decided[3]  # flat evidence never crosses: censored at T−1
    np.testing.assert_array_equal(choice[:3], labels[:3])


def _split(draw: dict) -> tuple[dict, dict]:
    return {c: p for c, (p, _) in draw.items()}, {c: y for c, (_, y) in draw.items()}


@pytest.mark.parametrize("objective", ["hist_mse", "wasserstein"])
def test_theta_recovered_from_data_generated_with_it(objective: str) -> None:
    rng = np.random.default_rng(1)
    # t₀ = 0.3037 s puts the 20 ms RT lattice inside 10 ms histogram bins, not on their edges, so every t₀
    # in (0.300, 0.310] bins identically: that interval is the resolution at which t₀ is identifiable.
    dt, theta_true, t0_true = 0.02, 0.25, 0.3037
    drifts = {3.0: 0.03, 12.0: 0.08, 48.0: 0.3}
    truth = EntropyThresholdRT(dt=dt)
    truth.theta_, truth.t0_ = theta_true, t0_true
    # "Human" data: the true model applied to one draw of trajectories; the fit sees an independent draw.
    human = truth.predict(*_split({c: _diffusion_probs(rng, d, 5000, 150) for c, d in drifts.items()}))
    probs, labels = _split({c: _diffusion_probs(rng, d, 5000, 150) for c, d in drifts.items()})
    fitted = EntropyThresholdRT(dt=dt, objective=objective, n_theta=64, n_t0=31).fit(probs, human, labels)
    # Over 6 seeds the estimates stayed within 0.005 nats of θ; the tolerance leaves ~3x room for sampling
    # noise (θ = 0.25 nats ⇔ |evidence| ≈ 2.0; 0.015 nats ≈ 0.1 evidence units).
    assert abs(fitted.theta_ - theta_true) < 0.015
    assert 0.300 - 0.005 < fitted.t0_ <= 0.310 + 0.005  # the identifiable interval ± half a bin
    assert fitted.loss_ <= fitted.coarse_loss_  # refinement includes the coarse points: never worse
    assert fitted.objective_value(probs, human, labels) == pytest.approx(fitted.loss_)
    # Out of sample, the fitted model is as close to the data as the true model is, up to one 10 ms bin
    # (the resolution at which binned objectives identify t₀).
    fitted_quality = fit_quality(fitted.predict(probs, labels), human)
    true_quality = fit_quality(truth.predict(probs, labels), human)
    assert (fitted_quality["wasserstein"] < true_quality["wasserstein"] + 0.01).all()
    assert (fitted_quality["no_decision_rate"] < 0.05).all()


def test_objective_is_zero_at_the_truth_on_its_own_trajectories() -> None:
    rng = np.random.default_rng(2)
    truth = EntropyThresholdRT(dt=0.02)
    truth.theta_, truth.t0_ = 0.4, 0.2037
    probs, labels = _split(
        {c: _diffusion_probs(rng, d, 1500, 100) for c, d in {5.0: 0.05, 40.0: 0.25}.items()}
    )
    human = truth.predict(probs, labels)
    assert truth.objective_value(probs, human, labels) == 0.0
    fitted = EntropyThresholdRT(dt=0.02, n_theta=48, n_t0=21).fit(probs, human, labels)
    # The same trajectories: only trials whose entropy lies between θ̂ and θ differ, so the fit lands
    # next to the truth (θ within 0.01 nats, t₀ in the bin-identical interval (0.20, 0.21]).
    assert abs(fitted.theta_ - 0.4) < 0.01 and 0.2 < fitted.t0_ <= 0.21
    assert fitted.loss_ < 0.05 * truth.objective_value(probs, human, labels, theta=0.45, t0=0.25)


def test_entropy_fixed_t0_and_errors() -> None:
    rng = np.random.default_rng(3)
    probs, labels = _diffusion_probs(rng, 0.1, 200, 40)
    human = pd.DataFrame({"condition": 1.0, "rt_s": rng.uniform(0.3, 1.0, 200), "correct": True})
    fitted = EntropyThresholdRT(dt=0.02, fit_t0=False, t0=0.15).fit({1: probs}, human, {1: labels})
    assert fitted.t0_ == 0.15
    with pytest.raises(PerceptAlignError, match="not fitted"):
        EntropyThresholdRT(dt=0.02).predict({1.0: probs}, {1.0: labels})
    with pytest.raises(PerceptAlignError, match="dt"):
        EntropyThresholdRT(dt=0)
    with pytest.raises(PerceptAlignError, match="objective"):
        EntropyThresholdRT(dt=0.1, objective="kl")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="softmax"):
        fitted.predict({1.0: np.log(probs + 1e-9)}, {1.0: labels})
    with pytest.raises(PerceptAlignError, match="shape"):
        fitted.predict({1.0: probs[0]}, {1.0: labels})
    with pytest.raises(PerceptAlignError, match="labels must be 200 integers"):
        fitted.predict({1.0: probs}, {1.0: labels + 2})
    with pytest.raises(PerceptAlignError, match="same conditions"):
        fitted.predict({1.0: probs}, {2.0: labels})
    with pytest.raises(PerceptAlignError, match=r"no trials for condition\(s\) \[7.0\]"):
        EntropyThresholdRT(dt=0.02).fit({7.0: probs}, human, {7.0: labels})


# ---------------------------------------------------------------- evidential uncertainty
# The evidential baseline (read-out trained with the evidential loss) is tested in test_evidential.py.


# ---------------------------------------------------------------- drift-diffusion (PyDDM)


def _simulate_ddm(k: float, bound: float, t0: float, conds: list[float], n: int, seed: int) -> pd.DataFrame:
    """Trials sampled from a PyDDM model built directly (independent of DDMBaseline's model builder)."""
    import pyddm

    tables = []
    for i, c in enumerate(conds):
        model = pyddm.gddm(
            drift=k * c, bound=bound, nondecision=t0, mixture_coef=0, dt=0.001, dx=0.001, T_dur=2.5
        )
        sample = model.solve().sample(n, seed=seed + i)
        rt = np.concatenate([sample.choice_upper, sample.choice_lower])
        correct = np.concatenate(
            [np.ones(len(sample.choice_upper), bool), np.zeros(len(sample.choice_lower), bool)]
        )
        tables.append(pd.DataFrame({"condition": c, "rt_s": rt, "correct": correct}))
    return pd.concat(tables, ignore_index=True)


def test_ddm_recovers_parameters_fast() -> None:
    k, bound, t0 = 0.08, 0.9, 0.3
    data = _simulate_ddm(k, bound, t0, [4.0, 16.0, 40.0], 700, seed=1)
    # No lapse: the first version always mixed in a fixed 2 % one (now gone; DDMConfig(lapse="fitted") fits
    # one). dt = 0.005: the backward-Euler solver at the default dt = 0.01 biases t₀ by ~ +15 ms.
    ddm = DDMBaseline(dt=0.005, dx=0.005).fit(data)
    # Over 8 simulated data sets of this size the estimates had SDs of 2.4% (k), 1.3% (B) and 3.4 ms (t₀);
    # at dt = 0.005 the solver adds ~ +10 ms to t₀ and -2 % to B (12.5 ms and -2.4 % on this data set).
    assert ddm.params_["k"] == pytest.approx(k, rel=0.1)
    assert ddm.params_["B"] == pytest.approx(bound, rel=0.06)
    assert ddm.params_["t0"] == pytest.approx(t0, abs=0.017)
    assert ddm.drift(16.0) == pytest.approx(ddm.params_["k"] * 16.0)
    assert ddm.fit_seconds_ > 0 and ddm.n_trials_ == len(data)


def test_ddm_predict_matches_its_own_solution() -> None:
    data = _simulate_ddm(0.08, 0.9, 0.3, [4.0, 40.0], 300, seed=2)
    ddm = DDMBaseline(max_iter=5).fit(data)
    table = ddm.predict([4.0, 40.0, 10.0], n_per_condition=4000, seed=0)  # 10 was never seen: k·10
    assert conditions(table) == [4.0, 10.0, 40.0]
    assert table.groupby("condition").size().tolist() == [4000, 4000, 4000]
    assert (table["rt_s"] > 0).all() and (table["rt_s"] <= 2.5).all()
    for cond in (4.0, 10.0, 40.0):
        sub = table[(table["condition"] == cond) & table["decided"]]
        p = ddm.predicted_accuracy(cond)
        assert abs(sub["correct"].mean() - p) < 4 * math.sqrt(p * (1 - p) / len(sub))  # 4 binomial SEs
    again = ddm.predict([4.0], n_per_condition=50, seed=0)
    np.testing.assert_array_equal(again["rt_s"], ddm.predict([4.0], n_per_condition=50, seed=0)["rt_s"])


def test_ddm_per_condition_drift_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _simulate_ddm(0.08, 0.9, 0.3, [4.0, 40.0], 300, seed=3)
    labelled = data.assign(condition=data["condition"].map({4.0: "hard", 40.0: "easy"}))
    with pytest.raises(PerceptAlignError, match="per_condition_drift=True"):
        DDMBaseline(max_iter=3).fit(labelled)
    ddm = DDMBaseline(per_condition_drift=True, max_iter=10).fit(labelled)
    assert set(ddm.params_) == {"drift_easy", "drift_hard", "B", "t0"}
    assert ddm.params_["drift_easy"] > ddm.params_["drift_hard"]  # 3.2 vs 0.32 in the generating model
    with pytest.raises(PerceptAlignError, match="was not fitted"):
        ddm.predict(["medium"], 10)
    with pytest.raises(PerceptAlignError, match="n_per_condition"):
        ddm.predict(["easy"], 0)
    with pytest.raises(PerceptAlignError, match="T_dur"):
        DDMBaseline(T_dur=1.0).fit(data.assign(rt_s=data["rt_s"] + 1.0))
    with pytest.raises(PerceptAlignError, match="not fitted"):
        DDMBaseline().predict([1.0], 10)
    with pytest.raises(TypeError, match="mixture_coef"):
        DDMBaseline(mixture_coef=0.02)  # type: ignore[call-arg]  # a fixed lapse is no longer offered
    monkeypatch.setitem(sys.modules, "pyddm", None)  # import pyddm now raises ImportError
    with pytest.raises(PerceptAlignError, match=r"pip install perceptalign\[ddm\]"):
        DDMBaseline().fit(data)


@pytest.mark.slow
def test_ddm_recovers_parameters_large() -> None:
    k, bound, t0 = 0.05, 0.75, 0.27
    conds = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2]
    data = _simulate_ddm(k, bound, t0, conds, 3000, seed=10)
    # dt = 0.002: the solver's bias (t₀ ~ +15 ms at the default dt = 0.01) must stay below these tolerances.
    ddm = DDMBaseline(dt=0.002, dx=0.005).fit(data)
    # 10x the trials of the fast test: SDs shrink by ~sqrt(10) (k ~0.8%, B ~0.4%, t₀ ~1 ms + 3 ms rounding).
    assert ddm.params_["k"] == pytest.approx(k, rel=0.03)
    assert ddm.params_["B"] == pytest.approx(bound, rel=0.02)
    assert ddm.params_["t0"] == pytest.approx(t0, abs=0.008)


def test_plain_likelihood_is_biased_on_data_without_timeouts() -> None:
    # Trials that would end after T_dur are absent from the data (as in the human set). PyDDM's plain
    # likelihood then prefers a lower bound (fewer time-outs); the conditional one does not.
    data = _simulate_ddm(0.05, 1.1, 0.3, [2.0, 8.0], 1500, seed=4)
    plain = DDMBaseline(max_iter=15, condition_on_response=False).fit(data)
    conditional = DDMBaseline(max_iter=15).fit(data)
    assert abs(conditional.params_["B"] - 1.1) < abs(plain.params_["B"] - 1.1)
    assert plain.params_["B"] < 1.1


@pytest.mark.slow
def test_ddm_on_human_rdm_train_split() -> None:
    from perceptalign.rtify.trials import load_rt_dataset

    train = load_rt_dataset("rdm-human", split="train", path=HUMAN_CSV)
    test = load_rt_dataset("rdm-human", split="test", path=HUMAN_CSV)
    ddm = DDMBaseline().fit(train)
    table = fit_quality(ddm.predict(conditions(test), 3000, seed=0), test)
    # A DDM with drift ∝ coherence captures the psychometric curve of this task to within a few points.
    assert (np.abs(table["accuracy_model"] - table["accuracy_human"]) < 0.06).all()
    assert 0.15 < ddm.params_["t0"] < 0.45


@pytest.mark.slow
def test_ddm_collapsing_bound_recovery() -> None:
    import pyddm

    conds, tables = [4.0, 16.0], []
    for i, c in enumerate(conds):
        model = pyddm.gddm(
            drift=0.08 * c,
            bound=lambda t: 1.3 * np.exp(-1.0 * t),
            nondecision=0.3,
            mixture_coef=0,
            dt=0.005,
            dx=0.005,
            T_dur=2.5,
        )
        sample = model.solve().sample(1500, seed=20 + i)
        rt = np.concatenate([sample.choice_upper, sample.choice_lower])
        correct = np.arange(len(rt)) < len(sample.choice_upper)
        tables.append(pd.DataFrame({"condition": c, "rt_s": rt, "correct": correct}))
    data = pd.concat(tables, ignore_index=True)
    collapsing = DDMBaseline(collapsing=True, max_iter=15).fit(data)
    constant = DDMBaseline(max_iter=15).fit(data)
    # The nested constant-bound model cannot beat the collapsing one on data from a collapsing bound.
    assert collapsing.neg_log_likelihood_ < constant.neg_log_likelihood_ - 5
    # 3,000 trials identify the collapse only coarsely (B and τ trade off); ±40% around the time constant
    # τ_B = 1 s (B·exp(−t/τ_B); PyDDM's own exponential bound takes the rate, here also 1/s).
    assert collapsing.params_["tau_B"] == pytest.approx(1.0, rel=0.4)
    assert collapsing.params_["B"] == pytest.approx(1.3, rel=0.2)


def test_entropy_decision_time_is_continuous_on_the_common_clock() -> None:
    # Evidence a·t at index t (the state at time t + 1 steps): the entropy crosses θ when a·(t* − 1) = L*, so
    # the continuous decision time is t* = L*/a + 1 steps. Linear interpolation of the entropy within the
    # crossing step errs by its curvature over one step: < 0.02 steps for these slopes (checked for a = 0.2,
    # the most curved: 0.006).
    slopes = np.array([0.05, 0.1, 0.2])
    labels = np.array([0, 1, 1])
    n_steps, theta = 60, 0.3
    probs = _binary_probs(slopes[:, None] * np.arange(n_steps)[None, :], labels)
    l_star = brentq(lambda x: softmax_entropy(np.array([expit(x), 1 - expit(x)])) - theta, 0.0, 20.0)
    model = EntropyThresholdRT(dt=0.01)
    t_star, steps, decided, _ = model.decisions(probs, theta=theta)
    assert decided.all()
    np.testing.assert_allclose(t_star, l_star / slopes + 1, atol=0.02)
    assert np.all((steps <= t_star) & (t_star <= steps + 1))
    model.theta_, model.t0_ = theta, 0.25
    table = model.predict({1.0: probs}, {1.0: labels})
    np.testing.assert_allclose(table["rt_s"].to_numpy(), t_star * 0.01 + 0.25, rtol=1e-12)
