"""Fit-quality metrics checked against independent formulas (numpy / scipy) on small tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.metrics import (
    QUANTILES,
    fit_quality,
    quantile_label,
    rt_quantiles,
    signed_rt_histogram,
    summarize_fit,
)


def _random_trials(
    rng: np.random.Generator, conds: list[float], n: int, p_correct: float, shift: float = 0.0
):
    rows = []
    for c in conds:
        rt = 0.3 + shift + rng.gamma(2.0, 0.15, size=n)
        correct = rng.random(n) < p_correct
        rows.append(pd.DataFrame({"condition": c, "rt_s": rt, "correct": correct}))
    return pd.concat(rows, ignore_index=True)


def test_quantile_label() -> None:
    assert [quantile_label(q) for q in QUANTILES] == ["q10", "q30", "q50", "q70", "q90"]
    assert quantile_label(0.025) == "q2.5"


def test_rt_quantiles_against_numpy() -> None:
    df = pd.DataFrame(
        {
            "condition": [1.0] * 6 + [2.0] * 3,
            "rt_s": [0.5, 0.6, 0.9, 1.2, 0.7, 0.4, 0.3, 0.35, 0.33],
            "correct": [True, True, False, True, False, True, True, True, True],
        }
    )
    table = rt_quantiles(df).set_index(["condition", "outcome"])
    np.testing.assert_allclose(
        table.loc[(1.0, "correct"), ["q10", "q30", "q50", "q70", "q90"]].to_numpy(dtype=float),
        np.quantile([0.5, 0.6, 1.2, 0.4], QUANTILES),
    )
    np.testing.assert_allclose(
        table.loc[(1.0, "error"), ["q10", "q50", "q90"]].to_numpy(dtype=float),
        np.quantile([0.9, 0.7], [0.1, 0.5, 0.9]),
    )
    assert table.loc[(1.0, "correct"), "p"] == pytest.approx(4 / 6)
    assert table.loc[(2.0, "error"), "n"] == 0
    assert table.loc[(2.0, "error"), ["q10", "q90"]].isna().all()  # no error trials → NaN, not an exception


def test_rt_quantiles_rejects_bad_levels() -> None:
    df = pd.DataFrame({"condition": [1.0], "rt_s": [0.5], "correct": [True]})
    with pytest.raises(PerceptAlignError, match="quantile levels"):
        rt_quantiles(df, qs=(0.5, 1.5))


def test_fit_quality_against_hand_computation() -> None:
    rng = np.random.default_rng(0)
    human = _random_trials(rng, [3.2, 25.6], 200, 0.7)
    model = _random_trials(rng, [3.2, 25.6, 99.0], 150, 0.8, shift=0.1)  # extra model condition is ignored
    table = fit_quality(model, human).set_index("condition")
    assert table.index.tolist() == [3.2, 25.6]
    for cond in (3.2, 25.6):
        h = human[human["condition"] == cond]
        m = model[model["condition"] == cond]
        h_signed = np.where(h["correct"], h["rt_s"], -h["rt_s"])
        m_signed = np.where(m["correct"], m["rt_s"], -m["rt_s"])
        row = table.loc[cond]
        assert (row["n_model"], row["n_human"]) == (150, 200)
        assert row["accuracy_human"] == pytest.approx(h["correct"].mean())
        assert row["accuracy_model"] == pytest.approx(m["correct"].mean())
        assert row["median_rt_correct_human"] == pytest.approx(np.median(h.loc[h["correct"], "rt_s"]))
        assert row["mean_rt_error_model"] == pytest.approx(m.loc[~m["correct"], "rt_s"].mean())
        for q in QUANTILES:
            label = quantile_label(q)
            assert row[f"{label}_correct_model"] == pytest.approx(np.quantile(m.loc[m["correct"], "rt_s"], q))
            assert row[f"{label}_error_human"] == pytest.approx(np.quantile(h.loc[~h["correct"], "rt_s"], q))
        assert row["ks"] == pytest.approx(stats.ks_2samp(m_signed, h_signed).statistic)
        assert row["wasserstein"] == pytest.approx(stats.wasserstein_distance(m_signed, h_signed))
        # Slow independent histogram: count each value into the bin whose half-open interval holds it.
        edges = np.linspace(-2.5, 2.5, 501)

        def slow_hist(values: np.ndarray, edges: np.ndarray = edges) -> np.ndarray:
            out = np.zeros(500)
            for v in values:
                for j in range(500):
                    if edges[j] <= v < edges[j + 1]:
                        out[j] += 1
                        break
            return out / len(values)

        assert row["hist_mse"] == pytest.approx(np.mean((slow_hist(m_signed) - slow_hist(h_signed)) ** 2))
    assert "no_decision_rate" not in table.columns


def test_identical_tables_have_zero_distances() -> None:
    rng = np.random.default_rng(1)
    human = _random_trials(rng, [1.0, 2.0, 4.0], 120, 0.75)
    table = fit_quality(human.sample(frac=1.0, random_state=3), human)  # same trials, shuffled order
    assert (table["ks"] == 0).all() and (table["hist_mse"] == 0).all()
    np.testing.assert_allclose(table["wasserstein"], 0.0, atol=1e-12)  # float summation order only
    np.testing.assert_allclose(table["accuracy_model"], table["accuracy_human"])


def test_wasserstein_of_a_pure_shift_is_the_shift() -> None:
    # All trials correct: adding 0.05 s to every RT translates the signed distribution, so W1 = 0.05 exactly
    # (up to float rounding), and KS > 0.
    rng = np.random.default_rng(2)
    human = _random_trials(rng, [1.0], 300, 1.0)
    model = human.assign(rt_s=human["rt_s"] + 0.05)
    row = fit_quality(model, human).iloc[0]
    assert row["wasserstein"] == pytest.approx(0.05, abs=1e-9)
    assert row["ks"] > 0


def test_undecided_trials_are_counted_not_dropped() -> None:
    rng = np.random.default_rng(3)
    human = _random_trials(rng, [1.0, 2.0], 100, 0.8)
    decided_part = human.assign(decided=True)
    stuck = pd.DataFrame({"condition": [1.0] * 25, "rt_s": 2.0, "correct": False, "decided": False})
    model = pd.concat([decided_part, stuck], ignore_index=True)
    table = fit_quality(model, human).set_index("condition")
    assert table.loc[1.0, "no_decision_rate"] == pytest.approx(25 / 125)
    assert table.loc[2.0, "no_decision_rate"] == 0
    assert table.loc[1.0, "n_decided_model"] == 100
    # Conditional measures use decided trials: identical to the human ones.
    assert table.loc[1.0, "ks"] == 0 and table.loc[1.0, "accuracy_model"] == table.loc[1.0, "accuracy_human"]
    # The histogram measure is normalised by all 125 trials: every bin holds 100/125 of the human mass.
    h = human[human["condition"] == 1.0]
    hist_h = signed_rt_histogram(np.where(h["correct"], h["rt_s"], -h["rt_s"]))
    assert table.loc[1.0, "hist_mse"] == pytest.approx(np.mean((hist_h * (100 / 125 - 1)) ** 2))
    assert table.loc[1.0, "hist_mse"] > 0 and table.loc[2.0, "hist_mse"] == 0


def test_all_undecided_condition_gives_nan_distances() -> None:
    human = pd.DataFrame({"condition": [1.0, 1.0], "rt_s": [0.4, 0.5], "correct": [True, False]})
    model = pd.DataFrame({"condition": [1.0], "rt_s": [2.0], "correct": [False], "decided": [False]})
    row = fit_quality(model, human).iloc[0]
    assert math.isnan(row["ks"]) and math.isnan(row["accuracy_model"]) and row["no_decision_rate"] == 1.0
    assert row["hist_mse"] == pytest.approx(np.mean(signed_rt_histogram(np.array([0.4, -0.5])) ** 2))


def test_fit_quality_errors() -> None:
    human = pd.DataFrame({"condition": [1.0, 2.0], "rt_s": [0.4, 0.5], "correct": [True, False]})
    model = pd.DataFrame({"condition": [1.0], "rt_s": [0.4], "correct": [True]})
    with pytest.raises(PerceptAlignError, match=r"model trials: no trials for condition\(s\) \[2.0\]"):
        fit_quality(model, human)
    with pytest.raises(PerceptAlignError, match="n_bins"):
        fit_quality(human, human, n_bins=0)
    with pytest.raises(PerceptAlignError, match="hi > lo"):
        fit_quality(human, human, lo=1.0, hi=-1.0)


def test_summarize_fit_is_json_ready() -> None:
    rng = np.random.default_rng(4)
    human = _random_trials(rng, [1.0, 2.0, 3.0], 80, 0.7)
    model = _random_trials(rng, [1.0, 2.0, 3.0], 80, 1.0)  # no model errors → NaN error stats
    table = fit_quality(model, human)
    summary = summarize_fit(table)
    json.dumps(summary, allow_nan=False)  # raises on NaN/inf or non-JSON types
    assert summary["n_conditions"] == 3
    assert summary["mean_ks"] == pytest.approx(table["ks"].mean())
    assert summary["hist_mse_sum"] == pytest.approx(table["hist_mse"].sum())
    assert summary["mean_mean_rt_error_model"] is None
    with pytest.raises(PerceptAlignError, match="fit_quality"):
        summarize_fit(pd.DataFrame())
