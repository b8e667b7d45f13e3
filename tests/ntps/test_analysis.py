"""Correlations, permutation nulls, bootstrap intervals and selection procedures without outcome leaks."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.analysis import correlate, correlation_by_config, select_and_correlate


def _table(scores: np.ndarray, layers: list[int], configs: list[float], datasets: list[str]) -> pd.DataFrame:
    """Long table from a (layer, config, dataset) score array."""
    rows = [
        {"dataset": d, "layer": layer, "config": c, "score": scores[i, j, k]}
        for i, layer in enumerate(layers)
        for j, c in enumerate(configs)
        for k, d in enumerate(datasets)
    ]
    return pd.DataFrame(rows)


def _noise_table(seed: int, n: int = 10, layers: int = 3, configs: int = 6):
    rng = np.random.default_rng(seed)
    datasets = [f"d{k}" for k in range(n)]
    cfgs = [round(0.1 * (j + 1), 1) for j in range(configs)]
    table = _table(rng.normal(size=(layers, configs, n)), list(range(layers)), cfgs, datasets)
    return table, dict(zip(datasets, rng.normal(size=n), strict=True))


# ---------------------------------------------------------------------------------------- correlate


def test_correlate_matches_scipy_and_ci_contains_estimate() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=25)
    y = 0.5 * x + rng.normal(size=25)
    res = correlate(x, y, n_permutations=500, n_bootstrap=500)
    rho, rho_p = scipy.stats.spearmanr(x, y)
    r, r_p = scipy.stats.pearsonr(x, y)
    assert res.n == 25
    assert res.spearman == pytest.approx(rho, abs=1e-12)
    assert res.spearman_p == pytest.approx(rho_p, rel=1e-12)
    assert res.pearson == pytest.approx(r, abs=1e-12)
    assert res.pearson_p == pytest.approx(r_p, rel=1e-12)
    assert res.spearman_ci[0] <= res.spearman <= res.spearman_ci[1]
    assert res.pearson_ci[0] <= res.pearson <= res.pearson_ci[1]
    assert -1 <= res.spearman_ci[0] < res.spearman_ci[1] <= 1
    assert set(res.to_dict()) >= {"spearman_perm_p", "pearson_ci"}


def test_permutation_p_approximates_analytic_p() -> None:
    rng = np.random.default_rng(2)
    n = 40
    x = rng.normal(size=n)
    y = 0.25 * x + rng.normal(size=n)
    res = correlate(x, y, n_permutations=20000, n_bootstrap=0)
    assert 0.01 < res.pearson_p < 0.5  # a p in the informative range, not saturated at 0 or 1
    # Monte-Carlo SE of a permutation p near 0.1 with 20000 draws is ~0.002; the t-approximation
    # (Pearson, normal data) and the large-sample Spearman approximation differ from the exact
    # permutation distribution at n = 40 by well under 0.02.
    assert res.pearson_perm_p == pytest.approx(res.pearson_p, abs=0.02)
    assert res.spearman_perm_p == pytest.approx(res.spearman_p, abs=0.02)
    assert np.isnan(res.pearson_ci[0])  # bootstrap skipped on request


def test_permutation_p_is_exact_for_tiny_n_by_enumeration() -> None:
    import itertools

    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    r_obs = abs(np.corrcoef(x, y)[0, 1])
    perms = [abs(np.corrcoef(x, y[list(p)])[0, 1]) for p in itertools.permutations(range(5))]
    exact = np.mean(np.array(perms) >= r_obs - 1e-12)
    res = correlate(x, y, n_permutations=60000, n_bootstrap=0, seed=3)
    # 120 equally likely pairings; 60000 draws give SE ≈ sqrt(p(1−p)/60000) < 0.002.
    assert res.pearson_perm_p == pytest.approx(exact, abs=0.01)


def test_perfect_monotone_relation() -> None:
    x = np.arange(10.0)
    res = correlate(x, np.exp(x), n_permutations=2000, n_bootstrap=200)
    assert res.spearman == pytest.approx(1.0)
    assert res.spearman_ci == pytest.approx((1.0, 1.0))  # every resample is still monotone
    # Only the identity (and nothing else) reaches |ρ| = 1 among 10! orderings: p = 1/(1+2000) from +1.
    assert res.spearman_perm_p == pytest.approx(1 / 2001)


def test_correlate_errors() -> None:
    with pytest.raises(PerceptAlignError, match="same length"):
        correlate([1, 2, 3], [1, 2])
    with pytest.raises(PerceptAlignError, match="at least 3"):
        correlate([1, 2], [2, 1])
    with pytest.raises(PerceptAlignError, match="constant"):
        correlate([1, 1, 1, 1], [1, 2, 3, 4])
    with pytest.raises(PerceptAlignError, match="NaN"):
        correlate([1, np.nan, 3], [1, 2, 3])


# ---------------------------------------------------------------------------------------- selection


def test_fixed_mode_uses_declared_config_and_last_layer() -> None:
    table, target = _noise_table(2)
    res = select_and_correlate(table, target, "fixed", ("last", 0.3), n_permutations=300, n_bootstrap=50)
    assert not res.optimistic
    assert (res.selected["layer"] == 2).all() and (res.selected["config"] == 0.3).all()
    expected = table[(table.layer == 2) & (table.config == 0.3)].set_index("dataset")["score"]
    np.testing.assert_allclose(res.selected["score"], expected.loc[res.selected.index])
    rho = scipy.stats.spearmanr(expected.loc[res.selected.index], res.selected["target"])[0]
    assert res.correlation.spearman == pytest.approx(rho)
    assert res.statistic == pytest.approx(rho)


def test_best_in_sample_picks_the_maximum_and_is_flagged() -> None:
    table, target = _noise_table(3)
    res = select_and_correlate(table, target, "best_in_sample", n_permutations=300, n_bootstrap=50)
    assert res.optimistic
    by_config = correlation_by_config(table, target)
    assert res.correlation.spearman == pytest.approx(by_config["spearman"].max())
    assert res.selection_null.shape == (300,)
    res_neg = select_and_correlate(
        table, target, "best_in_sample", direction="negative", n_permutations=50, n_bootstrap=0
    )
    assert res_neg.correlation.spearman == pytest.approx(by_config["spearman"].min())


def test_nested_selection_never_sees_the_held_out_dataset() -> None:
    """Changing the held-out dataset's scores and target cannot change the configuration chosen for it."""
    table, target = _noise_table(4, n=8)
    base = select_and_correlate(table, target, "nested", n_permutations=20, n_bootstrap=0)
    rng = np.random.default_rng(4)
    for held in ["d0", "d5"]:
        table2 = table.copy()
        mask = table2["dataset"] == held
        table2.loc[mask, "score"] = rng.normal(size=int(mask.sum())) * 100
        target2 = dict(target)
        target2[held] = 1e6
        other = select_and_correlate(table2, target2, "nested", n_permutations=20, n_bootstrap=0)
        assert other.selected.loc[held, ["layer", "config"]].tolist() == (
            base.selected.loc[held, ["layer", "config"]].tolist()
        )
    # Planted leak: one configuration's score equals the target only on d0 (both extreme). Selecting on
    # all datasets (Pearson) grabs it; nested selection for d0 cannot see it and keeps its old choice.
    leak_table, leak_target = table.copy(), dict(target)
    leak_target["d0"] = 1e6
    cell = (leak_table.dataset == "d0") & (leak_table.layer == 1) & (leak_table.config == 0.4)
    leak_table.loc[cell, "score"] = 1e6
    kw = {"method": "pearson", "n_permutations": 20, "n_bootstrap": 0}
    best = select_and_correlate(leak_table, leak_target, "best_in_sample", **kw)
    assert best.selected["layer"].iloc[0] == 1 and best.selected["config"].iloc[0] == 0.4
    assert best.correlation.pearson > 0.99
    nested = select_and_correlate(leak_table, leak_target, "nested", **kw)
    reference = select_and_correlate(table, target, "nested", **kw)
    assert nested.selected.loc["d0", ["layer", "config"]].tolist() == (
        reference.selected.loc["d0", ["layer", "config"]].tolist()
    )


def test_planted_leak_is_exploited_in_sample_but_not_nested() -> None:
    """A configuration that looks perfect only because of one dataset (an extreme outlier that matches
    that dataset's extreme target) wins best_in_sample, but nested selection cannot use it for that
    dataset, and out of sample it carries no signal."""
    rng = np.random.default_rng(5)
    n = 12
    datasets = [f"d{k}" for k in range(n)]
    t = rng.normal(size=n)
    star = int(np.argmax(t))
    t[star] = 10.0  # one dataset with an extreme target
    scores = rng.normal(size=(2, 4, n))
    scores[0, 0] = t + rng.normal(scale=1.5, size=n)  # honest config: moderate real signal
    leak = rng.normal(size=n)
    leak[star] = 1000.0  # leaky config: noise plus one outlier aligned with the extreme target
    scores[1, 3] = leak
    table = _table(scores, [0, 1], [0.25, 0.5, 0.75, 1.0], datasets)
    target = dict(zip(datasets, t, strict=True))
    kw = {"method": "pearson", "n_permutations": 2000, "n_bootstrap": 100}
    best = select_and_correlate(table, target, "best_in_sample", **kw)
    nested = select_and_correlate(table, target, "nested", **kw)
    assert (best.selected["layer"] == 1).all() and (best.selected["config"] == 1.0).all()
    assert best.correlation.pearson > 0.9  # the outlier alone makes it look near perfect
    # Held out, the star dataset's own outlier is invisible: nested picks something else for it.
    assert nested.selected.loc[f"d{star}", ["layer", "config"]].tolist() != [1, 1.0]
    assert nested.correlation.pearson < best.correlation.pearson - 0.3
    # The permutation null sees through the outlier: any pairing that puts the outlier on the extreme
    # target reaches the same r, so even the naive two-sided p is about 1/n, not the analytic ~1e-7.
    assert best.correlation.pearson_p < 1e-5 < 0.03 < best.correlation.pearson_perm_p


def test_noise_best_in_sample_inflates_while_selection_null_stays_uniform() -> None:
    seeds = range(40)
    fixed_rho, best_rho, best_p, naive_p, nested_p = [], [], [], [], []
    for seed in seeds:
        table, target = _noise_table(100 + seed, n=10, layers=3, configs=6)
        kw = {"n_permutations": 200, "n_bootstrap": 0, "seed": seed}
        fixed = select_and_correlate(table, target, "fixed", (0, 0.1), **kw)
        best = select_and_correlate(table, target, "best_in_sample", **kw)
        nested = select_and_correlate(table, target, "nested", **kw)
        fixed_rho.append(fixed.correlation.spearman)
        best_rho.append(best.correlation.spearman)
        best_p.append(best.selection_perm_p)
        naive_p.append(best.correlation.spearman_perm_p)
        nested_p.append(nested.selection_perm_p)
    # Max of 18 noise correlations at n = 10 has median ≈ .5; a single fixed one has median ≈ 0.
    assert np.median(best_rho) > np.median(fixed_rho) + 0.3
    # Under the null the selection-aware p is uniform: mean 0.5 ± 0.05 (SE of a mean of 40 uniforms),
    # allowing ~3 SE; the naive p of the selected config is far from uniform (clustered near 0).
    assert abs(np.mean(best_p) - 0.5) < 0.15
    assert abs(np.mean(nested_p) - 0.5) < 0.15
    assert np.mean(np.array(best_p) < 0.05) <= 0.15
    assert np.mean(np.array(naive_p) < 0.05) > 3 * max(np.mean(np.array(best_p) < 0.05), 0.05)


def test_selection_errors() -> None:
    table, target = _noise_table(6, n=5)
    with pytest.raises(PerceptAlignError, match="mode"):
        select_and_correlate(table, target, "cherry_pick")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="fixed_config"):
        select_and_correlate(table, target, "fixed")
    with pytest.raises(PerceptAlignError, match="not in the table"):
        select_and_correlate(table, target, "fixed", (0, 0.99))
    with pytest.raises(PerceptAlignError, match="missing columns"):
        select_and_correlate(table.drop(columns="layer"), target, "nested")
    with pytest.raises(PerceptAlignError, match="no target value"):
        select_and_correlate(table, {"d0": 1.0}, "nested")
    with pytest.raises(PerceptAlignError, match="repeated"):
        select_and_correlate(pd.concat([table, table.iloc[:1]]), target, "nested")
    with pytest.raises(PerceptAlignError, match="lack a score"):
        select_and_correlate(table.iloc[1:], target, "nested")
    with pytest.raises(PerceptAlignError, match="at least 4 datasets"):
        small = table[table.dataset.isin(["d0", "d1", "d2"])]
        select_and_correlate(small, target, "nested")
    varying = table.assign(acc=np.arange(len(table)))
    with pytest.raises(PerceptAlignError, match="varies within"):
        select_and_correlate(varying, "acc", "nested")
    with pytest.raises(PerceptAlignError, match="identical for all"):
        select_and_correlate(table, dict.fromkeys(target, 1.0), "nested")
    with pytest.raises(PerceptAlignError, match="direction"):
        select_and_correlate(table, target, "nested", direction="up")  # type: ignore[arg-type]


def test_target_may_be_a_column() -> None:
    table, target = _noise_table(7, n=6)
    with_col = table.assign(acc=table["dataset"].map(target))
    a = select_and_correlate(with_col, "acc", "best_in_sample", n_permutations=100, n_bootstrap=0)
    b = select_and_correlate(table, pd.Series(target), "best_in_sample", n_permutations=100, n_bootstrap=0)
    assert a.correlation.spearman == pytest.approx(b.correlation.spearman)
    assert a.selection_perm_p == pytest.approx(b.selection_perm_p)  # same seed, same permutations


# ------------------------------------------------------------- exact p, intervals, ties (selection)


def _perfect_table(n: int = 6, k: int = 5, seed: int = 0):
    """k configurations with distinct rank orderings; the last one has exactly the targets' ranks."""
    rng = np.random.default_rng(seed)
    datasets = [f"d{i}" for i in range(n)]
    t = rng.normal(size=n)
    scores = rng.normal(size=(1, k, n))
    scores[0, -1] = np.exp(t)  # ρ = 1 with the target
    table = _table(scores, [0], [round(0.1 * (j + 1), 1) for j in range(k)], datasets)
    orderings = {tuple(np.argsort(row)) for row in scores[0]}
    return table, dict(zip(datasets, t, strict=True)), len(orderings)


def test_selection_null_is_exact_at_small_n():
    """n = 6: all 720 pairings are enumerated. Best in sample reaches ρ = 1 exactly on the pairings whose
    target ranks match one of the configurations' orderings, so p = (distinct orderings)/720."""
    table, target, orderings = _perfect_table()
    best = select_and_correlate(table, target, "best_in_sample", n_permutations=10, n_bootstrap=0)
    assert best.exact and best.n_permutations == 720 and best.selection_null.shape == (720,)
    assert best.correlation.spearman == pytest.approx(1.0)
    assert best.selection_perm_p == pytest.approx(orderings / 720, rel=1e-12)
    assert best.naive_perm_p == pytest.approx(1 / 720, rel=1e-12)  # configuration taken as given
    assert best.correlation.spearman_p == 0.0  # scipy's analytic p: 0, which a permutation p never is
    fixed = select_and_correlate(table, target, "fixed", (0, 0.5), n_permutations=10, n_bootstrap=0)
    assert fixed.selection_perm_p == pytest.approx(1 / 720) and fixed.naive_perm_p == pytest.approx(1 / 720)
    noise, noise_target = _noise_table(0, n=9)
    big = select_and_correlate(noise, noise_target, "fixed", (0, 0.1), n_permutations=300, n_bootstrap=0)
    assert not big.exact and big.n_permutations == 300  # 9! > 8!: Monte Carlo


def test_intervals_repeat_the_selection_or_are_absent():
    """ρ = 1 for the selected configuration: a bootstrap that keeps it fixed gives [1, 1]. Best in sample
    reports no interval; nested redoes its selection in each resample, so its interval is wider."""
    table, target, _ = _perfect_table(n=7, k=8, seed=1)
    kw = {"n_permutations": 50, "n_bootstrap": 400}
    best = select_and_correlate(table, target, "best_in_sample", **kw)
    assert np.isnan(best.interval).all() and best.interval_kind.startswith("none")
    assert np.isnan(best.correlation.spearman_ci).all()  # no selection-blind interval either
    nested = select_and_correlate(table, target, "nested", **kw)
    assert nested.interval_kind.startswith("selection-aware")
    naive = correlate(nested.selected["score"], nested.selected["target"], n_permutations=0, n_bootstrap=400)
    assert nested.correlation.spearman == pytest.approx(1.0) and naive.spearman_ci == pytest.approx((1, 1))
    assert nested.interval[0] < 0.9 and nested.interval[1] == pytest.approx(1.0)
    fixed = select_and_correlate(table, target, "fixed", (0, 0.8), **kw)
    assert fixed.interval == fixed.correlation.spearman_ci and fixed.interval == pytest.approx((1, 1))


def _reference_nested(S: np.ndarray, t: np.ndarray, w: np.ndarray, method: str) -> set[float]:
    """Nested selection on a resample given as counts w, written out on the expanded rows with scipy:
    for each dataset present, choose on the rows of the OTHER datasets (all its copies held out). With
    tied configurations every choice among them is possible: the set of all resulting correlations."""
    f = scipy.stats.spearmanr if method == "spearman" else scipy.stats.pearsonr
    reps = w.astype(int)
    present = np.flatnonzero(reps)
    options = []
    for d in present:
        others = reps.copy()
        others[d] = 0
        crit = np.array([f(np.repeat(row, others), np.repeat(t, others))[0] for row in S])
        options.append(np.flatnonzero(crit >= crit.max() - 1e-9))
    values = set()
    for choice in itertools.product(*options):
        oos = np.zeros(len(t))
        oos[present] = S[list(choice), present]
        values.add(round(float(f(np.repeat(oos, reps), np.repeat(t, reps))[0]), 9))
    return values


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_nested_bootstrap_recomputes_the_selection_without_leaks(monkeypatch, method):
    from perceptalign.ntps import analysis

    rng = np.random.default_rng(7)
    n, K = 7, 9
    S, t = rng.normal(size=(K, n)), rng.normal(size=n)
    S[0] = t + rng.normal(scale=0.3, size=n)
    S[1, 0], t[0] = 50.0, 40.0  # a leak: configuration 1 matches only dataset 0, an extreme pair
    weights = np.array(
        [
            np.ones(n),  # the original sample: the bootstrap statistic is the nested ρ itself
            [3, 1, 1, 0, 1, 1, 0],  # dataset 0 three times: its copies must not select for each other
            [0, 2, 1, 1, 2, 0, 1],
            [1, 0, 2, 2, 0, 1, 1],
        ],
        dtype=float,
    )
    monkeypatch.setattr(analysis, "_nested_resamples", lambda n_, count, rng_: (weights, 0))
    got, _ = analysis._nested_bootstrap(S, t, method, "positive", 4, np.random.default_rng(0))
    for value, w in zip(got, weights, strict=True):
        assert round(float(value), 9) in _reference_nested(S, t, w, method), w
    datasets = [f"d{i}" for i in range(n)]
    table = _table(S[None], [0], [round(0.1 * (j + 1), 1) for j in range(K)], datasets)
    observed = select_and_correlate(
        table, dict(zip(datasets, t, strict=True)), "nested", method=method, n_permutations=5, n_bootstrap=0
    )
    assert getattr(observed.correlation, method) == pytest.approx(got[0], abs=1e-12)


def test_nested_ties_are_broken_at_random_not_towards_the_lowest_layer():
    """Two configurations with identical scores on every dataset but d0 tie exactly on d0's fold (both
    correlate perfectly with the targets there). argmax would always take layer 0; the choice must be
    uniform between them over seeds, and fixed for a given seed."""
    n = 6
    datasets = [f"d{i}" for i in range(n)]
    t = np.arange(n, dtype=float)
    scores = np.zeros((2, 2, n))
    scores[0, 0] = t.copy()  # layer 0, f = 0.1
    scores[1, 0] = t.copy()  # layer 1, f = 0.1: same everywhere except on d0
    scores[1, 0, 0] = 10.0
    rng = np.random.default_rng(0)
    scores[:, 1] = rng.normal(size=(2, n))  # f = 0.2: noise, never the best
    table = _table(scores, [0, 1], [0.1, 0.2], datasets)
    target = dict(zip(datasets, t, strict=True))
    picks = []
    for seed in range(200):
        res = select_and_correlate(table, target, "nested", n_permutations=1, n_bootstrap=0, seed=seed)
        assert res.selected.loc["d0", "n_tied"] == 2
        picks.append(res.selected.loc["d0", "layer"])
    # 200 fair coin flips: SE of the share is 0.035; [0.35, 0.65] is ±4.3 SE around 0.5.
    assert 0.35 <= np.mean(np.array(picks) == 1) <= 0.65
    again = select_and_correlate(table, target, "nested", n_permutations=1, n_bootstrap=0, seed=3)
    assert again.selected.loc["d0", "layer"] == picks[3]  # seeded: reproducible
