"""Tests of TransRate: the paper's definition (``transrate``) and the paper's code listing
(``transrate_release``), each against a slow formula written here (explicit per-class loop, numpy slogdet
of the full d × d matrices).

Tolerances: everything is float64. The module takes the logdet of the smaller Gram matrix (Sylvester),
the reference the d × d one; both are Cholesky/LU-stable, so they differ by ~u·κ per eigenvalue with
κ = 1 + ‖scale·ZᵀZ‖ ≤ ~1e7 in these toys, i.e. ≲ 1e-9 absolute on log-determinants of size ~10–100.
``TOL`` = 1e-8 (absolute) keeps a margin and still rejects any wrong weight or scale, which moves the
score by ≥ 1e-3 here.
"""

from __future__ import annotations

import numpy as np
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.peer_metrics import PEER_METRICS, compute_peer_metrics, transrate, transrate_release

TOL = 1e-8
D = 8


def _toy(n0: int, n1: int, shift: float = 1.5, spread1: float = 1.0, seed: int = 0, d: int = D):
    """Class 0: n0 draws of N(0, I_d); class 1: n1 draws of N(shift·e_1, spread1²·I_d)."""
    rng = np.random.default_rng(seed)
    X0 = rng.standard_normal((n0, d))
    X1 = spread1 * rng.standard_normal((n1, d))
    X1[:, 0] += shift
    return np.vstack([X0, X1]), np.repeat([0, 1], [n0, n1])


def _half_logdet(M: np.ndarray) -> float:
    sign, logdet = np.linalg.slogdet(M)
    assert sign > 0
    return 0.5 * logdet


def _paper_slow(F: np.ndarray, y: np.ndarray, eps: float) -> float:
    """R(Z, ε) − Σ_c (n_c/n) R(Z_c, ε), R(M, ε) = ½ logdet(I_d + d/(m ε²) MᵀM), Z centered, class loop."""
    n, d = F.shape
    Z = F - F.mean(axis=0)
    whole = _half_logdet(np.eye(d) + d / (n * eps**2) * (Z.T @ Z))
    conditional = 0.0
    for c in np.unique(y):
        Zc = Z[y == c]
        n_c = Zc.shape[0]
        conditional += n_c / n * _half_logdet(np.eye(d) + d / (n_c * eps**2) * (Zc.T @ Zc))
    return whole - conditional


def _release_slow(F: np.ndarray, y: np.ndarray, eps: float) -> float:
    """½ logdet(I + ZᵀZ/(n eps)) − (1/K) Σ_c ½ logdet(I + Z_cᵀZ_c/(n_c eps)), Z centered, class loop."""
    n, d = F.shape
    Z = F - F.mean(axis=0)
    whole = _half_logdet(np.eye(d) + Z.T @ Z / (n * eps))
    classes = np.unique(y)
    total = 0.0
    for c in classes:
        Zc = Z[y == c]
        total += _half_logdet(np.eye(d) + Zc.T @ Zc / (Zc.shape[0] * eps))
    return whole - total / len(classes)


# (n0, n1, shift, spread of class 1, seed, d): balanced, imbalanced 250/50, imbalanced with a spread-out
# minority, and d = 64 > n_c (rank-deficient class Gram matrices, the Sylvester branch).
TOYS = [
    (150, 150, 1.5, 1.0, 0, D),
    (250, 50, 1.5, 1.0, 0, D),
    (250, 50, 1.5, 3.0, 1, D),
    (40, 30, 1.0, 1.0, 2, 64),
]


@pytest.mark.parametrize("toy", TOYS)
@pytest.mark.parametrize("eps", [1e-2, 0.3])
def test_paper_definition_matches_the_slow_formula(toy: tuple, eps: float) -> None:
    F, y = _toy(*toy)
    assert transrate(F, y, eps=eps) == pytest.approx(_paper_slow(F, y, eps), rel=0, abs=TOL)


@pytest.mark.parametrize("toy", TOYS)
@pytest.mark.parametrize("eps", [1e-4, 1e-1])
def test_release_listing_matches_the_slow_formula(toy: tuple, eps: float) -> None:
    F, y = _toy(*toy)
    assert transrate_release(F, y, eps=eps) == pytest.approx(_release_slow(F, y, eps), rel=0, abs=TOL)


def test_variants_agree_on_balanced_classes_and_differ_on_imbalanced_ones() -> None:
    # The listing's eps is ε²/d of the definition; with n_c/n = 1/K the two formulas then coincide.
    eps = 1e-2
    F, y = _toy(150, 150)
    assert transrate(F, y, eps=eps) == pytest.approx(transrate_release(F, y, eps=eps**2 / D), abs=TOL)
    # 250/50 (measured: definition 0.1239, listing 0.0310 at their defaults; 0.1239 vs 0.0310 with
    # matched ε too): the uniform 1/K weights over-count the minority class.
    F, y = _toy(250, 50)
    paper, release = transrate(F, y), transrate_release(F, y)
    assert paper == pytest.approx(0.1239, abs=1e-4) and release == pytest.approx(0.0310, abs=1e-4)
    assert abs(transrate(F, y, eps=eps) - transrate_release(F, y, eps=eps**2 / D)) > 0.05


def test_definition_is_nonnegative_while_the_listing_can_go_negative() -> None:
    # Minority class three times as spread: its large coding rate counts 1/2 in the listing instead of
    # 50/300 (measured: definition +1.97, listing −0.90).
    F, y = _toy(250, 50, spread1=3.0, seed=1)
    assert transrate(F, y) > 1.0
    assert transrate_release(F, y) < -0.5
    for seed in range(5):  # concavity of logdet: ≥ 0 for any features and labels
        F, y = _toy(70 + 20 * seed, 10 + 5 * seed, shift=0.3 * seed, spread1=0.5 + seed, seed=seed)
        assert transrate(F, y) >= -TOL


@pytest.mark.parametrize("fn", [transrate, transrate_release])
@pytest.mark.parametrize("toy", TOYS[:3])
def test_invariant_to_rotation_translation_and_relabelling(fn, toy: tuple) -> None:
    F, y = _toy(*toy)
    base = fn(F, y)
    Q, _ = np.linalg.qr(np.random.default_rng(9).standard_normal((D, D)))
    assert fn(F @ Q + 5.0, y) == pytest.approx(base, abs=TOL)  # Z Q: logdet(I + s QᵀZᵀZQ) is unchanged
    assert fn(F, np.where(y == 0, 7, -3)) == pytest.approx(base, abs=TOL)  # class names swapped / arbitrary


@pytest.mark.parametrize(("fn", "eps"), [(transrate, 3.0), (transrate_release, 1.0)])
def test_not_invariant_to_feature_scale(fn, eps: float) -> None:
    # ε fixes a resolution: with ε comparable to the feature spread, doubling the features changes the
    # score (measured 0.047 and 0.036 here). With ε ≪ spread, logdet(I + sA) ≈ logdet(sA) and the scale
    # nearly cancels (at the defaults this toy moves by 2e-6 / 2e-5 only), so the check uses a large ε.
    F, y = _toy(250, 50)
    assert abs(fn(2.0 * F, y, eps=eps) - fn(F, y, eps=eps)) > 0.01


@pytest.mark.parametrize("fn", [transrate, transrate_release])
@pytest.mark.parametrize("copies", [1, 5])
def test_zero_when_every_class_has_the_same_second_moments(fn, copies: int) -> None:
    # Class 0 = ``copies`` stacked copies of a centered X, class 1 = X: every class has the second moments
    # of the whole set about the (zero) global mean, so R(Z_c) = R(Z) for all c and both variants vanish,
    # balanced (copies = 1) or 250/50 (copies = 5). Independent random labels would NOT give 0: the
    # finite-sample estimate has a positive bias (≈ 0.07 / 0.15 for the 250/50 toy without a shift).
    X = np.random.default_rng(16).standard_normal((50, D))
    X -= X.mean(axis=0)
    F = np.vstack([np.tile(X, (copies, 1)), X])
    y = np.repeat([0, 1], [50 * copies, 50])
    assert fn(F, y) == pytest.approx(0.0, abs=TOL)
    F_rand, y_rand = _toy(250, 50, shift=0.0)
    assert fn(F_rand, y_rand) > 0.01


@pytest.mark.parametrize("fn", [transrate, transrate_release])
def test_input_validation(fn) -> None:
    F, y = _toy(30, 20)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1e-4"):
        with pytest.raises(PerceptAlignError, match="`eps`"):
            fn(F, y, eps=bad)
    with pytest.raises(PerceptAlignError, match="at least 2 classes"):
        fn(F, np.zeros(50, dtype=int))
    with pytest.raises(PerceptAlignError, match="rows"):
        fn(F, y[:-1])
    bad_F = F.copy()
    bad_F[0, 0] = np.inf
    with pytest.raises(PerceptAlignError, match="NaN or infinite"):
        fn(bad_F, y)


def test_both_variants_are_registered() -> None:
    F, y = _toy(250, 50)
    out = compute_peer_metrics(F, y, metrics=["transrate", "transrate_release"])
    assert out == {"transrate": transrate(F, y), "transrate_release": transrate_release(F, y)}
    spec = PEER_METRICS["transrate_release"]
    assert spec.needs_labels and spec.higher_is_better and not spec.needs_lm_probs
