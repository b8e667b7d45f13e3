"""Wald's bound on the mean decision time, against simulated diffusions (the SPRT attains it; other rules
cannot beat it) and the RDM stream's information rate against its own samples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.rdm.task import RDMTaskConfig, make_trials
from perceptalign.rtify.ideal_observer import information_bound, sprt_min_mean_decision_time


def _walks(drift: float, bound, n: int = 20_000, dt: float = 5e-4, seed: int = 0) -> tuple[float, float]:
    """Accuracy and mean decision time of unit-noise diffusions from 0 to ±bound(t) (Euler, fine dt)."""
    rng = np.random.default_rng(seed)
    x, t = np.zeros(n), 0.0
    decided, correct, time = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n)
    while not decided.all() and t < 20.0:
        t += dt
        live = ~decided
        x[live] += drift * dt + math.sqrt(dt) * rng.standard_normal(live.sum())
        level = bound(t)
        hit = live & (np.abs(x) >= level)
        decided |= hit
        correct[hit] = x[hit] > 0
        time[hit] = t
    return float(correct[decided].mean()), float(time[decided].mean())


def test_the_sprt_attains_the_bound() -> None:
    """A constant-bound DDM is the SPRT: its (accuracy, mean time) lies on the bound. 20,000 walks: the
    mean time's SE is ~0.5 % and the Euler overshoot at dt = 0.5 ms adds ~+2 %; 5 % covers both."""
    for drift, a in ((1.0, 0.8), (2.5, 0.6)):
        accuracy, mean_time = _walks(drift, lambda t, a=a: a)
        assert accuracy == pytest.approx(1 / (1 + math.exp(-2 * a * drift)), abs=0.01)
        assert sprt_min_mean_decision_time(accuracy, drift) == pytest.approx(mean_time, rel=0.05)


def test_other_rules_cannot_beat_the_bound() -> None:
    """Any other stopping rule is at least as slow for its accuracy (Wald–Wolfowitz). A fixed-time rule
    (answer the sign at time T: accuracy Φ(v·√T), exact) is far slower; a collapsing bound is near-optimal
    but not below the bound beyond its ~2 % simulation error (Euler overshoot biases it upward)."""
    from scipy.stats import norm

    for drift, horizon in ((0.5, 1.0), (1.5, 0.4), (3.0, 0.2)):
        accuracy = float(norm.cdf(drift * math.sqrt(horizon)))
        assert horizon > 1.3 * sprt_min_mean_decision_time(accuracy, drift)
    accuracy, mean_time = _walks(1.5, lambda t: 1.2 * math.exp(-t / 0.8), seed=1)
    assert mean_time > 0.98 * sprt_min_mean_decision_time(accuracy, 1.5)  # measured +4.6 %


def test_bound_edges_and_errors() -> None:
    assert sprt_min_mean_decision_time(0.5, 1.0) == 0.0
    assert sprt_min_mean_decision_time(1.0, 1.0) == math.inf
    # monotone: more accuracy costs time; more drift saves it
    assert sprt_min_mean_decision_time(0.9, 1.0) > sprt_min_mean_decision_time(0.8, 1.0)
    assert sprt_min_mean_decision_time(0.9, 2.0) < sprt_min_mean_decision_time(0.9, 1.0)
    with pytest.raises(PerceptAlignError, match="accuracy"):
        sprt_min_mean_decision_time(1.2, 1.0)
    with pytest.raises(PerceptAlignError, match="drift_per_s"):
        sprt_min_mean_decision_time(0.8, 0.0)


def test_information_bound_table() -> None:
    """The table applies the bound per condition with drift ∝ |condition|; max_mean_t0_s = mean RT − bound."""
    trials = pd.DataFrame(
        {
            "condition": [10.0] * 4 + [20.0] * 4,
            "rt_s": [0.5, 0.7, 0.6, 0.8, 0.4, 0.5, 0.45, 0.55],
            "correct": [True, True, True, False, True, True, True, True],
        }
    )
    table = information_bound(trials, 0.05).set_index("condition")
    assert table.loc[10.0, "accuracy"] == 0.75
    expected = sprt_min_mean_decision_time(0.75, 0.5)
    assert table.loc[10.0, "min_mean_decision_time_s"] == pytest.approx(expected)
    assert table.loc[10.0, "max_mean_t0_s"] == pytest.approx(0.65 - expected)
    assert table.loc[20.0, "min_mean_decision_time_s"] == math.inf  # accuracy 1: no finite bound
    with pytest.raises(PerceptAlignError, match="drift_per_unit"):
        information_bound(trials, -1.0)


def test_rdm_stream_information_rate_matches_its_samples() -> None:
    """The stream's channel difference, standardised per √s, drifts at information_rate·c: estimated from
    4,000 trials × 100 steps at 51.2 % (SE of the drift estimate ~1 %)."""
    task = RDMTaskConfig(coherences=(51.2,))
    trials = make_trials(task, 4000, seed=0)
    difference = (trials.x[..., 0] - trials.x[..., 1]).double().numpy()  # (N, T)
    direction = trials.labels.double().numpy() * 2 - 1
    per_step = difference * direction[:, None]
    drift_per_s = per_step.mean() / task.dt
    noise_per_sqrt_s = per_step.std() / math.sqrt(task.dt)
    assert drift_per_s / noise_per_sqrt_s == pytest.approx(task.information_rate * 51.2, rel=0.03)
    assert task.information_rate == pytest.approx(0.060, abs=5e-4)  # g = 1.2, σ = 1, dt = 20 ms
