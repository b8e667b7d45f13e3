"""S2 of the task study: the joint mixed-model test over several models' tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.jobs.task_study_zoo import declared_layer, zoo_test


def _models(n_models=3, parents=5, per_parent=8, signal=1.0, task_sd=1.0, seed=0):
    """Tables of one model each over the same tasks: targets share a task effect across models (easy
    tasks are easy for all), NTPS relates to the target within each model with strength ``signal``."""
    rng = np.random.default_rng(seed)
    names = [f"t{p}-{i}" for p in range(parents) for i in range(per_parent)]
    parent = [f"p{p}" for p in range(parents) for _ in range(per_parent)]
    easy = task_sd * rng.standard_normal(len(names))
    tables = {}
    for m in range(n_models):
        x = rng.standard_normal(len(names))
        y = easy + signal * x + rng.standard_normal(len(names))
        tables[f"m{m}"] = pd.DataFrame({"name": names, "parent": parent, "ntps_declared": x, "target": y})
    return tables


def test_the_declared_layer_rule():
    # round(0.6 × blocks): smollm2's 30 blocks give the P1 layer 18; the zoo's 4/5/7 give 2/3/4.
    assert [declared_layer(b) for b in (30, 4, 5, 7)] == [18, 2, 3, 4]


def test_a_planted_relation_is_found_and_a_null_is_not():
    planted = zoo_test(_models(signal=1.0), n_permutations=150, n_boot=60)
    assert planted["beta"] > 0.3 and planted["p"] < 0.01 and planted["ci"][0] > 0
    null = zoo_test(_models(signal=0.0, seed=1), n_permutations=150, n_boot=60)
    assert null["p"] > 0.05 and null["ci"][0] < 0 < null["ci"][1]


def test_the_task_effect_is_absorbed_by_the_task_intercept():
    # A large shared task effect, no NTPS relation: the task variance component takes it and β stays
    # small (a pooled regression without the task intercept would not change here, since x is
    # independent of the task effect, but the residual variance must not contain it).
    result = zoo_test(_models(signal=0.0, task_sd=3.0, seed=2), n_permutations=50, n_boot=20)
    comps = result["variance_components"]
    assert comps["task"] > 3.0 * comps["residual"]
    assert abs(result["beta"]) < 0.2


def test_without_shared_structure_beta_is_near_the_mean_spearman():
    # With no task or parent effects the variance components shrink towards 0 and β (a slope of z-ranks
    # with unit variance in every model) approaches the mean of the per-model Spearman ρ.
    tables = _models(signal=0.8, task_sd=0.0, seed=3)
    result = zoo_test(tables, n_permutations=20, n_boot=10)
    mean_rho = np.mean([spearmanr(t["ntps_declared"], t["target"]).statistic for t in tables.values()])
    assert result["beta"] == pytest.approx(mean_rho, abs=0.05)


def test_order_of_models_and_of_tasks_does_not_matter():
    tables = _models(seed=4)
    base = zoo_test(tables, n_permutations=20, n_boot=10)["beta"]
    reordered = {k: t.sample(frac=1.0, random_state=1) for k, t in reversed(tables.items())}
    # The REML optimum is the same surface; 1e-6 covers the optimiser's stopping tolerance.
    assert zoo_test(reordered, n_permutations=20, n_boot=10)["beta"] == pytest.approx(base, abs=1e-6)


def test_bad_inputs_name_the_problem():
    tables = _models(n_models=2)
    with pytest.raises(PerceptAlignError, match="at least 2 models"):
        zoo_test({"m0": tables["m0"]})
    other = {**tables, "m1": tables["m1"].iloc[1:]}
    with pytest.raises(PerceptAlignError, match="other tasks"):
        zoo_test(other)
    nan = tables["m1"].copy()
    nan.loc[0, "target"] = np.nan
    with pytest.raises(PerceptAlignError, match="NaN"):
        zoo_test({**tables, "m1": nan})


def test_the_analysis_adds_s2_to_the_holm_family_and_the_summary(tmp_path):
    from perceptalign.ntps.datasets.tasks import TASKS
    from perceptalign.ntps.jobs.task_study import TaskStudyConfig, analyse, deviations
    from perceptalign.ntps.jobs.task_study_report import summary_markdown

    from .test_task_study import _table

    config = TaskStudyConfig(
        tasks=(*TASKS, "rt-3way"),
        peers=("logme", "knn_accuracy"),
        noise_levels=(0.0, 0.4),
        n_permutations=500,
        n_boot=100,
        n_power_simulations=20,
        zoo_permutations=100,
        zoo_boot=30,
    )
    table = _table(n_per_parent=6, parents=5)
    rng = np.random.default_rng(9)
    # Each model's deviations from the shared task values move NTPS and the target together, so the
    # relation holds between tasks and within them (a shared target alone would leave nothing within).
    zoo = {}
    for m in ("scratch-lm-tiny", "scratch-lm-small"):
        shift = 0.3 * rng.standard_normal(len(table))
        zoo[m] = table.assign(
            ntps_declared=table["ntps_declared"] + shift,
            target=table["target"] + shift + 0.1 * rng.standard_normal(len(table)),
        )
    about = [{"model": "scratch-lm-tiny", "layer": 2, "val_perplexity": 201.5}]
    report = analyse(table, config, zoo=zoo, zoo_about=about)
    ids = [t["id"] for t in report["secondary"]]
    assert ids == ["S1", "S2"]
    s2 = report["secondary"][1]
    assert s2["n_rows"] == 3 * len(table) and s2["beta"] > 0.3 and s2["p"] < 0.05
    # S2 is in the Holm family: the adjusted p's are Holm's over P1, S1 and S2 together.
    from perceptalign.ntps.analysis import holm

    raw = [report["primary"]["p"], *(t["p"] for t in report["secondary"])]
    adjusted = [report["primary"]["p_holm"], *(t["p_holm"] for t in report["secondary"])]
    np.testing.assert_allclose(adjusted, holm(raw), rtol=0, atol=0)
    assert all(t["p_holm"] >= t["p"] for t in report["secondary"])
    models = {m["model"]: m for m in report["zoo_arm"]["models"]}
    assert set(models) == {config.model, "scratch-lm-tiny", "scratch-lm-small"}
    assert models["scratch-lm-tiny"]["val_perplexity"] == 201.5
    report["deviations"] = deviations(
        config,
        {
            "analysis": {
                "secondary": [
                    {"id": "S2", "planned": True, "hypothesis": "h2"},
                    {"id": "S3", "planned": True, "hypothesis": "h3"},
                ]
            }
        },
        zoo_run=True,
    )
    assert not any(d.startswith("S2") for d in report["deviations"])
    assert any(d.startswith("S3") for d in report["deviations"])
    text = summary_markdown(report)
    assert "## Scratch-LM arm (S2" in text and "| scratch-lm-tiny | 2 | 201.5 |" in text
