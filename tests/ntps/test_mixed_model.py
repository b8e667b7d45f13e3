"""REML random-intercept fits against closed forms and known parameters."""

from __future__ import annotations

import numpy as np
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.mixed_model import fit_random_intercepts, indicator


def _one_way(rng: np.random.Generator, groups: int, per_group: int, sd_group: float) -> tuple:
    g = np.repeat(np.arange(groups), per_group)
    y = 2.0 + sd_group * rng.standard_normal(groups)[g] + rng.standard_normal(len(g))
    return y, g


def test_balanced_one_way_matches_the_anova_closed_form():
    # In a balanced one-way design with only an intercept, REML equals the ANOVA estimator whenever
    # MSB > MSW: σ² = MSW and σ²_group = (MSB − MSW) / m.
    rng = np.random.default_rng(0)
    groups, m = 12, 7
    y, g = _one_way(rng, groups, m, sd_group=1.5)
    means = np.array([y[g == j].mean() for j in range(groups)])
    msw = sum(((y[g == j] - means[j]) ** 2).sum() for j in range(groups)) / (groups * (m - 1))
    msb = m * ((means - y.mean()) ** 2).sum() / (groups - 1)
    assert msb > msw
    fit = fit_random_intercepts(y, np.ones((len(y), 1)), [g])
    # The optimiser stops at ftol 1e-12 on a smooth 1-D criterion: 1e-4 relative is loose for it.
    assert fit.sigma2 == pytest.approx(msw, rel=1e-4)
    assert fit.variances[0] == pytest.approx((msb - msw) / m, rel=1e-4)
    # The balanced-design GLS intercept is the grand mean, with variance (σ² + m σ²_g) / (G m).
    assert fit.beta[0] == pytest.approx(y.mean(), rel=1e-10)
    assert fit.beta_se[0] == pytest.approx(np.sqrt(msb / (groups * m)), rel=1e-4)


def test_no_group_variance_is_estimated_at_the_boundary():
    # When MSB < MSW the REML variance component is 0 (the bound), and the fit is OLS.
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 5)
    y = rng.standard_normal(50)
    means = np.array([y[g == j].mean() for j in range(10)])
    msw = sum(((y[g == j] - means[j]) ** 2).sum() for j in range(10)) / 40
    msb = 5 * ((means - y.mean()) ** 2).sum() / 9
    fit = fit_random_intercepts(y, np.ones((50, 1)), [g])
    if msb < msw:
        assert fit.variance_ratios[0] == pytest.approx(0.0, abs=1e-6)
        assert fit.sigma2 == pytest.approx(y.var(ddof=1), rel=1e-6)
    else:  # pragma: no cover - the seed is chosen so that this branch is not taken
        pytest.fail("seed no longer gives MSB < MSW")


def test_without_factors_the_fit_is_ordinary_least_squares():
    rng = np.random.default_rng(1)
    X = np.column_stack([np.ones(40), rng.standard_normal(40)])
    y = X @ [0.5, -1.0] + 0.3 * rng.standard_normal(40)
    fit = fit_random_intercepts(y, X, [])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    np.testing.assert_allclose(fit.beta, beta, rtol=1e-12)


def test_crossed_design_recovers_a_known_slope_and_variances():
    # Four "models" × 60 tasks in 6 parents: shared task intercepts (sd 1), parent intercepts (sd .7),
    # slope .5. With 240 rows the slope's SE is ≈ .04, so 4 SE is a generous but failing-capable bound.
    rng = np.random.default_rng(7)
    tasks, parents_of = 60, np.repeat(np.arange(6), 10)
    task_effect = rng.standard_normal(tasks)
    parent_effect = 0.7 * rng.standard_normal(6)
    rows = [(m, t) for m in range(4) for t in range(tasks)]
    model = np.array([m for m, _ in rows])
    task = np.array([t for _, t in rows])
    x = rng.standard_normal(len(rows))
    y = 0.5 * x + task_effect[task] + parent_effect[parents_of[task]] + 0.5 * rng.standard_normal(len(rows))
    X = np.column_stack([indicator(model), x])
    fit = fit_random_intercepts(y, X, [parents_of[task], task])
    assert abs(fit.beta[-1] - 0.5) < 4 * fit.beta_se[-1]
    assert fit.beta_se[-1] < 0.06
    assert fit.sigma2 == pytest.approx(0.25, rel=0.3)
    assert fit.variances[1] == pytest.approx(1.0, rel=0.5)


def test_row_order_and_scale_do_not_matter():
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(8), 6)
    x = rng.standard_normal(48)
    y = 0.4 * x + rng.standard_normal(8)[g] + rng.standard_normal(48)
    X = np.column_stack([np.ones(48), x])
    base = fit_random_intercepts(y, X, [g])
    order = rng.permutation(48)
    shuffled = fit_random_intercepts(y[order], X[order], [g[order]])
    scaled = fit_random_intercepts(3.0 * y, X, [g])
    # Same criterion surface up to the optimiser's tolerance.
    np.testing.assert_allclose(shuffled.beta, base.beta, rtol=1e-5)
    np.testing.assert_allclose(scaled.beta, 3.0 * base.beta, rtol=1e-5)
    np.testing.assert_allclose(scaled.variance_ratios, base.variance_ratios, rtol=1e-3, atol=1e-6)


def test_bad_inputs_name_the_problem():
    X = np.ones((5, 1))
    with pytest.raises(PerceptAlignError, match="`y`"):
        fit_random_intercepts(np.ones(4), X, [])
    with pytest.raises(PerceptAlignError, match="finite"):
        fit_random_intercepts(np.array([1, 2, np.nan, 4, 5.0]), X, [])
    with pytest.raises(PerceptAlignError, match="full column rank"):
        fit_random_intercepts(np.arange(5.0), np.ones((5, 2)), [])
    with pytest.raises(PerceptAlignError, match="one label per row"):
        fit_random_intercepts(np.arange(5.0), X, [[0, 1]])


def _dense_criterion(theta, y, X, factors):
    """The REML criterion with V formed and factored densely: the slow formula the fast one must equal."""
    n, p = X.shape
    V = np.eye(n)
    for t, f in zip(theta, factors, strict=True):
        Z = indicator(f)
        V += t * Z @ Z.T
    Vi = np.linalg.inv(V)
    XVX = X.T @ Vi @ X
    beta = np.linalg.solve(XVX, X.T @ Vi @ y)
    r = y - X @ beta
    sigma2 = r @ Vi @ r / (n - p)
    return (n - p) * np.log(sigma2) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(XVX)[1], beta


def test_the_woodbury_criterion_equals_the_dense_formula():
    from perceptalign.ntps.mixed_model import _crossproducts, _profiled

    rng = np.random.default_rng(5)
    n = 90
    factors = [rng.integers(0, 4, n), rng.integers(0, 15, n)]
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = rng.standard_normal(n) + indicator(factors[1]) @ rng.standard_normal(15)
    products = _crossproducts(y, X, [indicator(f) for f in factors])
    for theta in ([0.0, 0.0], [0.3, 2.0], [5.0, 0.01]):
        fast, beta, *_ = _profiled(np.array(theta), products)
        slow, beta_slow = _dense_criterion(theta, y, X, factors)
        # Both are double-precision evaluations of the same expression on a well-conditioned V.
        assert fast == pytest.approx(slow, rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(beta, beta_slow, rtol=1e-9)
