"""The inference building blocks of perceptalign.ntps.analysis, checked against exact enumeration, closed
forms and known properties: Holm, permutation tests (within groups, exact up to 8!), the cluster bootstrap
and simulated power."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.analysis import (
    EXACT_PERMUTATION_LIMIT,
    _blocks,
    _enumerated,
    _random_permutations,
    _weighted_statistic,
    cluster_bootstrap_ci,
    correlate,
    holm,
    permutation_test,
    simulated_power,
)

# ----------------------------------------------------------------------------------------------- Holm


def test_holm_textbook_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max
    # 0.02, 0.03, 0.06, 0.06; returned in input order.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # 2 × 0.5 = 1, then capped and monotone
    np.testing.assert_allclose(holm([0.2]), [0.2])  # a family of one is not corrected
    assert holm([]).shape == (0,)


def _holm_rejections(p: np.ndarray, alpha: float) -> set[int]:
    """Holm's sequential procedure as defined: reject the i-th smallest while p(i) ≤ α / (m − i + 1)."""
    rejected = set()
    for i, k in enumerate(np.argsort(p, kind="stable")):
        if p[k] > alpha / (len(p) - i):
            break
        rejected.add(int(k))
    return rejected


def test_holm_adjusted_p_reproduce_the_sequential_procedure_at_every_alpha():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 12)) ** rng.uniform(0.5, 3)
        adjusted = holm(p)
        assert np.all(adjusted >= p) and np.all(adjusted <= 1)
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adjusted[order]) >= 0)  # monotone in the raw p
        for alpha in (0.01, 0.05, 0.1):
            assert {int(i) for i in np.flatnonzero(adjusted <= alpha)} == _holm_rejections(p, alpha)


def test_holm_refuses_what_is_not_a_p_value():
    with pytest.raises(PerceptAlignError, match="pvalues"):
        holm([0.1, float("nan")])
    with pytest.raises(PerceptAlignError, match="pvalues"):
        holm([1.2])


# -------------------------------------------------------------------------------- permutation tests


def test_perfect_ranks_at_n6_have_exact_p_one_over_720():
    x = np.arange(6.0)
    res = permutation_test(x, np.exp(x))
    assert res.exact and res.n_permutations == 720 == math.factorial(6) and res.n == 6
    assert res.statistic == pytest.approx(1.0)
    assert res.p == pytest.approx(1 / 720, rel=1e-12)  # only the identity reaches ρ = 1; never 0
    assert permutation_test(x, np.exp(x), alternative="two-sided").p == pytest.approx(2 / 720)
    assert permutation_test(x, np.exp(x), alternative="less").p == pytest.approx(1.0)
    assert permutation_test(x, -x, alternative="less").p == pytest.approx(1 / 720)


def _brute_force_p(x, y, statistic, alternatives, perms) -> dict[str, float]:
    """p by definition: scipy's statistic on every listed pairing, the share at least as extreme."""
    f = scipy.stats.spearmanr if statistic == "spearman" else scipy.stats.pearsonr
    obs = f(x, y)[0]
    null = np.array([f(x, y[list(p)])[0] for p in perms])
    tol = 1e-12
    share = {
        "greater": np.mean(null >= obs - tol),
        "less": np.mean(null <= obs + tol),
        "two-sided": np.mean(np.abs(null) >= abs(obs) - tol),
    }
    return {a: float(share[a]) for a in alternatives}


@pytest.mark.parametrize("statistic", ["spearman", "pearson"])
def test_exact_p_equals_brute_force_enumeration_with_ties(statistic):
    x = np.array([1.0, 2.0, 2.0, 4.0, 7.0, 7.0])
    y = np.array([0.3, 0.1, 0.9, 0.9, 1.5, 0.7])  # ties on both sides: average ranks
    alternatives = ("greater", "less", "two-sided")
    expected = _brute_force_p(x, y, statistic, alternatives, itertools.permutations(range(6)))
    for alternative in alternatives:
        res = permutation_test(x, y, statistic=statistic, alternative=alternative)
        assert res.exact and res.n_permutations == 720
        assert res.p == pytest.approx(expected[alternative], abs=1e-12), alternative
    f = scipy.stats.spearmanr if statistic == "spearman" else scipy.stats.pearsonr
    assert res.statistic == pytest.approx(f(x, y)[0], abs=1e-12)


def test_monte_carlo_beyond_the_limit_agrees_with_enumeration_and_is_never_zero():
    rng = np.random.default_rng(3)
    x = rng.normal(size=7)
    y = 0.6 * x + rng.normal(size=7)
    exact = permutation_test(x, y)
    mc = permutation_test(x, y, exact_limit=5039, n_permutations=20_000, seed=1)  # 7! = 5040 > limit
    assert exact.exact and not mc.exact and mc.n_permutations == 20_000
    # MC SE of a p near exact.p with 20,000 draws is ≤ 0.0036; 0.015 is > 4 SE.
    assert mc.p == pytest.approx(exact.p, abs=0.015)
    # n = 10 (10! > 8!): Monte Carlo; ρ = 1 is reached by the identity only, so p = 1/(B + 1), not 0
    x10 = np.arange(10.0)
    res = permutation_test(x10, x10**3, n_permutations=999)
    assert not res.exact and res.p == pytest.approx(1 / 1000)
    assert math.factorial(8) == EXACT_PERMUTATION_LIMIT


def test_within_group_permutations_never_mix_groups_and_are_all_enumerated():
    groups = np.array(["a", "b", "a", "c", "b", "a", "c"])  # sizes 3, 2, 2 → 3!·2!·2! = 24
    blocks = _blocks(groups, 7)
    table = _enumerated(blocks, 7, 0, 24)
    assert len({tuple(r) for r in table}) == 24  # all distinct
    np.testing.assert_array_equal(table[0], np.arange(7))  # identity first
    assert np.all(groups[table] == groups[None, :])  # every row maps each group onto itself
    drawn = _random_permutations(np.random.default_rng(0), blocks, 7, 500)
    assert np.all(groups[drawn] == groups[None, :])
    assert {tuple(r) for r in drawn} <= {tuple(r) for r in table}
    x = np.arange(7.0)
    res = permutation_test(x, x**2, groups=groups)
    assert res.exact and res.n_permutations == 24 and res.p == pytest.approx(1 / 24)
    # the exact p equals brute force over the 24 within-group permutations
    y = np.array([0.5, 2.0, 0.1, 1.0, -1.0, 0.7, 3.0])
    expected = _brute_force_p(x, y, "spearman", ["greater"], [list(r) for r in table])["greater"]
    assert permutation_test(x, y, groups=groups).p == pytest.approx(expected, abs=1e-12)
    # forced Monte Carlo still permutes within groups: p over random within-group draws ≈ exact
    mc = permutation_test(x, y, groups=groups, exact_limit=1, n_permutations=20_000)
    assert not mc.exact and mc.p == pytest.approx(expected, abs=0.02)  # SE ≤ 0.0036


def test_within_group_null_ignores_differences_between_groups():
    """Three groups at levels 0, 10, 20 in both x and y, no association inside any group: the pooled
    correlation is huge, the unrestricted test calls it significant, the within-group test does not."""
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], 3)
    x = 10.0 * groups + rng.normal(size=9)
    y = 10.0 * groups + rng.normal(size=9)
    pooled = permutation_test(x, y)
    within = permutation_test(x, y, groups=groups)
    assert pooled.p < 0.01
    assert within.exact and within.n_permutations == 6**3 and within.p > 0.05


def test_permutation_test_errors():
    with pytest.raises(PerceptAlignError, match="groups"):
        permutation_test([1, 2, 3, 4], [1, 3, 2, 4], groups=[0, 1])
    with pytest.raises(PerceptAlignError, match="statistic"):
        permutation_test([1, 2, 3], [1, 3, 2], statistic="kendall")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="alternative"):
        permutation_test([1, 2, 3], [1, 3, 2], alternative="up")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="constant"):
        permutation_test([1, 1, 1], [1, 3, 2])


def test_correlate_permutation_p_is_exact_at_small_n():
    x = np.arange(6.0)
    res = correlate(x, np.exp(x), n_permutations=50, n_bootstrap=0)
    assert res.spearman_perm_p == pytest.approx(2 / 720)  # two-sided, exact despite 50 requested
    assert res.spearman_p == 0.0  # scipy's analytic p: why the report shows permutation p-values


# -------------------------------------------------------------------------------- cluster bootstrap


def test_weighted_statistic_is_the_statistic_of_the_expanded_resample():
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(size=9), 1)  # rounding makes ties
    y = np.round(x + rng.normal(size=9), 1)
    W = rng.integers(0, 3, size=(40, 9)).astype(float)
    for statistic in ("spearman", "pearson"):
        got = _weighted_statistic(x, y, W, statistic)
        for w, value in zip(W, got, strict=True):
            xe, ye = np.repeat(x, w.astype(int)), np.repeat(y, w.astype(int))
            if len(xe) < 2 or np.ptp(xe) == 0 or np.ptp(ye) == 0:
                assert np.isnan(value)
                continue
            f = scipy.stats.spearmanr if statistic == "spearman" else scipy.stats.pearsonr
            assert value == pytest.approx(f(xe, ye)[0], abs=1e-12)


def test_cluster_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(2)
    G = 12
    x = rng.normal(size=G)
    y = 0.5 * x + rng.normal(size=G)
    single = cluster_bootstrap_ci(x, y, np.arange(G), seed=4)
    # Five identical copies of every row in one group each: resampling groups is resampling the
    # distinct rows (weights ×5 leave Pearson of average ranks unchanged), so the interval is the same.
    copies = cluster_bootstrap_ci(np.repeat(x, 5), np.repeat(y, 5), np.repeat(np.arange(G), 5), seed=4)
    assert copies == pytest.approx(single, abs=1e-12)
    # A row bootstrap would treat the 60 copies as independent and give a much narrower interval.
    rows = correlate(np.repeat(x, 5), np.repeat(y, 5), n_permutations=0, n_bootstrap=2000).spearman_ci
    assert rows[1] - rows[0] < 0.7 * (copies[1] - copies[0])
    rho = scipy.stats.spearmanr(x, y)[0]
    assert copies[0] < rho < copies[1]
    mono = cluster_bootstrap_ci(np.arange(20.0), np.arange(20.0) ** 2, np.repeat(np.arange(5), 4))
    assert mono == pytest.approx((1.0, 1.0))
    # level: a 50% interval lies inside the 95% one
    narrow = cluster_bootstrap_ci(x, y, np.arange(G), level=0.5, seed=4)
    assert single[0] <= narrow[0] <= narrow[1] <= single[1]


def test_cluster_bootstrap_errors():
    x, y = np.arange(6.0), np.array([1.0, 3, 2, 5, 4, 6])
    with pytest.raises(PerceptAlignError, match="at least 2 groups"):
        cluster_bootstrap_ci(x, y, np.zeros(6))
    # x is constant inside each of 2 groups: every resample that draws one group twice is undefined
    # (probability 1/2), far above the 10% allowed.
    with pytest.raises(PerceptAlignError, match="too few for a cluster bootstrap"):
        cluster_bootstrap_ci(np.repeat([0.0, 1.0], 3), y, np.repeat([0, 1], 3))
    with pytest.raises(PerceptAlignError, match="level"):
        cluster_bootstrap_ci(x, y, np.arange(6), level=95)


# ------------------------------------------------------------------------------------------- power


def test_power_under_the_null_is_the_test_size():
    # Monte-Carlo p = (1 + c)/(B + 1) ≤ .05 with B = 200 ⟺ c ≤ 9: size exactly 10/201 = 0.0498 under
    # exchangeability. SE of a rate near .05 over 2000 simulations is 0.0049; tolerance 0.02 ≈ 4 SE.
    size = 10 / 201
    assert simulated_power(60, rho=0.0, n_sim=2000, n_permutations=200, seed=1) == pytest.approx(
        size, abs=0.02
    )
    # A shared group effect (ICC 0.5) in x and y: permuting within groups keeps the size.
    groups = np.repeat(np.arange(12), 5)
    clustered = simulated_power(
        60, rho=0.0, groups=groups, within_group_correlation=0.5, n_sim=2000, n_permutations=200, seed=2
    )
    assert clustered == pytest.approx(size, abs=0.02)


def test_ignoring_the_groups_under_a_shared_group_effect_inflates_the_error_rate():
    """Why the groups argument exists: the same data, tested without restricting permutations to groups,
    reject far more often than α (here the between-group correlation equals the ICC, 0.5)."""
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(6), 5)
    rejections = 0
    for _ in range(100):
        shared = rng.standard_normal(6)[groups]
        x = math.sqrt(0.5) * shared + math.sqrt(0.5) * rng.standard_normal(30)
        y = math.sqrt(0.5) * shared + math.sqrt(0.5) * rng.standard_normal(30)
        rejections += permutation_test(x, y, n_permutations=200, seed=int(rng.integers(1 << 30))).p <= 0.05
    assert rejections / 100 > 0.3  # α = .05; binomial SE at .05 over 100 draws is 0.022


def test_power_matches_the_fisher_z_closed_form_and_grows_with_rho():
    # Pearson, n = 60, ρ = .3, one-sided α = .05: Φ(atanh(.3)·√57 − 1.645) = 0.756. MC SE over 1000
    # simulations 0.014; the Fisher approximation and B = 500 permutations add < 0.02.
    expected = scipy.stats.norm.cdf(math.atanh(0.3) * math.sqrt(57) - scipy.stats.norm.ppf(0.95))
    got = simulated_power(60, rho=0.3, statistic="pearson", seed=3)
    assert got == pytest.approx(expected, abs=0.06)
    powers = [simulated_power(30, rho=r, n_sim=500, n_permutations=200, seed=4) for r in (0.1, 0.35, 0.6)]
    assert powers[0] < powers[1] < powers[2] and powers[2] > 0.9
    # "less" at positive ρ almost never rejects
    assert simulated_power(30, rho=0.6, alternative="less", n_sim=300, n_permutations=100) < 0.02


def test_power_with_exact_enumeration_at_small_n():
    # n = 6: all 720 pairings; the smallest p is 1/720, so α = 0.001 can never be reached
    assert simulated_power(6, rho=0.99, alpha=0.001, n_sim=50) == 0.0
    assert simulated_power(6, rho=0.99, alpha=0.01, n_sim=200) > 0.5


def test_power_errors():
    with pytest.raises(PerceptAlignError, match="needs groups"):
        simulated_power(20, rho=0.3, within_group_correlation=0.2)
    with pytest.raises(PerceptAlignError, match="rho"):
        simulated_power(20, rho=1.5)
    with pytest.raises(PerceptAlignError, match="n must be"):
        simulated_power(2, rho=0.5)
