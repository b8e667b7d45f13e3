"""Bootstrap intervals, paired differences, noise floor and seed aggregation for RTify comparisons."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from perceptalign.io import PerceptAlignError
from perceptalign.rtify import uncertainty as U
from perceptalign.rtify.metrics import decided_mask, fit_quality, signed_rt


def _trials(signed: np.ndarray, condition: float, decided: np.ndarray | None = None) -> pd.DataFrame:
    """A trials table whose signed RTs (+correct, −error) are ``signed``."""
    table = pd.DataFrame({"condition": condition, "rt_s": np.abs(signed), "correct": signed > 0})
    if decided is not None:
        table["decided"] = decided
    return table


def _tables(rng: np.random.Generator, shifts: dict[float, float], n: int, p_decided: float = 1.0):
    """Per condition, signed RTs ~ N(shift, 1) rounded to 10 ms (ties, as in recorded RTs)."""
    parts = []
    for cond, shift in shifts.items():
        signed = np.round(rng.normal(shift, 1.0, n), 2)
        signed[signed == 0] = 0.01
        decided = rng.random(n) < p_decided if p_decided < 1 else None
        parts.append(_trials(signed, cond, decided))
    return pd.concat(parts, ignore_index=True)


def test_vectorised_distances_equal_scipy_on_every_replicate():
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(0.3, 1.0, 300), 2)  # rounding makes ties within and across samples
    b = np.round(rng.normal(0.0, 1.2, 250), 2)
    keep_a = rng.random(300) < 0.85  # undecided draws are left out
    idx_a = rng.integers(0, 300, (40, 300))
    idx_b = rng.integers(0, 250, (40, 250))
    w1, ks = U.resampled_distances(a, b, idx_a, idx_b, keep_a=keep_a)
    for r in range(40):
        x = a[idx_a[r]][keep_a[idx_a[r]]]
        y = b[idx_b[r]]
        assert w1[r] == pytest.approx(stats.wasserstein_distance(x, y), rel=1e-9, abs=1e-12)
        assert ks[r] == pytest.approx(stats.ks_2samp(x, y, method="asymp").statistic, rel=1e-9, abs=1e-12)
    # A fixed second sample (idx None) and draws of another size than the sample (noise-floor use).
    idx_big = rng.integers(0, 300, (10, 700))
    w1, ks = U.resampled_distances(a, b, idx_big, None)
    for r in range(10):
        assert w1[r] == pytest.approx(stats.wasserstein_distance(a[idx_big[r]], b), rel=1e-9)
        assert ks[r] == pytest.approx(stats.ks_2samp(a[idx_big[r]], b).statistic, rel=1e-9, abs=1e-12)
    assert len(set(np.round(w1, 12))) > 5  # the replicates really differ


def test_vectorised_metrics_on_the_full_tables_equal_fit_quality():
    """Identity "resamples" reproduce every fit_quality column (undecided trials, empty outcomes too)."""
    rng = np.random.default_rng(1)
    model = _tables(rng, {3.2: 0.2, 51.2: 1.5}, 400, p_decided=0.8)
    model.loc[model["condition"] == 51.2, "correct"] = True  # no model errors: error quantiles are NaN
    human = _tables(rng, {3.2: 0.1, 51.2: 1.2}, 300)
    human = pd.concat([human, _trials(np.array([2.7, -3.1]), 3.2)], ignore_index=True)  # outside the window
    fit = fit_quality(model, human).set_index("condition")
    metrics = U.available_metrics()
    edges = np.linspace(-2.5, 2.5, 501)
    for cond in (3.2, 51.2):
        m, h = model[model["condition"] == cond], human[human["condition"] == cond]
        grid = np.unique(np.concatenate([signed_rt(m[decided_mask(m)]), signed_rt(h)]))
        ms, hs = U._prepare(m, grid, edges, is_model=True), U._prepare(h, grid, edges, is_model=False)
        idx_m, idx_h = np.arange(len(m))[None, :], np.arange(len(h))[None, :]
        got = U._replicate_metrics(ms, hs, idx_m, idx_h, metrics, grid=grid, n_bins=500, qs=U.QUANTILES)
        for metric in metrics:
            if metric.startswith("abs_err_"):
                stat = metric.removeprefix("abs_err_")
                want = abs(fit.loc[cond, f"{stat}_model"] - fit.loc[cond, f"{stat}_human"])
            else:
                want = fit.loc[cond, metric]
            np.testing.assert_allclose(
                got[metric][0], want, rtol=1e-9, atol=1e-15, equal_nan=True, err_msg=metric
            )
    assert math.isnan(fit.loc[51.2, "q50_error_model"]) and fit.loc[3.2, "no_decision_rate"] > 0.1


def test_bootstrap_table_point_estimates_determinism_and_fixed_model(monkeypatch):
    rng = np.random.default_rng(2)
    model = _tables(rng, {0.8: 0.0, 6.4: 0.4}, 500, p_decided=0.9)
    human = _tables(rng, {0.8: 0.05, 6.4: 0.3}, 300)
    metrics = ("wasserstein", "ks", "accuracy_model", "no_decision_rate", "abs_err_median_rt_correct")
    table = U.bootstrap_fit_quality(model, human, metrics=metrics, n_boot=200, seed=3)
    fit = fit_quality(model, human).set_index("condition")
    per_cond = table[table["condition"] != U.OVERALL].set_index(["metric", "condition"])
    for cond in (0.8, 6.4):
        assert per_cond.loc[("wasserstein", cond), "estimate"] == fit.loc[cond, "wasserstein"]
        assert per_cond.loc[("no_decision_rate", cond), "estimate"] == fit.loc[cond, "no_decision_rate"]
    assert (table["lo"] <= table["hi"]).all() and (table["n_valid"] == 200).all()
    assert (table["se"] > 0).all()
    overall = table[table["condition"] == U.OVERALL].set_index("metric")
    assert overall.loc["ks", "estimate"] == pytest.approx(fit["ks"].mean())
    # The mean over conditions is tighter than either condition.
    assert overall.loc["ks", "se"] < per_cond.xs("ks")["se"].min()
    pd.testing.assert_frame_equal(
        table, U.bootstrap_fit_quality(model, human, metrics=metrics, n_boot=200, seed=3)
    )
    monkeypatch.setattr(U, "_CHUNK_ELEMENTS", 1)  # chunks of one block: the same replicates
    pd.testing.assert_frame_equal(
        table, U.bootstrap_fit_quality(model, human, metrics=metrics, n_boot=200, seed=3)
    )
    monkeypatch.undo()
    other = U.bootstrap_fit_quality(model, human, metrics=metrics, n_boot=200, seed=4)
    assert not np.allclose(other["lo"], table["lo"])
    # resample="human" keeps the model fixed: its own statistics have no spread at all.
    fixed = U.bootstrap_fit_quality(model, human, metrics=metrics, n_boot=200, seed=3, resample="human")
    acc = fixed[fixed["metric"] == "accuracy_model"]
    np.testing.assert_allclose(acc["lo"], acc["estimate"])
    np.testing.assert_allclose(acc["hi"], acc["estimate"])
    assert fixed.attrs["resample"] == "human" and table.attrs["n_boot"] == 200


def test_percentile_intervals_cover_the_known_truth():
    """Human N(0, 1) vs model N(0.6, 1) signed RTs: W1 = 0.6 and accuracy Φ(0.6) are known.

    120 independent conditions, 90 % intervals: coverage is binomial with sd ≈ 0.027, so [0.82, 0.97]
    is about 3 sd either way (repeated over 8 other seeds the coverage ranged 0.85 to 0.96). KS, a
    supremum, is biased upwards and under-covers; it is deliberately not asserted here.
    """
    rng = np.random.default_rng(5)
    n_cond, shift = 120, 0.6
    human = pd.concat([_trials(rng.normal(0, 1, 250), c) for c in range(n_cond)], ignore_index=True)
    model = pd.concat([_trials(rng.normal(shift, 1, 250), c) for c in range(n_cond)], ignore_index=True)
    table = U.bootstrap_fit_quality(
        model, human, metrics=("wasserstein", "accuracy_model"), n_boot=200, level=0.9, overall=False
    )
    truth = {"wasserstein": shift, "accuracy_model": stats.norm.cdf(shift)}
    for metric, rows in table.groupby("metric"):
        coverage = ((rows["lo"] <= truth[metric]) & (truth[metric] <= rows["hi"])).mean()
        assert 0.82 <= coverage <= 0.97, (metric, coverage)
        # Interval width ≈ 2 · 1.645 · the sampling sd of the estimate (here ≈ sqrt(2 / 250) for W1).
    width = (table["hi"] - table["lo"])[table["metric"] == "wasserstein"].mean()
    assert width == pytest.approx(2 * 1.645 * math.sqrt(2 / 250), rel=0.2)


def test_paired_difference_is_narrower_than_unpaired_and_finds_the_better_model():
    rng = np.random.default_rng(6)
    shifts = {c: 0.0 for c in (3.2, 6.4, 12.8)}
    human = _tables(rng, shifts, 400)
    model_a = _tables(rng, {c: 0.30 for c in shifts}, 3000)  # true W1 0.30 ...
    model_b = _tables(rng, {c: 0.40 for c in shifts}, 3000)  # ... and 0.40: A is better by 0.10
    kw = {"metric": "wasserstein", "n_boot": 200, "seed": 1}
    paired = U.paired_difference(model_a, model_b, human, **kw)
    unpaired = U.paired_difference(model_a, model_b, human, paired=False, **kw)
    width_p, width_u = paired["hi"] - paired["lo"], unpaired["hi"] - unpaired["lo"]
    # The human sample (n = 400) dominates each W1's noise and cancels only when shared (ratio ≈ 0.35).
    assert (width_p < 0.6 * width_u).all(), (width_p, width_u)
    overall = paired.set_index("condition").loc[U.OVERALL]
    assert overall["estimate"] == pytest.approx(-0.10, abs=0.045)  # se of the mean ≈ 0.015
    assert overall["hi"] < 0 and overall["p_a_better"] > 0.95
    alone = U.bootstrap_fit_quality(model_a, human, metrics="wasserstein", n_boot=200, seed=1)
    np.testing.assert_allclose(paired["estimate_a"], alone["estimate"])
    # With fixed model tables, swapping A and B mirrors the interval and the probability exactly.
    kw |= {"resample": "human", "n_boot": 100}
    forward = U.paired_difference(model_a, model_b, human, **kw)
    swapped = U.paired_difference(model_b, model_a, human, **kw)
    np.testing.assert_allclose(swapped["estimate"], -forward["estimate"])
    np.testing.assert_allclose(swapped["lo"], -forward["hi"], atol=1e-12)
    np.testing.assert_allclose(swapped["p_a_better"], 1 - forward["p_a_better"], atol=1e-12)


def test_noise_floor_scales_like_one_over_sqrt_n():
    """Train and test from one N(0, 1): the floor shrinks like 1 / sqrt(n).

    With independent samples of sizes n_i from F, E[W1] ≈ sqrt(2 / π) · ∫ sqrt(F(1 − F)) dx ·
    sqrt(Σ 1 / n_i) (CLT for the CDF gap, pointwise); here the n_model draw, the test set (both n) and
    the train set (3000) each add one term, so the floor at n is ≈ 2 × the floor at 4n (1.95 with the
    train term). Over 20 seeds with 12 conditions the ratio of condition means had sd 0.12; with 40
    conditions sd ≈ 0.066, so ±0.25 is ~4 sd. The level matched the formula to −2 % ± 4 % (12
    conditions): ±15 % leaves room for the finite-n correction.
    """
    rng = np.random.default_rng(7)
    integral = integrate.quad(lambda x: math.sqrt(stats.norm.cdf(x) * stats.norm.sf(x)), -np.inf, np.inf)[0]
    n_train = 3000
    floors = {}
    for n in (100, 400):
        train = pd.concat([_trials(rng.normal(size=n_train), c) for c in range(40)], ignore_index=True)
        test = pd.concat([_trials(rng.normal(size=n), c) for c in range(40)], ignore_index=True)
        floor = U.noise_floor(train, test, n_rep=100, seed=1).set_index("condition")
        assert (floor.drop(U.OVERALL)["n_model"] == n).all()  # default: the test size
        floors[n] = floor.loc[U.OVERALL, "wasserstein_mean"]
        expected = math.sqrt(2 / math.pi) * integral * math.sqrt(2 / n + 1 / n_train)
        assert floors[n] == pytest.approx(expected, rel=0.15)
        per = floor.drop(U.OVERALL)
        assert (per["wasserstein_lo"] <= per["wasserstein_mean"]).all()
        assert (per["ks_mean"] < per["ks_hi"]).all()
    expected_ratio = math.sqrt((2 / 100 + 1 / n_train) / (2 / 400 + 1 / n_train))
    assert expected_ratio == pytest.approx(1.95, abs=0.01)
    assert floors[100] / floors[400] == pytest.approx(expected_ratio, abs=0.25)


def test_noise_floor_model_counts():
    rng = np.random.default_rng(8)
    train = _tables(rng, {0.8: 0.0, 51.2: 1.0}, 600)
    test = _tables(rng, {0.8: 0.0, 51.2: 1.0}, 150)
    model = _tables(rng, {0.8: 0.0, 51.2: 1.0}, 300, p_decided=0.5)
    from_table = U.noise_floor(train, test, n_model=model, n_rep=50).set_index("condition")
    decided = model[model["decided"]].groupby("condition").size()
    assert from_table.loc[0.8, "n_model"] == decided[0.8]
    by_map = U.noise_floor(train, test, n_model={"0.8": 2000, 51.2: 2000}, n_rep=50).set_index("condition")
    small = U.noise_floor(train, test, n_model=20, n_rep=50).set_index("condition")
    # More model trials, lower floor.
    assert (by_map["wasserstein_mean"] < small["wasserstein_mean"]).all()
    with pytest.raises(PerceptAlignError, match="empty or invalid"):
        U.noise_floor(train, test, n_model={0.8: 0, 51.2: 10})
    with pytest.raises(PerceptAlignError, match="no trial count for condition"):
        U.noise_floor(train, test, n_model={0.8: 10})
    with pytest.raises(PerceptAlignError, match=r"human_train: no trials for condition\(s\) \[51.2\]"):
        U.noise_floor(train[train["condition"] == 0.8], test)


def test_aggregate_seeds_matches_numpy():
    rng = np.random.default_rng(9)
    conds = [0.8, 6.4, 51.2]
    values = rng.normal(size=(5, 3, 2))  # seed × condition × metric
    values[2, 1, 1] = np.nan  # a metric undefined in one seed
    tables = [
        pd.DataFrame({"condition": conds, "wasserstein": values[s, :, 0], "ks": values[s, :, 1], "name": "x"})
        for s in range(5)
    ]
    out = U.aggregate_seeds(tables).set_index("condition")
    for ci, cond in enumerate(conds):
        for mi, metric in enumerate(("wasserstein", "ks")):
            v = values[:, ci, mi]
            v = v[np.isfinite(v)]
            assert out.loc[cond, f"{metric}_mean"] == pytest.approx(np.mean(v))
            assert out.loc[cond, f"{metric}_sd"] == pytest.approx(np.std(v, ddof=1))
            assert out.loc[cond, f"{metric}_n"] == len(v)
    seed_means = np.nanmean(values, axis=1)  # per seed: mean over conditions
    assert out.loc[U.OVERALL, "ks_mean"] == pytest.approx(seed_means[:, 1].mean())
    assert out.loc[U.OVERALL, "ks_sd"] == pytest.approx(np.std(seed_means[:, 1], ddof=1))
    assert out.loc[U.OVERALL, "n_seeds"] == 5 and "name_mean" not in out.columns
    # Long bootstrap tables: by condition and metric; existing overall rows are not doubled.
    long = [
        t.melt(id_vars="condition", value_vars=["ks"], var_name="metric", value_name="estimate")
        for t in tables
    ]
    agg = U.aggregate_seeds(long, by=["condition", "metric"])
    assert (agg["condition"] == U.OVERALL).sum() == 1
    with pytest.raises(PerceptAlignError, match="non-empty list"):
        U.aggregate_seeds([])
    with pytest.raises(PerceptAlignError, match="no column"):
        U.aggregate_seeds([tables[0].drop(columns="condition")])


def test_markdown_table_cells_and_floor():
    rng = np.random.default_rng(10)
    human = _tables(rng, {0.8: 0.0, 51.2: 1.0}, 200)
    ours = U.bootstrap_fit_quality(_tables(rng, {0.8: 0.1, 51.2: 1.0}, 300), human, n_boot=50)
    ddm = U.bootstrap_fit_quality(_tables(rng, {0.8: 0.3, 51.2: 0.7}, 300), human, n_boot=50)
    floor = U.noise_floor(_tables(rng, {0.8: 0.0, 51.2: 1.0}, 800), human, n_rep=50)
    text = U.markdown_table({"RTify": ours, "DDM": ddm}, "wasserstein", floor=floor, digits=3)
    lines = text.strip().splitlines()
    assert lines[0] == "| condition | RTify | DDM | noise floor |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert len(lines) == 2 + 3 and lines[-1].startswith(f"| {U.OVERALL} |")
    row = ours[(ours["metric"] == "wasserstein") & (ours["condition"] == 0.8)].iloc[0]
    assert lines[2].startswith(f"| 0.8 | {row.estimate:.3f} [{row.lo:.3f}, {row.hi:.3f}] |")
    with pytest.raises(PerceptAlignError, match="no rows for metric"):
        U.markdown_table({"RTify": ours}, "q10_correct_model")
    with pytest.raises(PerceptAlignError, match="noise floor covers wasserstein and ks"):
        U.markdown_table({"RTify": ours}, "accuracy_model", floor=floor)
    with pytest.raises(PerceptAlignError, match="no row for condition"):
        U.markdown_table({"RTify": ours, "DDM": ddm[ddm["condition"] != 51.2]})


def test_errors_name_the_problem_and_the_fix():
    rng = np.random.default_rng(11)
    human = _tables(rng, {0.8: 0.0, 6.4: 0.3}, 50)
    model = _tables(rng, {0.8: 0.0, 6.4: 0.3}, 50)
    with pytest.raises(PerceptAlignError, match=r"n_boot .* must be an integer >= 1"):
        U.bootstrap_fit_quality(model, human, n_boot=0)
    for level in (0.0, 1.0, 95):
        with pytest.raises(PerceptAlignError, match="strictly between 0 and 1"):
            U.bootstrap_fit_quality(model, human, level=level)
    with pytest.raises(PerceptAlignError, match="resample must be 'both'"):
        U.bootstrap_fit_quality(model, human, resample="model")
    with pytest.raises(PerceptAlignError, match=r"model_b: no trials for condition\(s\) \[6.4\]"):
        U.paired_difference(model, model[model["condition"] == 0.8], human)
    with pytest.raises(PerceptAlignError, match=r"condition\(s\) \[12.8\] are empty"):
        U.bootstrap_fit_quality(model, human, conditions=[12.8])
    with pytest.raises(PerceptAlignError, match="unknown metric"):
        U.bootstrap_fit_quality(model, human, metrics=("w1",))
    with pytest.raises(PerceptAlignError, match="needs a 'decided' column"):
        U.bootstrap_fit_quality(model, human, metrics=("no_decision_rate",))
    with pytest.raises(PerceptAlignError, match="better='lower' or better='higher'"):
        U.paired_difference(model, model, human, "accuracy_model")
    with pytest.raises(PerceptAlignError, match=r"n_rep .* must be an integer >= 1"):
        U.noise_floor(human, human, n_rep=0)
    # One condition only; a fixed model identical to B ties on every replicate: p = 0.5 (ties count half).
    same = U.paired_difference(
        model, model, human, n_boot=20, conditions=[6.4], resample="human", overall=False
    )
    assert list(same["condition"]) == [6.4] and same["p_a_better"].iloc[0] == 0.5
