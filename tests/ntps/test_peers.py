"""Peer transferability metrics against brute-force formulas, closed forms and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats

from perceptalign.io import PerceptAlignError
from perceptalign.ntps import peer_metrics as peers
from perceptalign.ntps.peer_metrics import (
    PEER_METRICS,
    alpha_req,
    compute_peer_metrics,
    cv_logistic_accuracy,
    fisher_ratio,
    gbc,
    h_score,
    knn_accuracy,
    leep,
    lidar,
    logme,
    logme_details,
    nce,
    rankme,
    transrate,
)


def _data(seed: int = 0, n: int = 120, D: int = 6, C: int = 3, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    rng.shuffle(y)
    centers = rng.normal(size=(C, D)) * shift
    F = rng.normal(size=(n, D)) + centers[y]
    return F, y


# ------------------------------------------------------------------------------------------- LogME


def _log_marginal(F: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """log N(t | 0, β⁻¹I + α⁻¹FFᵀ) / n with the dense n×n covariance (β = inf: noise-free)."""
    n = len(t)
    cov = F @ F.T / alpha + (np.eye(n) / beta if np.isfinite(beta) else 0.0)
    return scipy.stats.multivariate_normal(np.zeros(n), cov).logpdf(t) / n


@pytest.mark.parametrize(("n", "D"), [(40, 5), (15, 30)])
def test_logme_evidence_equals_brute_force_marginal_likelihood(n: int, D: int) -> None:
    F, y = _data(seed=1, n=n, D=D, C=3, shift=0.8)
    res = logme_details(F, y)
    # n > D: the fixed point settles; D > n (seed 1): some classes need the profile search (β → ∞).
    assert res.converged.all() if n > D else not res.converged.all()
    grid = np.logspace(-3, 4, 15)
    for k in range(3):
        t = (y == k).astype(float)
        # Both sides are O(1) per-sample log densities in float64; 1e-8 absorbs round-off in the n×n
        # Cholesky (condition number of the covariance stays < 1e8 here).
        assert res.evidence[k] == pytest.approx(_log_marginal(F, t, res.alpha[k], res.beta[k]), abs=1e-8)
        # The fitted (α, β) maximise the evidence: no point of a wide grid beats it.
        best_on_grid = max(_log_marginal(F, t, a, b) for a in grid for b in grid)
        assert res.evidence[k] >= best_on_grid - 1e-9
    assert logme(F, y) == pytest.approx(res.evidence.mean(), abs=1e-15)


def test_logme_alpha_beta_satisfy_fixed_point_equations() -> None:
    F, y = _data(seed=2, n=60, D=8)
    res = logme_details(F, y)
    n, D = F.shape
    for k in range(3):
        t = (y == k).astype(float)
        a, b = res.alpha[k], res.beta[k]
        A = a * np.eye(D) + b * F.T @ F
        m = b * np.linalg.solve(A, F.T @ t)
        gamma = np.sum(b * np.linalg.eigvalsh(F.T @ F) / (a + b * np.linalg.eigvalsh(F.T @ F)))
        # The iteration stops at relative change 1e-10; one more update moves α, β by about that much.
        assert a == pytest.approx(gamma / (m @ m), rel=1e-7)
        assert b == pytest.approx((n - gamma) / np.sum((t - F @ m) ** 2), rel=1e-7)


def test_logme_prefers_informative_features() -> None:
    F_good, y = _data(seed=3, shift=3.0)
    rng = np.random.default_rng(3)
    F_noise = rng.normal(size=F_good.shape)
    assert logme(F_good, y) > logme(F_noise, y)


# ----------------------------------------------------------------------------------------- H-score


def _h_direct(F: np.ndarray, y: np.ndarray) -> float:
    Xc = F - F.mean(0)
    G = np.stack([Xc[y == y_i].mean(0) for y_i in y])  # row i replaced by its class mean
    return float(np.trace(np.linalg.inv(Xc.T @ Xc / len(y)) @ (G.T @ G / len(y))))


def test_h_score_matches_direct_formula_and_bounds() -> None:
    F, y = _data(seed=4, C=4, n=120)
    h = h_score(F, y)
    assert h == pytest.approx(_h_direct(F, y), rel=1e-10)  # same algebra, different order: round-off
    assert 0.0 <= h <= 4 - 1 + 1e-9  # eigenvalues of Σ⁻¹Σ_between lie in [0, 1], rank ≤ C − 1


def test_h_score_invariant_to_invertible_linear_maps_and_shifts() -> None:
    F, y = _data(seed=5, D=5)
    rng = np.random.default_rng(5)
    A = rng.normal(size=(5, 5)) + 3 * np.eye(5)
    assert np.linalg.cond(A) < 1e3
    # tr(Σ⁻¹Σ_b) is exactly invariant; cond(A)² ≤ 1e6 bounds the round-off to ~1e-9 relative.
    assert h_score(F @ A + 7.0, y) == pytest.approx(h_score(F, y), rel=1e-8)


def test_h_score_perfect_separation_reaches_c_minus_one() -> None:
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(3), 10)
    F = np.eye(3)[y] * 10 + 1e-4 * rng.normal(size=(30, 3))
    # Within-class variance 1e-8 against between-class ~20: the score is C − 1 up to ~1e-8.
    assert h_score(F[:, :2], y) == pytest.approx(2.0, abs=1e-6)


def _ledoit_wolf_by_hand(Xc: np.ndarray) -> float:
    n, D = Xc.shape
    S = Xc.T @ Xc / n
    mu = np.trace(S) / D
    d2 = np.sum((S - mu * np.eye(D)) ** 2)
    b2 = sum(np.sum((np.outer(x, x) - S) ** 2) for x in Xc) / n**2
    return min(b2, d2) / d2


def test_h_score_shrinkage_matches_hand_formula() -> None:
    F, y = _data(seed=7, n=30, D=40)  # D > n: the plain H-score is unreliable here
    Xc = F - F.mean(0)
    a = _ledoit_wolf_by_hand(Xc)
    assert 0 < a < 1
    S = Xc.T @ Xc / len(y)
    G = np.stack([Xc[y == v].mean(0) for v in y])
    Sb = G.T @ G / len(y)
    shrunk = (1 - a) * S + a * np.trace(S) / S.shape[0] * np.eye(S.shape[0])
    direct = (1 - a) * np.trace(np.linalg.inv(shrunk) @ Sb)
    # Solve vs explicit inverse of a well-conditioned (shrunk) matrix: agreement to ~1e-10 relative.
    assert h_score(F, y, shrinkage=True) == pytest.approx(direct, rel=1e-8)
    assert 0 <= h_score(F, y, shrinkage=True) <= 2 + 1e-9


def test_h_score_zero_shrinkage_equals_plain() -> None:
    F, y = _data(seed=8)
    assert h_score(F, y, shrinkage=0.0) == pytest.approx(h_score(F, y), rel=1e-12)
    with pytest.raises(PerceptAlignError, match="shrinkage"):
        h_score(F, y, shrinkage=1.5)


# --------------------------------------------------------------------------------------- NCE, LEEP


def _nce_brute(z: list[int], y: list[int]) -> float:
    n = len(z)
    total = 0.0
    for zv in set(z):
        for yv in set(y):
            nzy = sum(1 for a, b in zip(z, y, strict=True) if a == zv and b == yv)
            nz = sum(1 for a in z if a == zv)
            if nzy:
                total += nzy / n * np.log(nzy / nz)
    return total


def test_nce_matches_counting_and_bounds() -> None:
    rng = np.random.default_rng(9)
    z = rng.integers(0, 5, 40)
    y = rng.integers(0, 3, 40)
    assert nce(z, y) == pytest.approx(_nce_brute(z.tolist(), y.tolist()), abs=1e-12)
    assert nce(z, y) <= 0
    # y a function of z (many-to-one): conditional entropy is exactly zero.
    z2 = rng.integers(0, 6, 50)
    assert nce(z2 * 1000 + 3, z2 % 2) == pytest.approx(0.0, abs=1e-15)


def _leep_brute(P: np.ndarray, y: np.ndarray) -> float:
    n, Z = P.shape
    C = y.max() + 1
    joint = np.zeros((C, Z))
    for i in range(n):
        for z in range(Z):
            joint[y[i], z] += P[i, z] / n
    out = 0.0
    for i in range(n):
        out += np.log(sum(joint[y[i], z] / joint[:, z].sum() * P[i, z] for z in range(Z)))
    return out / n


def test_leep_matches_brute_force_and_bounds() -> None:
    rng = np.random.default_rng(10)
    P = rng.dirichlet(np.ones(7), size=25)
    y = rng.integers(0, 3, 25)
    assert leep(P, y) == pytest.approx(_leep_brute(P, y), abs=1e-12)
    assert leep(P, y) <= 0
    # Deterministic one-hot source predictions that determine y: the EEP is 1 for every sample.
    z = rng.integers(0, 4, 30)
    assert leep(np.eye(4)[z], z % 2) == pytest.approx(0.0, abs=1e-12)


def test_leep_blockwise_and_sparse_match_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.sparse

    rng = np.random.default_rng(28)
    P = rng.dirichlet(np.ones(50) * 0.1, size=30)
    P[P < 0.02] = 0.0  # a "top-k" truncation, renormalised below
    P /= P.sum(1, keepdims=True)
    y = rng.integers(0, 3, 30)
    dense = leep(P, y)
    assert dense == pytest.approx(_leep_brute(P, y), abs=1e-12)
    monkeypatch.setattr(peers, "_PROB_BLOCK_ELEMENTS", 7 * 50)  # 7 rows per block: 5 blocks, last partial
    assert leep(P.astype(np.float32), y) == pytest.approx(dense, abs=1e-6)  # float32 input: ~1e-7 rel
    assert leep(scipy.sparse.csr_matrix(P), y) == pytest.approx(dense, abs=1e-12)
    out = compute_peer_metrics(rng.normal(size=(30, 4)), y, next_token_probs=scipy.sparse.csr_matrix(P))
    assert out["nce"] == pytest.approx(nce(P.argmax(1), y), abs=1e-12)


def test_leep_input_errors() -> None:
    y = np.array([0, 1, 0])
    with pytest.raises(PerceptAlignError, match="sum to 1"):
        leep(np.ones((3, 4)), y)
    with pytest.raises(PerceptAlignError, match="non-negative"):
        leep(np.array([[2.0, -1.0]] * 3), y)
    with pytest.raises(PerceptAlignError, match="shape"):
        leep(np.full((4, 2), 0.5), y)
    with pytest.raises(PerceptAlignError, match="integer"):
        nce(np.array([0.5, 1.0, 2.0]), y)


# --------------------------------------------------------------------------------------------- GBC


def _bc_numeric_1d(m1: float, v1: float, m2: float, v2: float) -> float:
    f = lambda x: np.sqrt(scipy.stats.norm.pdf(x, m1, np.sqrt(v1)) * scipy.stats.norm.pdf(x, m2, np.sqrt(v2)))  # noqa: E731
    return scipy.integrate.quad(f, -np.inf, np.inf, epsabs=1e-13)[0]


def test_gbc_matches_numerical_integration_in_one_dimension() -> None:
    rng = np.random.default_rng(11)
    y = np.repeat([0, 1], 30)
    x = np.where(y == 0, rng.normal(0, 1, 60), rng.normal(1.5, 2, 60))
    F = x[:, None]
    a, b = x[y == 0], x[y == 1]
    bc = _bc_numeric_1d(a.mean(), a.var(), b.mean(), b.var())
    # quad is accurate to ~1e-10 here; the variance floor in gbc perturbs by ~1e-12 relative.
    assert gbc(F, y) == pytest.approx(-2 * bc, abs=1e-8)


def test_gbc_diagonal_factorises_over_dimensions() -> None:
    rng = np.random.default_rng(12)
    y = np.repeat([0, 1], 40)
    F = rng.normal(size=(80, 2)) * [1.0, 0.3] + np.outer(y, [0.7, 0.2])
    Z = peers._pca(F, 2)
    bc = 1.0
    for d in range(2):
        a, b = Z[y == 0, d], Z[y == 1, d]
        bc *= _bc_numeric_1d(a.mean(), a.var(), b.mean(), b.var())
    assert gbc(F, y, pca_dim=2) == pytest.approx(-2 * bc, abs=1e-8)


def test_gbc_extremes() -> None:
    rng = np.random.default_rng(13)
    X = rng.normal(size=(20, 5))
    F = np.vstack([X, X, X])  # three classes with identical samples → identical Gaussians, BC = 1
    y = np.repeat([0, 1, 2], 20)
    assert gbc(F, y) == pytest.approx(-3 * 2, abs=1e-9)
    assert gbc(F, y, covariance="spherical") == pytest.approx(-6, abs=1e-9)
    F_sep, y_sep = _data(seed=13, shift=50.0)
    assert -1e-6 < gbc(F_sep, y_sep) <= 0.0  # means 50σ apart: BC ≈ exp(−50²/8·...) ≈ 0
    with pytest.raises(PerceptAlignError, match="covariance"):
        gbc(F, y, covariance="full")


# ------------------------------------------------------------------------------ RankMe, α-ReQ, LiDAR


def test_rankme_isotropic_and_rank_one() -> None:
    rng = np.random.default_rng(17)
    Q, _ = np.linalg.qr(rng.normal(size=(200, 10)))
    # Exactly equal singular values: entropy = log D, up to the 1e-7 ε per entry.
    assert rankme(Q * 3.0) == pytest.approx(10.0, rel=1e-5)
    assert rankme(rng.normal(size=(5000, 10))) > 9.9  # sampling spread of singular values ~ 1/sqrt(n)
    assert rankme(rng.normal(size=(8, 30))) > 7.0  # n < D: at most n non-zero singular values
    assert rankme(rng.normal(size=(8, 30))) <= 8.0 + 1e-3
    u = rng.normal(size=(50, 1))
    assert rankme(u @ rng.normal(size=(1, 12))) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_alpha_req_recovers_exact_power_law(alpha: float) -> None:
    rng = np.random.default_rng(18)
    n, D = 400, 30
    A = rng.normal(size=(n, D))
    U, _ = np.linalg.qr(A - A.mean(0))  # centered orthonormal columns
    V, _ = np.linalg.qr(rng.normal(size=(D, D)))
    lam = np.arange(1, D + 1) ** -alpha
    F = np.sqrt(n) * U @ np.diag(np.sqrt(lam)) @ V.T + 5.0
    # Covariance eigenvalues are exactly i^-α, so the log-log fit is exact up to round-off.
    assert alpha_req(F) == pytest.approx(alpha, abs=1e-8)
    assert alpha_req(F, fit_range=(2, 20)) == pytest.approx(alpha, abs=1e-8)
    with pytest.raises(PerceptAlignError, match="fit_range"):
        alpha_req(F, fit_range=(5, 5))


def _simplex_data(seed: int, C: int = 4, per: int = 500, D: int = 6):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), per)
    means = np.zeros((C, D))
    means[:, :C] = np.eye(C) * 5.0
    return rng.normal(size=(C * per, D)) + means[y], y


def test_lidar_matches_generalized_eigenproblem_and_bounds() -> None:
    F, y = _simplex_data(19)
    C, D = 4, F.shape[1]
    means = np.stack([F[y == c].mean(0) for c in range(C)])
    Mc = means - means.mean(0)
    Sb = Mc.T @ Mc / C
    Sw = sum(np.cov(F[y == c].T, bias=True) for c in range(C)) / C + 1e-4 * np.eye(D)
    lam = np.clip(scipy.linalg.eigh(Sb, Sw, eigvals_only=True), 0, None)
    p = lam / lam.sum() + 1e-7
    # Generalized eigh vs explicit Σ_w^(-1/2) whitening: same eigenvalues up to ~1e-12 relative.
    assert lidar(F, y) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-9)
    # Simplex class means with isotropic within-class noise: C − 1 nearly equal directions.
    assert 0.95 * (C - 1) < lidar(F, y) <= C - 1 + 1e-4


def test_lidar_rotation_invariant() -> None:
    F, y = _simplex_data(20, C=3, per=50)
    Q, _ = np.linalg.qr(np.random.default_rng(20).normal(size=(6, 6)))
    assert lidar(F @ Q, y) == pytest.approx(lidar(F, y), rel=1e-9)  # δI is rotation invariant


# --------------------------------------------------------------------------------- simple baselines


def test_fisher_ratio_hand_calculation_and_invariances() -> None:
    F = np.array([[0.0], [2.0], [10.0], [12.0]])
    y = np.array([0, 0, 1, 1])
    # S_b = 4·25 = 100 (class means 1 and 11, grand mean 6); S_w = 4·1 = 4
    assert fisher_ratio(F, y) == pytest.approx(25.0, rel=1e-12)
    F2, y2 = _data(seed=21)
    Q, _ = np.linalg.qr(np.random.default_rng(21).normal(size=(6, 6)))
    assert fisher_ratio(3 * F2 @ Q + 1, y2) == pytest.approx(fisher_ratio(F2, y2), rel=1e-10)
    assert fisher_ratio(np.array([[0.0], [0.0], [1.0], [1.0]]), y) == np.inf


def test_knn_accuracy_matches_bruteforce_neighbours() -> None:
    F, y = _data(seed=22, n=60, D=3, C=2, shift=1.0)
    from sklearn.model_selection import StratifiedKFold

    correct = 0
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(F, y):
        for i in test:
            d = np.sum((F[train] - F[i]) ** 2, axis=1)
            votes = np.bincount(y[train][np.argsort(d, kind="stable")[:5]], minlength=2)
            correct += int(np.argmax(votes) == y[i])
    assert knn_accuracy(F, y, k=5, cv=5) == pytest.approx(correct / len(y), abs=1e-12)


def test_cv_logistic_accuracy_matches_manual_folds() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    F, y = _data(seed=23, n=90, D=4, C=3, shift=0.7)
    correct = 0
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(F, y):
        mu, sd = F[train].mean(0), F[train].std(0)
        clf = LogisticRegression(C=1.0, max_iter=2000).fit((F[train] - mu) / sd, y[train])
        correct += int(np.sum(clf.predict((F[test] - mu) / sd) == y[test]))
    assert cv_logistic_accuracy(F, y) == pytest.approx(correct / len(y), abs=1e-12)
    F_sep, y_sep = _data(seed=23, shift=20.0)
    assert cv_logistic_accuracy(F_sep, y_sep) == 1.0


# ------------------------------------------------------------------------------ registry, validation


def test_registry_covers_all_metrics_with_citation_docstrings() -> None:
    F, y = _data(seed=24, n=60)
    P = np.random.default_rng(24).dirichlet(np.ones(9), size=60)
    out = compute_peer_metrics(F, y, next_token_probs=P)
    assert set(out) == set(PEER_METRICS)
    assert all(np.isfinite(v) for v in out.values())
    assert out["logme"] == pytest.approx(logme(F, y))
    assert out["nce"] == pytest.approx(nce(P.argmax(1), y))
    for spec in PEER_METRICS.values():
        assert spec.function.__doc__ and len(spec.function.__doc__.splitlines()) == 1
    no_lm = compute_peer_metrics(F, y)
    assert "nce" not in no_lm and "leep" not in no_lm
    assert set(compute_peer_metrics(F, None)) == {"rankme", "alpha_req"}
    assert set(compute_peer_metrics(F, y, metrics=["rankme", "gbc"])) == {"rankme", "gbc"}


def test_registry_errors() -> None:
    F, y = _data(seed=25, n=30)
    with pytest.raises(PerceptAlignError, match="unknown peer metrics"):
        compute_peer_metrics(F, y, metrics=["logme", "magic"])
    with pytest.raises(PerceptAlignError, match="next_token_probs"):
        compute_peer_metrics(F, y, metrics=["leep"])
    with pytest.raises(PerceptAlignError, match="needs labels"):
        compute_peer_metrics(F, None, metrics=["logme"])


@pytest.mark.parametrize(
    "fn", [logme, h_score, gbc, transrate, lidar, fisher_ratio, knn_accuracy, cv_logistic_accuracy]
)
def test_input_validation(fn) -> None:
    F, y = _data(seed=26, n=30)
    with pytest.raises(PerceptAlignError, match="at least 2 classes"):
        fn(F, np.zeros(30, dtype=int))
    bad = F.copy()
    bad[3, 1] = np.nan
    with pytest.raises(PerceptAlignError, match="NaN"):
        fn(bad, y)
    with pytest.raises(PerceptAlignError, match="rows"):
        fn(F, y[:-1])
    with pytest.raises(PerceptAlignError, match="2-D"):
        fn(F[:, 0], y)
    with pytest.raises(PerceptAlignError, match="integer"):
        fn(F, y + 0.5)


@pytest.mark.parametrize("fn", [gbc, lidar, knn_accuracy, cv_logistic_accuracy])
def test_too_few_samples_per_class(fn) -> None:
    F, y = _data(seed=27, n=30)
    y = y.copy()
    y[0] = 7  # a class with one member
    with pytest.raises(PerceptAlignError, match="samples per class"):
        fn(F, y)
