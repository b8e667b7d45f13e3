"""Planted recovery against the noise floor (issue #10, "must show" 2), at test scale.

Trials come from drift-diffusion models with known parameters and slow errors (collapsing bound; drift
variability), split into train and test as the human data are. The criterion is the one of
``results/rtify-planted-recovery/PREREGISTRATION.md``: held-out W1 ≤ noise floor + 0.01 s at every
coherence, the floor being the human-train trials resampled to the model's decided-trial count against
the test trials (:func:`perceptalign.rtify.uncertainty.noise_floor`).

What holds, and is asserted: the strong (BIC-selected) DDM meets the criterion everywhere. What does not
hold, and is guarded so that it cannot silently get worse: the RTify head on the frozen GRU misses it (a
constant threshold on that network's evidence cannot produce a collapsing bound's short right tail or the
flatter psychometric curve of drift variability; the full-scale measurement is in
``results/rtify-planted-recovery/``). Its fit must still close most of the gap from where it starts and
match the planted accuracy.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from perceptalign.rtify.ddm import DDM, DDMConfig
from perceptalign.rtify.estimators import (
    DDMEstimator,
    DDMEstimatorConfig,
    RTifyHeadConfig,
    RTifyHeadEstimator,
)
from perceptalign.rtify.experiments.rdm.simulated_trials import GRUTrials
from perceptalign.rtify.experiments.rdm.task import GRUTrainConfig, RDMTaskConfig, load_or_train_gru
from perceptalign.rtify.uncertainty import noise_floor

pytestmark = pytest.mark.slow
pytest.importorskip("pyddm")

COHERENCES = [3.2, 12.8, 51.2]
MARGIN_S = 0.01  # the declared criterion: floor + 0.01 s
#: Collapsing bound without drift variability; k is the drift per % that the GRU's stimulus carries.
COLLAPSING = (DDMConfig(bound="collapsing"), {"k": 0.06, "B": 1.2, "tau_B": 0.8, "t0": 0.3})
#: Constant bound with drift variability (slow errors from sv).
CONSTANT_SV = (DDMConfig(drift_variability=True), {"k": 0.10, "sv": 1.2, "B": 0.8, "t0": 0.3})


def planted_split(
    planted: tuple[DDMConfig, dict], n_train: int, n_test: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    config, params = planted
    model = DDM.from_params(params, config)
    train = model.simulate(COHERENCES, n_train, seed=1)
    test = model.simulate(COHERENCES, n_test, seed=2)
    return (t[t["decided"]].drop(columns="decided").reset_index(drop=True) for t in (train, test))


def excess_w1(estimator, train: pd.DataFrame, test: pd.DataFrame, n_model: int) -> pd.DataFrame:
    """Per coherence: held-out W1, its noise floor at the model's decided-trial count, and the excess."""
    model = estimator.simulate(COHERENCES, n_model, seed=7)
    score = estimator.score(test, n=n_model, seed=7).set_index("condition")
    counts = model[model["decided"]].groupby("condition").size().to_dict()
    floor = noise_floor(train, test, n_model=counts, overall=False).set_index("condition")
    out = pd.DataFrame(
        {"w1": score["wasserstein"], "floor": floor["wasserstein_mean"], "floor_hi": floor["wasserstein_hi"]}
    )
    out["excess"] = out["w1"] - out["floor"]
    out["accuracy_gap"] = (score["accuracy_model"] - score["accuracy_human"]).abs()
    return out


def test_strong_ddm_meets_the_criterion_on_a_collapsing_bound_with_slow_errors() -> None:
    train, test = planted_split(COLLAPSING, 2500, 1000)
    errors = test[~test["correct"]].groupby("condition")["rt_s"].median()
    corrects = test[test["correct"]].groupby("condition")["rt_s"].median()
    assert (errors.loc[[3.2, 12.8]] > corrects.loc[[3.2, 12.8]]).all()  # the planted data has slow errors
    est = DDMEstimator(DDMEstimatorConfig(variant="strong")).fit(train)
    # The selected variant can express the collapse, and recovers the planted parameters. Tolerances: the
    # fit's sampling SD at this size is ~3 % for k and B, ~8 % for τ_B and ~5 ms for t0 (dt = 0.01 adds a
    # few ms to t0); measured 0.060, 1.233, 0.78, 0.297.
    assert "collapsing" in est.variant
    fitted = est.params()
    assert fitted["k"] == pytest.approx(0.06, rel=0.10)
    assert fitted["B"] == pytest.approx(1.2, rel=0.08)
    assert fitted["tau_B"] == pytest.approx(0.8, rel=0.25)
    assert fitted["t0"] == pytest.approx(0.3, abs=0.02)
    # Held-out W1 within the noise floor + 0.01 s at every coherence. "Within the floor" is its upper 97.5 %
    # point here: a model with the planted parameters themselves exceeds the floor's MEAN by more than 0.01 s
    # at some coherence of some splits (measured: +0.013 at 12.8 % on this one, with every parameter within
    # 3 % of the truth), because its own W1 is one draw of the same distribution.
    table = excess_w1(est, train, test, 2000)
    assert (table["w1"] <= table["floor_hi"] + MARGIN_S).all(), table


@pytest.fixture(scope="module")
def gru_trials(tmp_path_factory: pytest.TempPathFactory) -> GRUTrials:
    torch.set_num_threads(1)
    task = replace(RDMTaskConfig(), coherences=tuple(COHERENCES))
    backbone, _ = load_or_train_gru(
        task, GRUTrainConfig(steps=300, seed=0), cache=tmp_path_factory.mktemp("g")
    )
    return GRUTrials(backbone, task)


@pytest.mark.parametrize("planted", [COLLAPSING, CONSTANT_SV], ids=["collapsing", "constant_sv"])
def test_rtify_head_closes_most_of_the_gap_but_not_to_the_floor(gru_trials: GRUTrials, planted) -> None:
    train, test = planted_split(planted, 2500, 1000)
    start = RTifyHeadEstimator(RTifyHeadConfig(head_steps=1), gru_trials).fit(train)
    fitted = RTifyHeadEstimator(RTifyHeadConfig(), gru_trials).fit(train)
    before = excess_w1(start, train, test, 1000)
    after = excess_w1(fitted, train, test, 1000)
    # The fit works: the mean excess over the floor shrinks by at least 20 % (measured at this scale: 0.091
    # → 0.061 s for the collapsing bound), and the accuracy at every coherence is within 0.06 of the planted
    # one (the SE of a difference of two accuracies over ~1000 trials each is ≤ 0.022, so 0.06 is > 2.5 SE
    # plus the fit's own error).
    assert after["excess"].mean() < 0.8 * before["excess"].mean(), (before, after)
    np.testing.assert_array_less(after["accuracy_gap"].to_numpy(), 0.06)
    # The known gap, guarded from growing: at this scale (a GRU trained 300 steps) the excess is up to
    # 0.10 s (collapsing, 3.2 %); at full scale (results/rtify-planted-recovery) 0.01–0.09 s.
    assert (after["excess"] < 0.15).all(), after
