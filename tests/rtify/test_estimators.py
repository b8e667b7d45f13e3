"""The estimators (`perceptalign.rtify.estimators`): one interface for every method — frozen validated
configs, fit → simulate → score with one metric table, refusal before fit, DDM parameter recovery, and the
RTify head estimator against the fit function it wraps."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify import (
    DDM,
    DDMConfig,
    DDMEstimator,
    DDMEstimatorConfig,
    EntropyThresholdConfig,
    EntropyThresholdEstimator,
    EvidentialConfig,
    EvidentialEstimator,
    RTEstimator,
    RTifyHeadConfig,
    RTifyHeadEstimator,
    RTLoss,
    WongWangEstimator,
    fit_quality,
    validate_trials,
)
from perceptalign.rtify.estimators import TRAIN_SEED_OFFSET
from perceptalign.rtify.experiments.rdm import (
    FitConfig,
    GRUTrials,
    HumanTargets,
    build_head,
    fit_head_to_human,
    predict_table,
    simulate,
)
from perceptalign.rtify.experiments.rdm.task import (
    GRUBackbone,
    GRUTrainConfig,
    RDMTaskConfig,
    load_or_train_gru,
)
from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig

CONDS = [6.4, 51.2]
TASK = RDMTaskConfig(coherences=tuple(CONDS), dt=0.05, n_steps=40)
GRU = GRUTrainConfig(hidden_size=8, steps=40, batch_size=64, lr=1e-2, seed=0)
TRUTH = {"k": 0.08, "B": 0.9, "t0": 0.3}  # a simple DDM with human-like RTs (0.4–1.5 s) and accuracies


def _human(n: int, seed: int) -> pd.DataFrame:
    model = DDM.from_params(TRUTH, DDMConfig())
    return model.simulate(CONDS, n, seed=seed).drop(columns="decided")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> GRUBackbone:
    torch.set_num_threads(1)
    model, _ = load_or_train_gru(TASK, GRU, cache=tmp_path_factory.mktemp("gru"))
    return model


@pytest.fixture(scope="module")
def human() -> pd.DataFrame:
    return _human(200, seed=1)


@pytest.fixture(scope="module")
def fitted(backbone: GRUBackbone, human: pd.DataFrame) -> dict[str, RTEstimator]:
    """One small fit of every estimator on the same trials (the network ones share one GRU)."""
    network = GRUTrials(backbone, TASK)
    loss = RTLoss()
    return {
        "rtify": RTifyHeadEstimator(RTifyHeadConfig(loss=loss, head_steps=10, n_train=40), network).fit(
            human
        ),
        "entropy": EntropyThresholdEstimator(
            EntropyThresholdConfig(loss=loss, n_train=40, n_theta=16, n_t0=9, n_refine=5), network
        ).fit(human),
        "evidential": EvidentialEstimator(
            EvidentialConfig(loss=loss, n_train=40, n_theta=16, n_t0=9, n_refine=5, epochs=2), network
        ).fit(human),
        "ddm-simple": DDMEstimator(DDMEstimatorConfig(variant="simple")).fit(human),
        "ww": WongWangEstimator(WWFitConfig(steps=2, n_train=20, dt_ms=20.0, fine_dt_ms=None)).fit(human),
    }


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RTifyHeadConfig(loss="wasserstein"), "`loss`"),  # type: ignore[arg-type]
        (lambda: RTifyHeadConfig(t0_max=-0.1), "`t0_max`"),
        (lambda: RTifyHeadConfig(temperature=0.0), "`temperature`"),
        (lambda: EntropyThresholdConfig(n_t0=1), "`n_t0`"),
        (lambda: EntropyThresholdConfig(n_train=0), "`n_train`"),
        (lambda: EvidentialConfig(epochs=True), "`epochs`"),  # a bool is not a count
        (lambda: EvidentialConfig(lr=0.0), "`lr`"),
        (lambda: DDMEstimatorConfig(variant="medium"), "`variant`"),  # type: ignore[arg-type]
        (lambda: DDMEstimatorConfig(criterion="r2"), "`criterion`"),  # type: ignore[arg-type]
        (lambda: DDMEstimatorConfig(seed=-1), "`seed`"),
    ],
)
def test_configs_are_validated_naming_the_parameter(make, match: str) -> None:
    with pytest.raises(PerceptAlignError, match=match):
        make()


def test_configs_are_frozen_and_share_one_objective() -> None:
    for config in (RTifyHeadConfig(), EntropyThresholdConfig(), EvidentialConfig(), DDMEstimatorConfig()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 1  # type: ignore[misc]
    # The experiment settings and the head config describe the same objective object.
    settings = FitConfig(loss="quantile", acc_weight=0.5, n_bins=200)
    head = RTifyHeadConfig.from_fit_config(settings, t0_max=0.4)
    assert head.loss == settings.rt_loss and head.fit_config().rt_loss == head.loss
    assert head.fit_config() == dataclasses.replace(settings, n_eval=FitConfig().n_eval)
    # The grid searches use the binned form of the same distance and the same histogram window.
    grid = EntropyThresholdConfig(loss=RTLoss(kind="mse", n_bins=100, lo=-2.0, hi=2.0)).search_settings(0.3)
    assert (grid["objective"], grid["n_bins"], grid["lo"], grid["hi"]) == ("hist_mse", 100, -2.0, 2.0)
    assert (
        EntropyThresholdConfig(loss=RTLoss(kind="quantile")).search_settings(0.3)["objective"]
        == "wasserstein"
    )
    assert WWFitConfig(loss="mse", acc_weight=2.0).rt_loss == RTLoss(kind="mse", acc_weight=2.0)


def test_estimators_refuse_use_before_fit(backbone: GRUBackbone, human: pd.DataFrame) -> None:
    network = GRUTrials(backbone, TASK)
    for estimator in (
        RTifyHeadEstimator(RTifyHeadConfig(), network),
        EntropyThresholdEstimator(EntropyThresholdConfig(), network),
        EvidentialEstimator(EvidentialConfig(), network),
        DDMEstimator(),
        WongWangEstimator(),
    ):
        assert not estimator.is_fitted
        with pytest.raises(PerceptAlignError, match=r"not fitted yet: call fit\(trials\) before simulate"):
            estimator.simulate(CONDS, 10)
        with pytest.raises(PerceptAlignError, match=r"not fitted yet: call fit\(trials\) before score"):
            estimator.score(human)
        assert "params" not in estimator.to_dict()
    with pytest.raises(PerceptAlignError, match="RTifyHeadConfig"):
        RTifyHeadEstimator(FitConfig(), network)  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="`network`"):
        EntropyThresholdEstimator(EntropyThresholdConfig(), network=None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fit → simulate → score


def test_every_estimator_scores_with_the_same_metric_table(
    fitted: dict[str, RTEstimator], human: pd.DataFrame
) -> None:
    test = _human(150, seed=2)
    scores = {name: est.score(test, n=300, seed=4) for name, est in fitted.items()}
    expected = list(fit_quality(fitted["ddm-simple"].simulate(CONDS, 300, seed=4), test).columns)
    for name, table in scores.items():
        assert list(table.columns) == expected, name
        assert table["condition"].tolist() == CONDS and (table["n_model"] == 300).all(), name
        assert np.isfinite(table["wasserstein"]).all(), name
    # score is fit_quality of the seeded simulation, nothing else
    ddm = fitted["ddm-simple"]
    pd.testing.assert_frame_equal(scores["ddm-simple"], fit_quality(ddm.simulate(CONDS, 300, seed=4), test))
    counts = {name: est.n_parameters for name, est in fitted.items()}
    # head: evidence weights (8) + bias, θ, t₀; WW: J₁₁, J₁₂, J_ext, I₀, σ, θ, motor delay
    assert counts == {"rtify": 11, "entropy": 2, "evidential": 2, "ddm-simple": 3, "ww": 7}
    for est in fitted.values():
        json.dumps(est.to_dict())  # fit.json-ready


@pytest.mark.parametrize("name", ["rtify", "entropy", "evidential", "ddm-simple", "ww"])
def test_simulate_returns_reproducible_trials_tables(fitted: dict[str, RTEstimator], name: str) -> None:
    est = fitted[name]
    conds = [*CONDS, 25.6]  # 25.6 % has no training trials: every method predicts it from the coherence
    table = est.simulate(conds, 37, seed=11)
    validate_trials(table, required_conditions=conds)
    assert table.groupby("condition").size().to_dict() == dict.fromkeys(conds, 37)
    assert {"condition", "rt_s", "correct", "decided"} <= set(table.columns)
    pd.testing.assert_frame_equal(table, est.simulate(conds, 37, seed=11))
    assert not table["rt_s"].equals(est.simulate(conds, 37, seed=12)["rt_s"])  # the seed matters
    with pytest.raises(PerceptAlignError, match="`n`"):
        est.simulate(conds, 0)
    with pytest.raises(PerceptAlignError, match="`conditions`"):
        est.simulate([], 10)


# ---------------------------------------------------------------- what the estimators wrap


def test_head_estimator_equals_the_fit_function_it_wraps(backbone: GRUBackbone, human: pd.DataFrame) -> None:
    """Regression: the estimator is `fit_head_to_human` on the same trials, seed and t₀ box."""
    config = RTifyHeadConfig(head_steps=15, n_train=40, seed=3, t0_max=0.35)
    est = RTifyHeadEstimator(config, GRUTrials(backbone, TASK)).fit(human)
    settings = config.fit_config()
    head = build_head(backbone, TASK, settings, t0_max=0.35)
    sim = simulate(backbone, TASK, 40, seed=3 + TRAIN_SEED_OFFSET)
    targets = HumanTargets.from_table(human, CONDS, settings, beyond_window="count")
    history = fit_head_to_human(head, sim, targets, settings)
    assert est.history_ == history
    for a, b in zip(est.head_.state_dict().values(), head.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    old = predict_table(head, simulate(backbone, TASK, 50, seed=9))
    new = est.simulate(CONDS, 50, seed=9)
    pd.testing.assert_frame_equal(new.drop(columns="decided"), old.drop(columns="decided"), check_dtype=False)
    assert est.params()["t0_max"] == 0.35 and est.n_parameters == head.n_fitted_parameters()


def test_self_penalised_head_fits_without_human_rts(backbone: GRUBackbone, human: pd.DataFrame) -> None:
    config = RTifyHeadConfig(
        objective="self-penalty", penalty="tau", lam=0.01, head_steps=3, self_penalty_batch=16
    )
    est = RTifyHeadEstimator(config, GRUTrials(backbone, TASK)).fit(human)
    assert est.name == "rtify-self-penalty" and est.n_parameters == 0  # nothing fitted to human data
    assert est.params()["t0"] == pytest.approx(config.t0_fixed, rel=1e-5) and not est.params()["t0_learned"]
    assert len(est.history_) == 3


def test_ddm_estimator_recovers_known_parameters() -> None:
    # 3 coherences × 700 trials drawn from the fitted model class's own density (same solver grid, so no
    # discretisation bias): the sampling SD of the fit at this size is about k 2.4 %, B 1.3 %, t0 3.4 ms
    # (tests/rtify/test_ddm.py); the tolerances are ~4 SD.
    truth = DDM.from_params(TRUTH, DDMConfig())
    trials = truth.simulate([4.0, 16.0, 40.0], 700, seed=5).drop(columns="decided")
    est = DDMEstimator(DDMEstimatorConfig(variant="simple")).fit(trials)
    assert est.name == "ddm-simple" and est.variant == "simple" and est.notes_ == []
    fitted = est.params()
    assert fitted["k"] == pytest.approx(TRUTH["k"], rel=0.10)
    assert fitted["B"] == pytest.approx(TRUTH["B"], rel=0.06)
    assert fitted["t0"] == pytest.approx(TRUTH["t0"], abs=0.015)


@pytest.mark.slow
def test_strong_ddm_selects_a_variant_and_its_simple_fit_is_the_simple_estimator(human: pd.DataFrame) -> None:
    strong = DDMEstimator(DDMEstimatorConfig(variant="strong")).fit(human)
    assert strong.name == "ddm" and strong.variant in strong.selection_["variant"].tolist()
    assert strong.params()["variant"] == strong.variant
    simple = DDMEstimator(DDMEstimatorConfig(variant="simple")).fit(human)
    assert strong.simple().params() == simple.params()
    pd.testing.assert_frame_equal(
        strong.simple().simulate(CONDS, 100, seed=1), simple.simulate(CONDS, 100, seed=1)
    )
